//! Black-box tests of secret history and read audit: overwritten and
//! deleted secrets restored (SQL and `secretgate restore`) and read back; a
//! restore by an agent on its concierge refused with SG101 and nothing
//! changed; kept versions rotated by `secretgate rotate` so the old key
//! versions can leave the keyring with `secretgate verify` clean;
//! `purge_history` leaving no ciphertext of the key in any secretgate table;
//! a dump restored into a new database keeping history; and
//! `secretgate.audit_reads` (`all`: N reads from M sessions are N rows, no
//! value in any; `errors`: a corrupt row's read is one row, a good read none).
//!
//! Trials that rewrite the keyring run one at a time.

use anyhow::{ensure, Context, Result};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("history"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        overwritten_and_deleted_secrets_are_restored_and_read_back,
        an_agent_restoring_its_concierges_secret_is_refused_and_nothing_changes,
        kept_versions_rotate_and_old_key_versions_can_leave_the_keyring,
        purge_leaves_no_ciphertext_of_the_key_in_any_secretgate_table,
        a_restored_dump_keeps_history,
        audit_reads_all_makes_one_row_per_read_and_never_a_value,
        audit_reads_errors_records_a_corrupt_read_once_and_a_good_read_never,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

async fn workspace(conn: &mut PgConnection, kind: &str) -> Result<Uuid> {
    sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ($1) RETURNING id")
        .bind(kind)
        .fetch_one(&mut *conn)
        .await
        .described("insert workspace")
}

async fn set(conn: &mut PgConnection, ws: Uuid, key: &str, value: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
        .bind(ws)
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await
        .described("set_secret")?;
    Ok(())
}

async fn read(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)")
        .bind(ws)
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .described("read_secret")
}

/// (version, reason, state) of each kept version, newest first.
async fn versions(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<Vec<(i32, String, String)>> {
    sqlx::query_as("SELECT version, reason, state FROM secretgate.secret_versions($1, $2)")
        .bind(ws)
        .bind(key)
        .fetch_all(&mut *conn)
        .await
        .described("secret_versions")
}

async fn audit_mark(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM secretgate.audit_events")
        .fetch_one(&mut *conn)
        .await
        .described("audit mark")
}

/// The `secret.read` rows after `mark`, as text, once `want` of them are
/// there (and a moment more, to see that no extra row follows).
async fn read_rows(conn: &mut PgConnection, mark: i64, want: usize) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = || {
        sqlx::query_scalar::<_, String>(
            "SELECT to_jsonb(a)::text FROM secretgate.audit_events a WHERE id > $1 AND event = 'secret.read' ORDER BY id",
        )
        .bind(mark)
    };
    loop {
        let rows = query().fetch_all(&mut *conn).await.described("read audit rows")?;
        if rows.len() >= want {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return query().fetch_all(&mut *conn).await.described("read audit rows");
        }
        ensure!(Instant::now() < deadline, "{} secret.read rows after 60s, expected {want}", rows.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Flips a byte of one ciphertext with the gates detached (a corrupt row).
async fn corrupt(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut *conn).await.described("detach_gates")?;
    sqlx::query(
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 255) \
          WHERE workspace_id = $1 AND key = $2",
    )
    .bind(ws)
    .bind(key)
    .execute(&mut *conn)
    .await
    .described("corrupt a row")?;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut *conn)
    .await
    .described("attach_gates")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Trials

async fn overwritten_and_deleted_secrets_are_restored_and_read_back(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("h_restore")).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    let (first, second) = (cluster.fresh_secret(), cluster.fresh_secret());
    set(&mut conn, ws, "OPENAI_API_KEY", &first).await?;
    set(&mut conn, ws, "OPENAI_API_KEY", &second).await?;
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'OPENAI_API_KEY'")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("delete")?;
    let kept = versions(&mut conn, ws, "OPENAI_API_KEY").await?;
    let want = vec![(2, "delete".to_string(), "ok".to_string()), (1, "set".to_string(), "ok".to_string())];
    ensure!(kept == want, "kept versions {kept:?}, expected {want:?}");

    // The deleted secret, through the tool (which lists the versions without values).
    let listed = run_cli(Some(&url), &["history", "--workspace", &ws.to_string(), "--key", "OPENAI_API_KEY"]).await?;
    ensure!(listed.code == Some(0), "secretgate history: {listed}");
    ensure!(!listed.stdout.contains(&first) && !listed.stdout.contains(&second), "history printed a value");
    let restored = run_cli(
        Some(&url),
        &["restore", "--workspace", &ws.to_string(), "--key", "OPENAI_API_KEY", "--version", "2", "--yes"],
    )
    .await?;
    ensure!(restored.code == Some(0), "secretgate restore: {restored}");
    ensure!(
        read(&mut conn, ws, "OPENAI_API_KEY").await?.as_deref() == Some(second.as_str()),
        "deleted secret not back"
    );

    // The overwritten first value, through SQL.
    sqlx::query("SELECT secretgate.restore_secret($1, 'OPENAI_API_KEY', 1)")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("restore_secret")?;
    ensure!(read(&mut conn, ws, "OPENAI_API_KEY").await?.as_deref() == Some(first.as_str()), "first value not back");
    let newest = versions(&mut conn, ws, "OPENAI_API_KEY").await?.first().cloned();
    ensure!(newest == Some((3, "restore".into(), "ok".into())), "the restore is kept as version 3: {newest:?}");
    Ok(())
}

