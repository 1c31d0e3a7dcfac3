//! Black-box tests of `secretgate verify` and `secretgate rotate` (CONTRACT §5
//! `reencrypt`, `verify_secrets`, §7; issue 5 items 2 and 3).
//!
//! Every trial rewrites the cluster-wide keyring (baseline versions 1 and 2,
//! or with a version 3 made current), so they run one at a time, each setting
//! the keyring it needs first. Each trial has its own database.
//!
//! The stored plaintexts are derived from a random per-trial salt
//! (`md5(salt || n)`), so every row can be checked against what it must hold
//! without sending values back and forth. `SECRETGATE_ROTATE_ROWS` sets the
//! size of the interrupted-and-resumed rotation (default 100000).

use anyhow::{anyhow, bail, ensure, Context, Result};
use secretgate_core::Scope;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("rotate"));
    let trials = trials![&cluster;
        verify_lists_undecryptable_rows_without_values,
        no_extension_is_a_usage_error,
        rotate_interrupted_and_resumed_loses_nothing,
        concurrent_writers_are_not_blocked,
        locked_rows_are_waited_for_then_reported,
        undecryptable_row_stops_rotation_cleanly,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

fn rows_wanted() -> Result<i64> {
    match std::env::var("SECRETGATE_ROTATE_ROWS") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1000)
            .ok_or_else(|| anyhow!("SECRETGATE_ROTATE_ROWS must be a number >= 1000, got {v:?}")),
        Err(_) => Ok(100_000),
    }
}

/// How many rows of each scope `populate` made.
struct Population {
    workspace_rows: i64,
    global_rows: i64,
}

impl Population {
    fn total(&self) -> i64 {
        self.workspace_rows + self.global_rows
    }
}

/// `total` secrets: one in a thousand global (`G_<n>`), the rest workspace rows
/// (`K_<n>`, 100 per workspace). The first tenth of each is written under key
/// version 1, the rest under version 2 (the baseline keyring is restored).
/// Workspace `K_<n>` holds `md5(salt || n)`, global `G_<n>` `md5(salt || 'g' || n)`.
async fn populate(cluster: &Cluster, conn: &mut PgConnection, salt: &str, total: i64) -> Result<Population> {
    let global_rows = (total / 1000).max(1);
    let workspace_rows = total - global_rows;
    let workspaces = ((workspace_rows + 99) / 100).max(1);
    sqlx::query("INSERT INTO public.workspaces (kind) SELECT 'workspace' FROM generate_series(1, $1)")
        .bind(workspaces)
        .execute(&mut *conn)
        .await
        .described("insert workspaces")?;

    let mut v1 = cluster.initial_keys().clone();
    v1.current_version = 1;
    // [from, to) of each scope, under the keyring given.
    let parts = [
        (0, workspace_rows / 10, 0, global_rows / 10, v1),
        (workspace_rows / 10, workspace_rows, global_rows / 10, global_rows, cluster.initial_keys().clone()),
    ];
    for (ws_from, ws_to, g_from, g_to, keys) in parts {
        cluster.write_keyring(&keys.to_json(), 0o600);
        sqlx::query(
            "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
             SELECT w.id, 'K_' || n, secretgate.encrypt(md5($1 || n::text), w.id, 'K_' || n), secretgate.current_key_version()
             FROM generate_series($2::bigint, $3::bigint - 1) AS n
             JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM public.workspaces) w ON w.i = n % $4",
        )
        .bind(salt)
        .bind(ws_from)
        .bind(ws_to)
        .bind(workspaces)
        .execute(&mut *conn)
        .await
        .described("insert workspace secrets")?;
        sqlx::query(
            "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version)
             SELECT 'G_' || n, secretgate.encrypt(md5($1 || 'g' || n::text), NULL, 'G_' || n), secretgate.current_key_version()
             FROM generate_series($2::bigint, $3::bigint - 1) AS n",
        )
        .bind(salt)
        .bind(g_from)
        .bind(g_to)
        .execute(&mut *conn)
        .await
        .described("insert global secrets")?;
    }
    restore_baseline_keyring(cluster);
    Ok(Population { workspace_rows, global_rows })
}

