//! `secretgate probe`: the BYOK liveness preflight: a dead credential is found
//! and recorded (`record_liveness`) before a workspace goes online with it.
//!
//! The extension says what to probe: `secretgate.byok_credentials()` lists,
//! for every BYOK workspace, each of its provider's `auth_env` key names that
//! has a stored row, at workspace scope or else global scope (never a value).
//! This command names no platform table: the attached tables, in whatever
//! schema, are found through `secretgate.attached_tables`.
//!
//! For every such credential (or those of one `--workspace`), once per
//! (scope, key name, provider): read the value with `read_secret` /
//! `read_global_secret`, send ONE authenticated `GET {base_url}/models`,
//! bounded as a whole (connect, headers and body) by `--timeout`, and record
//! the answer with `secretgate.record_liveness(workspace, key, status,
//! provider)`. The extension classifies the status; this command prints the
//! verdict it returns.
//!
//! The header form comes from `secretgate.credential_auth` when it has a row
//! for the key name (an OAuth token goes as `Authorization: Bearer` even to a
//! provider whose API keys use `x-api-key`), else from the provider's own
//! `auth_header` / `auth_scheme`. Anthropic refuses a Bearer token without
//! `anthropic-beta: oauth-2025-04-20` (401 "OAuth authentication is currently
//! not supported"), so that flag goes with every Bearer request to it.
//!
//! A credential value is never printed, logged, formatted or put into an
//! error: it goes from the database straight into a header marked sensitive.
//! HTTP errors are reduced to a kind (`timeout`, `no answer`) and never
//! formatted either.
//!
//! The verdict is stored against the credential's current ciphertext, so the
//! ciphertext read with the value is compared with the current one, in the
//! recording transaction's snapshot, before recording: a credential replaced
//! while it was being probed is reported `changed` and nothing is recorded for
//! it (otherwise a 401 of the old key would mark the new key dead).
//!
//! Exit codes: 0 every probe recorded (dead ones included); 1 a credential
//! could not be read, probed or recorded; 2 usage or connection error.

use crate::db;
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use anyhow::anyhow;
use clap::Args;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

/// Response bodies are read (the timeout covers the body) but not kept; past
/// this many bytes the rest is not waited for.
const BODY_CAP: usize = 1 << 20;

/// Attempts of a recording transaction that hit a serialization failure.
const RECORD_ATTEMPTS: usize = 3;

#[derive(Args)]
pub struct ProbeArgs {
    /// Probe only this workspace's credentials
    #[arg(long, value_name = "UUID")]
    workspace: Option<Uuid>,

    /// Seconds allowed for each whole request (connect, headers and body)
    #[arg(long, default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,

    /// How many requests may be in flight at once
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
}

/// One credential to probe: a key name at workspace scope (`workspace` is
/// Some) or global scope, and the provider it is probed against.
#[derive(Clone)]
struct Credential {
    workspace: Option<Uuid>,
    provider: String,
    key: String,
    /// None when the provider is not in the registry (or has no base_url).
    base_url: Option<String>,
    /// The header form: `credential_auth`'s for this key name, else the
    /// provider's; None when the provider is not in the registry.
    auth: Option<(String, String)>,
}

/// The attached tables, as quoted, schema-qualified names.
struct Tables {
    workspaces: String,
    secrets: String,
    global_secrets: String,
}

impl Credential {
    fn scope(&self) -> String {
        self.workspace.map_or_else(|| "global".to_string(), |w| w.to_string())
    }
}

/// What happened to one credential.
struct Outcome {
    /// `ok` / `dead` / `transient` (from record_liveness), `skipped`, `changed`, `error`.
    verdict: String,
    /// HTTP status, `timeout`, `no answer`, a SQLSTATE, or `-`.
    status: String,
    /// Why, for `skipped` / `changed` / `error` rows (never a value).
    note: Option<String>,
    /// An error that makes the exit code 1 (or 2 when the connection is lost).
    failure: Option<FailureKind>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Check,
    Connection,
}

impl Outcome {
    fn plain(verdict: &str, status: impl Into<String>, note: Option<String>) -> Outcome {
        Outcome { verdict: verdict.to_string(), status: status.into(), note, failure: None }
    }

