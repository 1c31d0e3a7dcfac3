//! Black-box tests of `secretgate probe` (CONTRACT §5 record_liveness, §6
//! BYOK, §7; DOMAIN incident 4), against a mock provider on 127.0.0.1.
//!
//! The mock answers `GET …/models` according to the credential it receives:
//! `sk-mock-<behaviour>-<hex>` (an API key) or `oat-mock-<behaviour>-<hex>`
//! (an OAuth token) where behaviour is a status (`200`, `401`, `403`, `429`,
//! `503`), `hang` (never answers) or `slowbody` (sends a 200's headers, then
//! never finishes the body). Like the real providers it checks the header
//! form first and answers 401 when it is wrong: under `/v1/` (anthropic) an
//! API key must come raw in `x-api-key` and an OAuth token as `Authorization:
//! Bearer` with `anthropic-beta: oauth-2025-04-20`, never both headers; on any other path the credential must come as
//! `Authorization: Bearer`. Under `/deny/` it answers 401 to everything. It
//! records every request so the trials can check the header form, and never
//! prints a value.
//!
//! Every trial has its own database; the mock is shared, and each trial only
//! looks at requests carrying its own (random) values.

use anyhow::{anyhow, bail, ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("probe"));
    let mock = Arc::new(Mock::start());
    let t = |name: &str, body: fn(Arc<Cluster>, Arc<Mock>) -> BoxFut| {
        let mock = Arc::clone(&mock);
        trial(name, &cluster, move |c| body(c, mock))
    };
    migrate_once(&cluster);
    let trials = vec![
        t("records_a_verdict_per_answer_and_sends_the_right_header", |c, m| Box::pin(verdicts_and_headers(c, m))),
        t("oauth_token_goes_as_bearer_and_api_key_in_the_provider_header", |c, m| Box::pin(oauth_and_api_key(c, m))),
        t("works_on_tables_attached_from_another_schema", |c, m| Box::pin(other_schema(c, m))),
        t("two_providers_of_one_key_name_get_two_verdicts", |c, m| Box::pin(two_providers_one_key(c, m))),
        t("version_flag_prints_the_workspace_version", |c, m| Box::pin(version_flag(c, m))),
        t("older_extension_is_warned_about_and_the_command_carries_on", |c, m| Box::pin(version_warning(c, m))),
        t("timeout_bounds_each_whole_request", |c, m| Box::pin(timeout_bounds_each_request(c, m))),
        t("global_fallback_and_which_credentials_are_probed", |c, m| Box::pin(global_fallback_and_selection(c, m))),
        t("workspace_flag_probes_only_that_workspace", |c, m| Box::pin(workspace_flag(c, m))),
        t("corrupt_credential_exits_1_and_records_nothing", |c, m| Box::pin(corrupt_credential(c, m))),
        t("dead_verdict_blocks_going_online", |c, m| Box::pin(dead_blocks_online(c, m))),
        t("provider_without_base_url_or_empty_value_is_skipped", |c, m| Box::pin(skipped(c, m))),
        t("plain_http_to_another_host_is_refused", |c, m| Box::pin(plain_http_refused(c, m))),
        t("credential_replaced_during_probe_is_not_recorded", |c, m| Box::pin(replaced_during_probe(c, m))),
        t("usage_and_connection_errors_exit_2", |c, m| Box::pin(usage_errors(c, m))),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

// ---------------------------------------------------------------------------
// The mock provider

/// One request the mock received. Header names are lowercase.
#[derive(Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn carries(&self, value: &str) -> bool {
        self.headers.iter().any(|(_, v)| v.contains(value))
    }
}

struct Mock {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    /// An HTTP/1.1 server on 127.0.0.1, one thread per connection.
    fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock provider");
        let port = listener.local_addr().expect("mock address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let _ = serve(stream, &log);
                });
            }
        });
        Mock { port, seen }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests that carried `value` in any header.
    fn requests_with(&self, value: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.carries(value)).cloned().collect()
    }
}

