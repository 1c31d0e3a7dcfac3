//! `secretgate.keyring_command`: a command that prints the keyring JSON (a
//! KMS client, `age -d`, a Vault CLI), run once at server start and once per
//! reload, never per connection or statement.
//!
//! One background worker, started by the postmaster, runs it: at its start
//! and at each SIGHUP the postmaster relays (so once per reload, whatever
//! the number of backends). The output, once it parses as a keyring, is
//! published in shared memory with a generation number; each backend reads
//! the generation once per statement and parses the keyring again only when
//! it changed. Nothing is written to disk; the command's standard error is
//! discarded (it may hold anything); a failure, a time-out or an invalid
//! output is published instead, and every key operation fails with SG003
//! naming it (never the output) until a reload runs the command again.
//!
//! Requires `shared_preload_libraries`: the shared memory and the worker
//! exist only when the library is preloaded.

use crate::pg::gucs::{KEYRING_COMMAND, KEYRING_COMMAND_TIMEOUT};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use secretgate_core::{Error as CoreError, Keyring};
use std::cell::RefCell;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The largest keyring a command may print.
const SLOT_BYTES: usize = 64 * 1024;

const EMPTY: u8 = 0;
const KEYRING: u8 = 1;
const FAILED: u8 = 2;

/// The last run's outcome: the keyring JSON, or why there is none.
#[derive(Copy, Clone)]
pub struct Slot {
    state: u8,
    len: u32,
    data: [u8; SLOT_BYTES],
}

// SAFETY: plain bytes, no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for Slot {}

const EMPTY_SLOT: Slot = Slot { state: EMPTY, len: 0, data: [0; SLOT_BYTES] };

// SAFETY: the names are this extension's own.
static SLOT: PgLwLock<Slot> = unsafe { PgLwLock::new(c"secretgate keyring command output") };
// SAFETY: as above.
static GENERATION: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"secretgate keyring command generation") };

/// Set in the postmaster when the library is preloaded (the shared memory
/// and the worker exist); forked processes inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// When preloading, requests the shared memory and registers the worker.
#[allow(unexpected_cfgs)] // pg_shmem_init! tests features of other Postgres versions
pub fn init() {
    // SAFETY: reads a Postgres global flag.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(SLOT = EMPTY_SLOT);
    pg_shmem_init!(GENERATION);
    BackgroundWorkerBuilder::new("secretgate keyring command")
        .set_type("secretgate keyring command")
        .set_library("secretgate")
        .set_function("secretgate_keyring_command_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::PostmasterStart)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
    PRELOADED.store(true, Ordering::SeqCst);
}

/// Whether the command is set, without copying it (checked on every key use).
pub fn command_is_set() -> bool {
    // SAFETY: reads the GUC's string pointer, which is null or a C string
    // Postgres keeps until the setting changes; only its first byte is read.
    unsafe {
        let value = *KEYRING_COMMAND.as_ptr();
        !value.is_null() && *value != 0
    }
}

/// The command, when set (an empty setting is unset).
pub fn command() -> Option<String> {
    KEYRING_COMMAND.get().filter(|c| !c.as_bytes().is_empty()).map(|c| c.to_string_lossy().into_owned())
}

// ---------------------------------------------------------------------------
// In the worker

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn secretgate_keyring_command_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    run_and_publish();
    while BackgroundWorker::wait_latch(None) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reads the configuration files, as every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            run_and_publish();
        }
    }
}

fn run_and_publish() {
    let Some(command) = command() else {
        publish(EMPTY, b"");
        return;
    };
    let timeout = Duration::from_secs(KEYRING_COMMAND_TIMEOUT.get().max(1) as u64);
    match run(&command, timeout).and_then(validate) {
        Ok(json) => {
            publish(KEYRING, &json);
            log!("secretgate: secretgate.keyring_command ran and printed a valid keyring");
        }
        Err(reason) => {
            log!("secretgate: {reason}");
            publish(FAILED, reason.as_bytes());
        }
    }
}

