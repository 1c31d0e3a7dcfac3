//! The audit queue's consumers: the registry of writers the launcher and the
//! writers (`audit::worker`) keep in shared memory, and the claiming and
//! freeing of records. One writer per database, four while records pile
//! up: a single writer competes for CPU with every refusing session and,
//! under a storm of refusals, gets too small a share to keep up.

use crate::pg::audit_shmem::{self, Locked, Writer, CLAIMED, FREE, MAX_WRITERS_PER_DATABASE, READY};
use pgrx::pg_sys;

/// A record whose write failed this many times is given up (counted skipped).
const MAX_ATTEMPTS: u32 = 3;

/// The launcher: registers its latch; returns how many times it started before.
pub fn launcher_started() -> u64 {
    let Some(mut q) = Locked::new() else { return 0 };
    let h = q.header();
    // SAFETY: this process's latch, in shared memory for a background worker.
    h.launcher_latch = unsafe { pg_sys::MyLatch };
    h.launcher_starts += 1;
    h.launcher_starts - 1
}

/// The writers to start: one for each database whose records wait with no
/// writer, and while the queue is backlogged as many as the database may
/// have. Each is marked as starting (the caller starts it); a start that
/// never registered within `retry_after_us` is tried again.
pub fn databases_needing_writers(retry_after_us: i64) -> Vec<pg_sys::Oid> {
    let Some(mut q) = Locked::new() else { return Vec::new() };
    let now = audit_shmem::now();
    for w in q.header().writers.iter_mut() {
        if w.db != pg_sys::InvalidOid && w.pid == 0 && now - w.launched_at > retry_after_us {
            *w = Writer { db: pg_sys::InvalidOid, pid: 0, latch: std::ptr::null_mut(), launched_at: 0 };
        }
    }
    let (head, tail) = (q.header().head, q.header().tail);
    let mut needed = Vec::new();
    for seq in head..tail {
        let slot = q.slot(seq);
        if slot.state == READY && !needed.contains(&slot.db) {
            needed.push(slot.db);
        }
    }
    let h = q.header();
    let backlogged = h.backlogged();
    let mut started = Vec::new();
    for db in needed {
        let have = h.writers.iter().filter(|w| w.db == db).count();
        // A storm fills the queue faster than a writer starts: every writer
        // the database may have is started at once.
        let want = if backlogged { MAX_WRITERS_PER_DATABASE } else { 1 };
        for _ in have..want {
            let Some(free) = h.writers.iter_mut().find(|w| w.db == pg_sys::InvalidOid) else { break };
            *free = Writer { db, pid: 0, latch: std::ptr::null_mut(), launched_at: now };
            started.push(db);
        }
    }
    started
}

/// A writer could not be started: forget the start, try again later.
pub fn start_failed(db: pg_sys::Oid, message: &str) {
    if let Some(mut q) = Locked::new() {
        for w in q.header().writers.iter_mut() {
            if w.db == db && w.pid == 0 {
                w.db = pg_sys::InvalidOid;
            }
        }
        q.set_error(message);
    }
}

/// A writer connected to `db` registers; `false` if the database has as
/// many writers as it may.
pub fn register_writer(db: pg_sys::Oid) -> bool {
    let Some(mut q) = Locked::new() else { return false };
    // SAFETY: this process's pid and latch.
    let (pid, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch) };
    let h = q.header();
    if h.writers.iter().filter(|w| w.db == db && w.pid != 0 && w.pid != pid).count() >= MAX_WRITERS_PER_DATABASE {
        return false;
    }
    let entry = match h.writers.iter().position(|w| w.db == db && (w.pid == pid || w.pid == 0)) {
        Some(i) => i,
        None => match h.writers.iter().position(|w| w.db == pg_sys::InvalidOid) {
            Some(i) => i,
            None => return false,
        },
    };
    h.writers[entry] = Writer { db, pid, latch, launched_at: audit_shmem::now() };
    true
}

/// An idle writer leaves, unless records of its database arrived meanwhile.
pub fn leave_if_idle(db: pg_sys::Oid) -> bool {
    let Some(mut q) = Locked::new() else { return true };
    let (head, tail) = (q.header().head, q.header().tail);
    for seq in head..tail {
        let slot = q.slot(seq);
        if slot.state == READY && slot.db == db {
            return false;
        }
    }
    forget_writer(&mut q, db);
    true
}