    fn error(status: impl Into<String>, note: String, failure: FailureKind) -> Outcome {
        Outcome { verdict: "error".to_string(), status: status.into(), note: Some(note), failure: Some(failure) }
    }

    /// A database error while reading or recording: its SQLSTATE, or a lost connection.
    /// The probe never sends a value to the server, so the server's message
    /// is safe to show.
    fn db_error(what: &str, e: &sqlx::Error) -> Outcome {
        match sqlstate(e) {
            Some(code) => Outcome::error(code, format!("{what}: {}", describe(e)), FailureKind::Check),
            None => Outcome::error("-", format!("{what}: {}", describe(e)), FailureKind::Connection),
        }
    }
}

/// The answer of one HTTP probe.
enum Answer {
    Status(u16),
    Timeout,
    Unreachable,
}

pub async fn main(url: &str, args: ProbeArgs) -> Result<(), Failure> {
    let timeout = Duration::from_secs(args.timeout);
    let client = http_client(timeout)?;
    let mut conn = db::connect(url, "secretgate-probe").await?;
    let tables = match attached(&mut conn).await {
        Ok(tables) => Arc::new(tables),
        Err(e) => {
            let _ = conn.close().await;
            return Err(e);
        }
    };

    if let Some(ws) = args.workspace {
        let exists: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1)", tables.workspaces))
                .bind(ws)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| Failure::usage(anyhow!("cannot look up workspace {ws}: {}", describe(&e))))?;
        if !exists {
            let _ = conn.close().await;
            return Err(Failure::usage(anyhow!("no workspace {ws}")));
        }
    }

    let credentials = match list(&mut conn, args.workspace).await {
        Ok(c) => c,
        Err(e) => {
            let _ = conn.close().await;
            return Err(e);
        }
    };
    if credentials.is_empty() {
        let _ = conn.close().await;
        match args.workspace {
            Some(ws) => {
                println!("workspace {ws} has no BYOK credential to probe (external, platform-managed, or none stored)")
            }
            None => println!("no BYOK credential to probe"),
        }
        return Ok(());
    }

    let conn = Arc::new(Mutex::new(conn));
    let permits = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, credential) in credentials.iter().cloned().enumerate() {
        let conn = Arc::clone(&conn);
        let permits = Arc::clone(&permits);
        let client = client.clone();
        let tables = Arc::clone(&tables);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, probe_one(&conn, &tables, &client, timeout, &credential).await)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = credentials.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => outcomes[index] = Some(outcome),
            Err(e) => return Err(Failure::check(anyhow!("a probe task failed: {e}"))),
        }
    }
    // Every spawned task either reported or returned early above.
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    if outcomes.len() != credentials.len() {
        return Err(Failure::check(anyhow!("a probe task did not report")));
    }

    if let Ok(conn) = Arc::try_unwrap(conn) {
        let _ = conn.into_inner().close().await;
    }

    print_table(&credentials, &outcomes);
    let failures: Vec<FailureKind> = outcomes.iter().filter_map(|o| o.failure).collect();
    if failures.is_empty() {
        return Ok(());
    }
    let message = anyhow!("{} credential(s) could not be read, probed or recorded (see the table)", failures.len());
    if failures.contains(&FailureKind::Connection) {
        Err(Failure::usage(message.context("lost the database connection")))
    } else {
        Err(Failure::check(message))
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .use_rustls_tls()
        // A redirect would carry a non-standard auth header (x-api-key) to another host.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(format!("secretgate-probe/{}", db::TOOL_VERSION))
        .build()
        .map_err(|_| Failure::usage(anyhow!("cannot set up the HTTP client (TLS)")))
}