fn serve(mut stream: TcpStream, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let seen = Seen { method, path, headers };
    let credential = credential_in(&seen);
    let denied = seen.path.starts_with("/deny/");
    log.lock().unwrap().push(seen);

    // A credential in the wrong header, or none: 401, as the real providers answer.
    let behaviour = match credential.as_deref() {
        Some(_) if denied => "401",
        Some(value) => value
            .strip_prefix("sk-mock-")
            .or_else(|| value.strip_prefix("oat-mock-"))
            .and_then(|rest| rest.split('-').next())
            .unwrap_or(""),
        None => "401",
    };
    let respond = |stream: &mut TcpStream, status: u16, reason: &str, body: &str| -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        stream.flush()
    };
    match behaviour {
        "200" => respond(&mut stream, 200, "OK", r#"{"data":[{"id":"mock-model"}]}"#),
        "401" => respond(&mut stream, 401, "Unauthorized", r#"{"error":"invalid api key"}"#),
        "403" => respond(&mut stream, 403, "Forbidden", r#"{"error":"forbidden"}"#),
        "429" => respond(&mut stream, 429, "Too Many Requests", r#"{"error":"rate limited"}"#),
        "503" => respond(&mut stream, 503, "Service Unavailable", r#"{"error":"overloaded"}"#),
        "hang" => {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        "slowbody" => {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"data\":[",
            )?;
            stream.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        _ => respond(&mut stream, 400, "Bad Request", r#"{"error":"no mock credential"}"#),
    }
}

/// The credential the request carries in the header form its path and kind
/// require, or None when the form is wrong (see the module comment).
fn credential_in(seen: &Seen) -> Option<String> {
    let api_key = seen.header("x-api-key");
    let bearer = seen.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let credential = match (api_key, bearer, seen.header("authorization")) {
        (Some(v), None, None) if seen.path.starts_with("/v1/") && v.starts_with("sk-mock-") => v,
        // Anthropic takes an OAuth token only with its OAuth beta flag.
        (None, Some(v), _)
            if seen.path.starts_with("/v1/")
                && v.starts_with("oat-mock-")
                && seen
                    .header("anthropic-beta")
                    .is_some_and(|b| b.split(',').any(|f| f.trim() == "oauth-2025-04-20")) =>
        {
            v
        }
        (None, Some(v), _) if !seen.path.starts_with("/v1/") => v,
        _ => return None,
    };
    Some(credential.to_string())
}

// ---------------------------------------------------------------------------
// Helpers

/// A mock credential `sk-mock-<behaviour>-<hex>`, remembered so that no log may contain it.
fn mock_value(cluster: &Cluster, behaviour: &str) -> String {
    let value = format!("sk-mock-{behaviour}-{}", random_hex(12));
    cluster.remember_secret(&value);
    value
}

/// A mock OAuth token `oat-mock-<behaviour>-<hex>`, remembered like [`mock_value`].
fn mock_oauth(cluster: &Cluster, behaviour: &str) -> String {
    let value = format!("oat-mock-{behaviour}-{}", random_hex(12));
    cluster.remember_secret(&value);
    value
}

/// A migrated database whose anthropic provider points at `<mock>/v1` and
/// openai at `<mock>` (so both URL shapes are exercised).
async fn setup(cluster: &Cluster, mock: &Mock, prefix: &str) -> Result<(String, PgConnection)> {
    let (url, mut conn) = migrated_database(cluster, &db_name(prefix)).await?;
    sqlx::query("UPDATE secretgate.providers SET base_url = $1 || '/v1' WHERE name = 'anthropic'")
        .bind(mock.base())
        .execute(&mut conn)
        .await
        .described("point anthropic at the mock")?;
    sqlx::query("UPDATE secretgate.providers SET base_url = $1 WHERE name = 'openai'")
        .bind(mock.base())
        .execute(&mut conn)
        .await
        .described("point openai at the mock")?;
    Ok((url, conn))
}

const ANTHROPIC: &str = "anthropic:claude-opus-4-7";
const OPENAI: &str = "gpt-5";

/// Inserts a workspace and its credentials in ONE transaction (the BYOK gate
/// checks at commit).
async fn workspace_with(conn: &mut PgConnection, kind: &str, model: &str, secrets: &[(&str, &str)]) -> Result<Uuid> {
    let mut tx = conn.begin().await.described("begin")?;
    let id: Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind, model) VALUES ($1, $2) RETURNING id")
        .bind(kind)
        .bind(model)
        .fetch_one(&mut *tx)
        .await
        .described(&format!("insert a {kind} workspace with model {model}"))?;
    for (key, value) in secrets {
        sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
            .bind(id)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .described(&format!("set_secret({key})"))?;
    }
    tx.commit().await.described(&format!("commit a {kind} workspace with model {model}"))?;
    Ok(id)
}

async fn byok(conn: &mut PgConnection, model: &str, key: &str, value: &str) -> Result<Uuid> {
    workspace_with(conn, "workspace", model, &[(key, value)]).await
}

async fn set_global(conn: &mut PgConnection, key: &str, value: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.set_global_secret($1, $2)")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await
        .described(&format!("set_global_secret({key})"))?;
    Ok(())
}

/// The latest recorded (verdict, http_status) of a credential (None workspace = global).
async fn liveness(conn: &mut PgConnection, ws: Option<Uuid>, key: &str) -> Result<Option<(String, Option<i32>)>> {
    sqlx::query_as(
        "SELECT verdict, http_status FROM secretgate.liveness
         WHERE workspace_id IS NOT DISTINCT FROM $1 AND key = $2
         ORDER BY checked_at DESC LIMIT 1",
    )
    .bind(ws)
    .bind(key)
    .fetch_optional(conn)
    .await
    .described(&format!("read secretgate.liveness for {key}"))
}

async fn liveness_rows(conn: &mut PgConnection, ws: Option<Uuid>, key: &str) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM secretgate.liveness WHERE workspace_id IS NOT DISTINCT FROM $1 AND key = $2",
    )
    .bind(ws)
    .bind(key)
    .fetch_one(conn)
    .await
    .described(&format!("count secretgate.liveness for {key}"))
}

async fn expect_verdict(
    conn: &mut PgConnection,
    ws: Option<Uuid>,
    key: &str,
    verdict: &str,
    status: i32,
    what: &str,
) -> Result<()> {
    match liveness(conn, ws, key).await? {
        Some((v, s)) if v == verdict && s == Some(status) => Ok(()),
        Some((v, s)) => bail!("{what}: recorded ({v:?}, {s:?}), expected ({verdict:?}, {status})"),
        None => bail!("{what}: nothing recorded in secretgate.liveness, expected ({verdict:?}, {status})"),
    }
}

async fn expect_nothing_recorded(conn: &mut PgConnection, ws: Option<Uuid>, key: &str, what: &str) -> Result<()> {
    let n = liveness_rows(conn, ws, key).await?;
    ensure!(n == 0, "{what}: expected no liveness row, found {n}");
    Ok(())
}

/// The recorded (verdict, http_status) of a credential for one provider (None workspace = global).
async fn liveness_for(
    conn: &mut PgConnection,
    ws: Option<Uuid>,
    key: &str,
    provider: &str,
) -> Result<Option<(String, Option<i32>)>> {
    sqlx::query_as(
        "SELECT verdict, http_status FROM secretgate.liveness
         WHERE workspace_id IS NOT DISTINCT FROM $1 AND key = $2 AND provider = $3
         ORDER BY checked_at DESC LIMIT 1",
    )
    .bind(ws)
    .bind(key)
    .bind(provider)
    .fetch_optional(conn)
    .await
    .described(&format!("read secretgate.liveness for {key} and provider {provider}"))
}

async fn expect_verdict_for(
    conn: &mut PgConnection,
    ws: Option<Uuid>,
    key: &str,
    provider: &str,
    verdict: &str,
    status: i32,
) -> Result<()> {
    let what = format!("{key} for provider {provider}");
    match liveness_for(conn, ws, key, provider).await? {
        Some((v, s)) if v == verdict && s == Some(status) => Ok(()),
        Some((v, s)) => bail!("{what}: recorded ({v:?}, {s:?}), expected ({verdict:?}, {status})"),
        None => bail!("{what}: nothing recorded in secretgate.liveness, expected ({verdict:?}, {status})"),
    }
}

/// Fails when the tool's output contains any of `values` (naming the index, never the value).
fn no_values_in(run: &CliRun, values: &[&str]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        ensure!(!run.stdout.contains(v), "stdout contains credential value #{i}");
        ensure!(!run.stderr.contains(v), "stderr contains credential value #{i}");
        // Nor a recognisable part of it (the random tail).
        if let Some((_, tail)) = v.rsplit_once('-') {
            ensure!(
                !run.stdout.contains(tail) && !run.stderr.contains(tail),
                "output contains the tail of credential value #{i}"
            );
        }
    }
    Ok(())
}

/// The table row of `scope` (a workspace id or `global`) and `key`.
fn row<'a>(run: &'a CliRun, scope: &str, key: &str) -> Result<&'a str> {
    run.stdout
        .lines()
        .find(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&scope) && cells.get(2) == Some(&key)
        })
        .ok_or_else(|| anyhow!("no table row for {scope} {key}:\n{run}"))
}

/// The (verdict, http) cells of the table row of `scope`, `provider` and `key`.
fn cells_for(run: &CliRun, scope: &str, provider: &str, key: &str) -> Result<(String, String)> {
    let line = run
        .stdout
        .lines()
        .find(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&scope) && cells.get(1) == Some(&provider) && cells.get(2) == Some(&key)
        })
        .ok_or_else(|| anyhow!("no table row for {scope} {provider} {key}:\n{run}"))?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    ensure!(cells.len() >= 5, "table row for {scope} {provider} {key} has too few cells: {line:?}");
    Ok((cells[3].to_string(), cells[4].to_string()))
}

/// The row's (verdict, http) cells.
fn cells(run: &CliRun, scope: &str, key: &str) -> Result<(String, String)> {
    let line = row(run, scope, key)?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    ensure!(cells.len() >= 5, "table row for {scope} {key} has too few cells: {line:?}");
    // "no answer" is two words.
    let http = if cells[4] == "no" && cells.get(5) == Some(&"answer") {
        "no answer".to_string()
    } else {
        cells[4].to_string()
    };
    Ok((cells[3].to_string(), http))
}

