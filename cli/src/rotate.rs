//! `secretgate rotate`: re-encrypts every secret under the current key version
//! (docs/reference/keyring.md, rotating a key).
//!
//! The tool counts the rows of the attached tables that are not on the current
//! key version, then calls `secretgate.reencrypt(batch_size)` again and again,
//! each call its own (autocommit) transaction, until it returns 0. Each batch
//! is atomic in the server: a row is either still under its old key or wholly
//! under the current one, never half-written. So the tool can be stopped at any
//! point (Ctrl-C, `kill`, even `kill -9` or a lost connection) and simply run
//! again to resume.
//!
//! Each batch is `secretgate.reencrypt_skipping(batch_size)`: a row that cannot
//! be decrypted (SG001, SG002), or every row of a key version whose key does
//! not match (SG004), is left where it is and the rest moves; at the end the
//! tool lists what it left, with its SQLSTATE, and exits 1.
//!
//! Rows locked by concurrent writers are skipped by `reencrypt` (SKIP LOCKED)
//! and taken by a later batch, so writers wait at most one batch. When only
//! locked rows are left, the tool retries for up to `--lock-wait` seconds.
//!
//! At the end it runs the verification pass of `secretgate verify` and names
//! the key versions rows still reference: any other version in the keyring may
//! be retired (the tool cannot read the keyring: it never leaves the server).
//!
//! Exit codes: 0 every row is on the current version and every secret
//! decrypts; 1 a row cannot be decrypted (every other row was moved), rows stayed locked, the run was
//! interrupted, or the server refused a batch; 2 usage or connection error.

use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use crate::{db, verify};
use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause between attempts while the only rows left are locked by others.
const LOCKED_PAUSE: Duration = Duration::from_millis(250);

/// Consecutive retries of a batch that hit a serialization failure, a
/// deadlock or a lock timeout (the batch rolled back whole).
const TRANSIENT_RETRIES: u32 = 5;

/// When stderr is not a terminal: one plain progress line this often.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct RotateArgs {
    /// Rows re-encrypted per batch (each batch is one transaction)
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    batch_size: i32,

    /// Seconds to keep retrying when the only rows left are locked by other
    /// transactions, before giving up (exit 1; run again later to finish)
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    lock_wait: u64,
}

/// The attached secrets tables, as safely quoted qualified names.
struct Tables {
    secrets: String,
    global_secrets: String,
}

/// Where the rows stand, in one snapshot.
struct Census {
    current: i32,
    /// Rows whose encryption_version is not the current one.
    stale: i64,
    total: i64,
}

/// How the batch loop ended.
enum Ending {
    /// Nothing left on an older version.
    Done,
    /// A signal asked to stop; the last batch finished first.
    Interrupted,
    /// `reencrypt` raised SG001/SG002/SG004: a row cannot be decrypted (the batch
    /// rolled back; only against a database without `reencrypt_skipping`).
    /// The error, described with its SQLSTATE.
    Undecryptable { error: String },
    /// Every readable row moved; this many could not be decrypted and stayed.
    Skipped { skipped: i64 },
    /// Rows on older versions stayed locked by other transactions past --lock-wait.
    Locked { stale: i64 },
}

pub async fn main(url: &str, args: RotateArgs) -> Result<(), Failure> {
    let mut conn = db::connect(url, "secretgate-rotate").await?;
    let stop = watch_signals();
    let result = run(&mut conn, &args, &stop).await;
    let _ = conn.close().await;
    result
}

