//! The platform-identity gate under concurrency (CONTRACT §6: "no
//! interleaving of committed transactions may leave a platform workspace
//! online without a usable MODEL").
//!
//! Two real sessions race on one platform workspace that starts offline with
//! a usable MODEL: A sets it online, B deletes its MODEL. Both statements run
//! first, then the commits are issued A-then-B, B-then-A, or both at once.
//! "Then" means the second COMMIT is sent once the first has finished or is
//! blocked on a lock (seen in pg_stat_activity), since a gate may make the
//! first commit wait for the other transaction. Afterwards: never both
//! committed, every failure is SG102, 40001 or 40P01, and the committed state
//! never has the workspace online without a usable MODEL.
//!
//! Iterations per ordering: `SECRETGATE_RACE_ITERATIONS` (default 200).

use anyhow::{anyhow, bail, ensure, Context, Result};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    // Timing-sensitive and CPU-bound on a small machine: one level at a time.
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("identity_race"));
    let trials = trials![&cluster;
        "read_committed" => |c| race(c, "READ COMMITTED"),
        "repeatable_read" => |c| race(c, "REPEATABLE READ"),
        "serializable" => |c| race(c, "SERIALIZABLE"),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

fn iterations() -> usize {
    std::env::var("SECRETGATE_RACE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Order {
    AThenB,
    BThenA,
    Together,
}

const ORDERS: [Order; 3] = [Order::AThenB, Order::BThenA, Order::Together];

/// How one session's transaction ended: committed, or the SQLSTATE it failed
/// with and whether that was at the statement or at COMMIT.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum End {
    Committed,
    Failed { sqlstate: String, at_commit: bool },
}

impl End {
    fn of(result: std::result::Result<(), sqlx::Error>, at_commit: bool) -> End {
        match result {
            Ok(()) => End::Committed,
            Err(e) => {
                End::Failed { sqlstate: sqlstate(&e).unwrap_or_else(|| format!("non-database error: {e}")), at_commit }
            }
        }
    }

    fn label(&self) -> String {
        match self {
            End::Committed => "committed".into(),
            End::Failed { sqlstate, at_commit: true } => format!("{sqlstate} at COMMIT"),
            End::Failed { sqlstate, at_commit: false } => format!("{sqlstate} at the statement"),
        }
    }
}

const ALLOWED_FAILURES: [&str; 3] = ["SG102", "40001", "40P01"];

struct Session {
    conn: PgConnection,
    pid: i32,
}

async fn session(url: &str) -> Result<Session> {
    let mut conn = PgConnection::connect(url).await.context("connect")?;
    // Deadlocks are expected under the stricter levels: detect them fast.
    sqlx::raw_sql("SET deadlock_timeout = '20ms'; SET lock_timeout = '20s'")
        .execute(&mut conn)
        .await
        .described("settings")?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await.described("pid")?;
    Ok(Session { conn, pid })
}

async fn commit(conn: &mut PgConnection) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql("COMMIT").execute(conn).await.map(|_| ())
}