/// The attached tables (`secretgate.attach_gates`), wherever they live.
async fn attached(conn: &mut PgConnection) -> Result<Tables, Failure> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', wn.nspname, wc.relname),
                format('%I.%I', sn.nspname, sc.relname),
                format('%I.%I', gn.nspname, gc.relname)
         FROM secretgate.attached_tables a
         JOIN pg_catalog.pg_class wc ON wc.oid = a.workspaces
         JOIN pg_catalog.pg_namespace wn ON wn.oid = wc.relnamespace
         JOIN pg_catalog.pg_class sc ON sc.oid = a.secrets
         JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
         JOIN pg_catalog.pg_class gc ON gc.oid = a.global_secrets
         JOIN pg_catalog.pg_namespace gn ON gn.oid = gc.relnamespace",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| {
        Failure::usage(anyhow!(
            "cannot read secretgate.attached_tables ({}); is the secretgate extension installed and migrated?",
            describe(&e)
        ))
    })?;
    match rows.as_slice() {
        [(workspaces, secrets, global_secrets)] => Ok(Tables {
            workspaces: workspaces.clone(),
            secrets: secrets.clone(),
            global_secrets: global_secrets.clone(),
        }),
        [] => Err(Failure::usage(anyhow!(
            "no tables are attached (secretgate.attached_tables is empty); run `secretgate migrate run` first"
        ))),
        _ => {
            Err(Failure::usage(anyhow!("secretgate.attached_tables has more than one row; expected one set of tables")))
        }
    }
}

/// Every BYOK credential from `secretgate.byok_credentials()`, once per
/// (scope, key name, provider), in a stable order: global ones first, then by
/// workspace, provider and key name.
///
/// The extension decides which workspaces count (kind not `external`,
/// resolved provider known and not platform) and which scope each key name is
/// read at (the workspace's row, else the global one). A global credential
/// shared by several workspaces is probed once per provider; two providers
/// that accept the same key name probe it once each.
async fn list(conn: &mut PgConnection, workspace: Option<Uuid>) -> Result<Vec<Credential>, Failure> {
    type Row =
        (Option<Uuid>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.workspace_id, c.scope, c.provider, c.key, p.base_url,
                coalesce(a.auth_header, p.auth_header), coalesce(a.auth_scheme, p.auth_scheme)
         FROM secretgate.byok_credentials() c
         LEFT JOIN secretgate.providers p ON p.name = c.provider
         LEFT JOIN secretgate.credential_auth a ON a.key = c.key
         WHERE $1::uuid IS NULL OR c.workspace_id = $1",
    )
    .bind(workspace)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| {
        let advice = match sqlstate(&e).as_deref() {
            // undefined_function / undefined_table: an extension older than this tool
            Some("42883") | Some("42P01") => format!(
                "this tool needs secretgate {} (byok_credentials, credential_auth); run ALTER EXTENSION secretgate UPDATE",
                db::TOOL_VERSION
            ),
            _ => "is the secretgate extension installed and migrated?".to_string(),
        };
        Failure::usage(anyhow!("cannot list the BYOK credentials ({}); {advice}", describe(&e)))
    })?;

    let mut unique: BTreeMap<(Option<Uuid>, String, String), Credential> = BTreeMap::new();
    for (workspace_id, scope, provider, key, base_url, auth_header, auth_scheme) in rows {
        let (Some(provider), Some(key)) = (provider, key) else {
            return Err(Failure::check(anyhow!(
                "secretgate.byok_credentials() returned a row without provider or key"
            )));
        };
        let scope = match (scope.as_deref(), workspace_id) {
            (Some("workspace"), Some(ws)) => Some(ws),
            (Some("global"), _) => None,
            (other, _) => {
                return Err(Failure::check(anyhow!(
                    "secretgate.byok_credentials() returned scope {other:?} for key {key} (workspace {}); \
                     expected 'workspace' with a workspace id, or 'global'",
                    workspace_id.map_or_else(|| "NULL".to_string(), |w| w.to_string())
                )))
            }
        };
        let auth = auth_header.zip(auth_scheme);
        unique.entry((scope, provider.clone(), key.clone())).or_insert(Credential {
            workspace: scope,
            provider,
            key,
            base_url,
            auth,
        });
    }
    // BTreeMap order: None (global) first, then by workspace, provider, key.
    Ok(unique.into_values().collect())
}

