//! One read straight through a table's primary key, without SPI: the
//! workspace's kind, which every secret write by an agent looks up. Through
//! SPI (connect, plan-cache check, executor start and end) it cost more than
//! the rest of the gate. It reads with the snapshot SPI would have used, and
//! gives up (the caller goes through SPI) whenever the table is not the plain
//! shape it expects: a partitioned table, no primary key on `id` alone, a
//! non-standard operator family.
//!
//! Each backend also remembers where it last found each row (its TID). The
//! next read fetches that heap tuple first and uses it only if it is still
//! there, visible to the snapshot and carries the same id: otherwise (an
//! update moved the row, VACUUM cleared the slot, the table was rewritten or
//! truncated) the index answers and the new place is remembered. The btree
//! descent was most of what the gate still cost per row.

use super::compat;
use crate::pg::gucs::DIRECT_INDEX_READ;
use crate::pg::types;
use pgrx::itemptr::item_pointer_get_block_number_no_check;
use pgrx::pg_sys::{self, Oid};
use pgrx::FromDatum;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;

/// `uuid_ops`, the default btree operator family of `uuid` (pg_opfamily.dat);
/// an in-server test checks it against the catalog.
pub const UUID_BTREE_FAM_OID: Oid = Oid::from_u32(2968);

/// Rows remembered per table and backend (about 40 bytes each, so at most
/// about 320 kB); past this, start over.
const MAX_REMEMBERED: usize = 8_192;

thread_local! {
    /// By table, then by key: where the row was last found.
    static FOUND_AT: RefCell<HashMap<Oid, HashMap<[u8; 16], pg_sys::ItemPointerData>>> = RefCell::new(HashMap::new());
}

/// Forgets the places remembered in a table (from the relcache callback: its
/// primary key or columns may have changed; every use is checked anyway).
pub(crate) fn forget(relid: Oid) {
    FOUND_AT.with_borrow_mut(|found| {
        if relid == pg_sys::InvalidOid {
            found.clear();
        } else {
            found.remove(&relid);
        }
    });
}

