//! Black-box tests of whose error an error is (CONTRACT §4, "errors Postgres
//! raises itself inside a gate keep their own SQLSTATE"; extension 0.4.0):
//! an application's own trigger on an attached table refusing a write made
//! by `set_secret`, `set_global_secret`, `rename_secret_key`, `reencrypt` or
//! `register_workspace` keeps its SQLSTATE, message and hint (never XX000,
//! never a value or ciphertext in the DETAIL); a gate refusal raised inside
//! `register_workspace` by a racing change keeps its code; and a trigger
//! function called directly is refused with a standard SQLSTATE.
//! Each trial has its own database, so they run in parallel.

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::{Code, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("errors"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        app_trigger_error_keeps_its_sqlstate_through_set_secret,
        app_trigger_error_keeps_its_sqlstate_through_set_global_secret,
        app_trigger_error_keeps_its_sqlstate_through_rename_secret_key,
        app_trigger_error_keeps_its_sqlstate_through_reencrypt,
        app_trigger_error_keeps_its_sqlstate_through_register_workspace,
        register_workspace_racing_model_delete_under_immediate_constraints_is_sg102,
        register_workspace_racing_a_second_session_never_goes_online,
        model_delete_racing_register_workspace_waits_then_is_sg102,
        trigger_functions_called_directly_are_refused,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// The application's own triggers

const APP_MESSAGE: &str = "app says no";
const APP_HINT: &str = "app hint";

/// An application trigger `bb_app_says_no` on `table` (`timing`, e.g.
/// `BEFORE INSERT OR UPDATE OR DELETE`) raising `app says no` with SQLSTATE
/// `code` and HINT `app hint`, as PL/pgSQL does.
async fn app_trigger(conn: &mut PgConnection, table: &str, timing: &str, code: &str) -> Result<()> {
    assert!(code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric()), "a SQLSTATE: {code:?}");
    let function = format!("public.bb_app_says_no_{}", code.to_lowercase());
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION '{APP_MESSAGE}' USING ERRCODE = '{code}', HINT = '{APP_HINT}';
         END $$;
         CREATE TRIGGER bb_app_says_no {timing} ON {table} FOR EACH ROW EXECUTE FUNCTION {function}();"
    ))
    .execute(conn)
    .await
    .described(&format!("the application's trigger on {table}"))?;
    Ok(())
}

/// Expects the application's error: SQLSTATE `code`, its message and hint,
/// and a DETAIL (if any) without `needles` or anything like a ciphertext.
fn expect_app_error<T>(result: std::result::Result<T, sqlx::Error>, code: &str, needles: &[&str]) -> Result<DbError> {
    let e = expect_sqlstate(result, code)?;
    ensure!(e.message == APP_MESSAGE, "the application's message should come through unchanged: {e}");
    ensure!(e.hint.as_deref() == Some(APP_HINT), "the application's hint should come through unchanged: {e}");
    e.assert_no_leak(needles)?;
    e.assert_no_ciphertext()?;
    Ok(e)
}

/// Every stored ciphertext of `db`, hex-encoded, for leak checks.
async fn stored_ciphertexts(db: &Db) -> Result<Vec<String>> {
    let state = db.state().await?;
    Ok(state.secrets.values().chain(state.globals.values()).map(|(_, blob)| hex::encode(blob)).collect())
}