async fn waiting_on_lock(monitor: &mut PgConnection, pid: i32) -> Result<bool> {
    sqlx::query_scalar("SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(monitor)
        .await
        .described("pg_stat_activity")
}

/// Sends `first`'s COMMIT; once it has finished or is blocked on a lock,
/// sends `second`'s; returns both results in (first, second) order.
async fn ordered(
    first: &mut Session,
    second: &mut Session,
    monitor: &mut PgConnection,
) -> Result<(std::result::Result<(), sqlx::Error>, std::result::Result<(), sqlx::Error>)> {
    let pid = first.pid;
    let f1 = commit(&mut first.conn);
    tokio::pin!(f1);
    let done = loop {
        tokio::select! {
            r = &mut f1 => break Some(r),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {
                if waiting_on_lock(monitor, pid).await? {
                    break None;
                }
            }
        }
    };
    Ok(match done {
        Some(r1) => (r1, commit(&mut second.conn).await),
        None => tokio::join!(f1, commit(&mut second.conn)),
    })
}

/// The four connections of a race: setup and checks, lock monitor, A, B.
struct Racers {
    control: PgConnection,
    monitor: PgConnection,
    a: Session,
    b: Session,
}

/// One race on a fresh workspace; returns how A and B ended.
async fn round(
    r: &mut Racers,
    isolation: &str,
    order: Order,
    b_statement_first: bool,
    model: &str,
) -> Result<(Uuid, End, End)> {
    let Racers { control, monitor, a, b } = r;
    let ws: Uuid = {
        sqlx::raw_sql("BEGIN").execute(&mut *control).await.described("BEGIN")?;
        let ws: Uuid = sqlx::query_scalar(
            "INSERT INTO public.workspaces (kind, status) VALUES ('platform', 'offline') RETURNING id",
        )
        .fetch_one(&mut *control)
        .await
        .described("insert workspace")?;
        sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', $2)")
            .bind(ws)
            .bind(model)
            .execute(&mut *control)
            .await
            .described("set MODEL")?;
        sqlx::raw_sql("COMMIT").execute(&mut *control).await.described("COMMIT")?;
        ws
    };
    let begin = format!("BEGIN ISOLATION LEVEL {isolation}");
    sqlx::raw_sql(&begin).execute(&mut a.conn).await.described("A BEGIN")?;
    sqlx::raw_sql(&begin).execute(&mut b.conn).await.described("B BEGIN")?;

    let a_stmt = sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1").bind(ws);
    let b_stmt = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'").bind(ws);
    let (ra, rb) = if b_statement_first {
        let rb = b_stmt.execute(&mut b.conn).await;
        (a_stmt.execute(&mut a.conn).await, rb)
    } else {
        let ra = a_stmt.execute(&mut a.conn).await;
        (ra, b_stmt.execute(&mut b.conn).await)
    };
    let a_failed = ra.as_ref().err().map(|e| End::of(Err(clone_err(e)), false));
    let b_failed = rb.as_ref().err().map(|e| End::of(Err(clone_err(e)), false));
    if let Ok(r) = &ra {
        ensure!(r.rows_affected() == 1, "A's UPDATE touched {} rows", r.rows_affected());
    }
    if let Ok(r) = &rb {
        ensure!(r.rows_affected() == 1, "B's DELETE touched {} rows", r.rows_affected());
    }

    let (ca, cb) = match order {
        Order::Together => tokio::join!(commit(&mut a.conn), commit(&mut b.conn)),
        Order::AThenB => ordered(a, b, monitor).await?,
        Order::BThenA => {
            let (cb, ca) = ordered(b, a, monitor).await?;
            (ca, cb)
        }
    };
    // A statement that failed aborted its transaction: its COMMIT only rolls back.
    let end_a = a_failed.unwrap_or_else(|| End::of(ca, true));
    let end_b = b_failed.unwrap_or_else(|| End::of(cb, true));
    Ok((ws, end_a, end_b))
}

/// sqlx errors are not Clone; the SQLSTATE is all a round keeps.
fn clone_err(e: &sqlx::Error) -> sqlx::Error {
    match sqlstate(e) {
        Some(code) => sqlx::Error::Protocol(format!("SQLSTATE {code}")),
        None => sqlx::Error::Protocol(e.to_string()),
    }
}

/// What committed for `ws`: (status, MODEL row present, MODEL usable).
async fn committed_state(control: &mut PgConnection, ws: Uuid) -> Result<(String, bool, bool)> {
    let status: String = sqlx::query_scalar("SELECT status FROM public.workspaces WHERE id = $1")
        .bind(ws)
        .fetch_one(&mut *control)
        .await
        .described("status")?;
    let present: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL')",
    )
    .bind(ws)
    .fetch_one(&mut *control)
    .await
    .described("MODEL row")?;
    let usable: bool = sqlx::query_scalar("SELECT secretgate.has_model_secret($1)")
        .bind(ws)
        .fetch_one(&mut *control)
        .await
        .described("has_model_secret")?;
    Ok((status, present, usable))
}

