//! `secretgate migrate run|info|revert`: the embedded `migrations/`, applied on
//! one dedicated connection under our own session advisory lock.
//!
//! `revert` undoes one migration per call, so calling it once too often (in a
//! loop, or a second time by mistake) reaches the first migration, whose down
//! script drops the workspace and secret tables and the extension: every
//! secret, gone. A revert whose down script drops or deletes anything is
//! therefore refused unless `--allow-data-loss` is given, and what it drops
//! is printed either way.

use crate::db;
use crate::db_error::describe;
use crate::failure::Failure;
use anyhow::anyhow;
use clap::{Args, Subcommand};
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::time::{Duration, Instant};

/// The session advisory lock that serializes migration runners ("SecretGa").
/// sqlx's own lock is disabled: this one has a timeout and a clear message.
pub const LOCK_KEY: i64 = 0x5365_6372_6574_4761;

const POLL: Duration = Duration::from_millis(250);

#[derive(Args)]
pub struct MigrateArgs {
    /// Seconds to wait for another migration runner before giving up (exit 2)
    #[arg(long, default_value_t = 60, global = true, value_name = "SECONDS")]
    lock_timeout: u64,

    #[command(subcommand)]
    command: MigrateCommand,
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Apply every pending migration (refuses, exit 1, if an applied one has changed)
    Run {
        /// List what would be applied without applying it (read-only, takes no lock)
        #[arg(long)]
        dry_run: bool,
    },
    /// List every migration: version, state (applied, pending, changed, failed, unknown), description;
    /// exits 1 if any is changed, failed or unknown
    Info,
    /// Undo the last applied migration (one that drops data, such as the first, needs
    /// --allow-data-loss)
    ///
    /// Without --allow-data-loss, a migration whose down script drops or deletes data is refused
    /// (exit 1, nothing changed). The first migration's down script drops the workspace and secret
    /// tables with every secret in them, and the extension with its registry, liveness verdicts,
    /// key check values and audit trail. What a revert drops is printed either way.
    Revert {
        /// Revert even a migration that drops tables, the extension or rows, losing their data
        /// for good (back the database up first)
        #[arg(long)]
        allow_data_loss: bool,
    },
}

fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_locking(false);
    migrator
}

pub async fn main(url: &str, args: MigrateArgs) -> Result<(), Failure> {
    let migrator = migrator();
    let mut conn = db::connect(url, "secretgate-migrate").await?;
    let lock_timeout = Duration::from_secs(args.lock_timeout);
    let result = match args.command {
        MigrateCommand::Info => info(&migrator, &mut conn).await,
        MigrateCommand::Run { dry_run: true } => dry_run(&migrator, &mut conn).await,
        MigrateCommand::Run { dry_run: false } => match acquire_lock(&mut conn, lock_timeout).await {
            Ok(()) => {
                let result = run(&migrator, &mut conn).await;
                release_lock(&mut conn, result).await
            }
            Err(e) => Err(e),
        },
        MigrateCommand::Revert { allow_data_loss } => match acquire_lock(&mut conn, lock_timeout).await {
            Ok(()) => {
                let result = revert(&migrator, &mut conn, allow_data_loss).await;
                release_lock(&mut conn, result).await
            }
            Err(e) => Err(e),
        },
    };
    // Closing the connection also releases the session lock, whatever happened above.
    let _ = conn.close().await;
    result
}

/// Releases the migration lock explicitly; the first error wins.
async fn release_lock(conn: &mut PgConnection, result: Result<(), Failure>) -> Result<(), Failure> {
    let unlocked =
        sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).fetch_one(&mut *conn).await;
    match (result, unlocked) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(true)) => Ok(()),
        (Ok(()), Ok(false)) => Err(Failure::usage(anyhow!("the migration lock was not held at release"))),
        (Ok(()), Err(e)) => Err(Failure::usage(anyhow!("cannot release the migration lock: {}", describe(&e)))),
    }
}

async fn acquire_lock(conn: &mut PgConnection, timeout: Duration) -> Result<(), Failure> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| Failure::usage(anyhow!("cannot take the migration lock: {}", describe(&e))))?;
        if acquired {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Failure::usage(anyhow!(
                "another migration runner still holds the migration lock (advisory lock {LOCK_KEY}) after {}s; \
                 nothing was applied; retry when it finishes, or raise --lock-timeout",
                timeout.as_secs()
            )));
        }
        if !announced {
            eprintln!(
                "waiting for another migration runner to finish (advisory lock {LOCK_KEY}, up to {}s)...",
                timeout.as_secs()
            );
            announced = true;
        }
        tokio::time::sleep(POLL.min(timeout - waited)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Applied,
    Pending,
    /// Applied, but the embedded file's checksum no longer matches.
    Changed,
    /// Recorded as not successful (partially applied).
    Failed,
    /// Applied, but no such migration is embedded in this binary.
    Unknown,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Changed => "changed",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }

    fn is_problem(self) -> bool {
        matches!(self, State::Changed | State::Failed | State::Unknown)
    }
}

