//! Workspaces, secrets and transactions as a small language, for trials that
//! state what a caller does and what must (not) happen: [`Op`]s run in one
//! transaction as a [`Caller`] ([`run_tx`]), a [`Db`] that expects them
//! [`allowed`](Db::allowed) or [`refused`](Db::refused) with an exact code and
//! no change to any table ([`State`], re-read on a fresh connection), and the
//! server log's `secretgate audit:` lines.
//!
//! It speaks of the project's own tables (`public.workspaces`,
//! `public.workspace_secrets`, `public.global_secrets`) in a database made by
//! [`db`] (every migration applied). Direct writes encrypt with the pure core,
//! as an application would; values are always bind parameters.

use crate::cluster::Cluster;
use crate::db::{db_name, migrated_database};
use crate::errors::{describe, expect_sg, DbError, Described};
use crate::keys::random_hex;
use anyhow::{bail, ensure, Context, Result};
use secretgate_core::{Code, Keyring, Scope};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Callers

/// `secretgate.caller` for one transaction (`SET LOCAL`); `None` leaves it unset.
pub type Caller = Option<&'static str>;
pub const AGENT: Caller = Some("agent");
pub const OPERATOR: Caller = Some("operator");
pub const UNSET: Caller = None;

// ---------------------------------------------------------------------------
// Operations, run inside one transaction

