//! Black-box test of read replicas (issue 6, item 6): a hot standby made with
//! `pg_basebackup -R` from a primary holding workspace and global secrets and
//! one corrupt row, on the same keyring file. On the standby reads give the
//! primary's plaintexts and the three states (value / unset / error, never
//! "unset" for the corrupt row), verification finds exactly the corrupt row,
//! a later write on the primary shows up once replayed, and every write fails
//! with Postgres' own read-only error 25006 (not XX000, not an SG code).

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::{Code, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const REPLAY_LIMIT: Duration = Duration::from_secs(60);

/// What the primary holds, as the trials expect to find it on the standby.
struct Fixture {
    db: String,
    standby_url: String,
    /// (workspace, key, value) readable rows.
    secrets: Vec<(Uuid, String, String)>,
    /// (key, value) global rows.
    globals: Vec<(String, String)>,
    /// The ordinary workspaces, the platform one with a MODEL, one without.
    ws_a: Uuid,
    ws_b: Uuid,
    platform: Uuid,
    bare_platform: Uuid,
    /// The row whose ciphertext was corrupted (one byte flipped).
    corrupt: (Uuid, String),
}

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("replica"));
    let (standby, fixture) = match setup(&cluster) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("setting up the primary and its standby failed: {e:#}");
            finish(
                cluster,
                libtest_mimic::Conclusion {
                    num_filtered_out: 0,
                    num_passed: 0,
                    num_failed: 1,
                    num_ignored: 0,
                    num_measured: 0,
                },
            )
        }
    };
    let fixture = Arc::new(fixture);
    let t = |name: &str, body: fn(Arc<Cluster>, Arc<Fixture>) -> futures_box::BoxFut| {
        let f = Arc::clone(&fixture);
        trial(name, &cluster, move |c| body(c, f))
    };
    let trials = vec![
        t("standby_reads_give_the_primary_plaintexts", |c, f| Box::pin(reads_match_primary(c, f))),
        t("standby_try_read_secret_value_unset_error", |c, f| Box::pin(three_states(c, f))),
        t("standby_verify_secrets_lists_exactly_the_corrupt_row", |c, f| Box::pin(verify_lists_the_corrupt_row(c, f))),
        t("primary_write_is_visible_on_the_standby_after_replay", |c, f| Box::pin(write_visible_after_replay(c, f))),
        t("standby_writes_fail_with_25006", |c, f| Box::pin(writes_fail_read_only(c, f))),
        t("standby_read_only_helpers_work_under_repeatable_read", |c, f| {
            Box::pin(read_helpers_under_repeatable_read(c, f))
        }),
    ];
    let conclusion = libtest_mimic::run(&args, trials);

    let mut failed = conclusion.has_failed();
    for problem in leaks_in(&cluster, &standby.log_contents(), "the standby's server.log") {
        eprintln!("standby log check FAILED: {problem}");
        failed = true;
    }
    if failed {
        standby.stop();
        eprintln!(
            "standby kept for inspection: {} (server log: {})",
            standby.dir().display(),
            standby.log_path().display()
        );
        let failed_once = libtest_mimic::Conclusion { num_failed: conclusion.num_failed.max(1), ..conclusion };
        finish(cluster, failed_once)
    }
    standby.destroy();
    finish(cluster, conclusion)
}

mod futures_box {
    pub type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;
}