/// Runs `ops` (superuser, `secretgate.caller` unset) and expects the
/// application's `code`, with no change to any table.
async fn refused_by_app(db: &mut Db, ops: &[Op<'_>], code: &str, values: &[&str]) -> Result<DbError> {
    let before = db.state().await?;
    let ciphertexts = stored_ciphertexts(db).await?;
    let what = format!("[{}]", ops_label(ops));
    let r = run_tx(&mut db.conn, &db.kr, UNSET, ops).await;
    let e = match r {
        Ok(()) => bail!("{what}: expected the application's {code}, but it committed"),
        Err((At::Statement, err)) => err,
        Err((At::Commit, err)) => {
            bail!("{what}: expected {code} from the statement, got at COMMIT: {}", describe(&err))
        }
    };
    let mut needles: Vec<&str> = values.to_vec();
    needles.extend(ciphertexts.iter().map(String::as_str));
    let e = expect_app_error::<()>(Err(e), code, &needles).with_context(|| what.clone())?;
    let after = db.state().await?;
    ensure!(before == after, "{what}: refused with {code}, yet the tables changed: {}", before.diff(&after));
    Ok(e)
}

const SECRETS_WRITES: &str = "BEFORE INSERT OR UPDATE OR DELETE";

async fn app_trigger_error_keeps_its_sqlstate_through_set_secret(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_set").await?;
    let ws = db.workspace("workspace", "provisioning").await?;
    let old = cluster.fresh_secret();
    db.set(ws, "BB_TOKEN", &old).await?;
    app_trigger(&mut db.conn, "public.workspace_secrets", SECRETS_WRITES, "AB001").await?;
    let v = cluster.fresh_secret();
    // A new row (INSERT) and an existing one (the upsert's UPDATE).
    refused_by_app(&mut db, &[Op::SetSecret(ws, "BB_NEW", &v)], "AB001", &[&v, &old]).await?;
    refused_by_app(&mut db, &[Op::SetSecret(ws, "BB_TOKEN", &v)], "AB001", &[&v, &old]).await?;
    db.expect_value(ws, "BB_TOKEN", &old, "after the refused set_secret").await
}

async fn app_trigger_error_keeps_its_sqlstate_through_set_global_secret(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_setg").await?;
    let old = cluster.fresh_secret();
    db.allowed(UNSET, &[Op::SetGlobal("BB_GTOKEN", &old)]).await?;
    app_trigger(&mut db.conn, "public.global_secrets", SECRETS_WRITES, "AB001").await?;
    let v = cluster.fresh_secret();
    refused_by_app(&mut db, &[Op::SetGlobal("BB_GNEW", &v)], "AB001", &[&v, &old]).await?;
    refused_by_app(&mut db, &[Op::SetGlobal("BB_GTOKEN", &v)], "AB001", &[&v, &old]).await?;
    let got = db.read_global("BB_GTOKEN").await?;
    ensure!(got.as_deref() == Some(old.as_str()), "the global secret changed after the refused set_global_secret");
    Ok(())
}

async fn app_trigger_error_keeps_its_sqlstate_through_rename_secret_key(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_rename").await?;
    let ws = db.workspace("workspace", "provisioning").await?;
    let v = cluster.fresh_secret();
    db.set(ws, "BB_OLD_NAME", &v).await?;
    app_trigger(&mut db.conn, "public.workspace_secrets", SECRETS_WRITES, "AB001").await?;
    refused_by_app(
        &mut db,
        &[Op::Sql("SELECT secretgate.rename_secret_key('BB_OLD_NAME', 'BB_NEW_NAME')")],
        "AB001",
        &[&v],
    )
    .await?;
    db.expect_value(ws, "BB_OLD_NAME", &v, "after the refused rename").await?;
    ensure!(db.read(ws, "BB_NEW_NAME").await?.is_none(), "the refused rename wrote BB_NEW_NAME");
    Ok(())
}

async fn app_trigger_error_keeps_its_sqlstate_through_reencrypt(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_reenc").await?;
    let ws = db.workspace("workspace", "provisioning").await?;
    let v = cluster.fresh_secret();
    // A row an application wrote before the rotation to version 2: version 1.
    let old_keys = cluster.initial_keys().at_version(1).keyring();
    let (version, blob) =
        old_keys.encrypt(v.as_bytes(), Scope::Workspace(ws), "BB_OLD").map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(version == 1, "the fixture encrypts under version 1");
    execute_with(
        &mut db.conn,
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'BB_OLD', $2, 1)",
        &[Arg::Id(ws), Arg::Bytes(blob)],
    )
    .await
    .described("a row under key version 1")?;
    app_trigger(&mut db.conn, "public.workspace_secrets", SECRETS_WRITES, "AB001").await?;
    refused_by_app(&mut db, &[Op::Sql("SELECT secretgate.reencrypt(10)")], "AB001", &[&v]).await?;
    let state = db.state().await?;
    ensure!(
        state.secrets.get(&(ws, "BB_OLD".to_string())).map(|b| b.0) == Some(1),
        "the refused reencrypt moved the row off version 1"
    );
    db.expect_value(ws, "BB_OLD", &v, "after the refused reencrypt").await
}