async fn an_agent_restoring_its_concierges_secret_is_refused_and_nothing_changes(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (_url, mut conn) = migrated_database(&cluster, &db_name("h_agent")).await?;
    let concierge = workspace(&mut conn, "platform").await?;
    let (one, two) = (cluster.fresh_secret(), cluster.fresh_secret());
    set(&mut conn, concierge, "ANTHROPIC_API_KEY", &one).await?;
    set(&mut conn, concierge, "ANTHROPIC_API_KEY", &two).await?;
    let kept_before = versions(&mut conn, concierge, "ANTHROPIC_API_KEY").await?;

    let mut tx = conn.begin().await.described("begin")?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("caller")?;
    let refused = sqlx::query("SELECT secretgate.restore_secret($1, 'ANTHROPIC_API_KEY', 1)")
        .bind(concierge)
        .execute(&mut *tx)
        .await
        .err()
        .context("an agent restored its concierge's secret")?;
    ensure!(sqlstate(&refused).as_deref() == Some("SG101"), "expected SG101, got {}", describe(&refused));
    tx.rollback().await.described("rollback")?;

    ensure!(versions(&mut conn, concierge, "ANTHROPIC_API_KEY").await? == kept_before, "history changed");
    ensure!(read(&mut conn, concierge, "ANTHROPIC_API_KEY").await?.as_deref() == Some(two.as_str()), "value changed");
    Ok(())
}

async fn kept_versions_rotate_and_old_key_versions_can_leave_the_keyring(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("h_rotate")).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    let values: Vec<String> = (0..4).map(|_| cluster.fresh_secret()).collect();
    for v in &values {
        set(&mut conn, ws, "K", v).await?;
    }
    sqlx::query("SELECT secretgate.set_global_secret('G', $1)")
        .bind(&values[0])
        .execute(&mut conn)
        .await
        .described("g")?;
    sqlx::query("SELECT secretgate.set_global_secret('G', $1)")
        .bind(&values[1])
        .execute(&mut conn)
        .await
        .described("g")?;

    let keys = rotate_keyring(&cluster);
    conn.close().await.ok();
    let rotated = run_cli(Some(&url), &["rotate"]).await?;
    ensure!(rotated.code == Some(0), "secretgate rotate: {rotated}");
    let mut conn = PgConnection::connect(&url).await.context("reconnect")?;
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM secretgate.secret_history WHERE encryption_version IS DISTINCT FROM 3",
    )
    .fetch_one(&mut conn)
    .await
    .described("stale history")?;
    ensure!(stale == 0, "{stale} kept versions are still on an old key version after rotate");

    // Only version 3 left in the keyring: everything, history included, still reads.
    cluster.write_keyring(&keys.without(1).without(2).to_json(), 0o600);
    conn.close().await.ok();
    let verified = run_cli(Some(&url), &["verify"]).await?;
    ensure!(verified.code == Some(0), "secretgate verify after dropping versions 1 and 2: {verified}");
    let mut conn = PgConnection::connect(&url).await.context("reconnect")?;
    let kept = versions(&mut conn, ws, "K").await?;
    ensure!(kept.len() == 3 && kept.iter().all(|k| k.2 == "ok"), "kept versions after rotation: {kept:?}");
    sqlx::query("SELECT secretgate.restore_secret($1, 'K', 1)")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("restore")?;
    ensure!(read(&mut conn, ws, "K").await?.as_deref() == Some(values[0].as_str()), "restored value after rotation");
    restore_baseline_keyring(&cluster);
    Ok(())
}