async fn run(conn: &mut PgConnection, args: &RotateArgs, stop: &AtomicBool) -> Result<(), Failure> {
    // "Committed" in the progress report means durable, whatever the server's default.
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut *conn)
        .await
        .map_err(|e| setup_failure("cannot set synchronous_commit", &e))?;
    let tables = attached(conn).await?;
    let before =
        census(conn, &tables).await.map_err(|e| setup_failure("cannot count the secrets to re-encrypt", &e))?;
    println!(
        "key version {} is current: {} of {} secret(s) on older key versions (batch size {})",
        before.current, before.stale, before.total, args.batch_size
    );

    let started = Instant::now();
    let (ending, moved) =
        if before.stale == 0 { (Ending::Done, 0) } else { reencrypt_all(conn, &tables, args, stop, &before).await? };
    let elapsed = started.elapsed().as_secs_f64();
    if moved > 0 || before.stale > 0 {
        println!(
            "re-encrypted {moved} secret(s) in {elapsed:.1}s ({:.0} secrets/s)",
            if elapsed > 0.0 { moved as f64 / elapsed } else { 0.0 }
        );
    } else {
        println!("nothing to re-encrypt");
    }

    match ending {
        Ending::Interrupted => {
            let left = census(conn, &tables).await.map(|c| c.stale.to_string()).unwrap_or_else(|_| "some".into());
            Err(Failure::check(anyhow!(
                "interrupted: {left} secret(s) remain on older key versions; every finished batch is committed, \
                 run `secretgate rotate` again to resume"
            )))
        }
        Ending::Locked { stale } => Err(Failure::check(anyhow!(
            "{stale} secret(s) on older key versions stayed locked by other transactions for {}s; \
             run `secretgate rotate` again later to finish (or raise --lock-wait)",
            args.lock_wait
        ))),
        Ending::Undecryptable { error } => {
            println!(
                "a batch stopped on a secret that cannot be decrypted ({error}); it was rolled back whole, \
                 nothing was half-written. Every secret that does not decrypt:"
            );
            let report = verify::check(conn).await?;
            verify::print(&report);
            print_versions(conn, &tables).await?;
            if report.failed.is_empty() {
                // The row was set or deleted in the meantime.
                return Err(Failure::check(anyhow!(
                    "rotation stopped on a secret that did not decrypt, but every secret decrypts now; \
                     run `secretgate rotate` again to finish"
                )));
            }
            Err(Failure::check(anyhow!(
                "rotation cannot finish: {} secret(s) do not decrypt (listed above); set or delete them, \
                 then run `secretgate rotate` again",
                report.failed.len()
            )))
        }
        Ending::Skipped { skipped } => {
            println!(
                "{skipped} secret(s) could not be decrypted and were left on their key version; \
                 every other secret was re-encrypted. Every secret that does not decrypt:"
            );
            let report = verify::check(conn).await?;
            verify::print(&report);
            print_versions(conn, &tables).await?;
            Err(Failure::check(anyhow!(
                "rotation skipped {skipped} secret(s) that do not decrypt (listed above); set or delete them, \
                 or fix the keyring, then run `secretgate rotate` again"
            )))
        }
        Ending::Done => {
            println!("verifying every secret...");
            let report = verify::check(conn).await?;
            verify::print(&report);
            print_versions(conn, &tables).await?;
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::check(anyhow!("{} secret(s) do not decrypt (listed above)", report.failed.len())))
            }
        }
    }
}

/// The batch loop. Returns how it ended and how many rows this run moved.
async fn reencrypt_all(
    conn: &mut PgConnection,
    tables: &Tables,
    args: &RotateArgs,
    stop: &AtomicBool,
    before: &Census,
) -> Result<(Ending, u64), Failure> {
    let lock_wait = Duration::from_secs(args.lock_wait);
    let mut progress = Progress::new(before.stale as u64);
    let mut locked_since: Option<Instant> = None;
    let mut transient = 0;
    let mut skipping = true;
    let ending = loop {
        if stop.load(Ordering::SeqCst) {
            break Ending::Interrupted;
        }
        // reencrypt_skipping leaves unreadable rows where they are; a database
        // from before 0.4.0 has only reencrypt, which stops on them.
        let batch: Result<(i64, i64), sqlx::Error> = if skipping {
            sqlx::query_as("SELECT moved, skipped FROM secretgate.reencrypt_skipping($1)")
                .bind(args.batch_size)
                .fetch_one(&mut *conn)
                .await
        } else {
            sqlx::query_scalar("SELECT secretgate.reencrypt($1)")
                .bind(args.batch_size)
                .fetch_one(&mut *conn)
                .await
                .map(|n: i64| (n, 0))
        };
        match batch {
            Ok((n, _)) if n > 0 => {
                progress.advance(n as u64);
                locked_since = None;
                transient = 0;
            }
            Ok((_, skipped)) => {
                let now =
                    census(conn, tables).await.map_err(|e| progress.abandon_with(loop_failure(&e, progress.moved)))?;
                if now.stale == 0 {
                    break Ending::Done;
                }
                if skipped > 0 && now.stale <= skipped {
                    break Ending::Skipped { skipped };
                }
                // Nothing unlocked and readable is left: the rest is held by other transactions.
                let locked = now.stale - skipped;
                progress.at_least(locked as u64);
                let since = *locked_since.get_or_insert_with(|| {
                    progress.note(&format!(
                        "{locked} secret(s) on older key versions are locked by other transactions; retrying for up to {}s",
                        args.lock_wait
                    ));
                    Instant::now()
                });
                let waited = since.elapsed();
                if waited >= lock_wait {
                    break Ending::Locked { stale: locked };
                }
                tokio::time::sleep(LOCKED_PAUSE.min(lock_wait - waited)).await;
            }
            Err(e) if skipping && sqlstate(&e).as_deref() == Some("42883") => skipping = false,
            Err(e) => match sqlstate(&e).as_deref() {
                // The batch rolled back whole; try it again.
                Some("40001" | "40P01" | "55P03") if transient < TRANSIENT_RETRIES => {
                    transient += 1;
                    tokio::time::sleep(Duration::from_millis(200) * transient).await;
                }
                Some("SG001" | "SG002" | "SG004") => break Ending::Undecryptable { error: describe(&e) },
                _ => return Err(progress.abandon_with(loop_failure(&e, progress.moved))),
            },
        }
    };
    progress.finish();
    Ok((ending, progress.moved))
}

