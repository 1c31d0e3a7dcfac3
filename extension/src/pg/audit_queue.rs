//! The audit queue: fixed-size records in shared memory, filled by the
//! refusing backend before it raises, emptied by the audit writers
//! (background workers started per database by a launcher; see
//! `audit::worker`). One writer per database, four while records pile up:
//! a single writer competes for CPU with every refusing session and, under a
//! storm of refusals, gets too small a share to keep up.
//!
//! One LWLock guards the whole queue; holding it is a few copies, never an
//! allocation or anything that can raise. A full queue drops the record and
//! counts it: a refusal never waits on, or fails because of, the audit.
//!
//! The queue is a ring of `secretgate.audit_queue_size` slots between `head`
//! and `tail`. Producers write at `tail`; writers take the slots of their own
//! database anywhere in the ring (claimed, written, then freed), and `head`
//! moves past freed slots. Shared memory needs the library preloaded: this
//! module also remembers whether it was, for every entry point's check.

use crate::pg::gucs::AUDIT_QUEUE_SIZE;
use pgrx::pg_sys;
use secretgate_core::audit::{self, Context, PG_EPOCH_UNIX_US, RECORD_BYTES};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::OnceLock;

/// Whether the library was loaded by shared_preload_libraries in this server.
static PRELOADED: AtomicBool = AtomicBool::new(false);
static QUEUE: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static PREV_REQUEST: OnceLock<pg_sys::shmem_request_hook_type> = OnceLock::new();
static PREV_STARTUP: OnceLock<pg_sys::shmem_startup_hook_type> = OnceLock::new();

const SHMEM_NAME: &CStr = c"secretgate audit queue";
const TRANCHE: &CStr = c"secretgate_audit";
/// Writers (running or starting), all databases together.
pub const MAX_WRITERS: usize = 32;
/// Writers of one database at once.
pub const MAX_WRITERS_PER_DATABASE: usize = 4;
const ERROR_BYTES: usize = 256;
/// A record whose write failed this many times is given up (counted skipped).
const MAX_ATTEMPTS: u32 = 3;

const FREE: u32 = 0;
const READY: u32 = 1;
const CLAIMED: u32 = 2;

#[repr(C)]
struct Slot {
    state: u32,
    attempts: u32,
    db: pg_sys::Oid,
    claimer: i32,
    len: u32,
    bytes: [u8; RECORD_BYTES],
}

/// One database's writer: `pid` 0 while it is starting.
#[repr(C)]
#[derive(Clone, Copy)]
struct Writer {
    db: pg_sys::Oid,
    pid: i32,
    latch: *mut pg_sys::Latch,
    /// When the launcher asked for it (Postgres timestamp), to retry a lost start.
    launched_at: i64,
}

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    capacity: u64,
    head: u64,
    tail: u64,
    written: u64,
    dropped: u64,
    skipped: u64,
    launcher_latch: *mut pg_sys::Latch,
    launcher_starts: u64,
    writers: [Writer; MAX_WRITERS],
    error_len: u32,
    error: [u8; ERROR_BYTES],
}

fn header_size() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(std::mem::align_of::<Slot>())
}

fn shmem_size(capacity: usize) -> usize {
    header_size() + capacity * std::mem::size_of::<Slot>()
}