/// Frees this process's writer entry for `db`; one that never registered
/// (it could not connect) frees a starting entry of `db` instead.
fn forget_writer(q: &mut Locked, db: pg_sys::Oid) {
    // SAFETY: this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let writers = &mut q.header().writers;
    let entry = writers
        .iter()
        .position(|w| w.db == db && w.pid == pid)
        .or_else(|| writers.iter().position(|w| w.db == db && w.pid == 0));
    if let Some(i) = entry {
        writers[i] = Writer { db: pg_sys::InvalidOid, pid: 0, latch: std::ptr::null_mut(), launched_at: 0 };
    }
}

/// Claims up to `max` waiting records of `db` for this process. Only the
/// marking happens under the lock; the records are copied out after it is
/// released (no producer writes a claimed slot: they write only at `tail`).
pub fn claim(db: pg_sys::Oid, max: usize) -> Vec<(u64, Vec<u8>)> {
    let (h, seqs) = {
        let Some(mut q) = Locked::new() else { return Vec::new() };
        // SAFETY: this process's pid.
        let pid = unsafe { pg_sys::MyProcPid };
        let (head, tail) = (q.header().head, q.header().tail);
        let mut seqs = Vec::new();
        for seq in head..tail {
            if seqs.len() >= max {
                break;
            }
            let slot = q.slot(seq);
            if slot.state == READY && slot.db == db {
                slot.state = CLAIMED;
                slot.claimer = pid;
                seqs.push(seq);
            }
        }
        (q.queue(), seqs)
    };
    seqs.into_iter()
        .map(|seq| {
            // SAFETY: the queue's address, and the slot is CLAIMED by this
            // process, so nobody else writes it until `finish` frees it.
            let bytes = unsafe { audit_shmem::claimed_bytes(h, seq) };
            (seq, bytes)
        })
        .collect()
}

/// How a claimed batch ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The database has no audit table (no extension): not written.
    Skipped,
    /// The write failed: tried again, up to a few times, then skipped.
    Failed,
    /// Not an audit record (a key check request): done, counted nowhere.
    Applied,
}

/// Frees (or, after a failure, returns) the claimed records `seqs`.
pub fn finish(seqs: &[u64], outcome: Outcome) {
    let Some(mut q) = Locked::new() else { return };
    for &seq in seqs {
        let slot = q.slot(seq);
        if slot.state != CLAIMED {
            continue;
        }
        match outcome {
            Outcome::Written => {
                slot.state = FREE;
                q.header().written += 1;
            }
            Outcome::Skipped => {
                slot.state = FREE;
                q.header().skipped += 1;
            }
            Outcome::Applied => slot.state = FREE,
            Outcome::Failed => {
                slot.attempts += 1;
                if slot.attempts >= MAX_ATTEMPTS {
                    slot.state = FREE;
                    q.header().skipped += 1;
                } else {
                    slot.state = READY;
                    slot.claimer = 0;
                }
            }
        }
    }
    q.advance();
}

/// A writer exits: what it claimed goes back to the queue; its entry goes.
/// `connected` false (the database could not be connected to, as when it was
/// dropped): its waiting records are skipped, with the reason noted.
pub fn writer_exits(db: pg_sys::Oid, connected: bool) {
    let Some(mut q) = Locked::new() else { return };
    // SAFETY: this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let (head, tail) = (q.header().head, q.header().tail);
    let mut skipped = 0;
    for seq in head..tail {
        let slot = q.slot(seq);
        if slot.state == CLAIMED && slot.claimer == pid {
            slot.state = READY;
            slot.claimer = 0;
        }
        if !connected && slot.db == db && slot.state == READY {
            slot.state = FREE;
            skipped += 1;
        }
    }
    q.header().skipped += skipped;
    if !connected {
        q.set_error(&format!(
            "the audit writer could not connect to database {}: {skipped} records skipped",
            db.to_u32()
        ));
    }
    forget_writer(&mut q, db);
    q.advance();
}
