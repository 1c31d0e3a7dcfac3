//! Black-box tests of `secretgate migrate run|info|revert` (CONTRACT §7),
//! driving the built binary (`SECRETGATE_BIN`) against a throwaway cluster.
//! Each trial uses its own database (advisory locks are per database), so
//! trials run in parallel.

use anyhow::{bail, ensure, Context, Result};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VERSION: &str = "20261122000001";

/// How many migrations the tool embeds.
fn migration_count() -> i64 {
    MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count() as i64
}

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("migrate"));
    let trials = trials![&cluster;
        run_info_revert_cycle,
        concurrent_runners_apply_once,
        held_lock_times_out_with_exit_2,
        runner_waits_for_the_lock_then_applies,
        changed_checksum_is_refused,
        unknown_applied_version_is_refused,
        "failed_migration_exits_1_and_commits_nothing" => failed_migration_exits_1,
        bad_urls_and_usage_exit_2,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

async fn cli(url: &str, args: &[&str]) -> Result<CliRun> {
    run_cli(Some(url), args).await
}

fn expect_code(run: &CliRun, code: i32, what: &str) -> Result<()> {
    ensure!(run.code == Some(code), "{what}: expected exit {code}, got:\n{run}");
    Ok(())
}

async fn exists(conn: &mut PgConnection, regclass: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(regclass)
        .fetch_one(conn)
        .await
        .described("to_regclass")
}

async fn extension_count(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pg_extension WHERE extname = 'secretgate'")
        .fetch_one(conn)
        .await
        .described("pg_extension")
}

async fn applied_count(conn: &mut PgConnection) -> Result<i64> {
    if !exists(conn, "_sqlx_migrations").await? {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(conn).await.described("_sqlx_migrations")
}

async fn advisory_locks(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
          WHERE l.locktype = 'advisory' AND d.datname = current_database() AND l.pid <> pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
    .described("pg_locks")
}

/// The three tables exist, the extension is installed and the gates are
/// attached: `set_secret` works on a workspace row and reads back.
async fn assert_migrated(cluster: &Cluster, url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    for table in ["public.workspaces", "public.workspace_secrets", "public.global_secrets"] {
        ensure!(exists(&mut conn, table).await?, "{table} should exist after migrate run");
    }
    ensure!(extension_count(&mut conn).await? == 1, "extension secretgate should be installed");
    let ws: uuid::Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('workspace') RETURNING id")
        .fetch_one(&mut conn)
        .await
        .described("insert workspace")?;
    let secret = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'BB_TOKEN', $2)")
        .bind(ws)
        .bind(&secret)
        .execute(&mut conn)
        .await
        .described("set_secret after migrate run")?;
    let back: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'BB_TOKEN')")
        .bind(ws)
        .fetch_one(&mut conn)
        .await
        .described("read_secret after migrate run")?;
    ensure!(back.as_deref() == Some(secret.as_str()), "read_secret did not return the value set_secret stored");
    conn.close().await?;
    Ok(())
}

async fn assert_not_migrated(url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    for table in ["public.workspaces", "public.workspace_secrets", "public.global_secrets"] {
        ensure!(!exists(&mut conn, table).await?, "{table} should not exist");
    }
    ensure!(extension_count(&mut conn).await? == 0, "extension secretgate should not be installed");
    ensure!(applied_count(&mut conn).await? == 0, "no migration should be recorded");
    conn.close().await?;
    Ok(())
}

fn info_state(run: &CliRun, version: &str) -> Option<String> {
    run.stdout.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(version)).then(|| words.next().unwrap_or("").to_string())
    })
}

