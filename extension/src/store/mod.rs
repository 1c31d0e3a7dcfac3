//! The layer above `pg`: what secretgate reads and writes, and the per-backend
//! caches of it. Every workspace row, secret row and registry read is here,
//! once. Nothing here decides anything.

pub mod attached;
pub mod history;
pub mod invalidation;
pub mod liveness;
pub mod registry;
pub mod secrets;
pub mod trigger_ddl;
pub mod workspaces;
