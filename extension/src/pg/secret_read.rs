//! One secret's row straight through the secrets table's unique index on
//! `(workspace_id, key)` (or the global table's on `key`), without SPI: the
//! read every service makes when a workspace starts. Through SPI (connect,
//! plan-cache lookup, executor start and end) it cost several times the
//! decryption.
//!
//! It reads exactly what `SELECT encrypted_value, encryption_version FROM t
//! WHERE workspace_id = $1 AND key = $2` would, as the calling role, with the
//! snapshot SPI would have used, and gives up (the caller goes through SPI,
//! which then answers or raises as Postgres does) whenever that could differ:
//! the caller lacks SELECT on the table, row-level security applies, the
//! table is not a plain heap table or has inheritance children, the columns are not the plain types, or no
//! valid, unique, non-partial btree index with the types' own operator
//! families and a deterministic collation covers exactly those columns.
//!
//! What was learned about a table's shape (its columns, and the index that
//! answers) is kept per table and backend, and forgotten when Postgres
//! invalidates the table's or the index's relcache entry: a column altered,
//! an index created, dropped or marked invalid, a GRANT (which the
//! privilege check reads live anyway). Where each row was last found (its
//! TID) is kept too: the next read fetches that heap tuple first and uses it
//! only if it is still there, visible to the snapshot and carries the same
//! workspace and key; otherwise (an update moved it, VACUUM cleared the
//! slot, the table was rewritten) the index answers. Under one snapshot a
//! unique index has at most one visible row per key, so the two agree.

use super::{compat, index_read};
use crate::pg::gucs::DIRECT_INDEX_READ;
use pgrx::itemptr::item_pointer_get_block_number_no_check;
use pgrx::pg_sys::{self, Oid};
use pgrx::FromDatum;
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;

/// `text_ops`, the default btree operator family of `text` and `varchar`
/// (pg_opfamily.dat); an in-server test checks it against the catalog.
pub const TEXT_BTREE_FAM_OID: Oid = Oid::from_u32(1994);

/// A secret row's stored columns: ciphertext and key version, either NULL.
pub type Stored = (Option<Vec<u8>>, Option<i32>);

/// Rows remembered per table and backend (16 bytes each in the map, so at
/// most about 1.5 MB); past this, start over.
const MAX_REMEMBERED: usize = 65_536;

/// A table's shape as last checked: the columns a lookup reads and the
/// index that answers it.
#[derive(Clone, Copy)]
struct Shape {
    columns: Columns,
    index: Oid,
}

/// A row's identity: workspace (zero for a global secret) and key.
type RowKey<'a> = (&'a [u8; 16], &'a str);