fn expect_cells(run: &CliRun, scope: &str, key: &str, verdict: &str, http: &str) -> Result<()> {
    let (v, h) = cells(run, scope, key)?;
    ensure!(v == verdict && h == http, "row {scope} {key}: printed ({v}, {h}), expected ({verdict}, {http})\n{run}");
    Ok(())
}

async fn probe(url: &str, args: &[&str]) -> Result<(CliRun, Duration)> {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    let start = Instant::now();
    let run = run_cli(Some(url), &all).await?;
    Ok((run, start.elapsed()))
}

/// The one request the mock received with `value`, checked for method, path and header form.
fn one_request(mock: &Mock, value: &str, provider: &str, what: &str) -> Result<()> {
    let seen = mock.requests_with(value);
    ensure!(
        seen.len() == 1,
        "{what}: the mock received {} requests with this credential, expected exactly one",
        seen.len()
    );
    let s = &seen[0];
    ensure!(s.method == "GET", "{what}: method {:?}, expected GET", s.method);
    match provider {
        "anthropic" => {
            ensure!(s.path == "/v1/models", "{what}: path {:?}, expected /v1/models", s.path);
            ensure!(s.header("x-api-key") == Some(value), "{what}: x-api-key should carry the raw value");
            ensure!(s.header("authorization").is_none(), "{what}: an anthropic probe must not send Authorization");
            ensure!(s.header("anthropic-beta").is_none(), "{what}: an API key needs no anthropic-beta flag");
            ensure!(
                s.header("anthropic-version").is_some(),
                "{what}: an anthropic probe should send anthropic-version"
            );
        }
        "anthropic-oauth" => {
            ensure!(s.path == "/v1/models", "{what}: path {:?}, expected /v1/models", s.path);
            let expected = format!("Bearer {value}");
            ensure!(
                s.header("authorization") == Some(expected.as_str()),
                "{what}: an OAuth token should go as `Authorization: Bearer <token>`"
            );
            ensure!(s.header("x-api-key").is_none(), "{what}: an OAuth token must not be sent in x-api-key");
            ensure!(
                s.header("anthropic-beta") == Some("oauth-2025-04-20"),
                "{what}: an OAuth token to anthropic needs `anthropic-beta: oauth-2025-04-20`"
            );
            ensure!(
                s.header("anthropic-version").is_some(),
                "{what}: an anthropic probe should send anthropic-version"
            );
        }
        "openai" => {
            ensure!(s.path == "/models", "{what}: path {:?}, expected /models", s.path);
            let expected = format!("Bearer {value}");
            ensure!(
                s.header("authorization") == Some(expected.as_str()),
                "{what}: Authorization should be `Bearer <value>`"
            );
            ensure!(s.header("x-api-key").is_none(), "{what}: an openai probe must not send x-api-key");
        }
        other => bail!("unknown provider {other}"),
    }
    Ok(())
}

fn never_sent(mock: &Mock, value: &str, what: &str) -> Result<()> {
    let n = mock.requests_with(value).len();
    ensure!(n == 0, "{what}: the mock received {n} request(s) with a credential that must not be probed");
    Ok(())
}

// ---------------------------------------------------------------------------
// Trials

