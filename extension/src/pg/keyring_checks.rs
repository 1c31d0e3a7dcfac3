//! Key check values in the database (`secretgate.key_checks`): the keyed hash
//! each key version had when it was first used here, so a server given
//! another key under a known version answers SG004 instead of SG001 on
//! every row.
//!
//! A version's check is recorded the first time it encrypts, or the first
//! time one of its rows decrypts (the key has then proved itself: this is how
//! a database from before 0.4.0 gets its checks, on first use), as the
//! extension's owner, so readers need no right on the table.
//!
//! Recording never makes a read fail or wait. A session records a check
//! itself only in a writable READ COMMITTED transaction and only while it
//! holds a transaction-level advisory lock on the version, taken without
//! waiting, so it never waits on another session's uncommitted row and never
//! meets the serialization failure a snapshot transaction would. Otherwise
//! it asks the database's audit writer to record it, through the audit
//! queue, and goes on; on a standby nothing is recorded, and the next use
//! on the primary records it.
//!
//! What the table says is kept per backend, keyed by the keyring's own check
//! value for the version: a new keyring with another key is looked up again,
//! the same key costs one map lookup per row.

use crate::pg::{audit_queue, spi};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use secretgate_core::{Error as CoreError, Keyring, CHECK_LEN};
use std::cell::RefCell;
use std::collections::HashMap;

/// What the table said about a version, for the keyring check value cached with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    Matches,
    Mismatch,
    /// No check recorded, as of the statement that started at this time.
    Unrecorded(pg_sys::TimestampTz),
    /// Recorded by this backend in the transaction that started at this
    /// time: it may still roll back.
    RecordedHere(pg_sys::TimestampTz),
}

thread_local! {
    static KNOWN: RefCell<HashMap<i32, ([u8; CHECK_LEN], Known)>> = RefCell::new(HashMap::new());
}

/// Whether a key check exists for `version`'s key before it is used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Check {
    /// Recorded and matching, or nothing to compare (no key for the version).
    Done,
    /// Nothing recorded yet: record once the key has been used successfully.
    Unrecorded,
}

fn statement_start() -> pg_sys::TimestampTz {
    // SAFETY: reads the current statement's start time; no side effect.
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() }
}

fn transaction_start() -> pg_sys::TimestampTz {
    // SAFETY: reads the current transaction's start time; no side effect.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

/// Checks `version`'s key against the database's recorded check value:
/// `KeyMismatch` (SG004) when they differ.
pub fn verify(keyring: &Keyring, version: i32) -> Result<Check, CoreError> {
    let Some(mine) = keyring.check_value(version) else {
        return Ok(Check::Done);
    };
    let cached = KNOWN.with_borrow(|k| k.get(&version).filter(|(v, _)| v == mine).map(|(_, known)| *known));
    match cached {
        Some(Known::Matches) => return Ok(Check::Done),
        Some(Known::Mismatch) => return Err(CoreError::KeyMismatch { version }),
        Some(Known::Unrecorded(at)) if at == statement_start() => return Ok(Check::Unrecorded),
        Some(Known::RecordedHere(at)) if at == transaction_start() => return Ok(Check::Done),
        _ => {}
    }
    let known = match recorded(version) {
        None => Known::Unrecorded(statement_start()),
        Some(theirs) if theirs.as_slice() == mine.as_slice() => Known::Matches,
        Some(_) => Known::Mismatch,
    };
    KNOWN.with_borrow_mut(|k| k.insert(version, (*mine, known)));
    match known {
        Known::Mismatch => Err(CoreError::KeyMismatch { version }),
        Known::Unrecorded(_) => Ok(Check::Unrecorded),
        _ => Ok(Check::Done),
    }
}

/// The advisory lock class (`'SGKC'`) under which a key version's check is
/// recorded, the version being the lock's second key.
pub const LOCK_CLASS: i32 = 0x5347_4b43;

/// The first byte of a key check request in the audit queue (audit records
/// are JSON objects, which start with `{`).
const REQUEST: u8 = b'K';

/// How long a session waits before asking the writer again for a version it
/// already asked about (its own reads meanwhile still see no check).
const ASK_AGAIN_US: i64 = 1_000_000;

thread_local! {
    /// When this session last asked the writer to record each version.
    static ASKED: RefCell<HashMap<i32, pg_sys::TimestampTz>> = RefCell::new(HashMap::new());
}

/// Records `version`'s check value after its key was used successfully,
/// without waiting and without failing (see the module's documentation). A
/// check recorded meanwhile by another session is compared instead (SG004
/// if it names another key).
pub fn record(keyring: &Keyring, version: i32) -> Result<(), CoreError> {
    let Some(mine) = keyring.check_value(version) else {
        return Ok(());
    };
    if !table_exists() {
        return Ok(());
    }
    // SAFETY: reads Postgres' transaction state; no side effect.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    if standby {
        return Ok(());
    }
    // SAFETY: as above.
    let snapshot_transaction = unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 };
    if !may_write() || snapshot_transaction {
        ask_writer(version, mine);
        return Ok(());
    }
    let inserted = spi::as_owner_mut(|client: &mut SpiClient<'_>| -> pgrx::spi::SpiResult<Option<bool>> {
        let locked = spi::update(
            client,
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
            Some(1),
            &[LOCK_CLASS.into(), version.into()],
        )?
        .first()
        .get_one::<bool>()?;
        if locked != Some(true) {
            return Ok(None);
        }
        let table = spi::update(
            client,
            "INSERT INTO secretgate.key_checks (version, check_value) VALUES ($1, $2) \
             ON CONFLICT (version) DO NOTHING RETURNING version",
            None,
            &[version.into(), mine.as_slice().into()],
        )?;
        Ok(Some(!table.is_empty()))
    })
    .unwrap_or_else(|e| pgrx::error!("secretgate: cannot record the key check of version {version}: {e}"));
    match inserted {
        // Another session is recording it: the writer records it if that one rolls back.
        None => {
            ask_writer(version, mine);
            Ok(())
        }
        Some(true) => {
            KNOWN.with_borrow_mut(|k| k.insert(version, (*mine, Known::RecordedHere(transaction_start()))));
            Ok(())
        }
        // Another session recorded it first: compare with what it recorded.
        Some(false) => {
            KNOWN.with_borrow_mut(|k| k.remove(&version));
            verify(keyring, version).map(|_| ())
        }
    }
}

