//! The checks: each gathers facts from `store`, asks the core's `policy`
//! for the decision, and turns a refusal into a [`Failure`](crate::pg::error::Failure)
//! with its audit line. Also the work of the SQL functions that write
//! through the gates (registration, the concierge helpers, maintenance).

pub mod admin_audit;
pub mod byok;
pub mod caller;
pub mod concierge;
pub mod history;
pub mod identity;
pub mod maintenance;
pub mod read_audit;
pub mod secret_write;
pub mod secrets;