async fn verdicts_and_headers(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_verdicts").await?;
    // (behaviour, provider, model, key, verdict, status, printed http)
    let cases = [
        ("200", "anthropic", ANTHROPIC, "ANTHROPIC_API_KEY", "ok", 200, "200"),
        ("401", "openai", OPENAI, "OPENAI_API_KEY", "dead", 401, "401"),
        ("403", "anthropic", ANTHROPIC, "ANTHROPIC_API_KEY", "dead", 403, "403"),
        ("429", "openai", OPENAI, "OPENAI_API_KEY", "transient", 429, "429"),
        ("503", "anthropic", ANTHROPIC, "ANTHROPIC_API_KEY", "transient", 503, "503"),
        ("hang", "openai", OPENAI, "OPENAI_API_KEY", "transient", 0, "timeout"),
        ("slowbody", "anthropic", ANTHROPIC, "ANTHROPIC_API_KEY", "transient", 0, "timeout"),
    ];
    let mut made = Vec::new();
    for (behaviour, _, model, key, ..) in cases {
        let value = mock_value(&cluster, behaviour);
        let ws = byok(&mut conn, model, key, &value).await?;
        made.push((ws, value));
    }

    let timeout = 2;
    let (run, took) = probe(&url, &["--timeout", "2", "--concurrency", "8"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0 when every probe is recorded (dead ones included):\n{run}");
    let values: Vec<&str> = made.iter().map(|(_, v)| v.as_str()).collect();
    no_values_in(&run, &values)?;
    let limit = Duration::from_secs(timeout * 2 + 5);
    ensure!(
        took < limit,
        "probe took {took:?} with two never-finishing answers and --timeout {timeout}: expected < {limit:?}"
    );

    for ((behaviour, provider, _, key, verdict, status, http), (ws, value)) in cases.iter().zip(&made) {
        let what = format!("{behaviour} ({provider})");
        expect_verdict(&mut conn, Some(*ws), key, verdict, *status, &what).await?;
        expect_cells(&run, &ws.to_string(), key, verdict, http)?;
        ensure!(
            row(&run, &ws.to_string(), key)?.split_whitespace().nth(1) == Some(*provider),
            "{what}: provider column"
        );
        one_request(&mock, value, provider, &what)?;
    }
    ensure!(
        run.stdout.lines().any(|l| l.starts_with("summary:")
            && l.contains("ok 1")
            && l.contains("dead 2")
            && l.contains("transient 4")),
        "the summary line should count ok 1, dead 2, transient 4:\n{run}"
    );
    Ok(())
}

async fn timeout_bounds_each_request(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_timeout").await?;
    let hang = mock_value(&cluster, "hang");
    let slow = mock_value(&cluster, "slowbody");
    let ws_hang = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &hang).await?;
    let ws_slow = byok(&mut conn, ANTHROPIC, "ANTHROPIC_API_KEY", &slow).await?;

    // One at a time: each whole request (headers, and the body) is bounded on its own.
    let (run, took) = probe(&url, &["--timeout", "1", "--concurrency", "1"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&hang, &slow])?;
    let limit = Duration::from_secs(7); // 2 × timeout + 5 s
    ensure!(took < limit, "two sequential probes with --timeout 1 took {took:?}, expected < {limit:?}");
    expect_verdict(&mut conn, Some(ws_hang), "OPENAI_API_KEY", "transient", 0, "hanging provider").await?;
    expect_verdict(&mut conn, Some(ws_slow), "ANTHROPIC_API_KEY", "transient", 0, "never-finishing body").await?;
    expect_cells(&run, &ws_hang.to_string(), "OPENAI_API_KEY", "transient", "timeout")?;
    expect_cells(&run, &ws_slow.to_string(), "ANTHROPIC_API_KEY", "transient", "timeout")?;

    // Nothing listening: recorded as no answer (status 0), transient.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    sqlx::query("UPDATE secretgate.providers SET base_url = $1 WHERE name = 'openai'")
        .bind(format!("http://127.0.0.1:{closed}"))
        .execute(&mut conn)
        .await
        .described("point openai at a closed port")?;
    let (run, _) = probe(&url, &["--timeout", "2", "--workspace", &ws_hang.to_string()]).await?;
    ensure!(run.code == Some(0), "probe against a closed port should exit 0:\n{run}");
    no_values_in(&run, &[&hang])?;
    expect_cells(&run, &ws_hang.to_string(), "OPENAI_API_KEY", "transient", "no answer")?;
    expect_verdict(&mut conn, Some(ws_hang), "OPENAI_API_KEY", "transient", 0, "closed port").await?;
    Ok(())
}

async fn global_fallback_and_selection(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_global").await?;
    let global = mock_value(&cluster, "200");
    set_global(&mut conn, "OPENAI_API_KEY", &global).await?;

    // Two workspaces that rely on the global key: it is probed once.
    let uses_global_1 = workspace_with(&mut conn, "workspace", OPENAI, &[]).await?;
    let uses_global_2 = workspace_with(&mut conn, "workspace", "openai:gpt-4.1", &[]).await?;
    // A workspace key wins over the global one.
    let own = mock_value(&cluster, "401");
    let with_own = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &own).await?;
    // Both of anthropic's auth_env names are probed, each in its own header form.
    let api_key = mock_value(&cluster, "200");
    let oauth = mock_oauth(&cluster, "403");
    let both = workspace_with(
        &mut conn,
        "workspace",
        ANTHROPIC,
        &[("ANTHROPIC_API_KEY", &api_key), ("CLAUDE_CODE_OAUTH_TOKEN", &oauth)],
    )
    .await?;

    // Never probed: another provider's key, an external workspace, a
    // platform-managed model, a model no route derives.
    let other_provider = mock_value(&cluster, "200");
    let anthropic_key = mock_value(&cluster, "200");
    let mixed = workspace_with(
        &mut conn,
        "workspace",
        ANTHROPIC,
        &[("ANTHROPIC_API_KEY", &anthropic_key), ("OPENAI_API_KEY", &other_provider)],
    )
    .await?;
    let external_value = mock_value(&cluster, "200");
    let external = workspace_with(&mut conn, "external", OPENAI, &[("OPENAI_API_KEY", &external_value)]).await?;
    let platform_value = mock_value(&cluster, "200");
    let platform_managed =
        workspace_with(&mut conn, "workspace", "platform:default", &[("OPENAI_API_KEY", &platform_value)]).await?;
    let unknown_value = mock_value(&cluster, "200");
    let underivable =
        workspace_with(&mut conn, "workspace", "mystery-model-1", &[("OPENAI_API_KEY", &unknown_value)]).await?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    let all = [
        &global,
        &own,
        &api_key,
        &oauth,
        &other_provider,
        &anthropic_key,
        &external_value,
        &platform_value,
        &unknown_value,
    ];
    no_values_in(&run, &all.map(String::as_str))?;

    one_request(&mock, &global, "openai", "global OPENAI_API_KEY")?;
    expect_verdict(&mut conn, None, "OPENAI_API_KEY", "ok", 200, "global OPENAI_API_KEY").await?;
    expect_cells(&run, "global", "OPENAI_API_KEY", "ok", "200")?;
    for ws in [uses_global_1, uses_global_2] {
        ensure!(
            !run.stdout.contains(&ws.to_string()),
            "a workspace without its own key is probed through the global row only"
        );
        expect_nothing_recorded(&mut conn, Some(ws), "OPENAI_API_KEY", "workspace relying on the global key").await?;
    }

    one_request(&mock, &own, "openai", "workspace key over the global one")?;
    expect_verdict(&mut conn, Some(with_own), "OPENAI_API_KEY", "dead", 401, "workspace key over the global one")
        .await?;

    one_request(&mock, &api_key, "anthropic", "ANTHROPIC_API_KEY")?;
    one_request(&mock, &oauth, "anthropic-oauth", "CLAUDE_CODE_OAUTH_TOKEN")?;
    expect_verdict(&mut conn, Some(both), "ANTHROPIC_API_KEY", "ok", 200, "ANTHROPIC_API_KEY").await?;
    expect_verdict(&mut conn, Some(both), "CLAUDE_CODE_OAUTH_TOKEN", "dead", 403, "CLAUDE_CODE_OAUTH_TOKEN").await?;

    one_request(&mock, &anthropic_key, "anthropic", "mixed workspace's anthropic key")?;
    never_sent(&mock, &other_provider, "another provider's key")?;
    expect_nothing_recorded(&mut conn, Some(mixed), "OPENAI_API_KEY", "another provider's key").await?;
    never_sent(&mock, &external_value, "external workspace")?;
    expect_nothing_recorded(&mut conn, Some(external), "OPENAI_API_KEY", "external workspace").await?;
    never_sent(&mock, &platform_value, "platform-managed workspace")?;
    expect_nothing_recorded(&mut conn, Some(platform_managed), "OPENAI_API_KEY", "platform-managed workspace").await?;
    never_sent(&mock, &unknown_value, "workspace whose provider cannot be derived")?;
    expect_nothing_recorded(
        &mut conn,
        Some(underivable),
        "OPENAI_API_KEY",
        "workspace whose provider cannot be derived",
    )
    .await?;
    Ok(())
}

async fn workspace_flag(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_one_ws").await?;
    let a_value = mock_value(&cluster, "200");
    let b_value = mock_value(&cluster, "401");
    let a = byok(&mut conn, ANTHROPIC, "ANTHROPIC_API_KEY", &a_value).await?;
    let b = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &b_value).await?;

    let (run, _) = probe(&url, &["--timeout", "2", "--workspace", &a.to_string()]).await?;
    ensure!(run.code == Some(0), "probe --workspace should exit 0:\n{run}");
    no_values_in(&run, &[&a_value, &b_value])?;
    expect_cells(&run, &a.to_string(), "ANTHROPIC_API_KEY", "ok", "200")?;
    ensure!(!run.stdout.contains(&b.to_string()), "probe --workspace A printed workspace B:\n{run}");
    one_request(&mock, &a_value, "anthropic", "the chosen workspace")?;
    never_sent(&mock, &b_value, "another workspace under --workspace")?;
    expect_verdict(&mut conn, Some(a), "ANTHROPIC_API_KEY", "ok", 200, "the chosen workspace").await?;
    expect_nothing_recorded(&mut conn, Some(b), "OPENAI_API_KEY", "another workspace under --workspace").await?;

    // An external workspace has nothing to probe: exit 0 and say so.
    let ext_value = mock_value(&cluster, "200");
    let ext = workspace_with(&mut conn, "external", OPENAI, &[("OPENAI_API_KEY", &ext_value)]).await?;
    let (run, _) = probe(&url, &["--workspace", &ext.to_string()]).await?;
    ensure!(run.code == Some(0), "probe --workspace <external> should exit 0:\n{run}");
    ensure!(
        run.stdout.contains("no BYOK credential"),
        "probe --workspace <external> should say there is nothing to probe:\n{run}"
    );
    never_sent(&mock, &ext_value, "external workspace under --workspace")?;

    // An unknown workspace is a usage error.
    let (run, _) = probe(&url, &["--workspace", &Uuid::new_v4().to_string()]).await?;
    ensure!(run.code == Some(2), "probe --workspace <unknown> should exit 2:\n{run}");
    ensure!(run.stderr.contains("no workspace"), "probe --workspace <unknown> should say so:\n{run}");
    Ok(())
}

