//! Administrative events held in this backend until their transaction ends:
//! queued at commit, dropped at abort or with the savepoint that made them,
//! and written into the audit table inside a transaction being prepared.

use crate::pg::{audit_queue, audit_shmem, spi};
use pgrx::pg_sys;
use secretgate_core::audit::{self, RECORD_BYTES};

/// A record waiting for its transaction's commit.
struct Pending {
    /// One record per key and transaction (see [`enqueue_at_commit`]).
    once: Option<String>,
    /// The subtransaction that made it: a rolled-back savepoint takes it along.
    subxact: pg_sys::SubTransactionId,
    record: Vec<u8>,
}

thread_local! {
    static AT_COMMIT: std::cell::RefCell<Vec<Pending>> = const { std::cell::RefCell::new(Vec::new()) };
    static SUBXACT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Queues the audit line `line` when (and only if) the current transaction
/// commits: an administrative action that rolled back, whole or to a
/// savepoint, did not happen. With `once`, one line per key and transaction
/// is queued, the last one given (a statement-level trigger fires again for
/// statements nested in it, before the outer statement's).
pub fn enqueue_at_commit(line: &str, once: Option<&str>) {
    if !audit_shmem::mapped() {
        return;
    }
    let record = audit::record(line, &audit_queue::context(), RECORD_BYTES);
    if !SUBXACT_HOOKED.get() {
        // SAFETY: registers a plain function for the life of this backend (Postgres
        // keeps no per-transaction list of these); it only edits AT_COMMIT.
        unsafe { pg_sys::RegisterSubXactCallback(Some(forget_rolled_back), std::ptr::null_mut()) };
        SUBXACT_HOOKED.set(true);
    }
    // SAFETY: reads the current subtransaction's id (1 at the top level).
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    if once.is_some() {
        // The replaced record keeps its subtransaction: the event it stands for
        // happened there first, whatever a later savepoint does.
        let replaced = AT_COMMIT.with(|pending| {
            let mut pending = pending.borrow_mut();
            let same = pending.iter_mut().find(|p| p.once.as_deref() == once);
            same.map(|p| p.record = record.clone()).is_some()
        });
        if replaced {
            return;
        }
    }
    let first = AT_COMMIT.with(|pending| {
        let mut pending = pending.borrow_mut();
        pending.push(Pending { once: once.map(str::to_string), subxact, record });
        pending.len() == 1
    });
    if first {
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
            for pending in AT_COMMIT.with(|p| std::mem::take(&mut *p.borrow_mut())) {
                audit_queue::enqueue_record(pending.record);
            }
        });
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
            AT_COMMIT.with(|p| p.borrow_mut().clear());
        });
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PrePrepare, write_with_prepared_transaction);
    }
}

/// A transaction with administrative events is being prepared: its records
/// go into the audit table inside it, so COMMIT PREPARED (in any session,
/// after a restart too) keeps them and ROLLBACK PREPARED drops them. Raising
/// here fails the PREPARE: an event is never lost or recorded for nothing.
fn write_with_prepared_transaction() {
    let pending = AT_COMMIT.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let mut rows = audit::Columns::default();
    for record in pending {
        if !rows.push(&record.record) {
            pgrx::error!("secretgate: an administrative audit record is not a JSON object");
        }
    }
    if rows.is_empty() {
        return;
    }
    // PREPARE runs after the last statement's snapshot is gone: SPI needs one.
    // SAFETY: a snapshot of this transaction pushed for the insert and
    // popped right after (an error aborts the transaction, which pops it).
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    spi::as_owner_mut(|client| audit_queue::insert(client, rows))
        .unwrap_or_else(|e| pgrx::error!("secretgate: cannot record the prepared transaction's audit events: {e}"));
    // SAFETY: the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
}

/// A subtransaction rolled back: the records it made, or any subtransaction
/// inside it made (their ids are not smaller: ids grow, and every one started
/// while it was open is nested in it), are forgotten.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_rolled_back(
    event: pg_sys::SubXactEvent::Type,
    rolled_back: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        AT_COMMIT.with(|p| p.borrow_mut().retain(|pending| pending.subxact < rolled_back));
    }
}
