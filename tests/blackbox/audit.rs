//! Black-box tests of the audit trail (issue 17; CONTRACT §1, §5, §6):
//! every refusal kind becomes exactly one row of `secretgate.audit_events`
//! after its transaction rolls back, with the right fields and no value;
//! who may read and write the table; retention; the writers ended with
//! pg_terminate_backend and SIGKILL; a queue of 16 overflowing (every record
//! accounted for); a server restart; 16 sessions refusing under load; and a
//! server without `shared_preload_libraries` (55000 with the fix).
//!
//! Trials restart the server, so they run one at a time.

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("audit"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        every_refusal_kind_is_one_row_after_rollback,
        administrative_events_are_recorded_at_commit,
        only_auditors_read_and_nobody_writes,
        retention_prunes_old_rows,
        terminated_writers_come_back_and_lose_nothing,
        sigkilled_writer_crash_recovery_keeps_the_log_complete,
        server_restart_keeps_rows_and_resets_counters,
        queue_of_16_accounts_for_every_record,
        sixteen_sessions_refusing_lose_nothing,
        cli_audit_lists_filters_and_follows,
        without_preload_everything_raises_55000,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

/// One row of secretgate.audit_events, as JSON (never printed whole in an
/// assertion when it could hold a value: it cannot, and the test checks that).
async fn rows_after(conn: &mut PgConnection, mark: i64) -> Result<Vec<Value>> {
    let rows: Vec<(Value,)> = sqlx::query_as(
        "SELECT to_jsonb(a) FROM secretgate.audit_events a WHERE id > $1 AND code IS NOT NULL ORDER BY id",
    )
    .bind(mark)
    .fetch_all(conn)
    .await
    .described("read audit_events")?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

async fn mark(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM secretgate.audit_events")
        .fetch_one(conn)
        .await
        .described("audit mark")
}

/// Waits (polling, with a deadline) until `want` refusal rows newer than
/// `mark` exist; then a moment more, to see that no extra row follows.
async fn wait_rows(conn: &mut PgConnection, mark: i64, want: usize, limit: Duration) -> Result<Vec<Value>> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = rows_after(conn, mark).await?;
        if rows.len() >= want {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return rows_after(conn, mark).await;
        }
        if Instant::now() > deadline {
            bail!("{} audit rows after {limit:?}, expected {want}", rows.len());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Debug, Clone, Copy)]
struct Status {
    queued: i64,
    written: i64,
    dropped: i64,
    skipped: i64,
    queue_size: i32,
}

async fn status(conn: &mut PgConnection) -> Result<(Status, Option<String>)> {
    let r = sqlx::query("SELECT * FROM secretgate.audit_status()").fetch_one(conn).await.described("audit_status")?;
    Ok((
        Status {
            queued: r.get("queued"),
            written: r.get("written"),
            dropped: r.get("dropped"),
            skipped: r.get("skipped"),
            queue_size: r.get("queue_size"),
        },
        r.get("last_error"),
    ))
}

/// Waits until nothing is queued.
async fn drained(conn: &mut PgConnection, limit: Duration) -> Result<Status> {
    let deadline = Instant::now() + limit;
    loop {
        let (s, _) = status(conn).await?;
        if s.queued == 0 {
            return Ok(s);
        }
        ensure!(Instant::now() < deadline, "the audit queue still holds {} records after {limit:?}", s.queued);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn).await.described("pg_backend_pid")
}

/// What one refusal row must say.
struct Want<'a> {
    what: &'a str,
    event: &'a str,
    code: Code,
    workspace: Option<Uuid>,
    key: Option<&'a str>,
    agent: bool,
}

fn check_row(row: &Value, want: &Want<'_>, pid: i32, app: &str, values: &[String]) -> Result<()> {
    let what = want.what;
    let s = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_string);
    ensure!(s("event").as_deref() == Some(want.event), "{what}: event {:?}, want {}", s("event"), want.event);
    ensure!(s("code").as_deref() == Some(want.code.word()), "{what}: code {:?}", s("code"));
    ensure!(s("sqlstate").as_deref() == Some(want.code.sqlstate()), "{what}: sqlstate {:?}", s("sqlstate"));
    ensure!(s("reason").is_some_and(|r| !r.is_empty()), "{what}: no reason");
    if let Some(ws) = want.workspace {
        ensure!(s("workspace_id") == Some(ws.to_string()), "{what}: workspace_id {:?}, want {ws}", s("workspace_id"));
    }
    if let Some(key) = want.key {
        ensure!(s("key").as_deref() == Some(key), "{what}: key {:?}, want {key}", s("key"));
    }
    ensure!(row["backend_pid"].as_i64() == Some(pid as i64), "{what}: backend_pid {}, want {pid}", row["backend_pid"]);
    ensure!(s("application_name").as_deref() == Some(app), "{what}: application_name {:?}", s("application_name"));
    ensure!(row["caller"]["agent"].as_bool() == Some(want.agent), "{what}: caller {}", row["caller"]);
    ensure!(row["caller"]["role"].as_str().is_some(), "{what}: caller names no role: {}", row["caller"]);
    ensure!(row.get("at").is_some_and(|v| !v.is_null()), "{what}: no time");
    let raw = row.to_string();
    for (i, v) in values.iter().enumerate() {
        ensure!(!raw.contains(v.as_str()), "{what}: the audit row contains stored value #{i}");
    }
    Ok(())
}