async fn corrupt_credential(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_corrupt").await?;
    let good_value = mock_value(&cluster, "200");
    let bad_value = mock_value(&cluster, "200");
    let good = byok(&mut conn, ANTHROPIC, "ANTHROPIC_API_KEY", &good_value).await?;
    let bad = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &bad_value).await?;

    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach_gates")?;
    sqlx::query(
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1)
         WHERE workspace_id = $1 AND key = 'OPENAI_API_KEY'",
    )
    .bind(bad)
    .execute(&mut conn)
    .await
    .described("corrupt the credential")?;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut conn)
    .await
    .described("attach_gates")?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(1), "probe should exit 1 when a credential cannot be read:\n{run}");
    no_values_in(&run, &[&good_value, &bad_value])?;
    expect_cells(&run, &bad.to_string(), "OPENAI_API_KEY", "error", Code::DecryptFailed.sqlstate())?;
    never_sent(&mock, &bad_value, "undecryptable credential")?;
    expect_nothing_recorded(&mut conn, Some(bad), "OPENAI_API_KEY", "undecryptable credential").await?;
    // The others are still probed and recorded.
    expect_cells(&run, &good.to_string(), "ANTHROPIC_API_KEY", "ok", "200")?;
    expect_verdict(&mut conn, Some(good), "ANTHROPIC_API_KEY", "ok", 200, "readable credential next to a corrupt one")
        .await?;
    ensure!(
        run.stdout.lines().any(|l| l.starts_with("summary:") && l.contains("ok 1") && l.contains("error 1")),
        "the summary line should count ok 1, error 1:\n{run}"
    );
    Ok(())
}

async fn dead_blocks_online(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_gate").await?;
    let dead_value = mock_value(&cluster, "401");
    let transient_value = mock_value(&cluster, "503");
    let ok_value = mock_value(&cluster, "200");
    let dead = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &dead_value).await?;
    let transient = byok(&mut conn, ANTHROPIC, "ANTHROPIC_API_KEY", &transient_value).await?;
    let ok = byok(&mut conn, ANTHROPIC, "ANTHROPIC_API_KEY", &ok_value).await?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&dead_value, &transient_value, &ok_value])?;
    expect_verdict(&mut conn, Some(dead), "OPENAI_API_KEY", "dead", 401, "dead key").await?;

    let online = |ws: Uuid| sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1").bind(ws);
    let result = online(dead).execute(&mut conn).await;
    let e = expect_sg(result, Code::ByokCredentialInvalid)
        .context("a workspace whose only credential is dead goes online")?;
    e.assert_no_leak(&[&dead_value])?;
    let status: String = sqlx::query_scalar("SELECT status FROM public.workspaces WHERE id = $1")
        .bind(dead)
        .fetch_one(&mut conn)
        .await
        .described("status")?;
    ensure!(status != "online", "the refused workspace must not be online");

    online(transient).execute(&mut conn).await.described("a workspace with a transient credential goes online")?;
    online(ok).execute(&mut conn).await.described("a workspace with an ok credential goes online")?;

    // The verdict belongs to the ciphertext it was recorded for: replacing the
    // dead key lets the workspace go online, and the next probe records ok.
    let fresh = mock_value(&cluster, "200");
    sqlx::query("SELECT secretgate.set_secret($1, 'OPENAI_API_KEY', $2)")
        .bind(dead)
        .bind(&fresh)
        .execute(&mut conn)
        .await
        .described("replace the dead key")?;
    online(dead).execute(&mut conn).await.described("going online after the dead key was replaced")?;
    let (run, _) = probe(&url, &["--timeout", "2", "--workspace", &dead.to_string()]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&dead_value, &fresh])?;
    expect_verdict(&mut conn, Some(dead), "OPENAI_API_KEY", "ok", 200, "replaced key").await?;
    Ok(())
}

async fn skipped(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_skip").await?;
    sqlx::query("UPDATE secretgate.providers SET base_url = NULL WHERE name = 'moonshot'")
        .execute(&mut conn)
        .await
        .described("clear moonshot's base_url")?;
    let moonshot_value = mock_value(&cluster, "200");
    let no_url = byok(&mut conn, "kimi-k2", "MOONSHOT_API_KEY", &moonshot_value).await?;
    let good_value = mock_value(&cluster, "200");
    let with_empty = workspace_with(
        &mut conn,
        "workspace",
        ANTHROPIC,
        &[("ANTHROPIC_API_KEY", &good_value), ("CLAUDE_CODE_OAUTH_TOKEN", "")],
    )
    .await?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "skipped credentials are not failures:\n{run}");
    no_values_in(&run, &[&moonshot_value, &good_value])?;
    expect_cells(&run, &no_url.to_string(), "MOONSHOT_API_KEY", "skipped", "-")?;
    expect_nothing_recorded(&mut conn, Some(no_url), "MOONSHOT_API_KEY", "provider without base_url").await?;
    never_sent(&mock, &moonshot_value, "provider without base_url")?;
    expect_cells(&run, &with_empty.to_string(), "CLAUDE_CODE_OAUTH_TOKEN", "skipped", "-")?;
    expect_nothing_recorded(&mut conn, Some(with_empty), "CLAUDE_CODE_OAUTH_TOKEN", "empty value").await?;
    expect_verdict(&mut conn, Some(with_empty), "ANTHROPIC_API_KEY", "ok", 200, "usable key next to an empty one")
        .await?;
    ensure!(
        run.stdout.lines().any(|l| l.starts_with("summary:") && l.contains("ok 1") && l.contains("skipped 2")),
        "the summary line should count ok 1, skipped 2:\n{run}"
    );
    Ok(())
}

async fn plain_http_refused(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_plain_http").await?;
    // Never contacted: the probe refuses before sending anything.
    sqlx::query("UPDATE secretgate.providers SET base_url = 'http://zai.example.invalid/v4' WHERE name = 'zai'")
        .execute(&mut conn)
        .await
        .described("give zai a plain-http base_url")?;
    let zai_value = mock_value(&cluster, "200");
    let zai = byok(&mut conn, "glm-4.6", "ZAI_API_KEY", &zai_value).await?;
    let ok_value = mock_value(&cluster, "200");
    let ok = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &ok_value).await?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(1), "a credential that cannot be probed safely is a failed check (exit 1):\n{run}");
    no_values_in(&run, &[&zai_value, &ok_value])?;
    expect_cells(&run, &zai.to_string(), "ZAI_API_KEY", "error", "-")?;
    ensure!(row(&run, &zai.to_string(), "ZAI_API_KEY")?.contains("plain http"), "the row should say why:\n{run}");
    expect_nothing_recorded(&mut conn, Some(zai), "ZAI_API_KEY", "plain http to another host").await?;
    expect_verdict(&mut conn, Some(ok), "OPENAI_API_KEY", "ok", 200, "plain http to loopback").await?;
    Ok(())
}

