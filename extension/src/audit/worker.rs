//! The launcher and the per-database writers.
//!
//! The launcher (a static background worker, no database) wakes when a
//! record waits for a database with no writer, when a quarter of the queue
//! is taken, or once a second, and starts that database's writer (all four
//! it may have while the queue is that full). A writer connects to its database, takes its
//! records in batches, inserts each batch in a transaction of its own,
//! sends `NOTIFY secretgate_audit`, prunes rows older than
//! `secretgate.audit_retention` in small batches, and leaves after a short
//! idle time (so it never holds a database that someone wants to drop).
//! A database without the extension: its records are counted as skipped.

use crate::pg::audit_writers::{self, Outcome};
use crate::pg::gucs::{AUDIT_RETENTION, HISTORY_RETENTION};
use crate::pg::{audit_queue, audit_shmem};
use crate::pg::{keyring_checks, spi};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use secretgate_core::audit;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Records per insert.
const BATCH: usize = 200;
/// How long a woken writer lets records gather before it takes them: long
/// enough for a burst to share one transaction, short enough that a storm
/// of refusals (tens of thousands a second) does not fill the queue meanwhile.
const GATHER: Duration = Duration::from_millis(5);
/// Rows deleted per pruning transaction.
const PRUNE_BATCH: i64 = 500;
/// A writer with nothing to do for this long leaves.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// Pruning runs at the writer's start, after writes at most this often, and
/// this often while it waits.
const PRUNE_AFTER_WRITE: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// A writer that has not registered this long after its start is started again.
const START_RETRY_US: i64 = 10_000_000;

static CONNECTED: AtomicBool = AtomicBool::new(false);

const PRUNE: &str = "WITH gone AS (DELETE FROM secretgate.audit_events WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY \
       (SELECT id FROM secretgate.audit_events \
         WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)) \
         ORDER BY at LIMIT $2)) RETURNING 1) \
     SELECT pg_catalog.count(*) FROM gone";

/// A key version's check value, recorded for a session that could not
/// record it itself without waiting or failing ([`keyring_checks`]): the
/// same advisory lock, so the writer never waits on a session either.
const RECORD_KEY_CHECK: &str = "INSERT INTO secretgate.key_checks (version, check_value) \
     SELECT $1, $2 WHERE pg_catalog.pg_try_advisory_xact_lock($3, $1) \
     ON CONFLICT (version) DO NOTHING";

/// The role a writer's SQL runs as: it may only add and prune audit rows
/// and record key checks. Before the extension's SQL has it (a database
/// not yet updated), the extension's owner.
const WRITER_ROLE: &std::ffi::CStr = c"secretgate_audit_writer";

/// Settings a database's or a role's defaults (`ALTER DATABASE … SET`, which
/// the database's owner may run) must not change for a writer: they would
/// bind its SQL or stop it writing.
const PINNED_SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"default_transaction_read_only", c"off"),
    (c"default_transaction_isolation", c"read committed"),
    (c"statement_timeout", c"0"),
    (c"lock_timeout", c"0"),
    (c"idle_in_transaction_session_timeout", c"0"),
    (c"transaction_timeout", c"0"),
    (c"synchronous_commit", c"on"),
];

const HAS_TABLE: &str = "SELECT pg_catalog.to_regclass('secretgate.audit_events') IS NOT NULL";

/// Kept versions of secrets older than `secretgate.history_retention`, a batch at a time.
const PRUNE_HISTORY: &str = "WITH gone AS (DELETE FROM secretgate.secret_history WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY \
       (SELECT ctid FROM secretgate.secret_history \
         WHERE replaced_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)) \
         ORDER BY replaced_at LIMIT $2)) RETURNING 1) \
     SELECT pg_catalog.count(*) FROM gone";

const HAS_HISTORY: &str = "SELECT pg_catalog.to_regclass('secretgate.secret_history') IS NOT NULL";

