//! secretgate: encrypted workspace secrets and fail-closed safety gates,
//! enforced inside PostgreSQL. The crypto lives in `secretgate-core`; this
//! crate adapts it to SQL.

use pgrx::prelude::*;

mod byok;
mod concierge;
pub(crate) mod gates;
mod index_read;
mod keyring;
mod maintenance;
mod plans;
mod report;
mod secrets;
mod tables;
mod triggers;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx appends a Rust backtrace to the DETAIL of a Postgres error raised
    // inside SPI whenever the server's environment enables backtraces
    // (RUST_BACKTRACE). Clients get Postgres' own DETAIL, nothing more.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    keyring::register_guc();
    gates::register_guc();
    tables::register_invalidation();
    unsafe { pg_sys::MarkGUCPrefixReserved(c"secretgate".as_ptr()) };
    // Until the library is loaded, a setting from postgresql.conf is a
    // placeholder that every role can SHOW. Preloading defines it at start.
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