async fn app_trigger_error_keeps_its_sqlstate_through_register_workspace(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_register").await?;
    let model = model_value(&cluster);
    let ordinary = db.workspace("workspace", "provisioning").await?;
    let platform = db.platform("provisioning", Some(&model)).await?;
    let bare = db.platform("provisioning", None).await?;
    app_trigger(&mut db.conn, "public.workspaces", "BEFORE UPDATE", "AB002").await?;
    // Success paths (status 'online') and the reported failure path (status 'failed').
    for (ws, what) in [
        (ordinary, "an ordinary workspace"),
        (platform, "a platform workspace with its MODEL"),
        (bare, "a platform workspace without MODEL"),
    ] {
        refused_by_app(&mut db, &[Op::Ws("SELECT * FROM secretgate.register_workspace($1)", ws)], "AB002", &[&model])
            .await
            .with_context(|| format!("register_workspace of {what}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A gate refusal raised by a racing change inside register_workspace

async fn register(conn: &mut PgConnection, ws: Uuid) -> std::result::Result<(String, Option<String>), sqlx::Error> {
    sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)").bind(ws).fetch_one(conn).await
}

async fn status_of(conn: &mut PgConnection, ws: Uuid) -> Result<String> {
    sqlx::query_scalar("SELECT status FROM public.workspaces WHERE id = $1")
        .bind(ws)
        .fetch_one(conn)
        .await
        .described("the workspace's status")
}

/// The application deletes the workspace's MODEL right after the UPDATE
/// register_workspace makes (a concurrent delete between its pre-check and
/// its UPDATE); with every constraint immediate the identity gate raises
/// inside register_workspace, which must let SG102 through.
async fn register_workspace_racing_model_delete_under_immediate_constraints_is_sg102(
    cluster: Arc<Cluster>,
) -> Result<()> {
    let mut db = db(&cluster, "e_race").await?;
    let model = model_value(&cluster);
    let p = db.platform("provisioning", Some(&model)).await?;
    sqlx::raw_sql(
        "CREATE FUNCTION public.bb_app_drops_model() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             DELETE FROM public.workspace_secrets WHERE workspace_id = NEW.id AND key = 'MODEL';
             RETURN NULL;
         END $$;
         CREATE TRIGGER bb_app_drops_model AFTER UPDATE ON public.workspaces
             FOR EACH ROW EXECUTE FUNCTION public.bb_app_drops_model();",
    )
    .execute(&mut db.conn)
    .await
    .described("the application's AFTER UPDATE trigger")?;
    let before = db.state().await?;
    sqlx::raw_sql("BEGIN; SET CONSTRAINTS ALL IMMEDIATE").execute(&mut db.conn).await.described("BEGIN")?;
    let r = register(&mut db.conn, p).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut db.conn).await.described("ROLLBACK")?;
    let e = expect_sg(r, Code::PlatformAgentIdentityGate).context("register_workspace racing a MODEL delete")?;
    e.assert_no_leak(&[&model])?;
    e.assert_no_ciphertext()?;
    ensure!(
        e.field("workspace_id").as_deref() == Some(p.to_string().as_str()),
        "DETAIL should name the workspace: {e}"
    );
    let after = db.state().await?;
    ensure!(before == after, "the refused registration changed the tables: {}", before.diff(&after));
    // Deferred (the default), the same race is refused at COMMIT instead.
    let r = run_tx(&mut db.conn, &db.kr, UNSET, &[Op::Ws("SELECT * FROM secretgate.register_workspace($1)", p)]).await;
    match r {
        Ok(()) => bail!(
            "register_workspace racing a MODEL delete committed: the platform workspace went online without MODEL"
        ),
        Err((_, e)) => {
            expect_sg::<()>(Err(e), Code::PlatformAgentIdentityGate).context("the same race, constraints deferred")?;
        }
    }
    ensure!(status_of(&mut db.conn, p).await? == "provisioning", "the workspace's status changed");
    Ok(())
}

/// Waits until the backend `pid` waits for a lock (at most 20 s).
async fn wait_until_blocked(observer: &mut PgConnection, pid: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)",
        )
        .bind(pid)
        .fetch_one(&mut *observer)
        .await
        .described("pg_stat_activity")?;
        if waiting {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "backend {pid} never waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real second session: B deletes the platform workspace's MODEL and locks
/// the workspace row without committing; A (constraints immediate) registers
/// the workspace: its MVCC pre-check still sees the MODEL, then it waits for
/// B's row lock (wherever it takes one). B commits; A must not bring the
/// workspace online: SG102 raised, or the failure reported and committed
/// (0.4.0 does the latter: it locks the workspace row before its pre-check).
async fn register_workspace_racing_a_second_session_never_goes_online(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_race2").await?;
    let model = model_value(&cluster);
    let p = db.platform("provisioning", Some(&model)).await?;
    let mut a = PgConnection::connect(&db.url).await.context("connect A")?;
    let mut b = PgConnection::connect(&db.url).await.context("connect B")?;
    let a_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut a).await.described("A's pid")?;

    sqlx::raw_sql("BEGIN").execute(&mut b).await.described("B: BEGIN")?;
    execute_with(
        &mut b,
        "DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'",
        &[Arg::Id(p)],
    )
    .await
    .described("B: delete the MODEL")?;
    execute_with(&mut b, "SELECT 1 FROM public.workspaces WHERE id = $1 FOR UPDATE", &[Arg::Id(p)])
        .await
        .described("B: lock the workspace row")?;

    sqlx::raw_sql("BEGIN; SET CONSTRAINTS ALL IMMEDIATE").execute(&mut a).await.described("A: BEGIN")?;
    let registering = tokio::spawn(async move {
        let r = register(&mut a, p).await;
        (a, r)
    });
    wait_until_blocked(&mut db.conn, a_pid).await.context("A should wait for B's lock")?;
    sqlx::raw_sql("COMMIT").execute(&mut b).await.described("B: COMMIT")?;
    let (mut a, r) = tokio::time::timeout(Duration::from_secs(30), registering)
        .await
        .map_err(|_| anyhow::anyhow!("A did not finish within 30 s after B committed"))??;
    let end = sqlx::raw_sql("COMMIT").execute(&mut a).await;
    match r {
        Ok((status, code)) => {
            end.described("A: COMMIT of the reported failure")?;
            ensure!(
                status == "failed" && code.as_deref() == Some(Code::PlatformAgentIdentityGate.word()),
                "register_workspace after a concurrent MODEL delete returned ({status}, {code:?})"
            );
            ensure!(status_of(&mut db.conn, p).await? == "failed", "the reported failure should commit");
        }
        Err(e) => {
            let e = expect_sg::<()>(Err(e), Code::PlatformAgentIdentityGate)
                .context("register_workspace after a concurrent MODEL delete")?;
            e.assert_no_leak(&[&model])?;
            ensure!(status_of(&mut db.conn, p).await? == "provisioning", "the refused registration changed the status");
        }
    }
    ensure!(db.read(p, "MODEL").await?.is_none(), "B's committed delete is lost");
    Ok(())
}

/// A MODEL delete cannot land between register_workspace's pre-check and its
/// UPDATE: register_workspace locks the workspace row first, and a MODEL
/// delete's gate waits for that lock. Made deterministic with an application
/// BEFORE UPDATE trigger taking an advisory lock B holds: A (constraints
/// immediate) is inside its UPDATE, C's delete waits for A; B lets go, A
/// brings the workspace online and commits, and C's delete is then refused
/// with SG102 (the workspace is online now). Never online without MODEL.
async fn model_delete_racing_register_workspace_waits_then_is_sg102(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "e_race3").await?;
    let model = model_value(&cluster);
    let p = db.platform("provisioning", Some(&model)).await?;
    let lock_key = i64::from_le_bytes(random_bytes(8).try_into().expect("8 bytes"));
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION public.bb_app_waits() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_advisory_xact_lock({lock_key});
             RETURN NEW;
         END $$;
         CREATE TRIGGER bb_app_waits BEFORE UPDATE ON public.workspaces
             FOR EACH ROW EXECUTE FUNCTION public.bb_app_waits();"
    ))
    .execute(&mut db.conn)
    .await
    .described("the application's BEFORE UPDATE trigger")?;
    let mut a = PgConnection::connect(&db.url).await.context("connect A")?;
    let mut b = PgConnection::connect(&db.url).await.context("connect B")?;
    let mut c = PgConnection::connect(&db.url).await.context("connect C")?;
    let a_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut a).await.described("A's pid")?;
    let c_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut c).await.described("C's pid")?;

    sqlx::query("SELECT pg_advisory_lock($1)").bind(lock_key).execute(&mut b).await.described("B: take the lock")?;
    sqlx::raw_sql("BEGIN; SET CONSTRAINTS ALL IMMEDIATE").execute(&mut a).await.described("A: BEGIN")?;
    let registering = tokio::spawn(async move {
        let r = register(&mut a, p).await;
        (a, r)
    });
    wait_until_blocked(&mut db.conn, a_pid).await.context("A should wait inside its UPDATE")?;
    let deleting = tokio::spawn(async move {
        let r = execute_with(
            &mut c,
            "DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'",
            &[Arg::Id(p)],
        )
        .await;
        (c, r)
    });
    wait_until_blocked(&mut db.conn, c_pid).await.context("C's MODEL delete should wait for A")?;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock_key).execute(&mut b).await.described("B: let go")?;
    let (mut a, r) = tokio::time::timeout(Duration::from_secs(30), registering)
        .await
        .map_err(|_| anyhow::anyhow!("A did not finish within 30 s after B let go"))??;
    let registered = r.described("A: register_workspace")?;
    ensure!(registered == ("online".to_string(), None), "A: register_workspace returned {registered:?}");
    sqlx::raw_sql("COMMIT").execute(&mut a).await.described("A: COMMIT")?;
    let (_c, r) = tokio::time::timeout(Duration::from_secs(30), deleting)
        .await
        .map_err(|_| anyhow::anyhow!("C did not finish within 30 s after A committed"))??;
    let e = expect_sg(r, Code::PlatformAgentIdentityGate).context("C's MODEL delete after A brought it online")?;
    e.assert_no_leak(&[&model])?;
    ensure!(status_of(&mut db.conn, p).await? == "online", "A's registration should have committed");
    db.expect_value(p, "MODEL", &model, "after the refused delete").await
}