async fn purge_leaves_no_ciphertext_of_the_key_in_any_secretgate_table(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (_url, mut conn) = migrated_database(&cluster, &db_name("h_purge")).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    for _ in 0..3 {
        set(&mut conn, ws, "LEAKED_KEY", &cluster.fresh_secret()).await?;
    }
    set(&mut conn, ws, "OTHER", "stays").await?;
    set(&mut conn, ws, "OTHER", "stays too").await?;
    // Every ciphertext LEAKED_KEY ever had here: the kept ones and the current one.
    let mut ciphertexts: Vec<String> = sqlx::query_scalar(
        "SELECT encode(encrypted_value, 'hex') FROM secretgate.secret_history WHERE workspace_id = $1 AND key = 'LEAKED_KEY'",
    )
    .bind(ws)
    .fetch_all(&mut conn)
    .await
    .described("kept ciphertexts")?;
    ensure!(ciphertexts.len() == 2, "two kept versions expected, got {}", ciphertexts.len());
    let current: String = sqlx::query_scalar(
        "SELECT encode(encrypted_value, 'hex') FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'LEAKED_KEY'",
    )
    .bind(ws)
    .fetch_one(&mut conn)
    .await
    .described("current ciphertext")?;
    ciphertexts.push(current);

    let purged: i64 = sqlx::query_scalar("SELECT secretgate.purge_history($1, 'LEAKED_KEY')")
        .bind(ws)
        .fetch_one(&mut conn)
        .await
        .described("purge_history")?;
    ensure!(purged == 2, "purge_history removed {purged}, expected 2");
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'LEAKED_KEY'")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("delete the leaked key")?;
    // Deleting it kept its last value: purge that too.
    let purged: i64 = sqlx::query_scalar("SELECT secretgate.purge_history($1, 'LEAKED_KEY')")
        .bind(ws)
        .fetch_one(&mut conn)
        .await
        .described("purge_history")?;
    ensure!(purged == 1, "the deleted row's kept version: purged {purged}");

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'secretgate'::regnamespace AND c.relkind = 'r'",
    )
    .fetch_all(&mut conn)
    .await
    .described("secretgate tables")?;
    ensure!(tables.iter().any(|t| t.contains("secret_history")), "no history table among {tables:?}");
    for table in &tables {
        for (i, hex) in ciphertexts.iter().enumerate() {
            let found: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table} t WHERE strpos(t::text, $1) > 0"))
                    .bind(hex)
                    .fetch_one(&mut conn)
                    .await
                    .described("scan")?;
            ensure!(found == 0, "{table} still holds ciphertext #{i} of the purged key");
        }
    }
    ensure!(versions(&mut conn, ws, "OTHER").await?.len() == 1, "another key's history was purged too");
    let purges: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE event = 'history.purged'")
        .fetch_one(&mut conn)
        .await
        .described("purge events")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut purges = purges;
    while purges < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        purges = sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE event = 'history.purged'")
            .fetch_one(&mut conn)
            .await
            .described("purge events")?;
    }
    ensure!(purges == 2, "{purges} history.purged audit events, expected 2");
    Ok(())
}