async fn replaced_during_probe(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_replaced").await?;
    let old = mock_value(&cluster, "hang");
    let new = mock_value(&cluster, "200");
    let ws = byok(&mut conn, OPENAI, "OPENAI_API_KEY", &old).await?;

    let replace = async {
        // Wait until the probe's request is in flight, then replace the key.
        let start = Instant::now();
        while mock.requests_with(&old).is_empty() {
            ensure!(start.elapsed() < Duration::from_secs(20), "the probe's request never reached the mock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sqlx::query("SELECT secretgate.set_secret($1, 'OPENAI_API_KEY', $2)")
            .bind(ws)
            .bind(&new)
            .execute(&mut conn)
            .await
            .described("replace the key during the probe")?;
        Ok::<_, anyhow::Error>(())
    };
    let (run, replaced) = tokio::join!(probe(&url, &["--timeout", "3"]), replace);
    replaced?;
    let (run, _) = run?;
    ensure!(run.code == Some(0), "a credential replaced during its probe is not a failure:\n{run}");
    no_values_in(&run, &[&old, &new])?;
    expect_cells(&run, &ws.to_string(), "OPENAI_API_KEY", "changed", "timeout")?;
    expect_nothing_recorded(
        &mut conn,
        Some(ws),
        "OPENAI_API_KEY",
        "the old key's answer must not be recorded for the new key",
    )
    .await?;
    Ok(())
}

async fn usage_errors(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, _conn) = setup(&cluster, &mock, "probe_usage").await?;

    let run = run_cli(None, &["probe"]).await?;
    ensure!(run.code == Some(2), "probe without a database should exit 2:\n{run}");
    for args in [["probe", "--concurrency", "0"], ["probe", "--timeout", "0"], ["probe", "--workspace", "not-a-uuid"]] {
        let run = run_cli(Some(&url), &args).await?;
        ensure!(run.code == Some(2), "{args:?} should exit 2:\n{run}");
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let run = run_cli(Some(&format!("postgres://postgres@127.0.0.1:{closed}/nothing")), &["probe"]).await?;
    ensure!(run.code == Some(2), "probe against an unreachable server should exit 2:\n{run}");

    // A database without the extension and tables: cannot list, exit 2.
    let (bare, _c) = empty_database(&cluster, &db_name("probe_bare")).await?;
    let run = run_cli(Some(&bare), &["probe"]).await?;
    ensure!(run.code == Some(2), "probe on a database without secretgate should exit 2:\n{run}");

    // Nothing to probe: exit 0.
    let run = run_cli(Some(&url), &["probe"]).await?;
    ensure!(run.code == Some(0), "probe with no BYOK credential should exit 0:\n{run}");
    ensure!(run.stdout.contains("no BYOK credential"), "probe with nothing to probe should say so:\n{run}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 0.4.0: byok_credentials, credential_auth, per-provider verdicts, versions

/// An OAuth token (CLAUDE_CODE_OAUTH_TOKEN) goes as `Authorization: Bearer`
/// (secretgate.credential_auth), an API key in the provider's own header
/// (anthropic: raw `x-api-key`). The mock answers 401 to the wrong form, so a
/// good token sent the old way (in x-api-key) would be recorded dead.
async fn oauth_and_api_key(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_oauth").await?;
    let seeded: Option<(String, String)> =
        sqlx::query_as("SELECT auth_header, auth_scheme FROM secretgate.credential_auth WHERE key = $1")
            .bind("CLAUDE_CODE_OAUTH_TOKEN")
            .fetch_optional(&mut conn)
            .await
            .described("read secretgate.credential_auth")?;
    ensure!(
        seeded.as_ref().map(|(h, s)| (h.as_str(), s.as_str())) == Some(("Authorization", "Bearer")),
        "secretgate.credential_auth should be seeded with (CLAUDE_CODE_OAUTH_TOKEN, Authorization, Bearer), found {seeded:?}"
    );

    let api_key = mock_value(&cluster, "200");
    let token = mock_oauth(&cluster, "200");
    let both = workspace_with(
        &mut conn,
        "workspace",
        ANTHROPIC,
        &[("ANTHROPIC_API_KEY", &api_key), ("CLAUDE_CODE_OAUTH_TOKEN", &token)],
    )
    .await?;
    let only_token_value = mock_oauth(&cluster, "200");
    let only_token = byok(&mut conn, "claude-sonnet-4-5", "CLAUDE_CODE_OAUTH_TOKEN", &only_token_value).await?;
    // A global OAuth token, used by a workspace with no credential of its own.
    let global_token = mock_oauth(&cluster, "200");
    set_global(&mut conn, "CLAUDE_CODE_OAUTH_TOKEN", &global_token).await?;
    let _uses_global = workspace_with(&mut conn, "workspace", ANTHROPIC, &[]).await?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&api_key, &token, &only_token_value, &global_token])?;

    one_request(&mock, &api_key, "anthropic", "ANTHROPIC_API_KEY")?;
    expect_verdict_for(&mut conn, Some(both), "ANTHROPIC_API_KEY", "anthropic", "ok", 200).await?;
    expect_cells(&run, &both.to_string(), "ANTHROPIC_API_KEY", "ok", "200")?;
    for (ws, value, what) in [
        (Some(both), &token, "workspace token next to an API key"),
        (Some(only_token), &only_token_value, "workspace token"),
    ] {
        one_request(&mock, value, "anthropic-oauth", what)?;
        expect_verdict_for(&mut conn, ws, "CLAUDE_CODE_OAUTH_TOKEN", "anthropic", "ok", 200)
            .await
            .with_context(|| format!("{what}: a good OAuth token must not be probed dead"))?;
    }
    expect_cells(&run, &only_token.to_string(), "CLAUDE_CODE_OAUTH_TOKEN", "ok", "200")?;
    one_request(&mock, &global_token, "anthropic-oauth", "global token")?;
    expect_verdict_for(&mut conn, None, "CLAUDE_CODE_OAUTH_TOKEN", "anthropic", "ok", 200)
        .await
        .context("global token: a good OAuth token must not be probed dead")?;
    expect_cells(&run, "global", "CLAUDE_CODE_OAUTH_TOKEN", "ok", "200")?;

    // The registry decides: without the credential_auth row the token goes in
    // the provider's header (x-api-key), which the mock refuses.
    sqlx::query("DELETE FROM secretgate.credential_auth WHERE key = 'CLAUDE_CODE_OAUTH_TOKEN'")
        .execute(&mut conn)
        .await
        .described("delete the credential_auth row")?;
    let (run, _) = probe(&url, &["--timeout", "2", "--workspace", &only_token.to_string()]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&only_token_value])?;
    let sent = mock.requests_with(&only_token_value);
    ensure!(sent.len() == 2, "expected a second request with the token, the mock saw {}", sent.len());
    ensure!(
        sent[1].header("x-api-key") == Some(only_token_value.as_str()) && sent[1].header("authorization").is_none(),
        "without a credential_auth row the token should go in the provider's header (x-api-key)"
    );
    expect_verdict_for(&mut conn, Some(only_token), "CLAUDE_CODE_OAUTH_TOKEN", "anthropic", "dead", 401).await?;
    Ok(())
}

/// The platform's tables live in another schema under other names: probe
/// names no table, lists through byok_credentials() and reads through the
/// attached tables.
async fn other_schema(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = empty_database(&cluster, &db_name("probe_schema")).await?;
    sqlx::raw_sql(
        "CREATE EXTENSION secretgate;
         CREATE SCHEMA app;
         CREATE TABLE app.ws (
             id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             kind    text NOT NULL,
             status  text NOT NULL DEFAULT 'provisioning',
             runtime text,
             model   text
         );
         CREATE TABLE app.sec (
             workspace_id       uuid NOT NULL REFERENCES app.ws (id) ON DELETE CASCADE,
             key                text NOT NULL,
             encrypted_value    bytea NOT NULL,
             encryption_version int NOT NULL,
             PRIMARY KEY (workspace_id, key)
         );
         CREATE TABLE app.glob (
             key                text PRIMARY KEY,
             encrypted_value    bytea NOT NULL,
             encryption_version int NOT NULL
         );
         SELECT secretgate.attach_gates('app.ws', 'app.sec', 'app.glob');",
    )
    .execute(&mut conn)
    .await
    .described("create app.ws, app.sec, app.glob and attach them")?;
    let public_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_tables
         WHERE schemaname = 'public' AND tablename IN ('workspaces', 'workspace_secrets', 'global_secrets')",
    )
    .fetch_one(&mut conn)
    .await
    .described("count public tables")?;
    ensure!(public_tables == 0, "this trial's database must have no public.workspaces & co.");
    for (name, base) in [("anthropic", format!("{}/v1", mock.base())), ("openai", mock.base())] {
        sqlx::query("UPDATE secretgate.providers SET base_url = $1 WHERE name = $2")
            .bind(base)
            .bind(name)
            .execute(&mut conn)
            .await
            .described("point the providers at the mock")?;
    }

    let insert = |kind: &'static str, model: &'static str| {
        sqlx::query_scalar::<_, Uuid>("INSERT INTO app.ws (kind, model) VALUES ($1, $2) RETURNING id")
            .bind(kind)
            .bind(model)
    };
    let own_value = mock_value(&cluster, "200");
    let token_value = mock_oauth(&cluster, "200");
    let mut tx = conn.begin().await.described("begin")?;
    let own = insert("workspace", ANTHROPIC).fetch_one(&mut *tx).await.described("insert into app.ws")?;
    for (key, value) in [("ANTHROPIC_API_KEY", &own_value), ("CLAUDE_CODE_OAUTH_TOKEN", &token_value)] {
        sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
            .bind(own)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .described("set_secret into app.sec")?;
    }
    tx.commit().await.described("commit the anthropic workspace")?;

    let global_value = mock_value(&cluster, "401");
    set_global(&mut conn, "OPENAI_API_KEY", &global_value).await?;
    let uses_global = insert("workspace", OPENAI).fetch_one(&mut conn).await.described("insert into app.ws")?;
    let external_value = mock_value(&cluster, "200");
    let mut tx = conn.begin().await.described("begin")?;
    let external = insert("external", OPENAI).fetch_one(&mut *tx).await.described("insert into app.ws")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'OPENAI_API_KEY', $2)")
        .bind(external)
        .bind(&external_value)
        .execute(&mut *tx)
        .await
        .described("set_secret into app.sec")?;
    tx.commit().await.described("commit the external workspace")?;

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "probe on tables attached from schema app should exit 0:\n{run}");
    no_values_in(&run, &[&own_value, &token_value, &global_value, &external_value])?;
    one_request(&mock, &own_value, "anthropic", "app.sec API key")?;
    one_request(&mock, &token_value, "anthropic-oauth", "app.sec OAuth token")?;
    one_request(&mock, &global_value, "openai", "app.glob key")?;
    never_sent(&mock, &external_value, "external workspace in app.ws")?;
    expect_verdict_for(&mut conn, Some(own), "ANTHROPIC_API_KEY", "anthropic", "ok", 200).await?;
    expect_verdict_for(&mut conn, Some(own), "CLAUDE_CODE_OAUTH_TOKEN", "anthropic", "ok", 200).await?;
    expect_verdict_for(&mut conn, None, "OPENAI_API_KEY", "openai", "dead", 401).await?;
    expect_nothing_recorded(&mut conn, Some(uses_global), "OPENAI_API_KEY", "workspace relying on app.glob").await?;
    expect_nothing_recorded(&mut conn, Some(external), "OPENAI_API_KEY", "external workspace").await?;
    expect_cells(&run, &own.to_string(), "ANTHROPIC_API_KEY", "ok", "200")?;
    expect_cells(&run, "global", "OPENAI_API_KEY", "dead", "401")?;
    ensure!(
        run.stdout.lines().any(|l| l.starts_with("summary:") && l.contains("ok 2") && l.contains("dead 1")),
        "the summary line should count ok 2, dead 1:\n{run}"
    );

    // --workspace looks the workspace up in app.ws; the global key it uses is probed.
    let (run, _) = probe(&url, &["--timeout", "2", "--workspace", &uses_global.to_string()]).await?;
    ensure!(run.code == Some(0), "probe --workspace on app.ws should exit 0:\n{run}");
    expect_cells(&run, "global", "OPENAI_API_KEY", "dead", "401")?;
    ensure!(!run.stdout.contains(&own.to_string()), "probe --workspace printed another workspace:\n{run}");
    let (run, _) = probe(&url, &["--workspace", &Uuid::new_v4().to_string()]).await?;
    ensure!(run.code == Some(2), "probe --workspace <unknown> should exit 2:\n{run}");
    ensure!(run.stderr.contains("no workspace"), "probe --workspace <unknown> should say so:\n{run}");
    Ok(())
}