async fn count_on_version(conn: &mut PgConnection, version: i32) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.workspace_secrets WHERE encryption_version = $1)
              + (SELECT count(*) FROM public.global_secrets WHERE encryption_version = $1)",
    )
    .bind(version)
    .fetch_one(&mut *conn)
    .await
    .described("count rows on a version")
}

/// The plaintexts of a few rows (derived, computed by the server), to check
/// that no output of the tool contains them.
async fn sample_plaintexts(conn: &mut PgConnection, salt: &str) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT md5($1 || n::text) FROM generate_series(0, 9) n UNION ALL SELECT md5($1 || 'g' || '0')")
        .bind(salt)
        .fetch_all(&mut *conn)
        .await
        .described("sample plaintexts")
}

fn assert_no_values(run: &CliRun, values: &[String], what: &str) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if run.stdout.contains(v.as_str()) || run.stderr.contains(v.as_str()) {
            bail!("{what}: the output contains stored value #{i}");
        }
    }
    Ok(())
}

/// Flips a byte of one ciphertext with the gates detached (a corrupt row).
async fn corrupt(conn: &mut PgConnection, table: &str, row: &str, bind_ws: Option<Uuid>, key: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut *conn).await.described("detach_gates")?;
    let sql = format!(
        "UPDATE {table} SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 255) WHERE {row}"
    );
    let mut q = sqlx::query(&sql);
    if let Some(ws) = bind_ws {
        q = q.bind(ws);
    }
    let done = q.bind(key).execute(&mut *conn).await.described("corrupt a row")?;
    ensure!(done.rows_affected() == 1, "corrupting {key} touched {} rows", done.rows_affected());
    reattach(conn).await
}

async fn reattach(conn: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut *conn)
    .await
    .described("attach_gates")?;
    Ok(())
}

/// Waits until no backend of `secretgate rotate` is left in this database.
async fn wait_for_no_rotate_backend(conn: &mut PgConnection) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'secretgate-rotate'",
        )
        .fetch_one(&mut *conn)
        .await
        .described("pg_stat_activity")?;
        if n == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the killed rotate's backend is still there after 60s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rate(rows: i64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------
// Trials

async fn verify_lists_undecryptable_rows_without_values(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("rot_verify")).await?;
    let salt = random_hex(8);
    let pop = populate(&cluster, &mut conn, &salt, 1000).await?;
    let ws: Uuid = sqlx::query_scalar("SELECT id FROM public.workspaces ORDER BY id LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .described("a workspace")?;
    let value = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'BB_SECRET', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut conn)
        .await
        .described("set_secret")?;
    let total = pop.total() + 1;
    let mut values = sample_plaintexts(&mut conn, &salt).await?;
    values.push(value.clone());

    let run = run_cli(Some(&url), &["verify"]).await?;
    ensure!(run.code == Some(0), "verify on a clean database should exit 0:\n{run}");
    ensure!(
        run.stdout.contains(&format!("summary: {total} secret(s) checked, 0 failed")),
        "verify should count {total} secrets and no failure:\n{run}"
    );

    // Plant: a corrupt workspace row (SG001), a corrupt global row (SG001), an unknown version (SG002).
    corrupt(&mut conn, "public.workspace_secrets", "workspace_id = $1 AND key = $2", Some(ws), "BB_SECRET").await?;
    corrupt(&mut conn, "public.global_secrets", "key = $1", None, "G_0").await?;
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach_gates")?;
    let k3_ws: Uuid = sqlx::query_scalar(
        "UPDATE public.workspace_secrets SET encryption_version = 9 WHERE key = 'K_3' RETURNING workspace_id",
    )
    .fetch_one(&mut conn)
    .await
    .described("unknown version")?;
    reattach(&mut conn).await?;

    let run = run_cli(Some(&url), &["verify"]).await?;
    ensure!(run.code == Some(1), "verify with undecryptable rows should exit 1:\n{run}");
    assert_no_values(&run, &values, "verify")?;
    let line_with = |needles: &[&str]| run.stdout.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    let ws_text = ws.to_string();
    let k3_text = k3_ws.to_string();
    ensure!(
        line_with(&[&ws_text, "BB_SECRET", "SG001"]),
        "verify should list workspace {ws} key BB_SECRET with SG001:\n{run}"
    );
    ensure!(line_with(&["global", "G_0", "SG001"]), "verify should list global key G_0 with SG001:\n{run}");
    ensure!(line_with(&[&k3_text, "K_3", "SG002"]), "verify should list key K_3 with SG002:\n{run}");
    ensure!(
        run.stdout.contains(&format!("summary: {total} secret(s) checked, 3 failed")),
        "verify should count {total} secrets and 3 failures:\n{run}"
    );
    let listed = run.stdout.lines().filter(|l| l.contains("SG00") && !l.contains(": ")).count();
    ensure!(listed == 3, "verify should list exactly the 3 failing rows, listed {listed}:\n{run}");
    Ok(())
}