async fn superuser(cluster: &Cluster, db: &str) -> Result<PgConnection> {
    PgConnection::connect(&cluster.url(db)).await.context("connect as superuser")
}

async fn restart(cluster: &Cluster) -> Result<()> {
    cluster.restart("fast")?;
    let conn = connect_when_ready(&cluster.url("postgres"), Duration::from_secs(60)).await?;
    conn.close().await?;
    Ok(())
}

async fn refuse_forbidden_global(conn: &mut PgConnection, value: &str) -> Result<()> {
    let r = sqlx::query("SELECT secretgate.set_global_secret('MODEL_PROVIDER', $1)").bind(value).execute(conn).await;
    expect_sg(r, Code::ForbiddenSecretKey)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Every refusal kind

async fn every_refusal_kind_is_one_row_after_rollback(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "a_kinds").await?;
    let app = "bb-audit-kinds";
    sqlx::query(&format!("SET application_name = '{app}'")).execute(&mut db.conn).await.described("SET")?;
    let pid = backend_pid(&mut db.conn).await?;
    let mut reader = superuser(&cluster, &db.name).await?;
    let model = model_value(&cluster);
    let value = cluster.fresh_secret();
    let values = vec![model.clone(), value.clone()];
    let platform = db.platform("online", Some(&model)).await?;
    let missing = Uuid::new_v4();
    let offline_platform = db.platform("provisioning", None).await?;
    let ordinary = db.workspace("workspace", "provisioning").await?;

    // (the refused transaction, where it fails, the row it must leave)
    struct Case<'a> {
        caller: Caller,
        ops: Vec<Op<'a>>,
        at: At,
        want: Want<'a>,
    }
    let byok_create =
        "INSERT INTO public.workspaces (id, kind, model) VALUES ($1, 'workspace', 'anthropic:claude-opus-4-7')";
    let byok_ws = Uuid::new_v4();
    let cases = vec![
        Case {
            caller: AGENT,
            ops: vec![Op::Insert(platform, "SOME_KEY", &value)],
            at: At::Statement,
            want: Want {
                what: "SG101 self-write",
                event: "secret.set.refused",
                code: Code::ConciergeSelfWriteBlocked,
                workspace: Some(platform),
                key: Some("SOME_KEY"),
                agent: true,
            },
        },
        Case {
            caller: AGENT,
            ops: vec![Op::Insert(missing, "SOME_KEY", &value)],
            at: At::Statement,
            want: Want {
                what: "SG106 unknown workspace",
                event: "secret.set.refused",
                code: Code::WorkspaceKindUnknown,
                workspace: Some(missing),
                key: Some("SOME_KEY"),
                agent: true,
            },
        },
        Case {
            caller: OPERATOR,
            ops: vec![Op::Insert(ordinary, "MODEL_PROVIDER", &value)],
            at: At::Statement,
            want: Want {
                what: "SG105 forbidden key",
                event: "secret.set.refused",
                code: Code::ForbiddenSecretKey,
                workspace: Some(ordinary),
                key: Some("MODEL_PROVIDER"),
                agent: false,
            },
        },
        Case {
            caller: OPERATOR,
            ops: vec![Op::SetSecret(ordinary, "MODEL", "anthropic")],
            at: At::Statement,
            want: Want {
                what: "SG107 provider name as MODEL",
                event: "secret.set.refused",
                code: Code::InvalidModelId,
                workspace: Some(ordinary),
                key: Some("MODEL"),
                agent: false,
            },
        },
        Case {
            caller: OPERATOR,
            ops: vec![Op::Ws("UPDATE public.workspaces SET status = 'online' WHERE id = $1", offline_platform)],
            at: At::Commit,
            want: Want {
                what: "SG102 platform online without MODEL",
                event: "workspace.online.refused",
                code: Code::PlatformAgentIdentityGate,
                workspace: Some(offline_platform),
                key: Some("MODEL"),
                agent: false,
            },
        },
        Case {
            caller: OPERATOR,
            ops: vec![Op::Ws(byok_create, byok_ws)],
            at: At::Commit,
            want: Want {
                what: "SG103 BYOK without credential",
                event: "workspace.byok.refused",
                code: Code::MissingByokCredential,
                workspace: Some(byok_ws),
                key: None,
                agent: false,
            },
        },
        Case {
            caller: AGENT,
            ops: vec![Op::Ws("DELETE FROM public.workspaces WHERE id = $1", platform)],
            at: At::Statement,
            want: Want {
                what: "workspace delete refused",
                event: "workspace.delete.refused",
                code: Code::ConciergeSelfWriteBlocked,
                workspace: Some(platform),
                key: None,
                agent: true,
            },
        },
        Case {
            caller: AGENT,
            ops: vec![Op::Ws("UPDATE public.workspaces SET kind = 'workspace' WHERE id = $1", platform)],
            at: At::Statement,
            want: Want {
                what: "workspace kind change refused",
                event: "workspace.kind.refused",
                code: Code::ConciergeSelfWriteBlocked,
                workspace: Some(platform),
                key: None,
                agent: true,
            },
        },
        Case {
            caller: OPERATOR,
            ops: vec![Op::Sql("TRUNCATE public.workspace_secrets")],
            at: At::Statement,
            want: Want {
                what: "TRUNCATE refused",
                event: "secret.truncate.refused",
                code: Code::PlatformAgentIdentityGate,
                workspace: None,
                key: None,
                agent: false,
            },
        },
    ];
    for case in &cases {
        let m = mark(&mut reader).await?;
        db.refused(case.caller, &case.ops, case.at, case.want.code, None, None)
            .await
            .with_context(|| case.want.what.to_string())?;
        let started = Instant::now();
        let rows = wait_rows(&mut reader, m, 1, Duration::from_secs(5)).await.context(case.want.what.to_string())?;
        ensure!(rows.len() == 1, "{}: {} rows, expected exactly one", case.want.what, rows.len());
        check_row(&rows[0], &case.want, pid, app, &values)?;
        eprintln!("{}: row after {:?}", case.want.what, started.elapsed().saturating_sub(Duration::from_millis(300)));
    }

    // SG104: every credential known dead (the verdict itself is an administrative event).
    let key = cluster.fresh_secret();
    let dead_ws = Uuid::new_v4();
    db.allowed(
        OPERATOR,
        &[
            Op::Ws(
                "INSERT INTO public.workspaces (id, kind, model) VALUES ($1, 'workspace', 'anthropic:claude-opus-4-7')",
                dead_ws,
            ),
            Op::SetSecret(dead_ws, "ANTHROPIC_API_KEY", &key),
        ],
    )
    .await?;
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(dead_ws)
        .execute(&mut db.conn)
        .await
        .described("record_liveness")?;
    let m = mark(&mut reader).await?;
    db.refused(
        OPERATOR,
        &[Op::Ws("UPDATE public.workspaces SET status = 'online' WHERE id = $1", dead_ws)],
        At::Commit,
        Code::ByokCredentialInvalid,
        None,
        None,
    )
    .await
    .context("SG104")?;
    let rows = wait_rows(&mut reader, m, 1, Duration::from_secs(5)).await.context("SG104")?;
    ensure!(rows.len() == 1, "SG104: {} rows", rows.len());
    let want = Want {
        what: "SG104 dead credential",
        event: "workspace.byok.refused",
        code: Code::ByokCredentialInvalid,
        workspace: Some(dead_ws),
        key: None,
        agent: false,
    };
    check_row(&rows[0], &want, pid, app, &[model.clone(), value.clone(), key.clone()])?;
    ensure!(rows[0]["provider"].as_str() == Some("anthropic"), "SG104 row names no provider: {}", rows[0]["provider"]);

    // A failed registration commits its failure: one row too.
    let m = mark(&mut reader).await?;
    let (st, code): (String, Option<String>) = sqlx::query_as("SELECT * FROM secretgate.register_workspace($1)")
        .bind(offline_platform)
        .fetch_one(&mut db.conn)
        .await
        .described("register_workspace")?;
    ensure!(st == "failed" && code.as_deref() == Some("PLATFORM_AGENT_IDENTITY_GATE"), "register: {st} {code:?}");
    let rows = wait_rows(&mut reader, m, 1, Duration::from_secs(5)).await.context("register failure")?;
    ensure!(rows.len() == 1, "register failure: {} rows", rows.len());
    let want = Want {
        what: "register failure",
        event: "workspace.register.refused",
        code: Code::PlatformAgentIdentityGate,
        workspace: Some(offline_platform),
        key: Some("MODEL"),
        agent: false,
    };
    check_row(&rows[0], &want, pid, app, &values)?;
    ensure!(
        rows[0]["transaction_id"].is_string() || rows[0]["transaction_id"].is_number(),
        "a registration writes: it has a transaction id"
    );
    Ok(())
}