async fn a_restored_dump_keeps_history(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let source = db_name("h_dump_src");
    let (_url, mut conn) = migrated_database(&cluster, &source).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    let (one, two, three) = (cluster.fresh_secret(), cluster.fresh_secret(), cluster.fresh_secret());
    for v in [&one, &two, &three] {
        set(&mut conn, ws, "K", v).await?;
    }
    let want = versions(&mut conn, ws, "K").await?;
    ensure!(want.len() == 2, "two kept versions before the dump: {want:?}");

    let port = cluster.port().to_string();
    let file = cluster.dir().join(format!("{source}.sql"));
    let file = file.to_str().context("dump path")?;
    let target = db_name("h_dump_dst");
    let target_url = cluster.create_database(&target);
    let run = |program: &str, args: &[&str]| -> Result<()> {
        let out = Command::new(pg_bin().join(program)).args(args).output().with_context(|| format!("run {program}"))?;
        ensure!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    run("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-f", file, &source])?;
    run(
        "psql",
        &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", file, &target],
    )?;

    let mut restored = PgConnection::connect(&target_url).await.context("connect to the restored database")?;
    let got = versions(&mut restored, ws, "K").await?;
    ensure!(got == want, "kept versions after restore {got:?}, expected {want:?}");
    // History goes on where it was, and its versions still restore.
    set(&mut restored, ws, "K", &cluster.fresh_secret()).await?;
    ensure!(versions(&mut restored, ws, "K").await?.first().map(|v| v.0) == Some(3), "numbering goes on after restore");
    sqlx::query("SELECT secretgate.restore_secret($1, 'K', 1)")
        .bind(ws)
        .execute(&mut restored)
        .await
        .described("restore")?;
    ensure!(read(&mut restored, ws, "K").await?.as_deref() == Some(one.as_str()), "version 1 after the dump");
    Ok(())
}

async fn audit_reads_all_makes_one_row_per_read_and_never_a_value(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (url, mut conn) = migrated_database(&cluster, &db_name("h_reads")).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    let value = cluster.fresh_secret();
    set(&mut conn, ws, "K", &value).await?;
    let mark = audit_mark(&mut conn).await?;
    const SESSIONS: usize = 4;
    const READS: usize = 25;
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = PgConnection::connect(&url).await.context("connect")?;
            sqlx::query("SET secretgate.audit_reads = 'all'").execute(&mut c).await.described("set audit_reads")?;
            sqlx::query(&format!("SET application_name = 'reader-{s}'")).execute(&mut c).await.described("app")?;
            for i in 0..READS {
                // One unset read in every session, the rest values.
                let key = if i == 0 { "MISSING" } else { "K" };
                read(&mut c, ws, key).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("reader task")??;
    }
    let rows = read_rows(&mut conn, mark, SESSIONS * READS).await?;
    ensure!(rows.len() == SESSIONS * READS, "{} secret.read rows for {} reads", rows.len(), SESSIONS * READS);
    ensure!(rows.iter().all(|r| !r.contains(&value)), "an audit row holds the value");
    let unset = rows.iter().filter(|r| r.contains("\"reason\": \"unset\"")).count();
    ensure!(unset == SESSIONS, "{unset} unset reads recorded, expected {SESSIONS}");
    ensure!(rows.iter().all(|r| r.contains("reader-")), "application_name missing from a row");
    Ok(())
}

async fn audit_reads_errors_records_a_corrupt_read_once_and_a_good_read_never(cluster: Arc<Cluster>) -> Result<()> {
    restore_baseline_keyring(&cluster);
    let (_url, mut conn) = migrated_database(&cluster, &db_name("h_errors")).await?;
    let ws = workspace(&mut conn, "workspace").await?;
    set(&mut conn, ws, "GOOD", "good").await?;
    set(&mut conn, ws, "BAD", "bad").await?;
    corrupt(&mut conn, ws, "BAD").await?;
    let mode: String =
        sqlx::query_scalar("SHOW secretgate.audit_reads").fetch_one(&mut conn).await.described("show")?;
    ensure!(mode == "errors", "the default is errors, got {mode}");
    let mark = audit_mark(&mut conn).await?;
    ensure!(read(&mut conn, ws, "GOOD").await?.as_deref() == Some("good"), "good read");
    let failed = read(&mut conn, ws, "BAD").await.err().context("the corrupt row read")?;
    ensure!(failed.to_string().contains("SG001"), "expected SG001: {failed}");
    let rows = read_rows(&mut conn, mark, 1).await?;
    ensure!(rows.len() == 1, "{} secret.read rows, expected one: {rows:?}", rows.len());
    ensure!(rows[0].contains("\"sqlstate\": \"SG001\"") && rows[0].contains("\"key\": \"BAD\""), "row {}", rows[0]);
    Ok(())
}
