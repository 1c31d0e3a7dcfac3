//! `secretgate migrate run|info|revert`: the embedded `migrations/`, applied on
//! one dedicated connection under our own session advisory lock.

use crate::{db, Failure};
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
    /// Undo the last applied migration
    Revert,
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
        MigrateCommand::Revert => match acquire_lock(&mut conn, lock_timeout).await {
            Ok(()) => {
                let result = revert(&migrator, &mut conn).await;
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
        (Ok(()), Err(e)) => Err(Failure::usage(anyhow!("cannot release the migration lock: {e}"))),
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
            .map_err(|e| Failure::usage(anyhow!("cannot take the migration lock: {e}")))?;
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
        .map_err(|e| Failure::usage(anyhow!("cannot read the migrations table: {e}")))?;
    let applied: Vec<(i64, Vec<u8>, bool)> = if exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| Failure::usage(anyhow!("cannot read the migrations table: {e}")))?
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

async fn revert(migrator: &Migrator, conn: &mut PgConnection) -> Result<(), Failure> {
    let rows = status(migrator, conn).await?;
    check_consistent(&rows)?;
    let applied: Vec<&Row> = rows.iter().filter(|r| r.state == State::Applied).collect();
    let Some(last) = applied.last() else {
        println!("nothing to revert, no migration is applied");
        return Ok(());
    };
    if !migrator.iter().any(|m| m.version == last.version && m.migration_type.is_down_migration()) {
        return Err(Failure::check(anyhow!("migration {} ({}) has no down script", last.version, last.description)));
    }
    let target = applied.len().checked_sub(2).map_or(0, |i| applied[i].version);
    println!("reverting {} ({})", last.version, last.description);
    migrator.undo(&mut *conn, target).await.map_err(migrate_failure)?;
    println!("done");
    Ok(())
}

/// A migration that fails is a failed check (exit 1); losing the connection is exit 2.
fn migrate_failure(error: MigrateError) -> Failure {
    let lost_connection = matches!(
        &error,
        MigrateError::Execute(sqlx::Error::Io(_)) | MigrateError::ExecuteMigration(sqlx::Error::Io(_), _)
    );
    if lost_connection {
        Failure::usage(anyhow!("lost the database connection: {error}"))
    } else {
        Failure::check(anyhow!("migration failed, nothing of it was committed: {error}"))
    }
}