/// Registers the launcher (from `_PG_init`, while preloading).
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("secretgate audit launcher")
        .set_type("secretgate audit launcher")
        .set_library("secretgate")
        .set_function("secretgate_audit_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// Installs the signal handlers, then reads the configuration once: a
/// reload signalled between this process's start and its handlers was
/// ignored (a background worker starts with SIGHUP ignored), and a writer
/// that kept the old `secretgate.audit_retention` would never prune by the new one.
fn handle_signals() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: re-reads the configuration files, as on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: the documented way for a background worker to re-read its configuration.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

fn shutdown_requested() -> bool {
    // SAFETY: a flag the SIGTERM handler sets.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// The launcher's main loop.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn secretgate_audit_launcher_main(_arg: pg_sys::Datum) {
    handle_signals();
    // No database: connected only to show in pg_stat_activity (as Postgres'
    // own logical replication launcher does).
    BackgroundWorker::connect_worker_to_spi(None, None);
    let before = audit_writers::launcher_started();
    if before > 0 {
        audit_shmem::set_error(&format!(
            "the audit launcher restarted ({} starts since the server started)",
            before + 1
        ));
    }
    loop {
        reload_config_if_asked();
        for db in audit_writers::databases_needing_writers(START_RETRY_US) {
            start_writer(db);
        }
        if shutdown_requested() || !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
    }
    // Exit code 1: the postmaster starts the launcher again (unless it is shutting down).
    // SAFETY: ends this process through Postgres' exit path.
    unsafe { pg_sys::proc_exit(1) };
}

fn start_writer(db: pg_sys::Oid) {
    let started = BackgroundWorkerBuilder::new(&format!("secretgate audit writer for database {}", db.to_u32()))
        .set_type("secretgate audit writer")
        .set_library("secretgate")
        .set_function("secretgate_audit_writer_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32())))
        .enable_spi_access()
        .set_restart_time(None)
        .load_dynamic();
    if started.is_err() {
        audit_writers::start_failed(
            db,
            "no background worker slot for an audit writer: raise max_worker_processes (records wait in the queue)",
        );
    }
}

/// Runs on every exit of a writer, a failed connection included.
unsafe extern "C-unwind" fn writer_exit(_code: c_int, arg: pg_sys::Datum) {
    let db = pg_sys::Oid::from(arg.value() as u32);
    audit_writers::writer_exits(db, CONNECTED.load(Ordering::Relaxed));
}

/// A writer's main loop, for the database whose oid is `arg`.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn secretgate_audit_writer_main(arg: pg_sys::Datum) {
    let db = pg_sys::Oid::from(arg.value() as u32);
    handle_signals();
    // SAFETY: registers a plain function to run at this process's exit.
    unsafe { pg_sys::on_shmem_exit(Some(writer_exit), arg) };
    // As the bootstrap superuser (the only role sure to exist and to log
    // in), also when the database's owner set ALLOW_CONNECTIONS false: that
    // must not silence the trail. Its SQL then runs as the writer role.
    // SAFETY: a background worker's connection call, once, before any SQL.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(db, pg_sys::InvalidOid, pg_sys::BGWORKER_BYPASS_ALLOWCONN)
    };
    pin_settings();
    CONNECTED.store(true, Ordering::Relaxed);
    if !audit_writers::register_writer(db) {
        return;
    }
    let mut last_prune: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let mut wrote_since_prune = false;
    loop {
        reload_config_if_asked();
        let batch = audit_writers::claim(db, BATCH);
        let full = batch.len() == BATCH;
        if !batch.is_empty() {
            write(batch);
            idle_since = Instant::now();
            wrote_since_prune = true;
        }
        let due = if wrote_since_prune { PRUNE_AFTER_WRITE } else { PRUNE_EVERY };
        let leaving = idle_since.elapsed() >= IDLE_EXIT;
        if last_prune.is_none_or(|t| t.elapsed() >= due) || (leaving && wrote_since_prune) {
            prune();
            last_prune = Some(Instant::now());
            wrote_since_prune = false;
        }
        if shutdown_requested() {
            audit_shmem::set_error(&format!(
                "the audit writer for database {} was ended; another starts when records wait",
                db.to_u32()
            ));
            break;
        }
        if leaving && audit_writers::leave_if_idle(db) {
            break;
        }
        if full {
            continue;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
            audit_shmem::set_error(&format!(
                "the audit writer for database {} was ended; another starts when records wait",
                db.to_u32()
            ));
            break;
        }
        // Let the records of a burst gather, so that one transaction carries
        // many: a transaction per refusal would cost more than the refusal.
        // SAFETY: a plain sleep; signals still set their flags meanwhile.
        unsafe { pg_sys::pg_usleep(GATHER.as_micros() as _) };
    }
}

/// Overrides the database's and the role's defaults for [`PINNED_SETTINGS`]
/// (a setting this server does not have is left alone).
fn pin_settings() {
    for (name, value) in PINNED_SETTINGS {
        // SAFETY: GUC lookups and sets by C string in this worker's own
        // session, outside any transaction; an unknown name is skipped.
        unsafe {
            if pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null() {
                continue;
            }
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            );
        }
    }
}

/// The role the writer's SQL runs as: [`WRITER_ROLE`], or the extension's
/// owner while the database's extension SQL has no such role.
fn writer_role() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name inside a transaction; missing_ok.
    unsafe {
        let role = pg_sys::get_role_oid(WRITER_ROLE.as_ptr(), true);
        if role != pg_sys::InvalidOid {
            return role;
        }
    }
    spi::extension_owner()
}