struct Row {
    version: i64,
    description: String,
    state: State,
}

/// Every up migration and every applied version, with its state. Read-only:
/// the migrations table is not created here.
async fn status(migrator: &Migrator, conn: &mut PgConnection) -> Result<Vec<Row>, Failure> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Failure::usage(anyhow!("cannot read the migrations table: {}", describe(&e))))?;
    let applied: Vec<(i64, Vec<u8>, bool)> = if exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| Failure::usage(anyhow!("cannot read the migrations table: {}", describe(&e))))?
    } else {
        Vec::new()
    };

    let mut rows = Vec::new();
    for migration in up_migrations(migrator) {
        let state = match applied.iter().find(|(v, _, _)| *v == migration.version) {
            None => State::Pending,
            Some((_, _, false)) => State::Failed,
            Some((_, checksum, true)) if checksum[..] != migration.checksum[..] => State::Changed,
            Some(_) => State::Applied,
        };
        rows.push(Row { version: migration.version, description: migration.description.to_string(), state });
    }
    for (version, _, _) in &applied {
        if !rows.iter().any(|r| r.version == *version) {
            rows.push(Row { version: *version, description: "(not in this binary)".into(), state: State::Unknown });
        }
    }
    rows.sort_by_key(|r| r.version);
    Ok(rows)
}

fn up_migrations(migrator: &Migrator) -> impl Iterator<Item = &Migration> {
    migrator.iter().filter(|m| !m.migration_type.is_down_migration())
}

/// Refuses (exit 1) when an applied migration changed, failed or is unknown.
fn check_consistent(rows: &[Row]) -> Result<(), Failure> {
    let problems: Vec<String> = rows
        .iter()
        .filter(|r| r.state.is_problem())
        .map(|r| format!("{} ({}) is {}", r.version, r.description, r.state.name()))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::check(anyhow!(
        "refusing to migrate: {}; an applied migration must not be edited (checksum mismatch) or lost, \
         restore the original file or fix the database by hand",
        problems.join(", ")
    )))
}

fn print_rows(rows: &[&Row]) {
    for row in rows {
        println!("{:<16} {:<8} {}", row.version, row.state.name(), row.description);
    }
}

fn print_plan(rows: &[&Row]) {
    for row in rows {
        println!("  {} {}", row.version, row.description);
    }
}

async fn info(migrator: &Migrator, conn: &mut PgConnection) -> Result<(), Failure> {
    let rows = status(migrator, conn).await?;
    println!("{:<16} {:<8} DESCRIPTION", "VERSION", "STATE");
    print_rows(&rows.iter().collect::<Vec<_>>());
    check_consistent(&rows)
}

async fn dry_run(migrator: &Migrator, conn: &mut PgConnection) -> Result<(), Failure> {
    let rows = status(migrator, conn).await?;
    check_consistent(&rows)?;
    let pending: Vec<&Row> = rows.iter().filter(|r| r.state == State::Pending).collect();
    if pending.is_empty() {
        println!("dry run: nothing to apply, the database is up to date");
    } else {
        println!("dry run: would apply {} migration(s):", pending.len());
        print_plan(&pending);
    }
    Ok(())
}

async fn run(migrator: &Migrator, conn: &mut PgConnection) -> Result<(), Failure> {
    conn.ensure_migrations_table().await.map_err(migrate_failure)?;
    let rows = status(migrator, conn).await?;
    check_consistent(&rows)?;
    let pending: Vec<&Row> = rows.iter().filter(|r| r.state == State::Pending).collect();
    if pending.is_empty() {
        println!("nothing to apply, the database is up to date");
        return Ok(());
    }
    println!("applying {} migration(s):", pending.len());
    print_plan(&pending);
    migrator.run(&mut *conn).await.map_err(migrate_failure)?;
    println!("done");
    Ok(())
}

