//! The top layer: the functions and trigger entry points Postgres calls.
//! Each checks its arguments, makes one call down, and raises through
//! `pg::error::run`.

mod audit;
mod byok;
mod concierge;
mod history;
mod maintenance;
mod secrets;
mod triggers;