async fn race(cluster: Arc<Cluster>, isolation: &'static str) -> Result<()> {
    let name = db_name("race");
    let (url, control) = migrated_database(&cluster, &name).await?;
    let mut r = Racers {
        control,
        monitor: PgConnection::connect(&url).await?,
        a: session(&url).await?,
        b: session(&url).await?,
    };
    let model = format!("anthropic:claude-race-{}", random_hex(6));
    cluster.remember_secret(&model);

    let n = iterations();
    let started = Instant::now();
    // (order, A's end, B's end) -> count
    let mut outcomes: BTreeMap<(Order, End, End), usize> = BTreeMap::new();
    let mut by_sqlstate: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();

    for i in 0..n {
        for (j, order) in ORDERS.into_iter().enumerate() {
            let b_first = (i + j) % 2 == 1;
            let (ws, end_a, end_b) =
                tokio::time::timeout(Duration::from_secs(30), round(&mut r, isolation, order, b_first, &model))
                    .await
                    .map_err(|_| {
                        anyhow!(
                            "{isolation} {order:?} iteration {i}: a round did not finish within 30s (stuck on a lock?)"
                        )
                    })??;
            for end in [&end_a, &end_b] {
                if let End::Failed { sqlstate, .. } = end {
                    *by_sqlstate.entry(sqlstate.clone()).or_default() += 1;
                    if !ALLOWED_FAILURES.contains(&sqlstate.as_str()) {
                        problems.push(format!("iteration {i} {order:?}: unexpected failure {}", end.label()));
                    }
                }
            }
            if end_a == End::Committed && end_b == End::Committed {
                problems
                    .push(format!("iteration {i} {order:?}: both the online UPDATE and the MODEL DELETE committed"));
            }
            let (status, present, usable) = committed_state(&mut r.control, ws).await?;
            if status == "online" && !usable {
                problems.push(format!("iteration {i} {order:?}: committed state is online without a usable MODEL"));
            }
            // The committed state matches who committed.
            let want_status = if end_a == End::Committed { "online" } else { "offline" };
            let want_present = end_b != End::Committed;
            if status != want_status || present != want_present {
                problems.push(format!(
                    "iteration {i} {order:?}: A {} / B {}, but the committed state is status {status}, MODEL present {present}",
                    end_a.label(),
                    end_b.label()
                ));
            }
            *outcomes.entry((order, end_a, end_b)).or_default() += 1;
        }
    }

    // Every platform workspace this level created, at the end.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.workspaces w WHERE w.kind = 'platform' AND w.status = 'online' AND NOT secretgate.has_model_secret(w.id)",
    )
    .fetch_one(&mut r.control)
    .await
    .described("final sweep")?;
    if bad != 0 {
        problems.push(format!("{bad} platform workspaces are online without a usable MODEL at the end"));
    }

    let mut report = format!("{isolation}: {n} iterations x {} orderings in {:.1?}\n", ORDERS.len(), started.elapsed());
    for ((order, ea, eb), count) in &outcomes {
        report.push_str(&format!("  {order:?}: A {} / B {}: {count}\n", ea.label(), eb.label()));
    }
    report.push_str(&format!("  failures by SQLSTATE: {by_sqlstate:?}\n"));
    eprintln!("{report}");

    for s in [&mut r.a, &mut r.b] {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut s.conn).await;
    }
    if !problems.is_empty() {
        let shown = problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ");
        bail!("{} problem(s) under {isolation}:\n  {shown}\n{report}", problems.len());
    }
    ensure!(
        by_sqlstate.values().sum::<usize>() >= n * ORDERS.len(),
        "every round should have refused at least one side"
    );
    Ok(())
}