/// A batch or count that failed for another reason than an undecryptable row.
fn loop_failure(e: &sqlx::Error, moved: u64) -> Failure {
    let resume = format!(
        "the {moved} secret(s) re-encrypted so far are committed and nothing is half-written; \
         run `secretgate rotate` again to resume"
    );
    match sqlstate(e) {
        Some(code) if code == "SG003" => {
            Failure::check(anyhow!("the server cannot use its keyring ({}); {resume} once it is fixed", describe(e)))
        }
        Some(code) if code == "57014" => Failure::check(anyhow!(
            "a batch was cancelled ({}; a statement_timeout?); {resume} with a smaller --batch-size",
            describe(e)
        )),
        Some(_) => Failure::check(anyhow!("a batch failed ({}); {resume}", describe(e))),
        None => Failure::usage(anyhow!("lost the database connection ({}); {resume}", describe(e))),
    }
}

/// An error before the first batch: the keyring (SG003) is a failed check,
/// anything else a usage or connection error.
fn setup_failure(what: &str, e: &sqlx::Error) -> Failure {
    match sqlstate(e) {
        Some(code) if code.starts_with("SG") => Failure::check(anyhow!("{what} ({})", describe(e))),
        Some(_) => {
            Failure::usage(anyhow!("{what} ({}); is the secretgate extension installed and migrated?", describe(e)))
        }
        None => Failure::usage(anyhow!("{what}: lost the database connection ({})", describe(e))),
    }
}

/// The secrets tables recorded by `attach_gates`.
async fn attached(conn: &mut PgConnection) -> Result<Tables, Failure> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', sn.nspname, sc.relname), format('%I.%I', gn.nspname, gc.relname)
         FROM secretgate.attached_tables a
         JOIN pg_catalog.pg_class sc ON sc.oid = a.secrets
         JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
         JOIN pg_catalog.pg_class gc ON gc.oid = a.global_secrets
         JOIN pg_catalog.pg_namespace gn ON gn.oid = gc.relnamespace",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| setup_failure("cannot read secretgate.attached_tables", &e))?;
    match rows.as_slice() {
        [(secrets, global_secrets)] => Ok(Tables { secrets: secrets.clone(), global_secrets: global_secrets.clone() }),
        [] => Err(Failure::usage(anyhow!(
            "no tables are attached (secretgate.attached_tables is empty); run `secretgate migrate run` first"
        ))),
        _ => {
            Err(Failure::usage(anyhow!("secretgate.attached_tables has more than one row; expected one set of tables")))
        }
    }
}