/// What a remembered place is filed under: a hash of the row's identity. Two
/// rows with the same hash only cost a miss: a place is used only after the
/// tuple there shows the same workspace and key.
fn place_hash((workspace_id, key): RowKey<'_>) -> u64 {
    // FNV-1a: small keys, no allocation, no need to resist collisions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in workspace_id.iter().chain(key.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What is known about one table.
struct Known {
    shape: Shape,
    /// Where rows were last found, by [`place_hash`].
    found_at: HashMap<u64, pg_sys::ItemPointerData>,
    /// The table's length in blocks, as of a (sub)transaction holding its
    /// lock: no VACUUM can shorten the file while the lock is held, so a
    /// block below it can be read without asking the file system again.
    blocks: Option<BlocksAsOf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct BlocksAsOf {
    transaction: u32,
    subtransaction: pg_sys::SubTransactionId,
    blocks: pg_sys::BlockNumber,
}

thread_local! {
    static KNOWN: RefCell<HashMap<Oid, Known>> = RefCell::new(HashMap::new());
}

/// Forgets what was learned about a table, or about the table an index
/// belongs to (from the relcache callback; `InvalidOid`: every table).
pub(crate) fn forget(relid: Oid) {
    KNOWN.with_borrow_mut(|known| {
        if relid == pg_sys::InvalidOid {
            known.clear();
        } else {
            known.retain(|table, k| *table != relid && k.shape.index != relid);
        }
    });
}

/// The (sub)transaction a block count is valid in: the lock it was read under
/// is released when that subtransaction aborts, and at the end of the transaction.
fn blocks_as_of(blocks: pg_sys::BlockNumber) -> BlocksAsOf {
    BlocksAsOf {
        transaction: compat::local_transaction_id(),
        // SAFETY: reads the current subtransaction's id; no side effect.
        subtransaction: unsafe { pg_sys::GetCurrentSubTransactionId() },
        blocks,
    }
}

/// The stored columns of the row with `key` (and, for a workspace secret,
/// `workspace_id`) in `table`: `None` when this read is not possible (use
/// SPI), `Some(None)` when there is no such row.
pub fn secret_row(table: Oid, workspace_id: Option<&[u8; 16]>, key: &str) -> Option<Option<Stored>> {
    if !DIRECT_INDEX_READ.get() {
        return None;
    }
    // SAFETY: only reads catalog state through Postgres' own functions; the
    // table is opened (and locked AccessShare, as the executor would) only
    // when the caller may select from it, and closed here.
    unsafe {
        if pg_sys::pg_class_aclcheck(table, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
            != pg_sys::AclResult::ACLCHECK_OK
        {
            return None;
        }
        let rel = pg_sys::try_table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return None;
        }
        // Without row security on the table there is nothing to apply;
        // with it, Postgres decides (and the direct read steps aside).
        // A table with inheritance children: SQL reads them too.
        let found = if (*(*rel).rd_rel).relhassubclass {
            None
        } else if !(*(*rel).rd_rel).relrowsecurity
            || pg_sys::check_enable_rls(table, pg_sys::InvalidOid, true)
                == pg_sys::CheckEnableRlsResult::RLS_NONE as i32
        {
            read(rel, table, workspace_id, key)
        } else {
            None
        };
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// The attribute numbers a lookup needs.
#[derive(Clone, Copy)]
struct Columns {
    workspace_id: Option<i16>,
    key: i16,
    encrypted_value: i16,
    encryption_version: i16,
}

/// # Safety
/// `rel` must be an open relation with oid `table`.
unsafe fn read(
    rel: pg_sys::Relation,
    table: Oid,
    workspace_id: Option<&[u8; 16]>,
    key: &str,
) -> Option<Option<Stored>> {
    // SAFETY: `rel` is open (the caller's contract); the index is opened and closed in pairs here, and the snapshot pushed here is popped.
    unsafe {
        let row_key: RowKey<'_> = (workspace_id.unwrap_or(&[0; 16]), key);
        let hash = place_hash(row_key);
        // Copied out: no borrow is held while Postgres runs (opening the
        // index may process invalidations, which call `forget`).
        let cached =
            KNOWN.with_borrow(|known| known.get(&table).map(|k| (k.shape, k.found_at.get(&hash).copied(), k.blocks)));
        let (shape, remembered, blocks) = match cached {
            Some(cached) => cached,
            None => {
                let shape = learn(rel, workspace_id.is_some())?;
                KNOWN.with_borrow_mut(|known| {
                    known.insert(table, Known { shape, found_at: HashMap::new(), blocks: None })
                });
                (shape, None, None)
            }
        };
        // A shape learned for the other scope's lookup does not fit this one.
        if shape.columns.workspace_id.is_some() != workspace_id.is_some() {
            return None;
        }
        let snapshot = index_read::push_snapshot_as_spi();
        let in_file = |tid: &pg_sys::ItemPointerData| {
            let block = item_pointer_get_block_number_no_check(*tid);
            let now = blocks_as_of(0);
            match blocks.filter(|b| b.transaction == now.transaction && b.subtransaction == now.subtransaction) {
                Some(b) if block < b.blocks => true,
                _ => {
                    let blocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
                    KNOWN.with_borrow_mut(|known| {
                        if let Some(k) = known.get_mut(&table) {
                            k.blocks = Some(blocks_as_of(blocks));
                        }
                    });
                    block < blocks
                }
            }
        };
        let found =
            match remembered.filter(in_file).and_then(|tid| fetch_at(rel, tid, snapshot, &shape.columns, row_key)) {
                Some(stored) => Some(stored),
                None => {
                    let index = pg_sys::index_open(shape.index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                    let found = scan(rel, index, snapshot, &shape.columns, workspace_id, key);
                    pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                    remember(table, hash, found.as_ref().map(|(_, tid)| *tid));
                    found.map(|(stored, _)| stored)
                }
            };
        pg_sys::PopActiveSnapshot();
        Some(found)
    }
}

/// Remembers (or, with `None`, forgets) where a row is.
fn remember(table: Oid, hash: u64, tid: Option<pg_sys::ItemPointerData>) {
    KNOWN.with_borrow_mut(|known| {
        let Some(rows) = known.get_mut(&table).map(|k| &mut k.found_at) else {
            return;
        };
        match tid {
            Some(tid) => {
                if rows.len() >= MAX_REMEMBERED {
                    rows.clear();
                }
                rows.insert(hash, tid);
            }
            None => {
                rows.remove(&hash);
            }
        }
    });
}

/// The table's shape, `None` when a direct lookup is not possible.
/// # Safety
/// `rel` must be an open relation with oid `table`.
unsafe fn learn(rel: pg_sys::Relation, workspace: bool) -> Option<Shape> {
    // SAFETY: `rel` is open (the caller's contract).
    unsafe {
        if (*(*rel).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION
            || (*(*rel).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID
        {
            return None;
        }
        let columns = Columns {
            workspace_id: if workspace { Some(column(rel, c"workspace_id", |t| t == pg_sys::UUIDOID)?) } else { None },
            key: column(rel, c"key", |t| t == pg_sys::TEXTOID || t == pg_sys::VARCHAROID)?,
            encrypted_value: column(rel, c"encrypted_value", |t| t == pg_sys::BYTEAOID)?,
            encryption_version: column(rel, c"encryption_version", |t| t == pg_sys::INT4OID)?,
        };
        if !deterministic(column_collation(rel, columns.key)) {
            return None;
        }
        let index = lookup_index(rel, &columns)?;
        Some(Shape { columns, index })
    }
}

/// The index that answers the lookup.
/// # Safety
/// `rel` must be an open relation with oid `table`.
unsafe fn lookup_index(rel: pg_sys::Relation, columns: &Columns) -> Option<Oid> {
    // SAFETY: `rel` is open; each index is opened here and either returned open or closed.
    unsafe {
        let wanted: Vec<(i16, Oid)> = match columns.workspace_id {
            Some(id) => vec![(id, index_read::UUID_BTREE_FAM_OID), (columns.key, TEXT_BTREE_FAM_OID)],
            None => vec![(columns.key, TEXT_BTREE_FAM_OID)],
        };
        let index = index_read::find_index(rel, |index| fits(index, &wanted))?;
        let oid = (*index).rd_id;
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        Some(oid)
    }
}

/// A valid, unique, non-partial btree index whose key columns are exactly
/// `wanted` (attribute, operator family), in that order, with deterministic
/// collations: an equality lookup on it finds what SQL's `=` would.
/// # Safety
/// `index` must be an open index relation.
unsafe fn fits(index: pg_sys::Relation, wanted: &[(i16, Oid)]) -> bool {
    // SAFETY: `index` is open: rd_index, rd_indextuple, rd_opfamily and rd_indcollation are set for its key columns.
    unsafe {
        let form = (*index).rd_index;
        if (*(*index).rd_rel).relam != pg_sys::BTREE_AM_OID
            || !(*form).indisvalid
            || !(*form).indisunique
            || (*form).indnkeyatts as usize != wanted.len()
            || !pg_sys::heap_attisnull(
                (*index).rd_indextuple,
                pg_sys::Anum_pg_index_indpred as i32,
                std::ptr::null_mut(),
            )
        {
            return false;
        }
        let keys = (*form).indkey.values.as_slice(wanted.len());
        wanted.iter().enumerate().all(|(i, (att, family))| {
            keys[i] == *att
                && *(*index).rd_opfamily.add(i) == *family
                && ((*family) != TEXT_BTREE_FAM_OID || deterministic(*(*index).rd_indcollation.add(i)))
        })
    }
}

fn deterministic(collation: Oid) -> bool {
    // SAFETY: a syscache lookup of a collation; an unknown one is an error Postgres raises, which cannot happen for a column's or index's own.
    collation != pg_sys::InvalidOid && unsafe { pg_sys::get_collation_isdeterministic(collation) }
}

/// # Safety
/// `rel` must be open and `att` one of its attributes.
unsafe fn column_collation(rel: pg_sys::Relation, att: i16) -> Oid {
    // SAFETY: `rel` is open and `att` a valid attribute number of it.
    unsafe { compat::attributes((*rel).rd_att).nth(att as usize - 1).map_or(pg_sys::InvalidOid, |a| a.attcollation) }
}

/// The attribute number of a live column whose type passes `type_ok`.
/// # Safety
/// `rel` must be an open relation.
unsafe fn column(rel: pg_sys::Relation, name: &std::ffi::CStr, type_ok: impl Fn(Oid) -> bool) -> Option<i16> {
    // SAFETY: `rel` is an open relation (the caller's contract).
    unsafe { index_read::attribute(rel, name, type_ok) }
}

/// The stored columns of the visible row matching the keys, if any.
/// # Safety
/// `rel` and `index` must be open, `index` one that [`fits`].
unsafe fn scan(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    columns: &Columns,
    workspace_id: Option<&[u8; 16]>,
    key: &str,
) -> Option<(Stored, pg_sys::ItemPointerData)> {
    // SAFETY: the scan keys point at `workspace_id` and a palloc'd copy of `key`, both outliving the scan; the slot's arrays hold every attribute once slot_getsomeattrs has run up to the last one read.
    unsafe {
        let key_text = pg_sys::cstring_to_text_with_len(key.as_ptr().cast(), key.len() as i32);
        let mut keys = [MaybeUninit::<pg_sys::ScanKeyData>::uninit(), MaybeUninit::uninit()];
        let mut n = 0;
        if let Some(id) = workspace_id {
            pg_sys::ScanKeyEntryInitialize(
                keys[n].as_mut_ptr(),
                0,
                1,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                Oid::from_u32(pg_sys::F_UUID_EQ),
                pg_sys::Datum::from(id.as_ptr()),
            );
            n += 1;
        }
        pg_sys::ScanKeyEntryInitialize(
            keys[n].as_mut_ptr(),
            0,
            (n + 1) as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            *(*index).rd_indcollation.add(n),
            Oid::from_u32(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(key_text),
        );
        n += 1;
        let keys = keys.as_mut_ptr().cast::<pg_sys::ScanKeyData>();
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = compat::index_beginscan(rel, index, snapshot, n as i32, 0);
        pg_sys::index_rescan(scan, keys, n as i32, std::ptr::null_mut(), 0);
        let found = if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let last = columns.encrypted_value.max(columns.encryption_version);
            pg_sys::slot_getsomeattrs_int(slot, last.into());
            let value = |att: i16| {
                let at = (att - 1) as usize;
                (*(*slot).tts_values.add(at), *(*slot).tts_isnull.add(at))
            };
            let (blob, blob_null) = value(columns.encrypted_value);
            let (version, version_null) = value(columns.encryption_version);
            Some(((Vec::<u8>::from_datum(blob, blob_null), i32::from_datum(version, version_null)), (*slot).tts_tid))
        } else {
            None
        };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::pfree(key_text.cast());
        found
    }
}

/// The stored columns of the heap tuple at `tid`, if that tuple is in the
/// table's file, visible to the snapshot and is the row with that key.
/// # Safety
/// `rel` must be open, `tid`'s block in its file, and `columns` its
/// attributes as [`learn`] found them.
unsafe fn fetch_at(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
    columns: &Columns,
    (workspace_id, key): RowKey<'_>,
) -> Option<Stored> {
    // SAFETY: `rel` is open and the caller checked the block is in the file (a block past the end, after VACUUM truncated the table, would be an error to read); the values are copied out while the buffer is pinned; the id attribute is a uuid (16 bytes) and the key a text or varchar (checked by `learn`).
    unsafe {
        index_read::visible_tuple_at(rel, tid, snapshot, |tuple, desc| {
            let mut null = false;
            let same_workspace = match columns.workspace_id {
                Some(att) => {
                    let id = pg_sys::heap_getattr(tuple, att.into(), desc, &mut null);
                    !null && std::slice::from_raw_parts(id.cast_mut_ptr::<u8>(), 16) == workspace_id
                }
                None => true,
            };
            let same_key = same_workspace && {
                let datum = pg_sys::heap_getattr(tuple, columns.key.into(), desc, &mut null);
                !null && <&str>::from_datum(datum, false).is_some_and(|k| k == key)
            };
            same_key.then(|| {
                let blob = pg_sys::heap_getattr(tuple, columns.encrypted_value.into(), desc, &mut null);
                let blob = Vec::<u8>::from_datum(blob, null);
                let version = pg_sys::heap_getattr(tuple, columns.encryption_version.into(), desc, &mut null);
                (blob, i32::from_datum(version, null))
            })
        })
    }
}