/// Asks the database's audit writer to record `version`'s check, at most
/// once per [`ASK_AGAIN_US`] per session.
fn ask_writer(version: i32, check: &[u8; CHECK_LEN]) {
    let now = statement_start();
    let recent = ASKED.with_borrow(|a| a.get(&version).is_some_and(|at| now - at < ASK_AGAIN_US));
    if recent {
        return;
    }
    ASKED.with_borrow_mut(|a| a.insert(version, now));
    let mut request = Vec::with_capacity(5 + CHECK_LEN);
    request.push(REQUEST);
    request.extend_from_slice(&version.to_le_bytes());
    request.extend_from_slice(check);
    audit_queue::enqueue_request(request);
}

/// Whether a queued record is a key check request.
pub fn is_request(record: &[u8]) -> bool {
    record.first() == Some(&REQUEST)
}

/// The version and check value of a key check request.
pub fn parse_request(record: &[u8]) -> Option<(i32, &[u8])> {
    let rest = record.strip_prefix(&[REQUEST])?;
    let (version, check) = rest.split_at_checked(4)?;
    let version = i32::from_le_bytes(version.try_into().ok()?);
    (check.len() == CHECK_LEN).then_some((version, check))
}

/// Whether this transaction may write a row: not read-only, not on a
/// standby, not in a parallel operation.
fn may_write() -> bool {
    // SAFETY: reads Postgres' transaction state; no side effect.
    unsafe { !pg_sys::XactReadOnly && !pg_sys::RecoveryInProgress() && !pg_sys::IsInParallelMode() }
}

/// Whether `secretgate.key_checks` exists (a database still on pre-0.4.0 SQL
/// has none until `ALTER EXTENSION secretgate UPDATE`).
fn table_exists() -> bool {
    // SAFETY: catalog lookups by name; missing_ok, so no error is raised.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"secretgate".as_ptr(), true);
        schema != pg_sys::InvalidOid && pg_sys::get_relname_relid(c"key_checks".as_ptr(), schema) != pg_sys::InvalidOid
    }
}

/// The check value the database recorded for `version`, if any.
fn recorded(version: i32) -> Option<Vec<u8>> {
    if !table_exists() {
        return None;
    }
    spi::as_owner(|client| -> pgrx::spi::SpiResult<Option<Vec<u8>>> {
        let table = spi::select(
            client,
            "SELECT check_value FROM secretgate.key_checks WHERE version OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[version.into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get::<Vec<u8>>(1)
    })
    .unwrap_or_else(|e| pgrx::error!("secretgate: cannot read the key check of version {version}: {e}"))
}

/// Every recorded check: `(version, check_value, first_used as text)`.
pub fn all() -> Vec<(i32, Vec<u8>, Option<pgrx::datum::TimestampWithTimeZone>)> {
    if !table_exists() {
        return Vec::new();
    }
    spi::as_owner(|client| -> pgrx::spi::SpiResult<Vec<_>> {
        let table =
            spi::select(client, "SELECT version, check_value, first_used FROM secretgate.key_checks", None, &[])?;
        let mut out = Vec::new();
        for row in table {
            if let (Some(version), Some(check)) = (row.get::<i32>(1)?, row.get::<Vec<u8>>(2)?) {
                out.push((version, check, row.get(3)?));
            }
        }
        Ok(out)
    })
    .unwrap_or_else(|e| pgrx::error!("secretgate: cannot read secretgate.key_checks: {e}"))
}