async fn probe_one(
    conn: &Mutex<PgConnection>,
    tables: &Tables,
    client: &reqwest::Client,
    timeout: Duration,
    c: &Credential,
) -> Outcome {
    let Some((auth_header, auth_scheme)) = c.auth.as_ref() else {
        return Outcome::error(
            "-",
            format!("provider {} is not in secretgate.providers", c.provider),
            FailureKind::Check,
        );
    };
    let Some(base_url) = c.base_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return Outcome::plain("skipped", "-", Some(format!("provider {} has no base_url", c.provider)));
    };
    let endpoint = format!("{}/models", base_url.trim_end_matches('/'));
    if let Err(why) = safe_endpoint(&endpoint) {
        return Outcome::error("-", format!("provider {}: {why}", c.provider), FailureKind::Check);
    }
    let header_name = match HeaderName::from_bytes(auth_header.trim().as_bytes()) {
        Ok(name) => name,
        Err(_) => {
            return Outcome::error(
                "-",
                format!(
                    "{} for provider {}: auth_header {auth_header:?} is not a valid HTTP header name",
                    c.key, c.provider
                ),
                FailureKind::Check,
            )
        }
    };
    let bearer_to_anthropic = is_anthropic(&c.provider, base_url) && header_name == reqwest::header::AUTHORIZATION;

    // Read the value and the ciphertext it came from, in one snapshot.
    let (ciphertext, value) = {
        let mut conn = conn.lock().await;
        match read(&mut conn, tables, c).await {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                return Outcome::plain("changed", "-", Some("the credential was removed before it was probed".into()))
            }
            Err(e) => return Outcome::db_error("cannot read the credential", &e),
        }
    };
    if value.is_empty() {
        return Outcome::plain("skipped", "-", Some("the stored value is empty (not a usable credential)".into()));
    }

    let mut headers = HeaderMap::new();
    match auth_value(auth_scheme, &value) {
        Some(v) => {
            headers.insert(header_name, v);
        }
        None => {
            return Outcome::error(
                "-",
                "the stored value cannot be sent in an HTTP header (control characters or a line break)".into(),
                FailureKind::Check,
            )
        }
    }
    drop(value);
    if is_anthropic(&c.provider, base_url) {
        // Anthropic's API refuses requests without a version header.
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        if bearer_to_anthropic {
            // Anthropic takes OAuth access tokens (Authorization: Bearer) only with this beta flag.
            headers.insert("anthropic-beta", HeaderValue::from_static("oauth-2025-04-20"));
        }
    }

    let answer = send(client, &endpoint, headers, timeout).await;
    let (status_code, status_text) = match answer {
        Answer::Status(s) => (i32::from(s), s.to_string()),
        Answer::Timeout => (0, "timeout".to_string()),
        Answer::Unreachable => (0, "no answer".to_string()),
    };

    let mut conn = conn.lock().await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record(&mut conn, tables, c, &ciphertext, status_code).await {
            Ok(Some(verdict)) => return Outcome::plain(&verdict, status_text, None),
            Ok(None) => {
                return Outcome::plain(
                    "changed",
                    status_text,
                    Some("the credential was replaced while it was probed; nothing recorded, probe again".into()),
                )
            }
            Err(e) if sqlstate(&e).as_deref() == Some("40001") && attempt < RECORD_ATTEMPTS => continue,
            Err(e) => return Outcome::db_error("cannot record the verdict", &e),
        }
    }
}

/// `{scheme} {value}`, or the raw value when the scheme is empty; marked
/// sensitive so that no Debug output of the header shows it. Built from bytes:
/// the value is never formatted.
fn auth_value(scheme: &str, value: &str) -> Option<HeaderValue> {
    let scheme = scheme.trim();
    let mut bytes = Vec::with_capacity(scheme.len() + 1 + value.len());
    if !scheme.is_empty() {
        bytes.extend_from_slice(scheme.as_bytes());
        bytes.push(b' ');
    }
    bytes.extend_from_slice(value.as_bytes());
    let mut header = HeaderValue::from_bytes(&bytes).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// A credential goes over https, or over plain http only to this machine
/// (loopback: local proxies and test doubles).
fn safe_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|_| "base_url is not a valid URL".to_string())?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => {
            Err("refusing to send a credential over plain http to a host other than this machine; use https".into())
        }
        other => Err(format!("base_url scheme {other:?} is not http(s)")),
    }
}

fn is_anthropic(provider: &str, base_url: &str) -> bool {
    provider == "anthropic"
        || url::Url::parse(base_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h == "anthropic.com" || h.ends_with(".anthropic.com")))
            .unwrap_or(false)
}