async fn no_extension_is_a_usage_error(cluster: Arc<Cluster>) -> Result<()> {
    let (url, _conn) = empty_database(&cluster, &db_name("rot_empty")).await?;
    for cmd in ["verify", "rotate"] {
        let run = run_cli(Some(&url), &[cmd]).await?;
        ensure!(run.code == Some(2), "{cmd} without the extension should exit 2:\n{run}");
    }
    let run = run_cli(Some("postgres://postgres@127.0.0.1:1/none"), &["rotate"]).await?;
    ensure!(run.code == Some(2), "rotate without a server should exit 2:\n{run}");
    let run = run_cli(Some(&cluster.url("postgres")), &["rotate", "--batch-size", "0"]).await?;
    ensure!(run.code == Some(2), "rotate --batch-size 0 is a usage error:\n{run}");
    Ok(())
}

async fn rotate_interrupted_and_resumed_loses_nothing(cluster: Arc<Cluster>) -> Result<()> {
    let wanted = rows_wanted()?;
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("rot_big")).await?;
    let salt = random_hex(8);

    let t = Instant::now();
    let pop = populate(&cluster, &mut conn, &salt, wanted).await?;
    let total = pop.total();
    eprintln!(
        "[rotate] inserted {total} secrets ({} workspace, {} global) in {:.1}s",
        pop.workspace_rows,
        pop.global_rows,
        t.elapsed().as_secs_f64()
    );
    let values = sample_plaintexts(&mut conn, &salt).await?;
    let hist = histogram(&mut conn).await?;
    ensure!(hist.len() == 2 && hist[0].0 == 1 && hist[1].0 == 2, "rows should start on versions 1 and 2: {hist:?}");

    let t = Instant::now();
    let before = checksum(&mut conn).await?;
    eprintln!("[rotate] checksum of {total} plaintexts in {:.1}s", t.elapsed().as_secs_f64());

    let keys = rotate_keyring(&cluster);

    // First run, killed (SIGKILL) once more than a fifth of the rows moved.
    let t = Instant::now();
    let mut running = spawn_cli(&url, &["rotate", "--batch-size", "2000"])?;
    let threshold = total / 5;
    let deadline = Instant::now() + Duration::from_secs(150);
    let moved_at_kill = loop {
        let on_v3 = count_on_version(&mut conn, 3).await?;
        if on_v3 > threshold {
            break on_v3;
        }
        if running.exited()? {
            let run = running.wait(Duration::from_secs(5)).await?;
            bail!("rotate ended before it could be interrupted ({on_v3} of {total} rows on version 3):\n{run}");
        }
        ensure!(Instant::now() < deadline, "rotate did not move {threshold} rows within 150s ({on_v3} moved)");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let killed = running.kill().await?;
    let first_secs = t.elapsed();
    ensure!(killed.code.is_none(), "the first rotate should have been killed by SIGKILL, but it exited:\n{killed}");
    // The server finishes the batch that was in flight (it commits or rolls back
    // whole) before its backend notices the client is gone.
    let orphan_wait = Instant::now();
    wait_for_no_rotate_backend(&mut conn).await?;
    eprintln!(
        "[rotate] the killed run's backend finished its last batch {:.2}s after the kill",
        orphan_wait.elapsed().as_secs_f64()
    );
    assert_no_values(&killed, &values, "killed rotate")?;

    let hist = histogram(&mut conn).await?;
    ensure!(
        hist.iter().all(|(v, _)| [1, 2, 3].contains(v)),
        "after the kill, every row is on an old or the current version: {hist:?}"
    );
    let on_v3 = hist.iter().find(|(v, _)| *v == 3).map_or(0, |h| h.1);
    ensure!(
        on_v3 >= moved_at_kill && on_v3 < total,
        "the kill should land midway: {on_v3} of {total} rows on version 3 (the tool was killed after {moved_at_kill})"
    );
    let t = Instant::now();
    ensure!(mismatches(&mut conn, &salt, &[]).await? == 0, "after the kill, every row still holds its plaintext");
    eprintln!("[rotate] every plaintext compared with its derivation (decrypt) in {:.1}s", t.elapsed().as_secs_f64());
    let states = verify_states(&mut conn).await?;
    ensure!(
        states.len() == 1 && states[0].0 == "ok" && states[0].2 == total,
        "after the kill, every row decrypts: {states:?}"
    );
    eprintln!(
        "[rotate] killed after {:.1}s with {on_v3} of {total} rows on version 3 (histogram {hist:?})",
        first_secs.as_secs_f64()
    );

    // Resume to the end.
    let t = Instant::now();
    let run = run_cli(Some(&url), &["rotate", "--batch-size", "2000"]).await?;
    let second = t.elapsed();
    ensure!(run.code == Some(0), "the resumed rotate should finish and exit 0:\n{run}");
    assert_no_values(&run, &values, "resumed rotate")?;
    ensure!(
        run.stdout.contains(&format!("{} of {total} secret(s) on older key versions", total - on_v3)),
        "the resumed rotate should start from the {} rows left:\n{run}",
        total - on_v3
    );
    ensure!(
        run.stdout.contains("key versions still in use: [3]; any other version in the keyring is no longer referenced"),
        "rotate should name version 3 as the only one in use:\n{run}"
    );
    ensure!(
        run.stdout.contains(&format!("summary: {total} secret(s) checked, 0 failed")),
        "rotate should end with a clean verification:\n{run}"
    );

    let hist = histogram(&mut conn).await?;
    ensure!(hist == vec![(3, total)], "every row should be on version 3: {hist:?}");
    let after = checksum(&mut conn).await?;
    ensure!(after == before, "the checksum of every plaintext changed across the rotation");
    ensure!(mismatches(&mut conn, &salt, &[]).await? == 0, "after the rotation, every row holds its plaintext");
    // The public read path too, on a sample of workspace rows and every global one.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM (SELECT workspace_id, key FROM public.workspace_secrets ORDER BY workspace_id, key LIMIT 2000) s
                 WHERE secretgate.read_secret(s.workspace_id, s.key) IS DISTINCT FROM md5($1 || substr(s.key, 3)))
              + (SELECT count(*) FROM public.global_secrets g
                 WHERE secretgate.read_global_secret(g.key) IS DISTINCT FROM md5($1 || 'g' || substr(g.key, 3)))",
    )
    .bind(&salt)
    .fetch_one(&mut conn)
    .await
    .described("read_secret after the rotation")?;
    ensure!(wrong == 0, "read_secret / read_global_secret return another plaintext for {wrong} rotated rows");

    // Independently of the server: version-3 ciphertexts open with the new key in the core.
    let (ws, key, blob, expected): (Uuid, String, Vec<u8>, String) = sqlx::query_as(
        "SELECT workspace_id, key, encrypted_value, md5($1 || substr(key, 3)) FROM public.workspace_secrets ORDER BY workspace_id, key LIMIT 1",
    )
    .bind(&salt)
    .fetch_one(&mut conn)
    .await
    .described("one row")?;
    ensure!(
        matches!(keys.keyring().decrypt(&blob, 3, Scope::Workspace(ws), &key), Ok(ref v) if *v == expected),
        "the core cannot open a rotated workspace row with key version 3"
    );
    let (key, blob, expected): (String, Vec<u8>, String) = sqlx::query_as(
        "SELECT key, encrypted_value, md5($1 || 'g' || substr(key, 3)) FROM public.global_secrets ORDER BY key LIMIT 1",
    )
    .bind(&salt)
    .fetch_one(&mut conn)
    .await
    .described("one global row")?;
    ensure!(
        matches!(keys.keyring().decrypt(&blob, 3, Scope::Global, &key), Ok(ref v) if *v == expected),
        "the core cannot open a rotated global row with key version 3"
    );

    // A third run has nothing to do.
    let third = run_cli(Some(&url), &["rotate"]).await?;
    ensure!(
        third.code == Some(0) && third.stdout.contains("nothing to re-encrypt"),
        "a third rotate has nothing to do:\n{third}"
    );

    let moved_first = on_v3;
    let moved_second = total - on_v3;
    eprintln!(
        "[rotate] first run: {moved_first} rows in {:.1}s (~{:.0} rows/s, killed); resumed run: {moved_second} rows + verification in {:.1}s (~{:.0} rows/s end to end)",
        first_secs.as_secs_f64(),
        rate(moved_first, first_secs),
        second.as_secs_f64(),
        rate(moved_second, second)
    );
    if let Some(line) = run_summary_line(&killed.stdout) {
        eprintln!("[rotate] killed run said: {line}");
    }
    eprintln!("[rotate] killed run stderr tail: {}", tail(&killed.stderr));
    eprintln!("[rotate] resumed run stderr tail: {}", tail(&run.stderr));
    eprintln!("[rotate] resumed run stdout:\n{}", run.stdout);
    Ok(())
}