/// The primary's data (secrets set through set_secret / set_global_secret
/// with bind parameters, one row corrupted with the gates detached), then
/// the standby, caught up.
fn setup(cluster: &Arc<Cluster>) -> Result<(Standby, Fixture)> {
    let cluster = Arc::clone(cluster);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let db = db_name("replica");
        let (_url, mut conn) = migrated_database(&cluster, &db).await?;
        let mut ids = Vec::new();
        for (kind, status) in [("workspace", "offline"), ("workspace", "offline"), ("platform", "offline"), ("platform", "offline")] {
            let id: Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind, status) VALUES ($1, $2) RETURNING id")
                .bind(kind)
                .bind(status)
                .fetch_one(&mut conn)
                .await
                .described("insert a workspace")?;
            ids.push(id);
        }
        let (ws_a, ws_b, platform, bare_platform) = (ids[0], ids[1], ids[2], ids[3]);
        let model = format!("anthropic:claude-opus-4-7-{}", random_hex(3));
        let mut secrets = vec![(platform, "MODEL".to_string(), model)];
        for (ws, key) in [(ws_a, "ANTHROPIC_API_KEY"), (ws_a, "BB_TOKEN"), (ws_b, "BB_TOKEN"), (ws_b, "OPENAI_API_KEY")] {
            secrets.push((ws, key.to_string(), cluster.fresh_secret()));
        }
        for (ws, key, value) in &secrets {
            sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
                .bind(ws)
                .bind(key)
                .bind(value)
                .execute(&mut conn)
                .await
                .described("set_secret")?;
        }
        let globals: Vec<(String, String)> =
            ["OPENAI_API_KEY", "BB_GLOBAL"].iter().map(|k| (k.to_string(), cluster.fresh_secret())).collect();
        for (key, value) in &globals {
            sqlx::query("SELECT secretgate.set_global_secret($1, $2)")
                .bind(key)
                .bind(value)
                .execute(&mut conn)
                .await
                .described("set_global_secret")?;
        }
        // The corrupt row: written like the others, then one byte flipped with the gates detached.
        let corrupt = (ws_b, "BB_CORRUPT".to_string());
        sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
            .bind(corrupt.0)
            .bind(&corrupt.1)
            .bind(cluster.fresh_secret())
            .execute(&mut conn)
            .await
            .described("set_secret of the row to corrupt")?;
        sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach_gates")?;
        let flipped = sqlx::query(
            "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 255) \
             WHERE workspace_id = $1 AND key = $2",
        )
        .bind(corrupt.0)
        .bind(&corrupt.1)
        .execute(&mut conn)
        .await
        .described("corrupt a row")?;
        ensure!(flipped.rows_affected() == 1, "corrupting touched {} rows", flipped.rows_affected());
        sqlx::query("SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')")
            .execute(&mut conn)
            .await
            .described("attach_gates")?;

        let standby = Standby::start(&cluster, "replica").context("start the standby")?;
        let standby_url = standby.url(&db);
        let mut replica = PgConnection::connect(&standby_url).await.context("connect to the standby")?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut replica).await.described("recovery")?;
        ensure!(in_recovery, "the standby is not in recovery");
        wait_for_replay(&mut conn, &mut replica, REPLAY_LIMIT).await?;
        Ok((standby, Fixture { db, standby_url, secrets, globals, ws_a, ws_b, platform, bare_platform, corrupt }))
    })
}

async fn standby(f: &Fixture) -> Result<PgConnection> {
    PgConnection::connect(&f.standby_url).await.context("connect to the standby")
}

async fn primary(cluster: &Cluster, f: &Fixture) -> Result<PgConnection> {
    PgConnection::connect(&cluster.url(&f.db)).await.context("connect to the primary")
}

async fn read_secret(conn: &mut PgConnection, ws: Uuid, key: &str) -> std::result::Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)").bind(ws).bind(key).fetch_one(conn).await
}

async fn read_global(conn: &mut PgConnection, key: &str) -> std::result::Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_global_secret($1)").bind(key).fetch_one(conn).await
}

async fn reads_match_primary(cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let (mut p, mut s) = (primary(&cluster, &f).await?, standby(&f).await?);
    for (ws, key, value) in &f.secrets {
        let on_primary = read_secret(&mut p, *ws, key).await.described("read_secret on the primary")?;
        let on_standby = read_secret(&mut s, *ws, key).await.described("read_secret on the standby")?;
        ensure!(on_primary.as_deref() == Some(value.as_str()), "primary: {key} of {ws} is not the value set");
        ensure!(on_standby == on_primary, "standby: {key} of {ws} differs from the primary");
    }
    for (key, value) in &f.globals {
        let on_primary = read_global(&mut p, key).await.described("read_global_secret on the primary")?;
        let on_standby = read_global(&mut s, key).await.described("read_global_secret on the standby")?;
        ensure!(on_primary.as_deref() == Some(value.as_str()), "primary: global {key} is not the value set");
        ensure!(on_standby == on_primary, "standby: global {key} differs from the primary");
    }
    Ok(())
}

type ThreeState = (String, Option<String>, Option<String>);