/// One statement of a test transaction. Values are always bind parameters;
/// direct writes encrypt with the pure core, as an application would.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    Insert(Uuid, &'a str, &'a str),
    Update(Uuid, &'a str, &'a str),
    Delete(Uuid, &'a str),
    SetSecret(Uuid, &'a str, &'a str),
    InsertGlobal(&'a str, &'a str),
    UpdateGlobal(&'a str, &'a str),
    DeleteGlobal(&'a str),
    SetGlobal(&'a str, &'a str),
    /// SQL without values whose only parameter `$1` is a workspace id.
    Ws(&'a str, Uuid),
    /// SQL without values with two workspace ids `$1`, `$2`.
    Ws2(&'a str, Uuid, Uuid),
    /// SQL without values or parameters.
    Sql(&'a str),
}

impl Op<'_> {
    /// What the statement does, without its value.
    pub fn label(&self) -> String {
        match self {
            Op::Insert(ws, k, _) => format!("INSERT {k} into {ws}"),
            Op::Update(ws, k, _) => format!("UPDATE {k} of {ws}"),
            Op::Delete(ws, k) => format!("DELETE {k} of {ws}"),
            Op::SetSecret(ws, k, _) => format!("set_secret({ws}, {k})"),
            Op::InsertGlobal(k, _) => format!("INSERT global {k}"),
            Op::UpdateGlobal(k, _) => format!("UPDATE global {k}"),
            Op::DeleteGlobal(k) => format!("DELETE global {k}"),
            Op::SetGlobal(k, _) => format!("set_global_secret({k})"),
            Op::Ws(sql, ws) => format!("{sql} [$1={ws}]"),
            Op::Ws2(sql, a, b) => format!("{sql} [$1={a}, $2={b}]"),
            Op::Sql(sql) => sql.to_string(),
        }
    }
}

pub fn ops_label(ops: &[Op<'_>]) -> String {
    ops.iter().map(Op::label).collect::<Vec<_>>().join("; ")
}

pub async fn run_op(conn: &mut PgConnection, kr: &Keyring, op: Op<'_>) -> Result<(), sqlx::Error> {
    let seal = |scope: Scope, key: &str, value: &str| kr.encrypt(value.as_bytes(), scope, key).expect("core encrypt");
    match op {
        Op::Insert(ws, key, value) => {
            let (version, blob) = seal(Scope::Workspace(ws), key, value);
            sqlx::query(
                "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4)",
            )
            .bind(ws)
            .bind(key)
            .bind(blob)
            .bind(version)
            .execute(conn)
            .await?;
        }
        Op::Update(ws, key, value) => {
            let (version, blob) = seal(Scope::Workspace(ws), key, value);
            sqlx::query(
                "UPDATE public.workspace_secrets SET encrypted_value = $3, encryption_version = $4 WHERE workspace_id = $1 AND key = $2",
            )
            .bind(ws)
            .bind(key)
            .bind(blob)
            .bind(version)
            .execute(conn)
            .await?;
        }
        Op::Delete(ws, key) => {
            sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = $2")
                .bind(ws)
                .bind(key)
                .execute(conn)
                .await?;
        }
        Op::SetSecret(ws, key, value) => {
            sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
                .bind(ws)
                .bind(key)
                .bind(value)
                .execute(conn)
                .await?;
        }
        Op::InsertGlobal(key, value) => {
            let (version, blob) = seal(Scope::Global, key, value);
            sqlx::query(
                "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version) VALUES ($1, $2, $3)",
            )
            .bind(key)
            .bind(blob)
            .bind(version)
            .execute(conn)
            .await?;
        }
        Op::UpdateGlobal(key, value) => {
            let (version, blob) = seal(Scope::Global, key, value);
            sqlx::query(
                "UPDATE public.global_secrets SET encrypted_value = $2, encryption_version = $3 WHERE key = $1",
            )
            .bind(key)
            .bind(blob)
            .bind(version)
            .execute(conn)
            .await?;
        }
        Op::DeleteGlobal(key) => {
            sqlx::query("DELETE FROM public.global_secrets WHERE key = $1").bind(key).execute(conn).await?;
        }
        Op::SetGlobal(key, value) => {
            sqlx::query("SELECT secretgate.set_global_secret($1, $2)").bind(key).bind(value).execute(conn).await?;
        }
        Op::Ws(sql, ws) => {
            sqlx::query(sql).bind(ws).execute(conn).await?;
        }
        Op::Ws2(sql, a, b) => {
            sqlx::query(sql).bind(a).bind(b).execute(conn).await?;
        }
        Op::Sql(sql) => {
            sqlx::raw_sql(sql).execute(conn).await?;
        }
    }
    Ok(())
}

/// Where a transaction failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum At {
    /// One of the statements.
    Statement,
    /// The COMMIT (a deferred gate).
    Commit,
}

/// `BEGIN; [SET LOCAL secretgate.caller]; ops…; COMMIT`. COMMIT is always
/// sent: after a failed statement it only rolls back, and when a gate wrongly
/// lets a write through, the write persists for the "nothing changed" check.
pub async fn run_tx(
    conn: &mut PgConnection,
    kr: &Keyring,
    caller: Caller,
    ops: &[Op<'_>],
) -> Result<(), (At, sqlx::Error)> {
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.map_err(|e| (At::Statement, e))?;
    let set;
    let mut all = Vec::with_capacity(ops.len() + 1);
    if let Some(c) = caller {
        set = format!("SET LOCAL secretgate.caller = '{c}'");
        all.push(Op::Sql(&set));
    }
    all.extend_from_slice(ops);
    let mut failed = None;
    for op in all {
        if let Err(e) = run_op(conn, kr, op).await {
            failed = Some(e);
            break;
        }
    }
    let end = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
    match failed {
        Some(e) => {
            end.map_err(|e| (At::Commit, e))?;
            Err((At::Statement, e))
        }
        None => end.map(|_| ()).map_err(|e| (At::Commit, e)),
    }
}

// ---------------------------------------------------------------------------
// The database state, re-read on a fresh connection

pub type Blob = (i32, Vec<u8>);

#[derive(PartialEq, Eq)]
pub struct State {
    pub workspaces: BTreeMap<Uuid, (String, String)>,
    pub secrets: BTreeMap<(Uuid, String), Blob>,
    pub globals: BTreeMap<String, Blob>,
}

impl State {
    pub async fn read(url: &str) -> Result<State> {
        let mut conn = PgConnection::connect(url).await.context("connect for a state read")?;
        let ws: Vec<(Uuid, String, String)> = sqlx::query_as("SELECT id, kind, status FROM public.workspaces")
            .fetch_all(&mut conn)
            .await
            .described("read workspaces")?;
        let secrets: Vec<(Uuid, String, i32, Vec<u8>)> = sqlx::query_as(
            "SELECT workspace_id, key, encryption_version, encrypted_value FROM public.workspace_secrets",
        )
        .fetch_all(&mut conn)
        .await
        .described("read workspace_secrets")?;
        let globals: Vec<(String, i32, Vec<u8>)> =
            sqlx::query_as("SELECT key, encryption_version, encrypted_value FROM public.global_secrets")
                .fetch_all(&mut conn)
                .await
                .described("read global_secrets")?;
        conn.close().await?;
        Ok(State {
            workspaces: ws.into_iter().map(|(id, k, s)| (id, (k, s))).collect(),
            secrets: secrets.into_iter().map(|(w, k, v, b)| ((w, k), (v, b))).collect(),
            globals: globals.into_iter().map(|(k, v, b)| (k, (v, b))).collect(),
        })
    }

    /// What differs, naming rows only (never a value or ciphertext).
    pub fn diff(&self, after: &State) -> String {
        fn compare<K: Ord + std::fmt::Debug, V: PartialEq>(
            what: &str,
            before: &BTreeMap<K, V>,
            after: &BTreeMap<K, V>,
            show: impl Fn(&V) -> String,
            out: &mut Vec<String>,
        ) {
            for (k, v) in before {
                match after.get(k) {
                    None => out.push(format!("{what} {k:?} removed")),
                    Some(a) if a != v => out.push(format!("{what} {k:?} changed: {} -> {}", show(v), show(a))),
                    _ => {}
                }
            }
            for k in after.keys().filter(|k| !before.contains_key(k)) {
                out.push(format!("{what} {k:?} added"));
            }
        }
        let mut out = Vec::new();
        compare("workspace", &self.workspaces, &after.workspaces, |(k, s)| format!("{k}/{s}"), &mut out);
        let blob = |(v, b): &Blob| format!("version {v}, {} bytes", b.len());
        compare("secret", &self.secrets, &after.secrets, blob, &mut out);
        compare("global secret", &self.globals, &after.globals, blob, &mut out);
        out.join("; ")
    }

    pub fn status(&self, ws: Uuid) -> Option<&str> {
        self.workspaces.get(&ws).map(|(_, s)| s.as_str())
    }

    pub fn has(&self, ws: Uuid, key: &str) -> bool {
        self.secrets.contains_key(&(ws, key.to_string()))
    }
}

// ---------------------------------------------------------------------------
// A test database

pub struct Db {
    pub name: String,
    /// The superuser's URL (state reads always use it).
    pub url: String,
    /// The connection the transactions run on.
    pub conn: PgConnection,
    pub kr: Keyring,
}

pub async fn db(cluster: &Cluster, prefix: &str) -> Result<Db> {
    let name = db_name(prefix);
    let (url, conn) = migrated_database(cluster, &name).await?;
    Ok(Db { name, url, conn, kr: cluster.initial_keys().keyring() })
}

impl Db {
    pub async fn state(&self) -> Result<State> {
        State::read(&self.url).await
    }

    pub async fn allowed(&mut self, caller: Caller, ops: &[Op<'_>]) -> Result<()> {
        match run_tx(&mut self.conn, &self.kr, caller, ops).await {
            Ok(()) => Ok(()),
            Err((at, e)) => {
                bail!("as {caller:?}, [{}] should be allowed; failed at {at:?}: {}", ops_label(ops), describe(&e))
            }
        }
    }

    /// Runs `ops` as `caller` and expects secretgate `code` at `at`, DETAIL
    /// naming `ws` and `key` (when given), and no change to any table.
    pub async fn refused(
        &mut self,
        caller: Caller,
        ops: &[Op<'_>],
        at: At,
        code: Code,
        ws: Option<Uuid>,
        key: Option<&str>,
    ) -> Result<DbError> {
        let before = self.state().await?;
        let what = format!("as {caller:?}, [{}]", ops_label(ops));
        let e = match run_tx(&mut self.conn, &self.kr, caller, ops).await {
            Ok(()) => bail!("{what}: expected {} ({}), but it committed", code.sqlstate(), code.word()),
            Err((got_at, err)) => {
                let e = expect_sg::<()>(Err(err), code).map_err(|e| e.context(what.clone()))?;
                ensure!(got_at == at, "{what}: {} raised at {got_at:?}, expected at {at:?}: {e}", code.sqlstate());
                e
            }
        };
        if let Some(ws) = ws {
            ensure!(
                e.field("workspace_id").as_deref() == Some(ws.to_string().as_str()),
                "{what}: DETAIL should name workspace {ws}: {e}"
            );
        }
        if let Some(key) = key {
            ensure!(e.field("key").as_deref() == Some(key), "{what}: DETAIL should name key {key}: {e}");
        }
        ensure!(e.field("reason").is_some_and(|r| !r.is_empty()), "{what}: DETAIL should carry a reason: {e}");
        let after = self.state().await?;
        ensure!(
            before == after,
            "{what}: refused with {}, yet the tables changed: {}",
            code.sqlstate(),
            before.diff(&after)
        );
        Ok(e)
    }

    /// A workspace row, committed.
    pub async fn workspace(&mut self, kind: &str, status: &str) -> Result<Uuid> {
        sqlx::query_scalar("INSERT INTO public.workspaces (kind, status) VALUES ($1, $2) RETURNING id")
            .bind(kind)
            .bind(status)
            .fetch_one(&mut self.conn)
            .await
            .described(&format!("insert a {kind} workspace ({status})"))
    }

    /// A platform workspace with `model` as its MODEL (set by the operator),
    /// brought to `status` in the same transaction.
    pub async fn platform(&mut self, status: &str, model: Option<&str>) -> Result<Uuid> {
        let id = Uuid::new_v4();
        let mut ops = vec![Op::Ws(
            "INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'provisioning')",
            id,
        )];
        if let Some(m) = model {
            ops.push(Op::SetSecret(id, "MODEL", m));
        }
        let set_status = format!("UPDATE public.workspaces SET status = '{status}' WHERE id = $1");
        ops.push(Op::Ws(&set_status, id));
        self.allowed(OPERATOR, &ops).await.context("creating a platform workspace")?;
        Ok(id)
    }

    pub async fn set(&mut self, ws: Uuid, key: &str, value: &str) -> Result<()> {
        self.allowed(OPERATOR, &[Op::SetSecret(ws, key, value)]).await
    }

    /// A row's ciphertext made undecryptable (one byte flipped), bypassing the gates.
    pub async fn corrupt(&mut self, ws: Uuid, key: &str) -> Result<()> {
        self.plant(ws, key, "encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1)").await
    }

    /// A row moved to a key version the keyring does not have, bypassing the gates.
    pub async fn unknown_version(&mut self, ws: Uuid, key: &str) -> Result<()> {
        self.plant(ws, key, "encryption_version = 99").await
    }

    pub async fn plant(&mut self, ws: Uuid, key: &str, set: &str) -> Result<()> {
        let sql = format!("UPDATE public.workspace_secrets SET {set} WHERE workspace_id = $1 AND key = $2");
        sqlx::raw_sql("BEGIN; SET LOCAL session_replication_role = replica")
            .execute(&mut self.conn)
            .await
            .described("BEGIN")?;
        let r = sqlx::query(&sql).bind(ws).bind(key).execute(&mut self.conn).await;
        sqlx::raw_sql("COMMIT").execute(&mut self.conn).await.described("COMMIT")?;
        let n = r.described("planting a bad row")?.rows_affected();
        ensure!(n == 1, "planting a bad {key} row touched {n} rows");
        Ok(())
    }

    pub async fn read(&mut self, ws: Uuid, key: &str) -> Result<Option<String>> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let v = sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)")
            .bind(ws)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .described(&format!("read_secret({key})"));
        conn.close().await?;
        v
    }

    pub async fn read_global(&mut self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT secretgate.read_global_secret($1)")
            .bind(key)
            .fetch_one(&mut self.conn)
            .await
            .described(&format!("read_global_secret({key})"))
    }

    pub async fn expect_value(&mut self, ws: Uuid, key: &str, want: &str, what: &str) -> Result<()> {
        match self.read(ws, key).await? {
            Some(v) if v == want => Ok(()),
            Some(_) => bail!("{what}: {key} of {ws} holds a different value than expected"),
            None => bail!("{what}: {key} of {ws} has no row"),
        }
    }
}

/// A recognizable model id, remembered so it may never reach the server log.
pub fn model_value(cluster: &Cluster) -> String {
    let m = format!("anthropic:claude-bb-{}", random_hex(6));
    cluster.remember_secret(&m);
    m
}

// ---------------------------------------------------------------------------
// The server log

/// The `secretgate audit:` lines written by sessions of database `db`, parsed.
pub fn audit_lines(cluster: &Cluster, db: &str) -> Result<Vec<(String, Value)>> {
    let marker = format!("@{db} ");
    let mut out = Vec::new();
    for line in cluster.log_contents().lines().filter(|l| l.contains(&marker)) {
        if let Some((_, json)) = line.split_once("secretgate audit: ") {
            let v: Value = serde_json::from_str(json).with_context(|| format!("audit line is not JSON: {line}"))?;
            ensure!(v.is_object(), "audit line is not a JSON object: {line}");
            out.push((line.to_string(), v));
        }
    }
    Ok(out)
}

/// The audit lines written since `mark` (waiting briefly for the log).
pub async fn new_audit_lines(cluster: &Cluster, db: &str, mark: usize) -> Result<Vec<(String, Value)>> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while audit_lines(cluster, db)?.len() <= mark && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a duplicate, if any, the chance to show up too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(audit_lines(cluster, db)?.split_off(mark))
}

/// Exactly one new audit line, with `fields` and `caller` as given and none of `needles`.
pub async fn expect_one_audit(
    cluster: &Cluster,
    db: &str,
    mark: usize,
    fields: &[(&str, Value)],
    caller: Value,
    needles: &[&str],
) -> Result<Value> {
    let lines = new_audit_lines(cluster, db, mark).await?;
    let what = fields.iter().find(|(k, _)| *k == "event").map(|(_, v)| v.to_string()).unwrap_or_default();
    ensure!(
        lines.len() == 1,
        "expected exactly one new audit line for {what}, got {}: {:?}",
        lines.len(),
        lines.iter().map(|l| &l.1).collect::<Vec<_>>()
    );
    let (raw, line) = &lines[0];
    for (k, want) in fields {
        ensure!(line.get(*k) == Some(want), "audit line {what}: {k} should be {want}, line: {line}");
    }
    for k in ["event", "code", "sqlstate", "reason", "caller"] {
        ensure!(line.get(k).is_some(), "audit line {what} lacks {k:?}: {line}");
    }
    let got_caller = line.get("caller").cloned().unwrap_or(Value::Null);
    for (k, want) in caller.as_object().into_iter().flatten() {
        ensure!(got_caller.get(k) == Some(want), "audit line {what}: caller.{k} should be {want}, line: {line}");
    }
    for (i, n) in needles.iter().enumerate() {
        ensure!(n.is_empty() || !raw.contains(n), "audit line {what} contains stored value #{i}");
    }
    Ok(line.clone())
}

/// Whether a WARNING from database `db` mentions `needle`.
pub fn warned(cluster: &Cluster, db: &str, needle: &str) -> bool {
    let marker = format!("@{db} ");
    cluster.log_contents().lines().any(|l| l.contains(&marker) && l.contains("WARNING:") && l.contains(needle))
}
