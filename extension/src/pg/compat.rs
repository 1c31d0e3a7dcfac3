//! The C interfaces that differ between the PostgreSQL majors secretgate
//! builds for (the cargo features `pg15`, `pg16`, `pg17`, `pg18`). Each difference
//! is one small function here, so no other module spells a `cfg` on a major.

use pgrx::pg_sys::{self, Oid};

/// The attributes of a tuple descriptor, in order. 18 keeps a compact copy
/// first and the full `pg_attribute` rows after it (reached through
/// `TupleDescAttr`); 15 to 17 keep the full rows in `attrs`.
/// # Safety
/// `desc` must be a valid tuple descriptor that outlives the returned slice's use.
pub unsafe fn attributes<'a>(desc: pg_sys::TupleDesc) -> impl Iterator<Item = &'a pg_sys::FormData_pg_attribute> {
    // SAFETY: `desc` is valid (the caller's contract) and holds `natts` attributes.
    unsafe {
        let natts = (*desc).natts.max(0);
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        let all = (*desc).attrs.as_slice(natts as usize).iter();
        #[cfg(feature = "pg18")]
        let all = (0..natts).map(move |i| &*pg_sys::TupleDescAttr(desc, i));
        all
    }
}

/// The relation's primary key index, `InvalidOid` if it has none (or, on
/// 17 and later, a deferrable one, which 15 and 16 never report either).
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn primary_key_index(rel: pg_sys::Relation) -> Oid {
    // SAFETY: `rel` is an open relation (the caller's contract).
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        let pk = pg_sys::RelationGetPrimaryKeyIndex(rel);
        #[cfg(feature = "pg18")]
        let pk = pg_sys::RelationGetPrimaryKeyIndex(rel, false);
        pk
    }
}

/// Begins an index scan with no instrumentation (18 takes a pointer for it,
/// 15 to 17 do not).
/// # Safety
/// `rel` and `index` must be open, `index` an index on `rel`; `snapshot` registered or active.
pub unsafe fn index_beginscan(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: the caller's contract; a null instrumentation pointer is what the executor passes when not instrumenting.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        let scan = pg_sys::index_beginscan(rel, index, snapshot, nkeys, norderbys);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(rel, index, snapshot, std::ptr::null_mut(), nkeys, norderbys);
        scan
    }
}

/// This backend's local transaction id: different for every transaction a
/// backend runs (17 moved it into `vxid`).
pub fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is set for every backend and worker that runs SQL; reading a field of it has no side effect.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let lxid = (*pg_sys::MyProc).lxid;
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let lxid = (*pg_sys::MyProc).vxid.lxid;
        lxid
    }
}
