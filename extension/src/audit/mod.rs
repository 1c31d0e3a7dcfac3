//! The audit trail's background side: a launcher and one writer per database
//! that take records off the shared-memory queue (`pg::audit_writers`) and
//! insert them into that database's `secretgate.audit_events`, outside the
//! refusing transaction. A layer of its own between `store` and `gates`: it
//! uses only `pg`, and nothing but `_PG_init` uses it.

pub mod worker;

/// The one call `_PG_init` makes: the queue's shared memory and (when
/// preloading) the launcher.
pub fn init() {
    crate::pg::audit_shmem::init();
    if crate::pg::audit_shmem::preloaded() {
        worker::register_launcher();
    }
}