/// One GET, bounded as a whole by `timeout`. Errors are reduced to their kind.
async fn send(client: &reqwest::Client, endpoint: &str, headers: HeaderMap, timeout: Duration) -> Answer {
    let request = async {
        let mut response = match client.get(endpoint).headers(headers).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Answer::Timeout,
            Err(_) => return Answer::Unreachable,
        };
        let status = response.status().as_u16();
        let mut read = 0usize;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read >= BODY_CAP {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Answer::Timeout,
                Err(_) => return Answer::Unreachable,
            }
        }
        Answer::Status(status)
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(answer) => answer,
        Err(_) => Answer::Timeout,
    }
}

/// The current ciphertext and value of a credential, in one snapshot; None
/// when the row is gone. The value comes from `read_secret` /
/// `read_global_secret`; the ciphertext from the attached table, so that the
/// verdict is recorded only for the ciphertext that was probed.
async fn read(conn: &mut PgConnection, t: &Tables, c: &Credential) -> Result<Option<(Vec<u8>, String)>, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let row: Option<(Vec<u8>, Option<String>)> = match c.workspace {
        Some(ws) => {
            sqlx::query_as(&format!(
                "SELECT s.encrypted_value, secretgate.read_secret($1, $2)
                 FROM {} s WHERE s.workspace_id = $1 AND s.key = $2",
                t.secrets
            ))
            .bind(ws)
            .bind(&c.key)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT g.encrypted_value, secretgate.read_global_secret($1) FROM {} g WHERE g.key = $1",
                t.global_secrets
            ))
            .bind(&c.key)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(row.and_then(|(ciphertext, value)| value.map(|v| (ciphertext, v))))
}

/// Records `status` for the credential and its provider if its ciphertext is
/// still the one that was probed; returns the verdict, or None when it changed.
async fn record(
    conn: &mut PgConnection,
    t: &Tables,
    c: &Credential,
    probed: &[u8],
    status: i32,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let current: Option<Vec<u8>> = match c.workspace {
        Some(ws) => {
            sqlx::query_scalar(&format!(
                "SELECT encrypted_value FROM {} WHERE workspace_id = $1 AND key = $2",
                t.secrets
            ))
            .bind(ws)
            .bind(&c.key)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_scalar(&format!("SELECT encrypted_value FROM {} WHERE key = $1", t.global_secrets))
                .bind(&c.key)
                .fetch_optional(&mut *tx)
                .await?
        }
    };
    if current.as_deref() != Some(probed) {
        tx.rollback().await?;
        return Ok(None);
    }
    let verdict: Option<String> = sqlx::query_scalar("SELECT secretgate.record_liveness($1, $2, $3, $4)")
        .bind(c.workspace)
        .bind(&c.key)
        .bind(status)
        .bind(&c.provider)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(verdict.unwrap_or_else(|| "recorded".to_string())))
}

fn print_table(credentials: &[Credential], outcomes: &[Outcome]) {
    let header = ["WORKSPACE", "PROVIDER", "KEY", "VERDICT", "HTTP"];
    let rows: Vec<[String; 5]> = credentials
        .iter()
        .zip(outcomes)
        .map(|(c, o)| [c.scope(), c.provider.clone(), c.key.clone(), o.verdict.clone(), o.status.clone()])
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    println!("{}", line(header));
    for (row, outcome) in rows.iter().zip(outcomes) {
        let cells = [row[0].as_str(), row[1].as_str(), row[2].as_str(), row[3].as_str(), row[4].as_str()];
        match &outcome.note {
            Some(note) => println!("{}  ({note})", line(cells)),
            None => println!("{}", line(cells)),
        }
    }

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.verdict.as_str()).or_default() += 1;
    }
    let order = ["ok", "dead", "transient", "skipped", "changed", "error"];
    let mut parts: Vec<String> = order.iter().map(|v| format!("{v} {}", counts.get(v).copied().unwrap_or(0))).collect();
    parts.extend(counts.iter().filter(|(v, _)| !order.contains(v)).map(|(v, n)| format!("{v} {n}")));
    println!("summary: {} credential(s): {}", outcomes.len(), parts.join(", "));
}
