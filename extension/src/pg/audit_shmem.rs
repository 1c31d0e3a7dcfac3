//! The audit queue's shared memory: its layout, its lock, the hooks that
//! create it, and what `secretgate.audit_status()` reads from it. The
//! producers' side is in `audit_queue`, the writers' in `audit_writers`.
//!
//! One LWLock guards the whole queue; holding it is a few copies, never an
//! allocation or anything that can raise.
//!
//! The queue is a ring of `secretgate.audit_queue_size` slots between `head`
//! and `tail`. Producers write at `tail`; writers take the slots of their own
//! database anywhere in the ring (claimed, written, then freed), and `head`
//! moves past freed slots. Shared memory needs the library preloaded: this
//! module also remembers whether it was, for every entry point's check.

use crate::pg::gucs::AUDIT_QUEUE_SIZE;
use pgrx::pg_sys;
use secretgate_core::audit::RECORD_BYTES;
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

pub(super) const FREE: u32 = 0;
pub(super) const READY: u32 = 1;
pub(super) const CLAIMED: u32 = 2;

#[repr(C)]
pub(super) struct Slot {
    pub(super) state: u32,
    pub(super) attempts: u32,
    pub(super) db: pg_sys::Oid,
    pub(super) claimer: i32,
    pub(super) len: u32,
    pub(super) bytes: [u8; RECORD_BYTES],
}

/// One database's writer: `pid` 0 while it is starting.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Writer {
    pub(super) db: pg_sys::Oid,
    pub(super) pid: i32,
    pub(super) latch: *mut pg_sys::Latch,
    /// When the launcher asked for it (Postgres timestamp), to retry a lost start.
    pub(super) launched_at: i64,
}

#[repr(C)]
pub(super) struct Header {
    lock: *mut pg_sys::LWLock,
    pub(super) capacity: u64,
    pub(super) head: u64,
    pub(super) tail: u64,
    pub(super) written: u64,
    pub(super) dropped: u64,
    pub(super) skipped: u64,
    pub(super) launcher_latch: *mut pg_sys::Latch,
    pub(super) launcher_starts: u64,
    pub(super) writers: [Writer; MAX_WRITERS],
    error_len: u32,
    error: [u8; ERROR_BYTES],
}

impl Header {
    /// A quarter of the queue is taken: time for another writer.
    pub(super) fn backlogged(&self) -> bool {
        (self.tail - self.head) * 4 >= self.capacity
    }
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

/// Whether this process has the queue (its shared memory exists).
pub(super) fn mapped() -> bool {
    !QUEUE.load(Ordering::Acquire).is_null()
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
pub(super) struct Locked {
    h: *mut Header,
}

impl Locked {
    pub(super) fn new() -> Option<Locked> {
        let h = QUEUE.load(Ordering::Acquire);
        if h.is_null() {
            return None;
        }
        // SAFETY: `h` points at the initialised queue in shared memory; its
        // lock is a valid LWLock from our tranche.
        unsafe { pg_sys::LWLockAcquire((*h).lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Some(Locked { h })
    }

    pub(super) fn header(&mut self) -> &mut Header {
        // SAFETY: the lock is held exclusively, so no other process touches it.
        unsafe { &mut *self.h }
    }

    pub(super) fn slot(&mut self, seq: u64) -> &mut Slot {
        // SAFETY: the slots follow the header; `seq % capacity` is in range;
        // the lock is held exclusively.
        unsafe { &mut *slot_at(self.h, seq) }
    }

    /// The queue's address, to read claimed slots after the lock is released
    /// ([`claimed_bytes`]).
    pub(super) fn queue(&self) -> *mut Header {
        self.h
    }

    /// Moves `head` past freed slots.
    pub(super) fn advance(&mut self) {
        while self.header().head < self.header().tail {
            let head = self.header().head;
            if self.slot(head).state != FREE {
                break;
            }
            self.header().head += 1;
        }
    }

    pub(super) fn set_error(&mut self, message: &str) {
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

/// Slot `seq` of the queue at `h`.
///
/// # Safety
/// `h` is the initialised queue in shared memory.
unsafe fn slot_at(h: *mut Header, seq: u64) -> *mut Slot {
    // SAFETY: the slots follow the header, and `seq % capacity` is in range
    // (the caller's promise that `h` is the queue makes both true).
    unsafe {
        let capacity = (*h).capacity;
        h.cast::<u8>().add(header_size()).cast::<Slot>().add((seq % capacity) as usize)
    }
}

/// The record in slot `seq`, read without the lock.
///
/// # Safety
/// `h` is the queue ([`Locked::queue`]) and the slot is CLAIMED by this
/// process, so nobody else writes it until it is freed.
pub(super) unsafe fn claimed_bytes(h: *mut Header, seq: u64) -> Vec<u8> {
    // SAFETY: as the caller promises; the slot is only read.
    unsafe {
        let slot = &*slot_at(h, seq);
        slot.bytes[..slot.len as usize].to_vec()
    }
}

pub(super) fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
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
