//! The bottom layer: everything that touches Postgres' C interfaces and SPI
//! directly. Nothing here knows what a gate is.

pub mod args;
pub mod audit_at_commit;
pub mod audit_queue;
pub mod audit_shmem;
pub mod audit_writers;
pub mod compat;
pub mod error;
pub mod gucs;
pub mod history_rows;
pub mod index_read;
pub mod keyring;
pub mod keyring_checks;
pub mod keyring_source;
pub mod secret_read;
pub mod spi;
pub mod types;