/// Called once from `_PG_init`, after the settings are defined: notes
/// whether the library is being preloaded, and (when it is) asks for the
/// shared memory.
pub fn init() {
    // SAFETY: reads a Postgres global flag.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    PRELOADED.store(preloading, Ordering::Relaxed);
    if !preloading {
        return;
    }
    // SAFETY: _PG_init runs in the postmaster while libraries are preloaded,
    // before any hook is called; the previous hooks are kept and chained.
    unsafe {
        let _ = PREV_REQUEST.set(pg_sys::shmem_request_hook);
        pg_sys::shmem_request_hook = Some(request_shmem);
        let _ = PREV_STARTUP.set(pg_sys::shmem_startup_hook);
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

/// Whether secretgate was loaded through `shared_preload_libraries`.
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    if let Some(Some(prev)) = PREV_REQUEST.get() {
        // SAFETY: the hook that was installed before ours, called as Postgres would.
        unsafe { prev() };
    }
    let capacity = AUDIT_QUEUE_SIZE.get().max(16) as usize;
    // SAFETY: called from shmem_request_hook, where these requests are allowed.
    unsafe {
        pg_sys::RequestAddinShmemSpace(shmem_size(capacity));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    if let Some(Some(prev)) = PREV_STARTUP.get() {
        // SAFETY: the hook that was installed before ours, called as Postgres would.
        unsafe { prev() };
    }
    let capacity = AUDIT_QUEUE_SIZE.get().max(16) as usize;
    // SAFETY: shmem_startup_hook: AddinShmemInitLock (MainLWLockArray[21], as
    // pgrx's own PgLwLock uses it) serialises ShmemInitStruct; the struct is
    // zeroed and initialised only when it was not found (a fresh or
    // reinitialised shared memory), and every field is valid when zeroed.
    unsafe {
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = shmem_size(capacity);
        let base = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            std::ptr::write_bytes(base.cast::<u8>(), 0, size);
            (*base).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
            (*base).capacity = capacity as u64;
        }
        QUEUE.store(base, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// The queue, locked exclusively for the guard's life.
struct Locked {
    h: *mut Header,
}

impl Locked {
    fn new() -> Option<Locked> {
        let h = QUEUE.load(Ordering::Acquire);
        if h.is_null() {
            return None;
        }
        // SAFETY: `h` points at the initialised queue in shared memory; its
        // lock is a valid LWLock from our tranche.
        unsafe { pg_sys::LWLockAcquire((*h).lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Some(Locked { h })
    }

    fn header(&mut self) -> &mut Header {
        // SAFETY: the lock is held exclusively, so no other process touches it.
        unsafe { &mut *self.h }
    }

    fn slot(&mut self, seq: u64) -> &mut Slot {
        // SAFETY: the slots follow the header; `seq % capacity` is in range;
        // the lock is held exclusively.
        unsafe {
            let capacity = (*self.h).capacity;
            let base = self.h.cast::<u8>().add(header_size()).cast::<Slot>();
            &mut *base.add((seq % capacity) as usize)
        }
    }

    /// Moves `head` past freed slots.
    fn advance(&mut self) {
        while self.header().head < self.header().tail {
            let head = self.header().head;
            if self.slot(head).state != FREE {
                break;
            }
            self.header().head += 1;
        }
    }

    fn set_error(&mut self, message: &str) {
        let mut end = message.len().min(ERROR_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let h = self.header();
        h.error[..end].copy_from_slice(&message.as_bytes()[..end]);
        h.error_len = end as u32;
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: releases the lock `new` acquired.
        unsafe { pg_sys::LWLockRelease((*self.h).lock) };
    }
}

fn set_latch(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: a process latch in shared memory (a PGPROC's); setting the
        // latch of a process that has gone is a harmless spurious wake-up.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Where and when, for a record made now in this backend.
fn context() -> Context {
    // SAFETY: plain reads of this backend's globals; application_name is
    // NULL or a C string.
    unsafe {
        let xid = pg_sys::GetTopFullTransactionIdIfAny().value;
        let app = pg_sys::application_name;
        Context {
            at_unix_us: now() + PG_EPOCH_UNIX_US,
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

fn enqueue_record(bytes: Vec<u8>) {
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
    let backlogged = backlogged(h);
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

/// Whether `db` already holds its share of the queue: once seven eighths
/// of it are taken, no database may hold more than three quarters, so
/// one database's storm of refusals leaves room for the others' records.
fn over_share(q: &mut Locked, db: pg_sys::Oid) -> bool {
    let (head, tail, capacity) = (q.header().head, q.header().tail, q.header().capacity);
    if (tail - head) * 8 < capacity * 7 {
        return false;
    }
    let held = (head..tail).filter(|&seq| {
        let slot = q.slot(seq);
        slot.state != FREE && slot.db == db
    });
    held.count() as u64 * 4 >= capacity * 3
}

/// A quarter of the queue is taken: time for another writer.
fn backlogged(h: &Header) -> bool {
    (h.tail - h.head) * 4 >= h.capacity
}

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
    if QUEUE.load(Ordering::Acquire).is_null() {
        return;
    }
    let record = audit::record(line, &context(), RECORD_BYTES);
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
                enqueue_record(pending.record);
            }
        });
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
            AT_COMMIT.with(|p| p.borrow_mut().clear());
        });
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PrePrepare, write_with_prepared_transaction);
    }
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
    crate::pg::spi::as_owner_mut(|client| insert(client, rows))
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

/// What `secretgate.audit_status()` shows.
pub struct Status {
    pub queued: i64,
    pub written: i64,
    pub dropped: i64,
    pub skipped: i64,
    pub last_error: Option<String>,
    pub queue_size: i32,
}

pub fn status() -> Option<Status> {
    let mut q = Locked::new()?;
    let h = q.header();
    let queued = h.tail - h.head;
    let (written, dropped, skipped, capacity) = (h.written, h.dropped, h.skipped, h.capacity);
    let last_error = (h.error_len > 0).then(|| String::from_utf8_lossy(&h.error[..h.error_len as usize]).into_owned());
    // Freed slots behind an unfinished one still sit between head and tail.
    let mut waiting = 0;
    let head = q.header().head;
    for seq in head..head + queued {
        if q.slot(seq).state != FREE {
            waiting += 1;
        }
    }
    Some(Status {
        queued: waiting,
        written: written as i64,
        dropped: dropped as i64,
        skipped: skipped as i64,
        last_error,
        queue_size: capacity as i32,
    })
}

/// Notes an error (or event) for `audit_status().last_error`.
pub fn set_error(message: &str) {
    if let Some(mut q) = Locked::new() {
        q.set_error(message);
    }
}

// ---------------------------------------------------------------------------
// The consumers' side

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
    let now = now();
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
    let backlogged = backlogged(h);
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
    h.writers[entry] = Writer { db, pid, latch, launched_at: now() };
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
        (q.h, seqs)
    };
    seqs.into_iter()
        .map(|seq| {
            // SAFETY: the slot is CLAIMED by this process, so nobody else
            // writes it until `finish` frees it; `seq % capacity` is in range.
            let bytes = unsafe {
                let capacity = (*h).capacity;
                let slot = &*h.cast::<u8>().add(header_size()).cast::<Slot>().add((seq % capacity) as usize);
                slot.bytes[..slot.len as usize].to_vec()
            };
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