/// The output if it is a keyring this server can use; else why not (never the output).
fn validate(out: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, String> {
    if out.len() > SLOT_BYTES {
        return Err(format!("secretgate.keyring_command printed more than {SLOT_BYTES} bytes, too much for a keyring"));
    }
    match Keyring::parse(&out) {
        Ok(_) => Ok(out),
        Err(e) => Err(format!("secretgate.keyring_command printed an invalid keyring: {e}")),
    }
}

/// Runs `sh -c command` with no input and standard error discarded; its
/// standard output, or why it failed. Killed (with anything it started)
/// after `timeout`.
fn run(command: &str, timeout: Duration) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("secretgate.keyring_command cannot be started ({})", e.kind()))?;
    let mut stdout = child.stdout.take().ok_or("secretgate.keyring_command has no standard output")?;
    // The pipe is read on its own thread so a command that prints more than
    // a pipe holds is not stuck while it is being waited for. The thread
    // touches nothing of Postgres.
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Allocated once, at its largest: a growing Vec would leave the
        // bytes of every outgrown buffer behind, unwiped, in freed memory.
        let mut out = Zeroizing::new(Vec::with_capacity(SLOT_BYTES + 1));
        let mut chunk = Zeroizing::new([0u8; 8192]);
        loop {
            match stdout.read(&mut chunk[..]) {
                Ok(0) | Err(_) => break,
                // Past the limit only the fact matters: one byte too many is kept.
                Ok(n) => {
                    let room = (SLOT_BYTES + 1).saturating_sub(out.len());
                    out.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        let _ = sender.send(out);
    });
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        format!(
            "secretgate.keyring_command did not finish within {} s (secretgate.keyring_command_timeout) and was killed",
            timeout.as_secs()
        )
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&child);
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(&child);
                let _ = child.wait();
                return Err(format!("secretgate.keyring_command cannot be waited for ({})", e.kind()));
            }
        }
    };
    // The output ends when everything the command started has closed it.
    let out = match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(out) => out,
        Err(_) => {
            // Something it started still holds the pipe, so its group is alive.
            kill_group(&child);
            return Err(timed_out());
        }
    };
    if let Some(code) = status.code() {
        if code != 0 {
            return Err(format!("secretgate.keyring_command exited with status {code}"));
        }
    } else if let Some(signal) = status.signal() {
        return Err(format!("secretgate.keyring_command was killed by signal {signal}"));
    }
    Ok(out)
}

/// Only while the child is unreaped or a member of its group still runs, so
/// the group id cannot have been reused.
fn kill_group(child: &std::process::Child) {
    // SAFETY: signals the process group the child leads (process_group(0));
    // a group that is gone makes kill fail harmlessly.
    unsafe { libc_kill(-(child.id() as i32), 9) };
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Replaces the published outcome (the old bytes are overwritten) and moves
/// the generation on, so every backend picks it up at its next statement.
fn publish(state: u8, bytes: &[u8]) {
    let mut slot = SLOT.exclusive();
    slot.data.fill(0);
    let len = bytes.len().min(SLOT_BYTES);
    slot.data[..len].copy_from_slice(&bytes[..len]);
    slot.len = len as u32;
    slot.state = state;
    GENERATION.get().fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// In a backend

thread_local! {
    /// The keyring parsed from the output of the generation it came from.
    static LOADED: RefCell<Option<(u64, Rc<Keyring>)>> = const { RefCell::new(None) };
}

/// The keyring the command printed at its last run.
pub fn current() -> Result<Rc<Keyring>, CoreError> {
    if !PRELOADED.load(Ordering::SeqCst) {
        return Err(unavailable(
            "secretgate.keyring_command needs secretgate in shared_preload_libraries (postgresql.conf), then a restart",
        ));
    }
    let mut generation = GENERATION.get().load(Ordering::SeqCst);
    if generation == 0 {
        generation = wait_for_first_run()?;
    }
    if let Some(keyring) = LOADED.with_borrow(|l| l.as_ref().filter(|(g, _)| *g == generation).map(|(_, k)| k.clone()))
    {
        return Ok(keyring);
    }
    LOADED.set(None);
    let (generation, state, bytes) = {
        let slot = SLOT.share();
        let len = (slot.len as usize).min(SLOT_BYTES);
        (GENERATION.get().load(Ordering::SeqCst), slot.state, Zeroizing::new(slot.data[..len].to_vec()))
    };
    match state {
        KEYRING => {
            let keyring = Rc::new(Keyring::parse(&bytes)?);
            LOADED.set(Some((generation, keyring.clone())));
            Ok(keyring)
        }
        FAILED => Err(unavailable(String::from_utf8_lossy(&bytes).into_owned())),
        _ => Err(unavailable(
            "secretgate.keyring_command was not set when the server started or last reloaded; reload to run it",
        )),
    }
}

/// A backend that starts before the command's first run finishes waits for
/// it, at most the command's own time-out and a little.
fn wait_for_first_run() -> Result<u64, CoreError> {
    let limit = Duration::from_secs(KEYRING_COMMAND_TIMEOUT.get().max(1) as u64 + 5);
    let started = Instant::now();
    loop {
        let generation = GENERATION.get().load(Ordering::SeqCst);
        if generation != 0 {
            return Ok(generation);
        }
        if started.elapsed() >= limit {
            return Err(unavailable("secretgate.keyring_command has not finished its first run"));
        }
        // SAFETY: sleeps 20 ms; then lets a cancel or termination through.
        unsafe {
            pg_sys::pg_usleep(20_000);
        }
        pg_sys::check_for_interrupts!();
    }
}

fn unavailable(reason: impl Into<String>) -> CoreError {
    CoreError::KeyringUnavailable { reason: reason.into() }
}
