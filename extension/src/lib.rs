//! secretgate: encrypted workspace secrets and fail-closed safety gates,
//! enforced inside PostgreSQL.
//!
//! Five layers, top to bottom; a module imports only from its own layer and
//! the layers below (`scripts/check-layers.sh` checks it, and that no
//! modules import each other in a circle):
//!
//! * [`sql`]: the functions and trigger entry points Postgres calls (the
//!   trigger functions declared once each, in one list). Each checks its
//!   arguments, makes one call down, and raises any failure.
//! * [`gates`]: the checks. Each gathers facts from `store`, asks the pure
//!   core's `policy` (in `secretgate-core`) for the decision, and turns a
//!   refusal into an error with its audit line.
//! * [`audit`]: the audit trail's launcher and per-database writers, which
//!   move records from the shared-memory queue into `secretgate.audit_events`
//!   as `secretgate_audit_writer`. It uses only `pg`; only `_PG_init` uses it.
//! * [`store`]: what secretgate reads and writes (the attached tables,
//!   workspace and secret rows, the registry, liveness verdicts) and the
//!   per-backend caches of it.
//! * [`pg`]: Postgres itself: every `secretgate.*` setting, errors, kept SPI
//!   plans, the elevated context every statement run with other rights than
//!   the caller's runs in (the extension's owner for the gates' reads, the
//!   tables' owner for maintenance), the direct primary-key read, keyring
//!   loading, arguments, the audit queue in shared memory (its memory, its
//!   producers, the writers' registry, the records held until commit).
//!
//! The rules themselves (who may write what, BYOK, routing, the refusal
//! JSON) live in `secretgate-core`, tested without a server.

use pgrx::prelude::*;

mod audit;
mod gates;
mod pg;
mod sql;
mod store;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx appends a Rust backtrace to the DETAIL of a Postgres error raised
    // inside SPI whenever the server's environment enables backtraces
    // (RUST_BACKTRACE). Clients get Postgres' own DETAIL, nothing more.
    // SAFETY: _PG_init runs once, before this process starts any thread.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    pg::gucs::register();
    pg::keyring::init();
    store::invalidation::register();
    audit::init();
    // SAFETY: reserves the setting prefix; called once at load.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"secretgate".as_ptr()) };
    // Until the library is loaded, a setting from postgresql.conf is a
    // placeholder that every role can SHOW. Preloading defines it at start.
    // SAFETY: reads a Postgres global flag.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::warning!("secretgate is not in shared_preload_libraries: until a session loads it, any role can SHOW secretgate.keyring_file");
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'secretgate'",
            "secretgate.keyring_file = '/tmp/secretgate-pgtest-keyring.json'",
        ]
    }
}