// ---------------------------------------------------------------------------
// Trigger functions called directly

/// The trigger functions the contract names, and what each raises when
/// called directly on 0.4.0 (the Rust gates: 39P01,
/// E_R_I_E_TRIGGER_PROTOCOL_VIOLATED; a PL/pgSQL one: PL/pgSQL's own 0A000,
/// "trigger functions can only be called as triggers"). Any other trigger
/// function of the extension may raise either standard code, never XX000.
const TRIGGER_FUNCTIONS: &[(&str, &str)] = &[
    ("gate_secret_write", "39P01"),
    ("gate_global_secret_write", "39P01"),
    ("gate_workspace_write", "39P01"),
    ("gate_platform_identity", "39P01"),
    ("gate_byok", "39P01"),
    ("gate_model_removed", "39P01"),
    ("gate_secrets_truncate", "39P01"),
    ("registry_changed", "39P01"),
    ("registry_upsert", "0A000"),
];

async fn trigger_functions_called_directly_are_refused(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("e_direct")).await?;
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p
         JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
         JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'secretgate'
         WHERE p.prorettype = 'trigger'::regtype ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .described("the extension's trigger functions")?;
    for (f, _) in TRIGGER_FUNCTIONS {
        ensure!(found.iter().any(|g| g == f), "secretgate.{f}() is not a trigger function of the extension: {found:?}");
    }
    let mut wrong = Vec::new();
    for f in &found {
        let sql = format!("SELECT secretgate.{f}()");
        let r = sqlx::raw_sql(&sql).execute(&mut conn).await;
        let want = match TRIGGER_FUNCTIONS.iter().find(|t| t.0 == f) {
            Some((_, code)) => *code,
            // Not named by the contract: either standard code.
            None => match r.as_ref().err().and_then(sqlstate).as_deref() {
                Some("0A000") => "0A000",
                _ => "39P01",
            },
        };
        let checked = expect_sqlstate(r, want);
        match checked {
            Ok(e) => e.assert_no_ciphertext()?,
            Err(e) => wrong.push(format!("{sql}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "trigger functions called directly:\n{}", wrong.join("\n"));
    // Inside a transaction too, and the session is usable afterwards.
    let mut tx = conn.begin().await.described("BEGIN")?;
    expect_sqlstate(sqlx::query("SELECT secretgate.gate_secret_write()").execute(&mut *tx).await, "39P01")?;
    tx.rollback().await.described("ROLLBACK")?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.described("the session afterwards")?;
    ensure!(one == 1, "the session should be usable");
    Ok(())
}