async fn run_info_revert_cycle(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_cycle"));

    let info = cli(&url, &["migrate", "info"]).await?;
    expect_code(&info, 0, "info on a fresh database")?;
    ensure!(info_state(&info, VERSION).as_deref() == Some("pending"), "info should list {VERSION} as pending:\n{info}");

    let dry = cli(&url, &["migrate", "run", "--dry-run"]).await?;
    expect_code(&dry, 0, "run --dry-run")?;
    ensure!(
        dry.stdout.contains("would apply") && dry.stdout.contains(VERSION),
        "dry run should list {VERSION}:\n{dry}"
    );
    assert_not_migrated(&url).await.context("after --dry-run (info and dry runs must not write)")?;

    let run = cli(&url, &["migrate", "run"]).await?;
    expect_code(&run, 0, "first run")?;
    assert_migrated(&cluster, &url).await.context("after the first run")?;

    let info = cli(&url, &["migrate", "info"]).await?;
    expect_code(&info, 0, "info after run")?;
    ensure!(info_state(&info, VERSION).as_deref() == Some("applied"), "info should list {VERSION} as applied:\n{info}");

    let again = cli(&url, &["migrate", "run"]).await?;
    expect_code(&again, 0, "second run")?;
    ensure!(again.stdout.contains("nothing to apply"), "second run should be a no-op:\n{again}");
    let mut conn = PgConnection::connect(&url).await?;
    ensure!(applied_count(&mut conn).await? == migration_count(), "one row per migration after two runs");

    // `revert` undoes the last migration, one a call: every migration after the first.
    for _ in 1..migration_count() {
        let revert = cli(&url, &["migrate", "revert"]).await?;
        expect_code(&revert, 0, "revert")?;
    }
    // The first migration's down script drops every secret: refused without --allow-data-loss,
    // naming what it would drop, and changing nothing.
    let refused = cli(&url, &["migrate", "revert"]).await?;
    expect_code(&refused, 1, "revert of the first migration without --allow-data-loss")?;
    ensure!(
        refused.stdout.contains("DROP TABLE public.workspace_secrets")
            && refused.stdout.contains("DROP EXTENSION")
            && refused.stderr.contains("--allow-data-loss"),
        "a refused revert should list what it drops and name --allow-data-loss:\n{refused}"
    );
    ensure!(
        info_state(&cli(&url, &["migrate", "info"]).await?, VERSION).as_deref() == Some("applied"),
        "{VERSION} stays applied"
    );
    assert_migrated(&cluster, &url).await.context("after a refused revert of the first migration")?;
    ensure!(advisory_locks(&mut conn).await? == 0, "a refused revert must not leave an advisory lock");
    let revert = cli(&url, &["migrate", "revert", "--allow-data-loss"]).await?;
    expect_code(&revert, 0, "revert --allow-data-loss")?;
    assert_not_migrated(&url).await.context("after reverting every migration")?;
    let info = cli(&url, &["migrate", "info"]).await?;
    ensure!(info_state(&info, VERSION).as_deref() == Some("pending"), "after revert, {VERSION} is pending:\n{info}");

    let nothing = cli(&url, &["migrate", "revert"]).await?;
    expect_code(&nothing, 0, "revert with nothing applied")?;
    ensure!(nothing.stdout.contains("nothing to revert"), "revert with nothing applied:\n{nothing}");

    let rerun = cli(&url, &["migrate", "run"]).await?;
    expect_code(&rerun, 0, "run after revert")?;
    assert_migrated(&cluster, &url).await.context("after run, revert, run")?;
    ensure!(advisory_locks(&mut conn).await? == 0, "no advisory lock may be left behind");
    Ok(())
}

async fn concurrent_runners_apply_once(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_concurrent"));
    let (a, b) = tokio::join!(cli(&url, &["migrate", "run"]), cli(&url, &["migrate", "run"]));
    let (a, b) = (a?, b?);
    expect_code(&a, 0, "runner A")?;
    expect_code(&b, 0, "runner B")?;
    let applied = [&a, &b].iter().filter(|r| r.stdout.contains("applying")).count();
    let noop = [&a, &b].iter().filter(|r| r.stdout.contains("nothing to apply")).count();
    ensure!(applied == 1 && noop == 1, "exactly one runner should apply, the other find nothing to do:\n{a}\n{b}");
    let mut conn = PgConnection::connect(&url).await?;
    ensure!(applied_count(&mut conn).await? == migration_count(), "each migration must be recorded once");
    ensure!(extension_count(&mut conn).await? == 1, "the extension must be installed once");
    assert_migrated(&cluster, &url).await
}