/// The text column `column` (`text`, `varchar` or a domain over them) of the row whose primary key `id` is `key`:
/// `None` when this read is not possible (use SPI), `Some(None)` when there
/// is no such row, and a NULL column as `Some(Some(""))`.
pub fn text_by_uuid_key(table: Oid, id: &CStr, column: &CStr, key: &[u8; 16]) -> Option<Option<String>> {
    if !DIRECT_INDEX_READ.get() {
        return None;
    }
    // SAFETY: the table is opened and closed here, locked AccessShare as the
    // executor would; `read` gets a valid open relation.
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let found = read(rel, table, id, column, key);
        // Locks are kept to the end of the transaction, as the executor does.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// # Safety
/// `rel` must be an open relation with oid `table`.
unsafe fn read(rel: pg_sys::Relation, table: Oid, id: &CStr, column: &CStr, key: &[u8; 16]) -> Option<Option<String>> {
    // SAFETY: `rel` is an open relation (the caller's contract); index, slot, scan and snapshot are opened and closed in pairs here.
    unsafe {
        if (*(*rel).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION {
            return None;
        }
        let id_att = attribute(rel, id, |t| t == pg_sys::UUIDOID)?;
        // text, varchar or a domain over them are read as they are; an enum goes through SQL.
        let column_att = attribute(rel, column, |t| types::label(t) == Some(types::Label::Text))?;
        let pk = compat::primary_key_index(rel);
        if pk == pg_sys::InvalidOid {
            return None;
        }
        let snapshot = push_snapshot_as_spi();
        let remembered = if (*(*rel).rd_rel).relam == pg_sys::HEAP_TABLE_AM_OID {
            FOUND_AT.with_borrow(|found| found.get(&table).and_then(|rows| rows.get(key)).copied())
        } else {
            None
        };
        let value = match remembered.and_then(|tid| fetch_at(rel, tid, snapshot, id_att, column_att, key)) {
            Some(value) => Some(Some(value)),
            None => {
                let index = pg_sys::index_open(pk, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                let found = if plain_uuid_key(index, id_att) {
                    Some(scan(rel, index, snapshot, column_att, key))
                } else {
                    None
                };
                pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                found.map(|row| {
                    let (value, tid) = row.unzip();
                    remember(table, key, tid);
                    value
                })
            }
        };
        pg_sys::PopActiveSnapshot();
        value
    }
}

/// Remembers (or, with `None`, forgets) where the row with `key` is.
pub(crate) fn remember(table: Oid, key: &[u8; 16], tid: Option<pg_sys::ItemPointerData>) {
    FOUND_AT.with_borrow_mut(|found| {
        let rows = found.entry(table).or_default();
        match tid {
            Some(tid) => {
                if rows.len() >= MAX_REMEMBERED {
                    rows.clear();
                }
                rows.insert(*key, tid);
            }
            None => {
                rows.remove(key);
            }
        }
    });
}

/// The first of the relation's indexes that `fits`, open and locked
/// AccessShare (the caller closes it); the others are closed again.
/// # Safety
/// `rel` must be an open relation; `fits` gets open index relations.
pub(crate) unsafe fn find_index(
    rel: pg_sys::Relation,
    fits: impl Fn(pg_sys::Relation) -> bool,
) -> Option<pg_sys::Relation> {
    // SAFETY: `rel` is open; the relcache's index list is copied and freed; each index is opened here and returned open or closed.
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        let count = if list.is_null() { 0 } else { (*list).length.max(0) as usize };
        let oids: Vec<Oid> = (0..count).map(|i| (*(*list).elements.add(i)).oid_value).collect();
        pg_sys::list_free(list);
        oids.into_iter().find_map(|oid| {
            let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            if fits(index) {
                Some(index)
            } else {
                pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                None
            }
        })
    }
}

/// The attribute number of a live column whose type passes `type_ok`.
/// # Safety
/// `rel` must be an open relation.
pub(crate) unsafe fn attribute(rel: pg_sys::Relation, name: &CStr, type_ok: impl Fn(Oid) -> bool) -> Option<i16> {
    // SAFETY: `rel` is an open relation; its tuple descriptor holds `natts` attributes.
    unsafe {
        let att = compat::attributes((*rel).rd_att)
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)?;
        type_ok(att.atttypid).then_some(att.attnum)
    }
}

/// A valid btree index on exactly that one uuid column, with uuid's own `=`.
/// # Safety
/// `index` must be an open index relation.
unsafe fn plain_uuid_key(index: pg_sys::Relation, att: i16) -> bool {
    // SAFETY: `index` is an open index relation, whose rd_index and rd_opfamily are set.
    unsafe {
        let form = (*index).rd_index;
        (*form).indnatts == 1
            && (*form).indisvalid
            && (*form).indkey.values.as_slice(1)[0] == att
            && (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && *(*index).rd_opfamily == UUID_BTREE_FAM_OID
    }
}

/// The column of the visible row with that key, and where the row is.
/// # Safety
/// `rel` and `index` must be open, `index` a btree on the uuid key.
unsafe fn scan(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    column_att: i16,
    key: &[u8; 16],
) -> Option<(String, pg_sys::ItemPointerData)> {
    // SAFETY: `rel` and `index` are open; the scan key points at `key`, which outlives the scan; the slot's arrays hold `column_att` attributes once slot_getsomeattrs has run.
    unsafe {
        let mut scankey = MaybeUninit::<pg_sys::ScanKeyData>::uninit();
        pg_sys::ScanKeyInit(
            scankey.as_mut_ptr(),
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            Oid::from_u32(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(key.as_ptr()),
        );
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = compat::index_beginscan(rel, index, snapshot, 1, 0);
        pg_sys::index_rescan(scan, scankey.as_mut_ptr(), 1, std::ptr::null_mut(), 0);
        let found = if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getsomeattrs_int(slot, column_att.into());
            let at = (column_att - 1) as usize;
            let (datum, null) = (*(*slot).tts_values.add(at), *(*slot).tts_isnull.add(at));
            Some((String::from_datum(datum, null).unwrap_or_default(), (*slot).tts_tid))
        } else {
            None
        };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        found
    }
}

/// The column of the heap tuple at `tid`, if that tuple is in the table's
/// file, visible to the snapshot and is the row with that key.
/// # Safety
/// `rel` must be open and `id_att`, `column_att` its uuid and text attributes.
unsafe fn fetch_at(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
    id_att: i16,
    column_att: i16,
    key: &[u8; 16],
) -> Option<String> {
    // SAFETY: `rel` is open; the block is checked to be in the file before heap_fetch, which pins a buffer only when it returns true, and that pin is released; the id attribute is a uuid (16 bytes, checked by `attribute`).
    unsafe {
        // A block past the end (VACUUM truncated the table) would be an error to read.
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        if item_pointer_get_block_number_no_check(tid) >= blocks {
            return None;
        }
        visible_tuple_at(rel, tid, snapshot, |tuple, desc| {
            let mut null = false;
            let id = pg_sys::heap_getattr(tuple, id_att.into(), desc, &mut null);
            let same_row = !null && std::slice::from_raw_parts(id.cast_mut_ptr::<u8>(), 16) == key;
            same_row.then(|| {
                let datum = pg_sys::heap_getattr(tuple, column_att.into(), desc, &mut null);
                String::from_datum(datum, null).unwrap_or_default()
            })
        })
    }
}

/// What `read` makes of the heap tuple at `tid`, if it is visible to the
/// snapshot; its buffer is pinned only while `read` runs (which must copy
/// out what it keeps).
/// # Safety
/// `rel` must be open and `tid`'s block inside its file.
pub(crate) unsafe fn visible_tuple_at<T>(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
    read: impl FnOnce(&mut pg_sys::HeapTupleData, pg_sys::TupleDesc) -> Option<T>,
) -> Option<T> {
    // SAFETY: `rel` is open and the block in its file (the caller's contract); heap_fetch pins a buffer only when it returns true, and that pin is released after `read`.
    unsafe {
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_self = tid;
        let mut buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        // Not visible (or no tuple at that offset): false, and no buffer kept.
        if !pg_sys::heap_fetch(rel, snapshot, &mut tuple, &mut buffer, false) {
            return None;
        }
        let found = read(&mut tuple, (*rel).rd_att);
        pg_sys::ReleaseBuffer(buffer);
        found
    }
}

/// Pushes, and returns, the snapshot SPI gives a query run by pgrx's
/// `select`: the active one while the transaction has written nothing (a
/// read-only execution); after a write, one that sees every command so far
/// (the command counter advanced), fresh under READ COMMITTED.
/// # Safety
/// Inside a transaction; the caller must pop the snapshot.
pub(crate) unsafe fn push_snapshot_as_spi() -> pg_sys::Snapshot {
    // SAFETY: called inside a transaction; the caller pops the snapshot it pushes.
    unsafe {
        if pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId && pg_sys::ActiveSnapshotSet() {
            pg_sys::PushActiveSnapshot(pg_sys::GetActiveSnapshot());
        } else {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::CommandCounterIncrement();
            pg_sys::UpdateActiveSnapshotCommandId();
        }
        pg_sys::GetActiveSnapshot()
    }
}