fn run_summary_line(stdout: &str) -> Option<&str> {
    stdout.lines().find(|l| l.starts_with("key version"))
}

fn tail(text: &str) -> String {
    text.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
}

async fn concurrent_writers_are_not_blocked(cluster: Arc<Cluster>) -> Result<()> {
    let wanted = rows_wanted()?.min(40_000);
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("rot_conc")).await?;
    let salt = random_hex(8);
    let pop = populate(&cluster, &mut conn, &salt, wanted).await?;
    let total = pop.total();
    let targets: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT workspace_id, key FROM public.workspace_secrets ORDER BY workspace_id, key")
            .fetch_all(&mut conn)
            .await
            .described("list the workspace rows")?;
    let _keys = rotate_keyring(&cluster);

    let mut writer = PgConnection::connect(&url).await.context("writer connection")?;
    sqlx::query("SET lock_timeout = '2s'").execute(&mut writer).await.described("SET lock_timeout")?;

    // The default batch size: a writer waits at most for the batch holding its row.
    let mut running = spawn_cli(&url, &["rotate"])?;
    let started = Instant::now();
    let mut written: HashMap<(Uuid, String), String> = HashMap::new();
    let mut statements = 0u64;
    let mut failures: Vec<String> = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut iteration = 0u64;
    while !running.exited()? && started.elapsed() < Duration::from_secs(150) {
        iteration += 1;
        let pick = |salt_bytes: Vec<u8>| -> usize {
            let r = u64::from_le_bytes(salt_bytes[..8].try_into().expect("8 bytes"));
            (r % targets.len() as u64) as usize
        };
        // Every fourth iteration holds two rows locked for a moment (the rotation skips them).
        let hold = iteration.is_multiple_of(4);
        let picks: Vec<usize> = (0..if hold { 2 } else { 1 }).map(|_| pick(random_bytes(8))).collect();
        let t = Instant::now();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = writer.begin().await?;
            for &i in &picks {
                let (ws, key) = &targets[i];
                let value = cluster.fresh_secret();
                sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
                    .bind(ws)
                    .bind(key)
                    .bind(&value)
                    .execute(&mut *tx)
                    .await?;
                written.insert((*ws, key.clone()), value);
                statements += 1;
            }
            if hold {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        slowest = slowest.max(t.elapsed());
        if let Err(e) = result {
            // The rows written in a failed transaction did not change.
            for &i in &picks {
                written.remove(&targets[i]);
            }
            failures.push(describe(&e));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    let run = running.wait(Duration::from_secs(150)).await?;
    let elapsed = started.elapsed();
    ensure!(failures.is_empty(), "a concurrent writer failed during the rotation: {failures:?}");
    ensure!(run.code == Some(0), "rotate with a concurrent writer should exit 0:\n{run}");
    ensure!(
        statements >= 10,
        "the writer should have written during the rotation (only {statements} statements in {:.1}s)",
        elapsed.as_secs_f64()
    );
    ensure!(slowest < Duration::from_secs(2), "a writer transaction took {slowest:?}");
    eprintln!(
        "[rotate] concurrent writer: {statements} set_secret calls in {iteration} transactions over {:.1}s, slowest transaction {:.0} ms, none failed",
        elapsed.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0
    );

    let hist = histogram(&mut conn).await?;
    ensure!(hist == vec![(3, total)], "every row should be on version 3: {hist:?}");
    let changed: Vec<(Uuid, String)> = written.keys().cloned().collect();
    ensure!(mismatches(&mut conn, &salt, &changed).await? == 0, "rows the writer did not touch keep their plaintext");
    let mut wrong = 0;
    for ((ws, key), value) in &written {
        let got: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)")
            .bind(ws)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .described("read back")?;
        if got.as_deref() != Some(value.as_str()) {
            wrong += 1;
        }
    }
    ensure!(wrong == 0, "{wrong} of {} rows the writer set do not hold the last value written", written.len());
    Ok(())
}

async fn locked_rows_are_waited_for_then_reported(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("rot_lock")).await?;
    let salt = random_hex(8);
    let pop = populate(&cluster, &mut conn, &salt, 1000).await?;
    let total = pop.total();
    let _keys = rotate_keyring(&cluster);

    // Another transaction holds three old-version rows.
    let mut holder = PgConnection::connect(&url).await.context("holder connection")?;
    sqlx::query("BEGIN").execute(&mut holder).await.described("BEGIN")?;
    let held = sqlx::query("SELECT 1 FROM public.workspace_secrets WHERE key IN ('K_1', 'K_2', 'K_3') FOR UPDATE")
        .execute(&mut holder)
        .await
        .described("lock three rows")?;
    ensure!(held.rows_affected() == 3, "expected to lock 3 rows");

    let t = Instant::now();
    let run = run_cli(Some(&url), &["rotate", "--batch-size", "100", "--lock-wait", "1"]).await?;
    ensure!(run.code == Some(1), "rotate should give up on rows locked past --lock-wait (exit 1):\n{run}");
    ensure!(
        run.stderr.contains("3 secret(s) on older key versions stayed locked"),
        "rotate should say 3 rows stayed locked:\n{run}"
    );
    ensure!(t.elapsed() < Duration::from_secs(20), "giving up took {:?}", t.elapsed());
    let hist = histogram(&mut conn).await?;
    ensure!(
        hist.iter().find(|h| h.0 == 3).map(|h| h.1) == Some(total - 3),
        "all but the 3 locked rows moved: {hist:?}"
    );

    // Released while a second run waits: it finishes.
    let running = spawn_cli(&url, &["rotate", "--batch-size", "100", "--lock-wait", "30"])?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.described("COMMIT")?;
    let run = running.wait(Duration::from_secs(60)).await?;
    ensure!(run.code == Some(0), "rotate should finish once the rows are released:\n{run}");
    ensure!(
        run.stderr.contains("locked by other transactions; retrying"),
        "rotate should say it waits for locked rows:\n{run}"
    );
    let hist = histogram(&mut conn).await?;
    ensure!(hist == vec![(3, total)], "every row should be on version 3: {hist:?}");
    ensure!(mismatches(&mut conn, &salt, &[]).await? == 0, "every row keeps its plaintext");
    Ok(())
}