async fn held_lock_times_out_with_exit_2(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_locked"));
    let mut holder = PgConnection::connect(&url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut holder).await.described("lock")?;

    let start = Instant::now();
    let run = cli(&url, &["migrate", "run", "--lock-timeout", "2"]).await?;
    let took = start.elapsed();
    expect_code(&run, 2, "run while another runner holds the lock")?;
    ensure!(run.stderr.contains("waiting for another migration runner"), "should say it is waiting:\n{run}");
    ensure!(
        run.stderr.contains("another migration runner still holds the migration lock"),
        "should say why it gave up:\n{run}"
    );
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "should give up after ~2s, took {took:?}"
    );
    assert_not_migrated(&url).await.context("a runner that timed out must apply nothing")?;

    let revert = cli(&url, &["migrate", "revert", "--lock-timeout", "1"]).await?;
    expect_code(&revert, 2, "revert while another runner holds the lock")?;

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut holder)
        .await
        .described("unlock")?;
    let run = cli(&url, &["migrate", "run", "--lock-timeout", "5"]).await?;
    expect_code(&run, 0, "run once the lock is free")?;
    assert_migrated(&cluster, &url).await
}

async fn runner_waits_for_the_lock_then_applies(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_wait"));
    let mut holder = PgConnection::connect(&url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut holder).await.described("lock")?;
    let runner = {
        let url = url.clone();
        tokio::spawn(async move { run_cli(Some(&url), &["migrate", "run", "--lock-timeout", "60"]).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(applied_count(&mut holder).await? == 0, "nothing may be applied while the lock is held");
    holder.close().await?; // the session ending releases the lock
    let run = runner.await.context("runner task")??;
    expect_code(&run, 0, "run that waited for the lock")?;
    ensure!(run.stderr.contains("waiting for another migration runner"), "should have said it was waiting:\n{run}");
    assert_migrated(&cluster, &url).await
}

async fn changed_checksum_is_refused(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_changed"));
    expect_code(&cli(&url, &["migrate", "run"]).await?, 0, "first run")?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode(repeat('ab', 48), 'hex') WHERE version = $1")
        .bind(VERSION.parse::<i64>()?)
        .execute(&mut conn)
        .await
        .described("tamper checksum")?;

    let run = cli(&url, &["migrate", "run"]).await?;
    expect_code(&run, 1, "run with a changed migration")?;
    ensure!(
        run.stderr.contains("changed") && run.stderr.contains("checksum"),
        "should name the changed migration:\n{run}"
    );
    ensure!(run.stderr.contains(VERSION), "should name version {VERSION}:\n{run}");

    let info = cli(&url, &["migrate", "info"]).await?;
    expect_code(&info, 1, "info with a changed migration")?;
    ensure!(info_state(&info, VERSION).as_deref() == Some("changed"), "info should show {VERSION} changed:\n{info}");

    expect_code(&cli(&url, &["migrate", "run", "--dry-run"]).await?, 1, "dry run with a changed migration")?;
    expect_code(&cli(&url, &["migrate", "revert"]).await?, 1, "revert with a changed migration")?;
    ensure!(extension_count(&mut conn).await? == 1, "a refused revert must leave everything in place");
    ensure!(advisory_locks(&mut conn).await? == 0, "a refused run must not leave an advisory lock");
    Ok(())
}

async fn unknown_applied_version_is_refused(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_unknown"));
    expect_code(&cli(&url, &["migrate", "run"]).await?, 0, "first run")?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29990101000000, 'from the future', true, decode(repeat('cd', 48), 'hex'), 0)",
    )
    .execute(&mut conn)
    .await
    .described("insert unknown version")?;
    let info = cli(&url, &["migrate", "info"]).await?;
    expect_code(&info, 1, "info with an unknown applied version")?;
    ensure!(info_state(&info, "29990101000000").as_deref() == Some("unknown"), "info should show it unknown:\n{info}");
    expect_code(&cli(&url, &["migrate", "run"]).await?, 1, "run with an unknown applied version")?;
    Ok(())
}

async fn failed_migration_exits_1(cluster: Arc<Cluster>) -> Result<()> {
    let url = cluster.create_database(&db_name("mig_fail"));
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE public.workspaces (id int)").execute(&mut conn).await.described("pre-create")?;
    let run = cli(&url, &["migrate", "run"]).await?;
    expect_code(&run, 1, "run whose migration fails")?;
    ensure!(run.stderr.contains("migration failed"), "should say the migration failed:\n{run}");
    ensure!(run.stderr.lines().filter(|l| l.starts_with("error:")).count() == 1, "one error line:\n{run}");
    ensure!(applied_count(&mut conn).await? == 0, "a failed migration must not be recorded");
    ensure!(extension_count(&mut conn).await? == 0, "a failed migration must commit nothing");
    ensure!(!exists(&mut conn, "public.global_secrets").await?, "a failed migration must commit nothing");
    ensure!(advisory_locks(&mut conn).await? == 0, "a failed run must not leave an advisory lock");
    sqlx::query("DROP TABLE public.workspaces").execute(&mut conn).await.described("drop")?;
    let run = cli(&url, &["migrate", "run", "--lock-timeout", "5"]).await?;
    expect_code(&run, 0, "run after fixing the database")?;
    assert_migrated(&cluster, &url).await
}

async fn bad_urls_and_usage_exit_2(cluster: Arc<Cluster>) -> Result<()> {
    let password = format!("pw-{}", random_hex(6));

    let none = run_cli(None, &["migrate", "info"]).await?;
    expect_code(&none, 2, "no database URL")?;
    ensure!(none.stderr.contains("DATABASE_URL"), "should say how to give a database:\n{none}");

    let cases = [
        ("refused port", format!("postgres://postgres:{password}@127.0.0.1:1/postgres")),
        (
            "missing database",
            format!("postgres://postgres:{password}@127.0.0.1:{}/no_such_db_{}", cluster.port(), random_hex(3)),
        ),
        ("not a URL", format!("not a url {password}")),
        ("bad scheme", format!("mysql://postgres:{password}@127.0.0.1:{}/postgres", cluster.port())),
    ];
    for (what, url) in &cases {
        for args in [&["migrate", "info"][..], &["migrate", "run"][..], &["migrate", "run", "--dry-run"][..]] {
            let run = run_cli(Some(url), args).await?;
            if run.code != Some(2) {
                bail!("{what}, {args:?}: expected exit 2, got {:?}", run.code);
            }
            ensure!(run.stderr.starts_with("error: "), "{what}: one clear error line expected");
            ensure!(
                !run.stderr.contains(&password) && !run.stdout.contains(&password),
                "{what}, {args:?}: the database password was printed"
            );
        }
        let flag = run_cli(None, &["--database-url", url, "migrate", "info"]).await?;
        ensure!(flag.code == Some(2), "{what} via --database-url: expected exit 2, got {:?}", flag.code);
        ensure!(!flag.stderr.contains(&password), "{what} via --database-url: the password was printed");
    }

    let url = cluster.url("postgres");
    for args in [&["migrate", "frobnicate"][..], &["migrate", "run", "--lock-timeout", "soon"][..], &["nope"][..]] {
        let run = run_cli(Some(&url), args).await?;
        expect_code(&run, 2, &format!("usage error {args:?}"))?;
    }
    let help = run_cli(Some(&format!("postgres://postgres:{password}@127.0.0.1:1/x")), &["migrate", "--help"]).await?;
    expect_code(&help, 0, "--help")?;
    ensure!(!help.stdout.contains(&password), "--help must not show DATABASE_URL's value");
    Ok(())
}