async fn census(conn: &mut PgConnection, t: &Tables) -> Result<Census, sqlx::Error> {
    let (current, mut stale, mut total): (i32, i64, i64) = sqlx::query_as(&format!(
        "SELECT v.current,
                (SELECT count(*) FROM {s} WHERE encryption_version IS DISTINCT FROM v.current)
                  + (SELECT count(*) FROM {g} WHERE encryption_version IS DISTINCT FROM v.current),
                (SELECT count(*) FROM {s}) + (SELECT count(*) FROM {g})
         FROM (SELECT secretgate.current_key_version() AS current) v",
        s = t.secrets,
        g = t.global_secrets
    ))
    .fetch_one(&mut *conn)
    .await?;
    // Kept versions of secrets (0.5.0) are re-encrypted too; counted when this role may read them.
    let history: bool = sqlx::query_scalar(
        "SELECT CASE WHEN pg_catalog.to_regclass('secretgate.secret_history') IS NULL THEN false
                     ELSE pg_catalog.has_table_privilege('secretgate.secret_history', 'SELECT') END",
    )
    .fetch_one(&mut *conn)
    .await?;
    if history {
        let (kept_stale, kept): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE encryption_version IS DISTINCT FROM secretgate.current_key_version()), count(*)
               FROM secretgate.secret_history",
        )
        .fetch_one(&mut *conn)
        .await?;
        stale += kept_stale;
        total += kept;
    }
    Ok(Census { current, stale, total })
}

/// Names the key versions rows still reference.
async fn print_versions(conn: &mut PgConnection, t: &Tables) -> Result<(), Failure> {
    let versions: Vec<Option<i32>> = sqlx::query_scalar(&format!(
        "SELECT encryption_version FROM {s} UNION SELECT encryption_version FROM {g} ORDER BY 1",
        s = t.secrets,
        g = t.global_secrets
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| setup_failure("cannot list the key versions in use", &e))?;
    let list: Vec<String> = versions.iter().map(|v| v.map_or_else(|| "NULL".to_string(), |v| v.to_string())).collect();
    println!(
        "key versions still in use: [{}]; any other version in the keyring is no longer referenced \
         and may be retired once every database is rotated",
        list.join(", ")
    );
    Ok(())
}

/// The first SIGINT or SIGTERM asks the loop to stop after the batch in
/// flight; a second one exits at once (that batch then commits or rolls back
/// whole in the server).
fn watch_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    use tokio::signal::unix::{signal, SignalKind};
    // When a handler cannot be installed, the default (terminate) stays: still safe.
    if let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                seen += 1;
                if seen == 1 {
                    flag.store(true, Ordering::SeqCst);
                    eprintln!(
                        "\nstopping after the batch in flight (each batch is atomic); signal again to stop at once"
                    );
                } else {
                    eprintln!(
                        "\nstopped at once: every finished batch is committed, the one in flight commits or rolls back whole; \
                         run `secretgate rotate` again to resume"
                    );
                    std::process::exit(1);
                }
            }
        });
    }
    stop
}

/// The progress bar on a terminal, or a plain line every few seconds otherwise.
struct Progress {
    bar: ProgressBar,
    plain: bool,
    started: Instant,
    last_line: Instant,
    moved: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        } else {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} re-encrypting [{elapsed_precise}] [{wide_bar}] {human_pos}/{human_len} secrets  {rate}  eta {eta}",
            )
            .map(|s| {
                s.with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} secrets/s", state.per_sec());
                })
                .progress_chars("=> ")
            });
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        let now = Instant::now();
        Progress { bar, plain, started: now, last_line: now, moved: 0 }
    }

    fn advance(&mut self, n: u64) {
        self.moved += n;
        if self.moved > self.bar.length().unwrap_or(0) {
            self.bar.set_length(self.moved);
        }
        self.bar.inc(n);
        if self.plain && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            eprintln!(
                "re-encrypted {}/{} secret(s) ({:.0} secrets/s)",
                self.moved,
                self.bar.length().unwrap_or(0),
                self.rate()
            );
        }
    }

    /// Makes the total at least what is done plus what is left.
    fn at_least(&self, left: u64) {
        let want = self.moved + left;
        if want > self.bar.length().unwrap_or(0) {
            self.bar.set_length(want);
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.moved as f64 / secs
        } else {
            0.0
        }
    }

    /// A line on stderr that does not garble the bar.
    fn note(&self, message: &str) {
        self.bar.suspend(|| eprintln!("{message}"));
    }

    fn finish(&self) {
        if self.plain {
            eprintln!(
                "re-encrypted {}/{} secret(s) ({:.0} secrets/s)",
                self.moved,
                self.bar.length().unwrap_or(0),
                self.rate()
            );
        } else {
            self.bar.abandon();
        }
    }

    fn abandon_with(&self, failure: Failure) -> Failure {
        self.finish();
        failure
    }
}
