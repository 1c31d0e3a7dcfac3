//! The one place the per-backend caches hear about catalog changes.
//! Postgres has ten relcache-callback slots for every extension loaded into
//! a server, so one callback serves every cache.

use crate::pg::{index_read, secret_read, spi};
use crate::store::{attached, registry};
use pgrx::pg_sys;

/// A relation's cache entry was invalidated (`InvalidOid`: all of them).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    registry::forget_forbidden_keys(relid);
    index_read::forget(relid);
    secret_read::forget(relid);
    attached::forget(relid);
}

/// A schema changed: qualified table names and the extension's owner may have.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn schema_changed(_arg: pg_sys::Datum, _cacheid: std::ffi::c_int, _hash: u32) {
    attached::forget_all();
    spi::forget_owner();
}

/// Registers the invalidation callbacks; once per process (from `_PG_init`).
pub fn register() {
    // SAFETY: called once from _PG_init; the callbacks are `pg_guard`ed
    // (a panic becomes a Postgres ERROR instead of unwinding into C) and
    // only clear per-backend caches.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as std::ffi::c_int,
            Some(schema_changed),
            pg_sys::Datum::from(0),
        );
    }
}
