//! The audit queue's producers: a refusing backend puts its record in
//! before it raises (and a session its key check requests), then wakes its
//! database's writer, or the launcher to start one. A full queue drops the
//! record and counts it: a refusal never waits on, or fails because of, the
//! audit. Also the statement the writers insert a batch with.
//!
//! The queue itself (its shared memory and lock) is `audit_shmem`; its
//! consumers are `audit_writers` and `audit::worker`.

use crate::pg::audit_shmem::{self, Locked, FREE, MAX_WRITERS_PER_DATABASE, READY};
use pgrx::pg_sys;
use secretgate_core::audit::{self, Context, PG_EPOCH_UNIX_US, RECORD_BYTES};
use std::ffi::CStr;

fn set_latch(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: a process latch in shared memory (a PGPROC's); setting the
        // latch of a process that has gone is a harmless spurious wake-up.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Where and when, for a record made now in this backend.
pub(super) fn context() -> Context {
    // SAFETY: plain reads of this backend's globals; application_name is
    // NULL or a C string.
    unsafe {
        let xid = pg_sys::GetTopFullTransactionIdIfAny().value;
        let app = pg_sys::application_name;
        Context {
            at_unix_us: audit_shmem::now() + PG_EPOCH_UNIX_US,
            backend_pid: pg_sys::MyProcPid,
            transaction_id: (xid != 0).then_some(xid),
            application_name: if app.is_null() {
                String::new()
            } else {
                CStr::from_ptr(app).to_string_lossy().into_owned()
            },
        }
    }
}

/// Puts the audit line `line` into the queue for this database. Never waits
/// for a writer and never raises: a full queue drops the record and counts it.
pub fn enqueue(line: &str) {
    enqueue_record(audit::record(line, &context(), RECORD_BYTES));
}

/// Puts a request that is not an audit record (see `keyring_checks`) into
/// the queue for this database's writer; dropped, uncounted, when full.
pub fn enqueue_request(bytes: Vec<u8>) {
    enqueue_with(bytes, false);
}

/// Puts a finished audit record into the queue (counted when dropped).
pub(super) fn enqueue_record(bytes: Vec<u8>) {
    enqueue_with(bytes, true);
}

fn enqueue_with(bytes: Vec<u8>, counted: bool) {
    // SAFETY: reads this backend's database oid.
    let db = unsafe { pg_sys::MyDatabaseId };
    let Some(mut q) = Locked::new() else { return };
    if q.header().tail - q.header().head >= q.header().capacity || over_share(&mut q, db) {
        if counted {
            q.header().dropped += 1;
        }
        return;
    }
    let tail = q.header().tail;
    let slot = q.slot(tail);
    let len = bytes.len().min(RECORD_BYTES);
    slot.bytes[..len].copy_from_slice(&bytes[..len]);
    slot.len = len as u32;
    slot.db = db;
    slot.attempts = 0;
    slot.claimer = 0;
    slot.state = READY;
    q.header().tail += 1;
    let h = q.header();
    let backlogged = h.backlogged();
    // One running writer is woken, every one while records pile up.
    let mut wake = [std::ptr::null_mut(); MAX_WRITERS_PER_DATABASE + 1];
    let (mut running, mut all) = (0, 0);
    for w in h.writers.iter().filter(|w| w.db == db) {
        all += 1;
        if w.pid != 0 && running < MAX_WRITERS_PER_DATABASE {
            if running == 0 || backlogged {
                wake[running] = w.latch;
            }
            running += 1;
        }
    }
    // No writer yet, or too few for the records piling up: the launcher starts one.
    if running == 0 || (backlogged && all < MAX_WRITERS_PER_DATABASE) {
        wake[MAX_WRITERS_PER_DATABASE] = h.launcher_latch;
    }
    drop(q);
    wake.into_iter().for_each(set_latch);
}

/// Whether `db` must leave the rest of the queue to other databases: the
/// last sixteenth of the ring is kept for databases holding fewer records
/// than that sixteenth, so one database's storm of refusals leaves room for
/// the others'. Measured on the ring's span, not on its occupied slots: the
/// storm's writers free slots out of order, and a ring whose span is full
/// takes nothing, whatever its holes.
fn over_share(q: &mut Locked, db: pg_sys::Oid) -> bool {
    let (head, tail, capacity) = (q.header().head, q.header().tail, q.header().capacity);
    let reserve = capacity / 16;
    if tail - head < capacity - reserve {
        return false;
    }
    let held = (head..tail).filter(|&seq| {
        let slot = q.slot(seq);
        slot.state != FREE && slot.db == db
    });
    // Counting stops at the share: in a storm the ring is mostly this
    // database's, and every record it drops would otherwise scan all of it.
    held.take(reserve as usize).count() as u64 >= reserve
}

/// One multi-row insert of a batch, a parameter per column
/// ([`audit::Columns`]).
const INSERT: &str = "INSERT INTO secretgate.audit_events \
     (at, event, code, sqlstate, reason, workspace_id, key, provider, caller, backend_pid, transaction_id, application_name) \
     SELECT pg_catalog.to_timestamp(r.at_unix_us::pg_catalog.float8 OPERATOR(pg_catalog./) 1000000), \
            r.event, r.code, r.sqlstate, r.reason, r.workspace_id::pg_catalog.uuid, r.key, r.provider, \
            r.caller::pg_catalog.jsonb, r.backend_pid, r.transaction_id::pg_catalog.xid8, r.application_name \
       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]), \
                       pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                       pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), \
                       pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.text[]), \
                       pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.int4[]), \
                       pg_catalog.unnest($11::pg_catalog.text[]), pg_catalog.unnest($12::pg_catalog.text[])) \
         AS r(at_unix_us, event, code, sqlstate, reason, workspace_id, key, provider, caller, backend_pid, transaction_id, application_name)";

/// Inserts `rows` into `secretgate.audit_events` (the writers, and a
/// prepared transaction's administrative events).
pub fn insert(client: &mut pgrx::spi::SpiClient<'_>, rows: audit::Columns) -> pgrx::spi::SpiResult<()> {
    let audit::Columns {
        at_unix_us,
        event,
        code,
        sqlstate,
        reason,
        workspace_id,
        key,
        provider,
        caller,
        backend_pid,
        transaction_id,
        application_name,
    } = rows;
    client.update(
        INSERT,
        None,
        &[
            at_unix_us.into(),
            event.into(),
            code.into(),
            sqlstate.into(),
            reason.into(),
            workspace_id.into(),
            key.into(),
            provider.into(),
            caller.into(),
            backend_pid.into(),
            transaction_id.into(),
            application_name.into(),
        ],
    )?;
    Ok(())
}