async fn undecryptable_row_stops_rotation_cleanly(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("rot_bad")).await?;
    let salt = random_hex(8);
    let pop = populate(&cluster, &mut conn, &salt, 1000).await?;
    let total = pop.total();
    let bad_ws: Uuid = sqlx::query_scalar("SELECT workspace_id FROM public.workspace_secrets WHERE key = 'K_500'")
        .fetch_one(&mut conn)
        .await
        .described("K_500")?;
    corrupt(&mut conn, "public.workspace_secrets", "workspace_id = $1 AND key = $2", Some(bad_ws), "K_500").await?;
    let values = sample_plaintexts(&mut conn, &salt).await?;
    let _keys = rotate_keyring(&cluster);

    let run = run_cli(Some(&url), &["rotate", "--batch-size", "50"]).await?;
    ensure!(run.code == Some(1), "rotate over an undecryptable row should exit 1:\n{run}");
    assert_no_values(&run, &values, "rotate")?;
    let ws_text = bad_ws.to_string();
    ensure!(
        run.stdout.lines().any(|l| l.contains(&ws_text) && l.contains("K_500") && l.contains("SG001")),
        "rotate should list the undecryptable row (workspace, key, SG001):\n{run}"
    );
    // One undecryptable row no longer stops the rotation: every other row moved.
    let hist = histogram(&mut conn).await?;
    ensure!(hist == vec![(2, 1), (3, total - 1)], "every row but the bad one should be on version 3: {hist:?}");
    ensure!(
        run.stdout.contains("1 secret(s) could not be decrypted and were left on their key version"),
        "rotate should say what it skipped:\n{run}"
    );
    let bad_version: i32 =
        sqlx::query_scalar("SELECT encryption_version FROM public.workspace_secrets WHERE key = 'K_500'")
            .fetch_one(&mut conn)
            .await
            .described("K_500 version")?;
    ensure!(bad_version == 2, "the undecryptable row keeps its version, got {bad_version}");
    let skip = vec![(bad_ws, "K_500".to_string())];
    ensure!(mismatches(&mut conn, &salt, &skip).await? == 0, "every other row still holds its plaintext");

    // Once the DBA deletes the row (and the version its delete kept, which
    // cannot be re-encrypted either), the rotation resumes and finishes.
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'K_500'")
        .bind(bad_ws)
        .execute(&mut conn)
        .await
        .described("delete the bad row")?;
    let run = run_cli(Some(&url), &["rotate", "--batch-size", "50"]).await?;
    ensure!(run.code == Some(1), "the deleted row's kept version still cannot be re-encrypted:\n{run}");
    let purged: i64 = sqlx::query_scalar("SELECT secretgate.purge_history($1, 'K_500')")
        .bind(bad_ws)
        .fetch_one(&mut conn)
        .await
        .described("purge the bad row's history")?;
    ensure!(purged == 1, "the delete kept one version, purged {purged}");
    let run = run_cli(Some(&url), &["rotate", "--batch-size", "50"]).await?;
    ensure!(run.code == Some(0), "rotate should finish once the bad row is gone:\n{run}");
    let hist = histogram(&mut conn).await?;
    ensure!(hist == vec![(3, total - 1)], "every row should be on version 3: {hist:?}");
    ensure!(mismatches(&mut conn, &salt, &[]).await? == 0, "every row keeps its plaintext");
    Ok(())
}