/// Runs `work` in a transaction of its own, as the writer role in a
/// security-restricted operation: committed when it succeeds, rolled back
/// (with the error's message returned) when it fails.
fn in_transaction<T>(work: impl FnOnce() -> Result<T, pgrx::spi::Error>) -> Result<T, String> {
    // SAFETY: the sequence a background worker uses to start a transaction
    // with a snapshot; no transaction is open here.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        spi::elevated(writer_role(), work).map_err(|e| e.to_string())
    }))
    .catch_others(|caught| {
        Err(match caught {
            CaughtError::PostgresError(report)
            | CaughtError::ErrorReport(report)
            | CaughtError::RustPanic { ereport: report, .. } => report.message().to_string(),
        })
    })
    .execute();
    match result {
        Ok(v) => {
            // SAFETY: ends the transaction started above.
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Ok(v)
        }
        Err(e) => {
            // SAFETY: the error was caught; aborting cleans up the transaction
            // (snapshots, locks, memory) as Postgres' own workers do.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(e)
        }
    }
}

fn insert(records: &[&[u8]]) -> Result<Outcome, String> {
    let mut rows = audit::Columns::default();
    for record in records {
        if !rows.push(record) {
            return Err("a queued record is not a JSON object".into());
        }
    }
    let count = rows.len().to_string();
    in_transaction(|| {
        Spi::connect_mut(|client| {
            let has_table = client.select(HAS_TABLE, None, &[])?.first().get_one::<bool>()?.unwrap_or(false);
            if !has_table {
                return Ok(Outcome::Skipped);
            }
            audit_queue::insert(client, rows)?;
            client.update("SELECT pg_catalog.pg_notify('secretgate_audit', $1)", None, &[count.as_str().into()])?;
            Ok(Outcome::Written)
        })
    })
}

/// Records the key checks of a claimed batch; one that cannot be recorded
/// now (another session holds its lock) is let go: the next use of that
/// version asks again.
fn record_key_checks(batch: Vec<(u64, Vec<u8>)>) {
    let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
    let done = in_transaction(|| {
        Spi::connect_mut(|client| {
            if client.select(HAS_KEY_CHECKS, None, &[])?.first().get_one::<bool>()? != Some(true) {
                return Ok(());
            }
            for (_, record) in &batch {
                if let Some((version, check)) = keyring_checks::parse_request(record) {
                    client.update(
                        RECORD_KEY_CHECK,
                        None,
                        &[version.into(), check.into(), keyring_checks::LOCK_CLASS.into()],
                    )?;
                }
            }
            Ok(())
        })
    });
    if let Err(e) = done {
        audit_shmem::set_error(&format!("a key check could not be recorded: {e}"));
    }
    audit_writers::finish(&seqs, Outcome::Applied);
}

const HAS_KEY_CHECKS: &str = "SELECT pg_catalog.to_regclass('secretgate.key_checks') IS NOT NULL";

/// Writes one claimed batch; a failed batch is tried record by record, so
/// one bad record does not hold back the others.
fn write(batch: Vec<(u64, Vec<u8>)>) {
    let (checks, batch): (Vec<_>, Vec<_>) =
        batch.into_iter().partition(|(_, record)| keyring_checks::is_request(record));
    if !checks.is_empty() {
        record_key_checks(checks);
    }
    if batch.is_empty() {
        return;
    }
    let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
    let records: Vec<&[u8]> = batch.iter().map(|(_, r)| r.as_slice()).collect();
    match insert(&records) {
        Ok(outcome) => audit_writers::finish(&seqs, outcome),
        Err(_) if batch.len() > 1 => {
            for (seq, record) in &batch {
                match insert(&[record.as_slice()]) {
                    Ok(outcome) => audit_writers::finish(&[*seq], outcome),
                    Err(e) => {
                        audit_shmem::set_error(&format!("an audit record could not be written: {e}"));
                        audit_writers::finish(&[*seq], Outcome::Failed);
                    }
                }
            }
        }
        Err(e) => {
            audit_shmem::set_error(&format!("an audit record could not be written: {e}"));
            audit_writers::finish(&seqs, Outcome::Failed);
        }
    }
}

/// Deletes audit rows and kept versions older than their retentions, a
/// small batch per transaction.
fn prune() {
    prune_table("secretgate.audit_events", HAS_TABLE, PRUNE, AUDIT_RETENTION.get());
    prune_table("secretgate.secret_history", HAS_HISTORY, PRUNE_HISTORY, HISTORY_RETENTION.get());
}

fn prune_table(table: &str, has_table: &str, prune: &str, secs: i32) {
    if secs <= 0 {
        return;
    }
    loop {
        let deleted = in_transaction(|| {
            Spi::connect_mut(|client| {
                let has_table = client.select(has_table, None, &[])?.first().get_one::<bool>()?.unwrap_or(false);
                if !has_table {
                    return Ok(0);
                }
                let n = client
                    .update(prune, None, &[(secs as f64).into(), PRUNE_BATCH.into()])?
                    .first()
                    .get_one::<i64>()?
                    .unwrap_or(0);
                Ok(n)
            })
        });
        match deleted {
            Ok(n) if n >= PRUNE_BATCH && !shutdown_requested() => continue,
            Ok(_) => break,
            Err(e) => {
                audit_shmem::set_error(&format!("pruning {table} failed: {e}"));
                break;
            }
        }
    }
}