async fn try_read(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<ThreeState> {
    sqlx::query_as("SELECT state, value, error_code FROM secretgate.try_read_secret($1, $2)")
        .bind(ws)
        .bind(key)
        .fetch_one(conn)
        .await
        .described("try_read_secret")
}

async fn three_states(cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let mut s = standby(&f).await?;
    let (ws, key, value) = &f.secrets[1];
    let got = try_read(&mut s, *ws, key).await?;
    ensure!(
        got.0 == "value" && got.1.as_deref() == Some(value.as_str()) && got.2.is_none(),
        "a stored row: state {:?}, error {:?}",
        got.0,
        got.2
    );

    let got = try_read(&mut s, f.ws_a, "BB_NEVER_SET").await?;
    ensure!(got == ("unset".to_string(), None, None), "a missing key: state {:?}, error {:?}", got.0, got.2);
    ensure!(
        read_secret(&mut s, f.ws_a, "BB_NEVER_SET").await.described("read_secret of a missing key")?.is_none(),
        "missing key reads as a value"
    );

    let (cws, ckey) = &f.corrupt;
    let got = try_read(&mut s, *cws, ckey).await?;
    ensure!(
        got == ("error".to_string(), None, Some("SG001".to_string())),
        "the corrupt row: state {:?}, error {:?} (must be error SG001)",
        got.0,
        got.2
    );
    let e = expect_sg(read_secret(&mut s, *cws, ckey).await, Code::DecryptFailed)
        .context("read_secret of the corrupt row on the standby")?;
    ensure!(e.field("workspace_id").as_deref() == Some(cws.to_string().as_str()), "SG001 names the workspace: {e}");
    e.assert_no_leak(&cluster.secrets().iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

async fn verify_lists_the_corrupt_row(_cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let mut s = standby(&f).await?;
    let rows: Vec<(Option<Uuid>, String, String, Option<String>)> =
        sqlx::query_as("SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()")
            .fetch_all(&mut s)
            .await
            .described("verify_secrets on the standby")?;
    let errors: Vec<_> = rows.iter().filter(|r| r.2 != "ok").cloned().collect();
    let want = vec![(Some(f.corrupt.0), f.corrupt.1.clone(), "error".to_string(), Some("SG001".to_string()))];
    ensure!(
        errors == want,
        "verify_secrets on the standby should list exactly the corrupt row as SG001, got {errors:?}"
    );
    for (ws, key, _) in &f.secrets {
        ensure!(rows.iter().any(|r| r.0 == Some(*ws) && &r.1 == key && r.2 == "ok"), "{key} of {ws} missing or not ok");
    }
    for (key, _) in &f.globals {
        ensure!(rows.iter().any(|r| r.0.is_none() && &r.1 == key && r.2 == "ok"), "global {key} missing or not ok");
    }
    Ok(())
}

async fn write_visible_after_replay(cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let (mut p, mut s) = (primary(&cluster, &f).await?, standby(&f).await?);
    let key = format!("BB_LATER_{}", random_hex(3).to_uppercase());
    let (value, global) = (cluster.fresh_secret(), cluster.fresh_secret());
    ensure!(
        read_secret(&mut s, f.ws_a, &key).await.described("before")?.is_none(),
        "the key exists before it was written"
    );
    sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
        .bind(f.ws_a)
        .bind(&key)
        .bind(&value)
        .execute(&mut p)
        .await
        .described("set_secret")?;
    sqlx::query("SELECT secretgate.set_global_secret($1, $2)")
        .bind(&key)
        .bind(&global)
        .execute(&mut p)
        .await
        .described("set_global_secret")?;
    wait_for_replay(&mut p, &mut s, REPLAY_LIMIT).await?;
    let got = read_secret(&mut s, f.ws_a, &key).await.described("read_secret after replay")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the replayed workspace secret does not read back on the standby");
    let got = read_global(&mut s, &key).await.described("read_global_secret after replay")?;
    ensure!(got.as_deref() == Some(global.as_str()), "the replayed global secret does not read back on the standby");
    let got = try_read(&mut s, f.ws_a, &key).await?;
    ensure!(
        got.0 == "value" && got.1.as_deref() == Some(value.as_str()),
        "try_read_secret after replay: state {:?}",
        got.0
    );
    Ok(())
}

async fn writes_fail_read_only(cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let mut s = standby(&f).await?;
    let value = cluster.fresh_secret();
    let (version, blob) = cluster
        .initial_keys()
        .keyring()
        .encrypt(value.as_bytes(), Scope::Workspace(f.ws_a), "BB_STANDBY")
        .map_err(|e| anyhow::anyhow!("core encrypt: {e}"))?;
    let insert = format!(
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'BB_STANDBY', $2, {version})"
    );
    let attempts: Vec<(&str, &str, Vec<Arg>)> = vec![
        (
            "set_secret",
            "SELECT secretgate.set_secret($1, 'BB_STANDBY', $2)",
            vec![Arg::Id(f.ws_a), Arg::Text(value.clone())],
        ),
        ("set_global_secret", "SELECT secretgate.set_global_secret('BB_STANDBY', $1)", vec![Arg::Text(value.clone())]),
        ("plain INSERT into workspace_secrets", &insert, vec![Arg::Id(f.ws_a), Arg::Bytes(blob)]),
        (
            "DELETE from workspace_secrets",
            "DELETE FROM public.workspace_secrets WHERE workspace_id = $1",
            vec![Arg::Id(f.ws_b)],
        ),
        ("UPDATE workspaces", "UPDATE public.workspaces SET status = 'online' WHERE id = $1", vec![Arg::Id(f.ws_a)]),
        ("register_workspace", "SELECT * FROM secretgate.register_workspace($1)", vec![Arg::Id(f.ws_a)]),
        (
            "register_workspace of a platform workspace without MODEL",
            "SELECT * FROM secretgate.register_workspace($1)",
            vec![Arg::Id(f.bare_platform)],
        ),
        ("record_liveness", "SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)", vec![Arg::Id(f.ws_a)]),
        ("reencrypt", "SELECT secretgate.reencrypt(100)", vec![]),
        ("rename_secret_key", "SELECT secretgate.rename_secret_key('BB_TOKEN', 'BB_RENAMED')", vec![]),
        (
            "ensure_concierge_model (seeding)",
            "SELECT secretgate.ensure_concierge_model($1, 'anthropic:claude-opus-4-7')",
            vec![Arg::Id(f.bare_platform)],
        ),
        (
            "ensure_concierge_provider (seeding)",
            "SELECT secretgate.ensure_concierge_provider($1)",
            vec![Arg::Id(f.bare_platform)],
        ),
        ("detach_gates", "SELECT secretgate.detach_gates()", vec![]),
    ];
    let mut wrong = Vec::new();
    for (what, sql, args) in &attempts {
        match expect_sqlstate(execute_with(&mut s, sql, args).await, "25006") {
            Ok(e) => e.assert_no_leak(&[&value]).with_context(|| what.to_string())?,
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    // An agent caller is refused the same way for an ordinary workspace.
    sqlx::query("SET secretgate.caller = 'agent'").execute(&mut s).await.described("caller agent")?;
    if let Err(e) = expect_sqlstate(execute_with(&mut s, attempts[0].1, &attempts[0].2).await, "25006") {
        wrong.push(format!("set_secret as an agent: {e:#}"));
    }
    if !wrong.is_empty() {
        bail!("writes on the standby must fail with 25006:\n{}", wrong.join("\n"));
    }
    // Nothing reached the primary either.
    let mut p = primary(&cluster, &f).await?;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.workspace_secrets WHERE key IN ('BB_STANDBY', 'BB_RENAMED')")
            .fetch_one(&mut p)
            .await
            .described("count")?;
    ensure!(n == 0, "a standby write reached the primary");
    Ok(())
}

/// Reading helpers that lock rows when they can write (has_model_secret under
/// REPEATABLE READ) only read on a standby.
async fn read_helpers_under_repeatable_read(_cluster: Arc<Cluster>, f: Arc<Fixture>) -> Result<()> {
    let mut s = standby(&f).await?;
    // (A hot standby refuses SERIALIZABLE itself, 0A000.)
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        let mut tx = s.begin().await.described("BEGIN")?;
        sqlx::query(&format!("SET TRANSACTION ISOLATION LEVEL {isolation}"))
            .execute(&mut *tx)
            .await
            .described("isolation")?;
        let has: bool = sqlx::query_scalar("SELECT secretgate.has_model_secret($1)")
            .bind(f.platform)
            .fetch_one(&mut *tx)
            .await
            .described(&format!("has_model_secret under {isolation} on the standby"))?;
        ensure!(has, "has_model_secret under {isolation}: the MODEL is usable");
        let has: bool = sqlx::query_scalar("SELECT secretgate.has_model_secret($1)")
            .bind(f.bare_platform)
            .fetch_one(&mut *tx)
            .await
            .described(&format!("has_model_secret (no MODEL) under {isolation} on the standby"))?;
        ensure!(!has, "has_model_secret under {isolation}: no MODEL");
        let outcome: String =
            sqlx::query_scalar("SELECT secretgate.ensure_concierge_model($1, 'anthropic:claude-opus-4-7')")
                .bind(f.platform)
                .fetch_one(&mut *tx)
                .await
                .described("ensure_concierge_model of a platform with a MODEL")?;
        ensure!(outcome == "respected", "ensure_concierge_model with a MODEL: {outcome}");
        let present: bool = sqlx::query_scalar("SELECT secretgate.byok_credential_present($1, 'anthropic')")
            .bind(f.ws_a)
            .fetch_one(&mut *tx)
            .await
            .described("byok_credential_present")?;
        ensure!(present, "byok_credential_present on the standby");
        tx.rollback().await.described("ROLLBACK")?;
    }
    Ok(())
}
