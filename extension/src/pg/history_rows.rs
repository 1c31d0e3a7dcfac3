//! Writing one kept version into `secretgate.secret_history` without SQL:
//! the next version number read backwards through the table's unique index
//! on `(workspace_id, key, version)`, then the row inserted and its index
//! entries made as Postgres does for its own catalogs (`CatalogTupleInsert`:
//! heap insert, every index, uniqueness checked). Through SPI (a statement,
//! the executor, the switch to the extension's owner with its pinned
//! settings) the kept version cost more than the overwrite it follows.
//!
//! The table is the extension's own: no trigger, rule, policy or default of
//! anyone else's runs here, and none is wanted. The number is read under a
//! fresh snapshot (every committed version): two writers of the same secret
//! are serialised by the secret row's own lock, and a duplicate number would
//! still be refused by the unique index (23505), never stored twice.

use super::{compat, index_read};
use pgrx::pg_sys::{self, Oid};
use pgrx::{FromDatum, IntoDatum};
use std::ffi::CStr;
use std::mem::MaybeUninit;

/// One kept version's columns.
pub struct KeptRow<'a> {
    pub workspace_id: Option<&'a [u8; 16]>,
    pub key: &'a str,
    pub blob: Option<&'a [u8]>,
    pub encryption_version: Option<i32>,
    pub replaced_by: serde_json::Value,
    pub reason: &'a str,
}

/// Whether the extension's SQL has the table (not before 0.5.0's update).
pub fn present() -> bool {
    table().is_some()
}

/// The table's oid, `None` before the extension's SQL has it (0.4.0).
fn table() -> Option<Oid> {
    // SAFETY: a namespace-qualified name lookup; missing_ok.
    let oid = unsafe {
        let schema = pg_sys::get_namespace_oid(c"secretgate".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::get_relname_relid(c"secret_history".as_ptr(), schema)
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Keeps `row` as its secret's next version; the version's number, or
/// `None` when the table is not there or not the shape this code writes.
pub fn insert(row: &KeptRow<'_>) -> Option<i32> {
    let table = table()?;
    // SAFETY: the table is opened and locked RowExclusive, as an INSERT
    // would; the index used for the number is one of its own, opened and
    // closed here; the tuple is formed from datums of the columns' types.
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let result = write(rel, row);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// # Safety
/// `rel` must be `secretgate.secret_history`, open and locked RowExclusive.
unsafe fn write(rel: pg_sys::Relation, row: &KeptRow<'_>) -> Option<i32> {
    // SAFETY: the caller's contract; attribute numbers come from the relation's own descriptor.
    unsafe {
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let attnum = |name: &CStr| {
            compat::attributes(desc).find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
        };
        let col = |name: &CStr| attnum(name).map(|a| (a.attnum as usize - 1, a.atttypid));
        let (ws, key, version) = (col(c"workspace_id")?, col(c"key")?, col(c"version")?);
        let (blob, enc, at, by, reason) = (
            col(c"encrypted_value")?,
            col(c"encryption_version")?,
            col(c"replaced_at")?,
            col(c"replaced_by")?,
            col(c"reason")?,
        );
        let types_ok = ws.1 == pg_sys::UUIDOID
            && key.1 == pg_sys::TEXTOID
            && version.1 == pg_sys::INT4OID
            && blob.1 == pg_sys::BYTEAOID
            && enc.1 == pg_sys::INT4OID
            && at.1 == pg_sys::TIMESTAMPTZOID
            && by.1 == pg_sys::JSONBOID
            && reason.1 == pg_sys::TEXTOID;
        if !types_ok {
            return None;
        }
        let index = version_index(rel, ws.0 as i16 + 1, key.0 as i16 + 1, version.0 as i16 + 1)?;
        let number = last_version(rel, index, row) + 1;
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);

        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let mut set = |at: usize, datum: Option<pg_sys::Datum>| {
            if let Some(d) = datum {
                values[at] = d;
                nulls[at] = false;
            }
        };
        set(ws.0, row.workspace_id.and_then(|id| pgrx::Uuid::from_bytes(*id).into_datum()));
        set(key.0, row.key.into_datum());
        set(version.0, number.into_datum());
        set(blob.0, row.blob.and_then(|b| b.into_datum()));
        set(enc.0, row.encryption_version.and_then(|v| v.into_datum()));
        set(at.0, Some(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp())));
        set(by.0, pgrx::JsonB(row.replaced_by.clone()).into_datum());
        set(reason.0, row.reason.into_datum());
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::CatalogTupleInsert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        // The next version of this secret in this transaction sees this one.
        pg_sys::CommandCounterIncrement();
        Some(number)
    }
}

/// The table's valid unique btree index on exactly (workspace_id, key,
/// version), open and locked AccessShare.
/// # Safety
/// `rel` must be open.
unsafe fn version_index(rel: pg_sys::Relation, ws: i16, key: i16, version: i16) -> Option<pg_sys::Relation> {
    // SAFETY: `rel` is open; find_index hands the closure open index relations.
    unsafe {
        index_read::find_index(rel, |index| {
            let form = (*index).rd_index;
            (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
                && (*form).indisvalid
                && (*form).indisunique
                && (*form).indnkeyatts == 3
                && (*form).indkey.values.as_slice(3) == [ws, key, version]
        })
    }
}

/// The highest version kept for the row's secret (0 when none), under a
/// fresh snapshot: every committed version and this transaction's own.
/// # Safety
/// `rel` and `index` must be open, `index` the one [`version_index`] found.
unsafe fn last_version(rel: pg_sys::Relation, index: pg_sys::Relation, row: &KeptRow<'_>) -> i32 {
    // SAFETY: the scan keys point at `row`'s workspace id and a palloc'd copy of its key, both outliving the scan; the snapshot is registered for the scan and unregistered after it.
    unsafe {
        let key_text = pg_sys::cstring_to_text_with_len(row.key.as_ptr().cast(), row.key.len() as i32);
        let mut keys = [MaybeUninit::<pg_sys::ScanKeyData>::uninit(), MaybeUninit::uninit()];
        match row.workspace_id {
            Some(id) => pg_sys::ScanKeyEntryInitialize(
                keys[0].as_mut_ptr(),
                0,
                1,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                Oid::from_u32(pg_sys::F_UUID_EQ),
                pg_sys::Datum::from(id.as_ptr()),
            ),
            None => pg_sys::ScanKeyEntryInitialize(
                keys[0].as_mut_ptr(),
                (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
                1,
                0, // InvalidStrategy: an IS NULL key has none
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::Datum::from(0),
            ),
        }
        pg_sys::ScanKeyEntryInitialize(
            keys[1].as_mut_ptr(),
            0,
            2,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            *(*index).rd_indcollation.add(1),
            Oid::from_u32(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(key_text),
        );
        let keys = keys.as_mut_ptr().cast::<pg_sys::ScanKeyData>();
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = compat::index_beginscan(rel, index, snapshot, 2, 0);
        pg_sys::index_rescan(scan, keys, 2, std::ptr::null_mut(), 0);
        let version_at = (*(*index).rd_index).indkey.values.as_slice(3)[2];
        let last = if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::BackwardScanDirection, slot) {
            pg_sys::slot_getsomeattrs_int(slot, version_at.into());
            let at = (version_at - 1) as usize;
            i32::from_datum(*(*slot).tts_values.add(at), *(*slot).tts_isnull.add(at)).unwrap_or(0)
        } else {
            0
        };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::pfree(key_text.cast());
        last
    }
}