/// A provider registered next to openai that accepts the same key name: a
/// global OPENAI_API_KEY used by a workspace of each is probed against each
/// provider and gets one verdict per provider; the BYOK gate reads the
/// verdict of the workspace's own provider.
async fn two_providers_one_key(cluster: Arc<Cluster>, mock: Arc<Mock>) -> Result<()> {
    let (url, mut conn) = setup(&cluster, &mock, "probe_two_providers").await?;
    // The proxy refuses everything (/deny/), openai accepts the key.
    sqlx::query(
        "INSERT INTO secretgate.providers (name, is_platform, auth_env, base_url, auth_header, auth_scheme)
         VALUES ('openai_proxy', false, '{OPENAI_API_KEY}', $1 || '/deny', 'Authorization', 'Bearer')",
    )
    .bind(mock.base())
    .execute(&mut conn)
    .await
    .described("register provider openai_proxy")?;
    sqlx::query("INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('proxy:', 'openai_proxy')")
        .execute(&mut conn)
        .await
        .described("route proxy: to openai_proxy")?;

    let key = mock_value(&cluster, "200");
    set_global(&mut conn, "OPENAI_API_KEY", &key).await?;
    let via_openai = workspace_with(&mut conn, "workspace", OPENAI, &[]).await?;
    let via_proxy = workspace_with(&mut conn, "workspace", "proxy:gpt-5", &[]).await?;
    let listed: Vec<(Option<Uuid>, String, String, String)> = sqlx::query_as(
        "SELECT workspace_id, provider, key, scope FROM secretgate.byok_credentials() ORDER BY provider",
    )
    .fetch_all(&mut conn)
    .await
    .described("secretgate.byok_credentials()")?;
    let expected = vec![
        (Some(via_openai), "openai".to_string(), "OPENAI_API_KEY".to_string(), "global".to_string()),
        (Some(via_proxy), "openai_proxy".to_string(), "OPENAI_API_KEY".to_string(), "global".to_string()),
    ];
    ensure!(listed == expected, "byok_credentials() listed {listed:?}, expected {expected:?}");

    let (run, _) = probe(&url, &["--timeout", "2"]).await?;
    ensure!(run.code == Some(0), "probe should exit 0:\n{run}");
    no_values_in(&run, &[&key])?;
    let seen = mock.requests_with(&key);
    let mut paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    paths.sort_unstable();
    ensure!(paths == ["/deny/models", "/models"], "expected one request per provider, the mock saw paths {paths:?}");
    expect_verdict_for(&mut conn, None, "OPENAI_API_KEY", "openai", "ok", 200).await?;
    expect_verdict_for(&mut conn, None, "OPENAI_API_KEY", "openai_proxy", "dead", 401).await?;
    let rows = liveness_rows(&mut conn, None, "OPENAI_API_KEY").await?;
    ensure!(rows == 2, "expected two liveness rows for the global OPENAI_API_KEY (one per provider), found {rows}");
    let (v, h) = cells_for(&run, "global", "openai", "OPENAI_API_KEY")?;
    ensure!((v.as_str(), h.as_str()) == ("ok", "200"), "openai row printed ({v}, {h}):\n{run}");
    let (v, h) = cells_for(&run, "global", "openai_proxy", "OPENAI_API_KEY")?;
    ensure!((v.as_str(), h.as_str()) == ("dead", "401"), "openai_proxy row printed ({v}, {h}):\n{run}");

    // The gate reads the verdict of the workspace's own provider.
    workspace_with(&mut conn, "workspace", OPENAI, &[])
        .await
        .context("a new openai workspace on the global key (ok for openai) should be accepted")?;
    let mut tx = conn.begin().await.described("begin")?;
    let refused = async {
        sqlx::query("INSERT INTO public.workspaces (kind, model) VALUES ('workspace', 'proxy:gpt-5')")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    let committed = match refused {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    let e = expect_sg(committed, Code::ByokCredentialInvalid)
        .context("a new openai_proxy workspace whose only credential is dead for openai_proxy")?;
    e.assert_no_leak(&[&key])?;
    Ok(())
}

/// `[workspace.package] version` of the root Cargo.toml.
fn workspace_version() -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section {
            if let Some(rest) = line.strip_prefix("version") {
                if let Some(value) = rest.trim_start().strip_prefix('=') {
                    return Ok(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    bail!("no version in [workspace.package] of {}", path.display())
}

async fn version_flag(_cluster: Arc<Cluster>, _mock: Arc<Mock>) -> Result<()> {
    let version = workspace_version()?;
    let run = run_cli(None, &["--version"]).await?;
    ensure!(run.code == Some(0), "secretgate --version should exit 0:\n{run}");
    ensure!(
        run.stdout.trim() == format!("secretgate {version}"),
        "secretgate --version should print `secretgate {version}` (the root Cargo.toml's workspace version):\n{run}"
    );
    Ok(())
}

const MISMATCH_WARNING: &str = "secretgate: warning: the database has extension secretgate";

/// A database whose extension is older than the tool: every command warns
/// once on stderr and carries on; after ALTER EXTENSION UPDATE, and on a
/// current or extension-less database, nothing is said.
async fn version_warning(cluster: Arc<Cluster>, _mock: Arc<Mock>) -> Result<()> {
    let tool = workspace_version()?;
    let old = "0.3.0";
    let (url, mut conn) = empty_database(&cluster, &db_name("probe_old_ext")).await?;
    sqlx::query(&format!("CREATE EXTENSION secretgate VERSION '{old}'"))
        .execute(&mut conn)
        .await
        .described(&format!("CREATE EXTENSION secretgate VERSION '{old}'"))?;
    // The project's migrations on top (CREATE EXTENSION IF NOT EXISTS leaves it at 0.3.0).
    MIGRATOR.run(&mut conn).await.map_err(|e| anyhow!("applying the migrations over secretgate {old}: {e}"))?;
    let installed: String =
        sqlx::query_scalar("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'secretgate'")
            .fetch_one(&mut conn)
            .await
            .described("extversion")?;
    ensure!(installed == old, "the extension should still be at {old}, is {installed}");
    let value = cluster.fresh_secret();
    set_global(&mut conn, "SOME_SETTING", &value).await?;

    let expected = format!("{MISMATCH_WARNING} {old}, this tool is {tool}; run ALTER EXTENSION secretgate UPDATE");
    let run = run_cli(Some(&url), &["verify"]).await?;
    ensure!(run.code == Some(0), "verify against secretgate {old} should carry on and pass:\n{run}");
    ensure!(
        run.stderr.lines().filter(|l| *l == expected).count() == 1,
        "verify should warn exactly once with `{expected}`:\n{run}"
    );
    ensure!(run.stdout.contains("summary: 1 secret(s) checked"), "verify should have run:\n{run}");
    no_values_in(&run, &[&value])?;

    let run = run_cli(Some(&url), &["migrate", "info"]).await?;
    ensure!(run.code == Some(0), "migrate info against secretgate {old} should exit 0:\n{run}");
    ensure!(run.stderr.contains(&expected), "migrate info should warn too:\n{run}");

    // probe needs byok_credentials (0.4.0): it says so, after the warning.
    let run = run_cli(Some(&url), &["probe"]).await?;
    ensure!(run.code == Some(2), "probe against secretgate {old} should exit 2:\n{run}");
    ensure!(run.stderr.contains(&expected), "probe should warn:\n{run}");
    ensure!(run.stderr.contains("ALTER EXTENSION secretgate UPDATE"), "probe should say how to update:\n{run}");

    sqlx::query("ALTER EXTENSION secretgate UPDATE").execute(&mut conn).await.described("ALTER EXTENSION UPDATE")?;
    let run = run_cli(Some(&url), &["verify"]).await?;
    ensure!(run.code == Some(0), "verify after the update should exit 0:\n{run}");
    ensure!(!run.stderr.contains(MISMATCH_WARNING), "no warning once the versions match:\n{run}");

    let (fresh, _c) = migrated_database(&cluster, &db_name("probe_cur_ext")).await?;
    let run = run_cli(Some(&fresh), &["verify"]).await?;
    ensure!(run.code == Some(0), "verify on a current database should exit 0:\n{run}");
    ensure!(!run.stderr.contains(MISMATCH_WARNING), "no warning when the versions match:\n{run}");

    let (bare, _c) = empty_database(&cluster, &db_name("probe_no_ext")).await?;
    let run = run_cli(Some(&bare), &["migrate", "info"]).await?;
    ensure!(run.code == Some(0), "migrate info on a database without the extension should exit 0:\n{run}");
    ensure!(!run.stderr.contains(MISMATCH_WARNING), "no warning when the extension is not installed:\n{run}");
    Ok(())
}