async fn revert(migrator: &Migrator, conn: &mut PgConnection, allow_data_loss: bool) -> Result<(), Failure> {
    let rows = status(migrator, conn).await?;
    check_consistent(&rows)?;
    let applied: Vec<&Row> = rows.iter().filter(|r| r.state == State::Applied).collect();
    let Some(last) = applied.last() else {
        println!("nothing to revert, no migration is applied");
        return Ok(());
    };
    let Some(down) = migrator.iter().find(|m| m.version == last.version && m.migration_type.is_down_migration()) else {
        return Err(Failure::check(anyhow!("migration {} ({}) has no down script", last.version, last.description)));
    };
    let losses = data_loss(&down.sql);
    if losses.is_empty() {
        println!("reverting {} ({})", last.version, last.description);
    } else {
        println!("reverting {} ({}) loses data for good:", last.version, last.description);
        for statement in &losses {
            println!("  {statement}");
        }
        if !allow_data_loss {
            return Err(Failure::check(anyhow!(
                "refusing to revert {} ({}): it drops what is listed above, every secret stored there included, \
                 and nothing brings it back; nothing was changed. Back the database up first, then run \
                 `secretgate migrate revert --allow-data-loss`",
                last.version,
                last.description
            )));
        }
    }
    let target = applied.len().checked_sub(2).map_or(0, |i| applied[i].version);
    migrator.undo(&mut *conn, target).await.map_err(migrate_failure)?;
    println!("done");
    Ok(())
}

/// The statements of a down script that lose data (a dropped table, column,
/// schema or extension, a truncate or a delete), each on one line; an
/// extension's line also says what goes with it. Comments are skipped; a
/// `--` or `;` inside a string literal would split a statement, which the
/// embedded scripts do not have.
fn data_loss(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql.lines().map(|line| line.split("--").next().unwrap_or("")).collect();
    let mut losses = Vec::new();
    for statement in code.join("\n").split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
        let drops = words
            .windows(2)
            .any(|w| is(w[0], "DROP") && ["TABLE", "COLUMN", "SCHEMA", "EXTENSION"].iter().any(|k| is(w[1], k)));
        let empties = words.first().is_some_and(|w| is(w, "TRUNCATE") || is(w, "DELETE"));
        if !(drops || empties) {
            continue;
        }
        let mut line = words.join(" ");
        if words.len() >= 3 && is(words[1], "EXTENSION") && words.last().is_some_and(|w| is(w, "secretgate")) {
            line.push_str(
                " (and with it schema secretgate: the provider registry, the liveness verdicts, \
                 the key check values and the audit trail)",
            );
        }
        losses.push(line);
    }
    losses
}

/// A migration that fails is a failed check (exit 1); losing the connection is exit 2.
fn migrate_failure(error: MigrateError) -> Failure {
    let lost_connection = matches!(
        &error,
        MigrateError::Execute(sqlx::Error::Io(_)) | MigrateError::ExecuteMigration(sqlx::Error::Io(_), _)
    );
    // The server's error is worded as every other command words it.
    let cause = match &error {
        MigrateError::Execute(e) => describe(e),
        MigrateError::ExecuteMigration(e, version) => format!("migration {version}: {}", describe(e)),
        other => other.to_string(),
    };
    if lost_connection {
        Failure::usage(anyhow!("lost the database connection: {cause}"))
    } else {
        Failure::check(anyhow!("migration failed, nothing of it was committed: {cause}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down_script(version: i64) -> String {
        let migrator = migrator();
        let down = migrator.iter().find(|m| m.version == version && m.migration_type.is_down_migration());
        down.map(|m| m.sql.to_string()).unwrap_or_default()
    }

    #[test]
    fn reverting_the_first_migration_is_data_loss() {
        let first = up_migrations(&migrator()).map(|m| m.version).min().unwrap_or_default();
        let losses = data_loss(&down_script(first));
        for table in ["public.workspaces", "public.workspace_secrets", "public.global_secrets"] {
            assert!(losses.contains(&format!("DROP TABLE {table}")), "{table} not named in {losses:?}");
        }
        assert!(
            losses.iter().any(|l| l.starts_with("DROP EXTENSION IF EXISTS secretgate (and with it schema secretgate")),
            "{losses:?}"
        );
    }

    #[test]
    fn a_down_script_that_keeps_the_data_is_not_data_loss() {
        assert_eq!(data_loss("-- DROP TABLE x; in a comment\nSELECT 1;"), Vec::<String>::new());
        assert_eq!(data_loss("SELECT secretgate.detach_gates();\nCREATE INDEX i ON t (a);"), Vec::<String>::new());
        assert_eq!(data_loss("ALTER TABLE t\n  DROP COLUMN c;"), vec!["ALTER TABLE t DROP COLUMN c".to_string()]);
        assert_eq!(data_loss("delete from t where a; truncate u"), vec!["delete from t where a", "truncate u"]);
    }
}