async fn administrative_events_are_recorded_at_commit(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "a_admin").await?;
    let mut reader = superuser(&cluster, &db.name).await?;
    let ws = db.workspace("workspace", "provisioning").await?;
    let value = cluster.fresh_secret();
    db.set(ws, "OLD_NAME", &value).await?;
    let key = cluster.fresh_secret();
    let byok = Uuid::new_v4();
    db.allowed(
        OPERATOR,
        &[
            Op::Ws(
                "INSERT INTO public.workspaces (id, kind, model) VALUES ($1, 'workspace', 'anthropic:claude-opus-4-7')",
                byok,
            ),
            Op::SetSecret(byok, "ANTHROPIC_API_KEY", &key),
        ],
    )
    .await?;
    // The migration's own record (gates attached) first.
    drained(&mut reader, Duration::from_secs(10)).await?;
    let m = mark(&mut reader).await?;
    // Rolled back: no row.
    sqlx::raw_sql("BEGIN; SELECT secretgate.rename_secret_key('OLD_NAME', 'NEW_NAME'); ROLLBACK")
        .execute(&mut db.conn)
        .await
        .described("rename rolled back")?;
    // Rolled back to a savepoint in a committed transaction: no row either.
    sqlx::raw_sql(
        "BEGIN; SAVEPOINT a; INSERT INTO secretgate.forbidden_keys (key, reason) VALUES ('BB_GONE', 'a test');
         ROLLBACK TO SAVEPOINT a; COMMIT",
    )
    .execute(&mut db.conn)
    .await
    .described("registry change rolled back to a savepoint")?;
    // Done in a released savepoint: committed with its transaction, one row.
    sqlx::raw_sql(
        "BEGIN; SAVEPOINT a; SAVEPOINT b; SELECT secretgate.rename_secret_key('OLD_NAME', 'NEW_NAME');
         RELEASE SAVEPOINT b; RELEASE SAVEPOINT a; SAVEPOINT c; ROLLBACK TO SAVEPOINT c; COMMIT",
    )
    .execute(&mut db.conn)
    .await
    .described("rename")?;
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut db.conn).await.described("detach")?;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut db.conn)
    .await
    .described("attach")?;
    sqlx::raw_sql("INSERT INTO secretgate.forbidden_keys (key, reason) VALUES ('BB_NO', 'a test')")
        .execute(&mut db.conn)
        .await
        .described("registry change")?;
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok)
        .execute(&mut db.conn)
        .await
        .described("record_liveness")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT event, key, reason FROM secretgate.audit_events WHERE id > $1 AND code IS NULL ORDER BY id",
        )
        .bind(m)
        .fetch_all(&mut reader)
        .await
        .described("admin events")?;
        if events.len() >= 5 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    ensure!(
        names == ["secret.renamed", "gates.detached", "gates.attached", "registry.changed", "credential.dead"],
        "admin events: {names:?}"
    );
    ensure!(
        events[3].2.as_deref() == Some("INSERT on secretgate.forbidden_keys"),
        "registry event reason: {:?}",
        events[3].2
    );
    ensure!(events[0].1.as_deref() == Some("NEW_NAME"), "rename row key: {:?}", events[0].1);
    ensure!(events[4].1.as_deref() == Some("ANTHROPIC_API_KEY"), "dead verdict row key: {:?}", events[4].1);
    for e in &events {
        ensure!(!format!("{e:?}").contains(&value), "an admin row holds the stored value");
        ensure!(!format!("{e:?}").contains(&key), "an admin row holds the stored credential");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Privileges

async fn only_auditors_read_and_nobody_writes(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "a_priv").await?;
    let suffix = &db.name[db.name.len() - 8..];
    let (app, auditor) = (format!("bb_app_{suffix}"), format!("bb_auditor_{suffix}"));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {app} LOGIN; CREATE ROLE {auditor} LOGIN IN ROLE secretgate_auditor;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspaces, public.workspace_secrets, public.global_secrets TO {app};"
    ))
    .execute(&mut db.conn)
    .await
    .described("roles")?;
    // A refusal by the app role, so there is a row to read.
    let mut app_conn = PgConnection::connect(&cluster.url_as(&app, &db.name)).await.context("connect as app")?;
    let value = cluster.fresh_secret();
    refuse_forbidden_global(&mut app_conn, &value).await?;
    let mut reader = superuser(&cluster, &db.name).await?;
    wait_rows(&mut reader, 0, 1, Duration::from_secs(5)).await?;

    let mut wrong = Vec::new();
    for sql in [
        "SELECT count(*) FROM secretgate.audit_events",
        "INSERT INTO secretgate.audit_events (at, event) VALUES (now(), 'forged')",
        "UPDATE secretgate.audit_events SET reason = 'x'",
        "DELETE FROM secretgate.audit_events",
        "TRUNCATE secretgate.audit_events",
        "SET secretgate.audit_retention = 0",
        "SET secretgate.audit_queue_size = 16",
        "ALTER SYSTEM SET secretgate.audit_retention = 0",
    ] {
        let r = sqlx::raw_sql(sql).execute(&mut app_conn).await;
        let want = if sql.starts_with("SET ") { "55P02" } else { "42501" };
        if let Err(e) = expect_sqlstate(r, want) {
            wrong.push(format!("{sql}: {e:#}"));
        }
    }
    ensure!(wrong.is_empty(), "the app role was not refused:\n{}", wrong.join("\n"));

    let mut auditor_conn =
        PgConnection::connect(&cluster.url_as(&auditor, &db.name)).await.context("connect as auditor")?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE code = 'FORBIDDEN_SECRET_KEY'")
        .fetch_one(&mut auditor_conn)
        .await
        .described("auditor reads")?;
    ensure!(n == 1, "the auditor sees {n} rows, expected 1");
    for sql in [
        "INSERT INTO secretgate.audit_events (at, event) VALUES (now(), 'forged')",
        "DELETE FROM secretgate.audit_events",
    ] {
        expect_sqlstate(sqlx::raw_sql(sql).execute(&mut auditor_conn).await, "42501").context(sql)?;
    }
    // The row names the app role as the caller.
    let role: Option<String> =
        sqlx::query_scalar("SELECT caller->>'role' FROM secretgate.audit_events WHERE code = 'FORBIDDEN_SECRET_KEY'")
            .fetch_one(&mut reader)
            .await
            .described("caller role")?;
    ensure!(role.as_deref() == Some(app.as_str()), "caller role {role:?}, want {app}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Retention

async fn retention_prunes_old_rows(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("a_retention")).await?;
    sqlx::raw_sql(
        "INSERT INTO secretgate.audit_events (at, event, code) VALUES
           (now() - interval '100 days', 'old', 'FORBIDDEN_SECRET_KEY'),
           (now() - interval '10 days', 'recent', 'FORBIDDEN_SECRET_KEY')",
    )
    .execute(&mut conn)
    .await
    .described("plant old rows")?;
    let value = cluster.fresh_secret();
    refuse_forbidden_global(&mut conn, &value).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<String> =
            sqlx::query_scalar("SELECT event FROM secretgate.audit_events WHERE code IS NOT NULL ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .described("events")?;
        if events == ["recent", "secret.set.refused"] {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "after the writer ran, rows are {events:?} (90-day retention)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Workers ended and killed

async fn audit_pids(conn: &mut PgConnection, kind: &str) -> Result<Vec<i32>> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE backend_type = $1 ORDER BY pid")
        .bind(kind)
        .fetch_all(conn)
        .await
        .described("audit workers")
}

async fn terminated_writers_come_back_and_lose_nothing(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("a_term")).await?;
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await?;
    let mut holder = superuser(&cluster, &name).await?;
    let value = cluster.fresh_secret();
    refuse_forbidden_global(&mut conn, &value).await?;
    wait_rows(&mut conn, 0, 1, Duration::from_secs(5)).await?;

    // Hold the table so the writer waits with records claimed, queue more, end it.
    sqlx::raw_sql("BEGIN; LOCK TABLE secretgate.audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .described("lock")?;
    for _ in 0..10 {
        refuse_forbidden_global(&mut conn, &value).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let launcher = audit_pids(&mut conn, "secretgate audit launcher").await?;
    let writers = audit_pids(&mut conn, "secretgate audit writer").await?;
    ensure!(launcher.len() == 1, "launchers running: {launcher:?}");
    ensure!(!writers.is_empty(), "no writer running while records wait");
    for pid in launcher.iter().chain(&writers) {
        sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut conn).await.described("terminate")?;
    }
    for _ in 0..5 {
        refuse_forbidden_global(&mut conn, &value).await?;
    }
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.described("unlock")?;
    let rows = wait_rows(&mut conn, 0, 16, Duration::from_secs(15)).await?;
    ensure!(rows.len() == 16, "{} rows, expected 16 (1 + 10 + 5): a record was lost or doubled", rows.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = audit_pids(&mut conn, "secretgate audit launcher").await?;
        if again.len() == 1 && again != launcher {
            break;
        }
        ensure!(Instant::now() < deadline, "the launcher did not come back: {again:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, last_error) = status(&mut conn).await?;
    let last_error = last_error.unwrap_or_default();
    ensure!(
        last_error.contains("restarted") || last_error.contains("was ended"),
        "audit_status().last_error does not show the restart: {last_error:?}"
    );
    // Still working after the restart.
    refuse_forbidden_global(&mut conn, &value).await?;
    wait_rows(&mut conn, 0, 17, Duration::from_secs(5)).await?;
    Ok(())
}

async fn sigkilled_writer_crash_recovery_keeps_the_log_complete(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("a_kill")).await?;
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await?;
    let before = audit_lines(&cluster, &name)?.len();
    // The harness runs with synchronous_commit = off: make the migration durable before the crash.
    sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await.described("CHECKPOINT")?;
    let mut holder = superuser(&cluster, &name).await?;
    let value = cluster.fresh_secret();
    sqlx::raw_sql("BEGIN; LOCK TABLE secretgate.audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .described("lock")?;
    for _ in 0..5 {
        refuse_forbidden_global(&mut conn, &value).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // This database's writer (another database's may be leaving on its own),
    // and only it: the first SIGKILL makes the postmaster end every process.
    let writer: Option<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'secretgate audit writer' AND datname = current_database() LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await
    .described("this database's audit writer")?;
    let writer = writer.context("no writer running while records wait")?;
    // SAFETY: kill(2) on a server process id read from pg_stat_activity.
    let r = unsafe { libc::kill(writer, libc::SIGKILL) };
    ensure!(r == 0, "kill -9 {writer} failed: {}", std::io::Error::last_os_error());
    drop(holder);
    // Crash recovery ends every session (wait for it: a connection made before
    // the postmaster reacts would die too); the launcher comes back with it.
    wait_until_ended(conn, Duration::from_secs(60)).await?;
    let mut conn = connect_when_ready(&cluster.url(&name), Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit_pids(&mut conn, "secretgate audit launcher").await?.is_empty() {
        ensure!(Instant::now() < deadline, "no launcher after crash recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every refusal is in the server log, written before the error was raised.
    let lines = audit_lines(&cluster, &name)?;
    let refusals = lines[before..].iter().filter(|(_, v)| v["sqlstate"] == "SG105").count();
    ensure!(refusals == 5, "{refusals} refusals in the server log, expected 5");
    // And the trail works again.
    let m = mark(&mut conn).await?;
    refuse_forbidden_global(&mut conn, &value).await?;
    let rows = wait_rows(&mut conn, m, 1, Duration::from_secs(10)).await?;
    ensure!(rows.len() == 1, "{} rows after recovery", rows.len());
    Ok(())
}

async fn server_restart_keeps_rows_and_resets_counters(cluster: Arc<Cluster>) -> Result<()> {
    let name = db_name("a_restart");
    let (url, mut conn) = migrated_database(&cluster, &name).await?;
    let value = cluster.fresh_secret();
    refuse_forbidden_global(&mut conn, &value).await?;
    wait_rows(&mut conn, 0, 1, Duration::from_secs(5)).await?;
    conn.close().await?;
    restart(&cluster).await?;
    let mut conn = connect_when_ready(&url, Duration::from_secs(30)).await?;
    let (s, _) = status(&mut conn).await?;
    ensure!(s.written == 0 && s.dropped == 0 && s.queued == 0, "counters after a restart: {s:?}");
    ensure!(s.queue_size == 1024, "default queue size: {}", s.queue_size);
    refuse_forbidden_global(&mut conn, &value).await?;
    let rows = wait_rows(&mut conn, 0, 2, Duration::from_secs(10)).await?;
    ensure!(rows.len() == 2, "{} rows after the restart, expected 2", rows.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Overflow and load

async fn queue_of_16_accounts_for_every_record(cluster: Arc<Cluster>) -> Result<()> {
    cluster.append_conf("secretgate.audit_queue_size = 16\n")?;
    restart(&cluster).await?;
    let result = async {
        let name = db_name("a_burst");
        let (_url, mut conn) = migrated_database(&cluster, &name).await?;
        let mut holder = superuser(&cluster, &name).await?;
        // Let the migration's own administrative record through first.
        drained(&mut conn, Duration::from_secs(10)).await?;
        let (before, _) = status(&mut conn).await?;
        ensure!(before.queue_size == 16, "queue size {}", before.queue_size);
        sqlx::raw_sql("BEGIN; LOCK TABLE secretgate.audit_events IN ACCESS EXCLUSIVE MODE")
            .execute(&mut holder)
            .await
            .described("lock")?;
        let value = cluster.fresh_secret();
        let refusals = 40;
        for _ in 0..refusals {
            refuse_forbidden_global(&mut conn, &value).await?;
        }
        sqlx::raw_sql("COMMIT").execute(&mut holder).await.described("unlock")?;
        let after = drained(&mut conn, Duration::from_secs(10)).await?;
        let rows = rows_after(&mut conn, 0).await?.len() as i64;
        let dropped = after.dropped - before.dropped;
        eprintln!("burst of {refusals} into a queue of 16: {rows} rows, {dropped} dropped");
        ensure!(dropped > 0, "nothing dropped: the burst did not fill the queue");
        ensure!(rows + dropped == refusals, "rows {rows} + dropped {dropped} != refusals {refusals}");
        ensure!(
            after.written - before.written == rows,
            "written counter {} vs rows {rows}",
            after.written - before.written
        );
        Ok(())
    }
    .await;
    cluster.append_conf("secretgate.audit_queue_size = 1024\n")?;
    restart(&cluster).await?;
    result
}

async fn sixteen_sessions_refusing_lose_nothing(cluster: Arc<Cluster>) -> Result<()> {
    let secs: u64 = std::env::var("SECRETGATE_AUDIT_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let name = db_name("a_load");
    let (url, mut conn) = migrated_database(&cluster, &name).await?;
    drained(&mut conn, Duration::from_secs(10)).await?;
    let (before, _) = status(&mut conn).await?;
    let value = cluster.fresh_secret();
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..16 {
        let (url, value, refused, stop) = (url.clone(), value.clone(), Arc::clone(&refused), Arc::clone(&stop));
        handles.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            while !stop.load(Ordering::Relaxed) {
                refuse_forbidden_global(&mut conn, &value).await?;
                refused.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await??;
    }
    let elapsed = started.elapsed();
    let after = drained(&mut conn, Duration::from_secs(60)).await?;
    let refusals = refused.load(Ordering::Relaxed) as i64;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE code = 'FORBIDDEN_SECRET_KEY'")
            .fetch_one(&mut conn)
            .await
            .described("count")?;
    let dropped = after.dropped - before.dropped;
    eprintln!(
        "load: 16 sessions for {:.1}s: {refusals} refusals ({:.0}/s), {rows} rows, {dropped} dropped, queue {}",
        elapsed.as_secs_f64(),
        refusals as f64 / elapsed.as_secs_f64(),
        after.queue_size
    );
    ensure!(dropped == 0, "{dropped} records dropped under load with the default queue");
    ensure!(rows == refusals, "{rows} rows for {refusals} refusals");
    ensure!(after.skipped == before.skipped, "records skipped under load");
    Ok(())
}

// ---------------------------------------------------------------------------
// The command-line tool

async fn cli_audit_lists_filters_and_follows(cluster: Arc<Cluster>) -> Result<()> {
    let name = db_name("a_cli");
    let (url, mut conn) = migrated_database(&cluster, &name).await?;
    let value = cluster.fresh_secret();
    refuse_forbidden_global(&mut conn, &value).await?;
    wait_rows(&mut conn, 0, 1, Duration::from_secs(5)).await?;

    let out = run_cli(Some(&url), &["audit", "--json", "--since", "1h", "--code", "FORBIDDEN_SECRET_KEY"]).await?;
    ensure!(out.code == Some(0), "secretgate audit --json: {out}");
    let lines: Vec<Value> =
        out.stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>().context("JSON lines")?;
    ensure!(lines.len() == 1, "{} JSON lines: {}", lines.len(), out.stdout);
    ensure!(lines[0]["sqlstate"] == "SG105" && lines[0]["key"] == "MODEL_PROVIDER", "line: {}", lines[0]);
    let none = run_cli(Some(&url), &["audit", "--json", "--code", "DECRYPT_FAILED"]).await?;
    ensure!(none.code == Some(0) && none.stdout.trim().is_empty(), "a filter that matches nothing: {none}");
    let table = run_cli(Some(&url), &["audit"]).await?;
    ensure!(table.code == Some(0) && table.stdout.contains("FORBIDDEN_SECRET_KEY"), "table output: {table}");
    let bad = run_cli(Some(&url), &["audit", "--since", "yesterday-ish"]).await?;
    ensure!(bad.code == Some(2), "a bad duration: {bad}");
    for o in [&out, &table] {
        ensure!(!o.stdout.contains(&value), "the tool printed a stored value");
    }

    // --follow prints rows as they arrive (LISTEN/NOTIFY).
    let child = spawn_cli(&url, &["audit", "--json", "--follow", "--since", "1s"])?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refuse_forbidden_global(&mut conn, &value).await?;
    wait_rows(&mut conn, 0, 2, Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = child.kill().await?;
    let followed: Vec<Value> = run.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    ensure!(followed.iter().any(|v| v["sqlstate"] == "SG105"), "--follow did not print the new refusal: {run}");
    ensure!(!run.stdout.contains(&value), "the tool printed a stored value");
    Ok(())
}

// ---------------------------------------------------------------------------
// Preload

async fn without_preload_everything_raises_55000(cluster: Arc<Cluster>) -> Result<()> {
    let name = db_name("a_nopreload");
    let (url, conn) = migrated_database(&cluster, &name).await?;
    conn.close().await?;
    cluster.append_conf("shared_preload_libraries = ''\n")?;
    restart(&cluster).await?;
    let result = async {
        let mut conn = connect_when_ready(&url, Duration::from_secs(30)).await?;
        let check = |what: &str, r: std::result::Result<sqlx::postgres::PgQueryResult, sqlx::Error>| -> Result<()> {
            let e = expect_sqlstate(r, "55000").with_context(|| what.to_string())?;
            ensure!(
                e.message.contains("shared_preload_libraries = 'secretgate'"),
                "{what}: the message does not say which line to add: {}",
                e.message
            );
            Ok(())
        };
        // Every function of the extension, called with plain arguments of its types.
        let functions: Vec<(String, String)> = sqlx::query_as(
            "SELECT p.proname::text, coalesce(pg_catalog.oidvectortypes(p.proargtypes), '')
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'secretgate'::regnamespace AND p.prokind = 'f'
                AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
              ORDER BY 1, 2",
        )
        .fetch_all(&mut conn)
        .await
        .described("the extension's functions")?;
        ensure!(functions.len() >= 25, "only {} functions found", functions.len());
        for (name, types) in &functions {
            let mut args = Vec::new();
            for ty in types.split(", ").filter(|t| !t.is_empty()) {
                args.push(match ty {
                    "text" => "'x'",
                    "integer" | "bigint" => "1",
                    "boolean" => "false",
                    "uuid" => "'00000000-0000-0000-0000-000000000001'::uuid",
                    "bytea" => "'\\x00'::bytea",
                    "regclass" => "'public.workspaces'::regclass",
                    "timestamp with time zone" | "timestamp without time zone" => "now()",
                    other => bail!("{name}({types}): no test value for an argument of type {other}"),
                });
            }
            let call = format!("SELECT * FROM secretgate.{name}({})", args.join(", "));
            check(&call, sqlx::query(&call).execute(&mut conn).await)?;
        }
        // The registry's triggers, and the guard of triggers on attached tables.
        check(
            "a registry change",
            sqlx::query("INSERT INTO secretgate.forbidden_keys (key, reason) VALUES ('NOPE', 'test')")
                .execute(&mut conn)
                .await,
        )?;
        check(
            "CREATE TRIGGER on an attached table",
            sqlx::raw_sql(
                "CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
                 CREATE TRIGGER noop BEFORE INSERT ON public.workspaces FOR EACH ROW EXECUTE FUNCTION public.noop()",
            )
            .execute(&mut conn)
            .await,
        )?;
        check(
            "a gate (INSERT a workspace)",
            sqlx::query(
                "INSERT INTO public.workspaces (kind, model) VALUES ('workspace', 'anthropic:claude-opus-4-7')",
            )
            .execute(&mut conn)
            .await,
        )?;
        check(
            "a gate (INSERT a secret)",
            sqlx::query(
                "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version) VALUES ('K', '\\x00', 1)",
            )
            .execute(&mut conn)
            .await,
        )?;
        Ok(())
    }
    .await;
    cluster.append_conf("shared_preload_libraries = 'secretgate'\n")?;
    restart(&cluster).await?;
    result
}
