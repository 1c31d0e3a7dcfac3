//! Redaction (issue 6 item 4): recognizable values are stored in workspace and
//! global secrets, then every refusal and error path we know of is triggered
//! with the client at `client_min_messages = debug5` and the server logging
//! everything (`log_min_messages = debug5`, `log_error_verbosity = verbose`,
//! `log_statement = 'all'`, `log_min_error_statement = debug5`). Every error's
//! fields (message, DETAIL, HINT, CONTEXT, …), every notice the client
//! receives (through sqlx, and through psql with `VERBOSITY verbose` for the
//! statements that carry no value), every NOTIFY payload, the audit lines and
//! the whole server log must contain no stored plaintext, no ciphertext (hex,
//! base64, bytea escape) and no key. Each path must also raise the SQLSTATE
//! expected, which proves it was exercised.
//!
//! `log_statement = 'all'` is safe here because values are bind parameters and
//! `log_parameter_max_length = 0` (and `log_parameter_max_length_on_error = 0`,
//! the default) keeps Postgres from logging their values. With the default
//! `log_parameter_max_length = -1`, Postgres itself would log every bind
//! parameter of every logged statement in full: a deployment setting, outside
//! the extension's reach.

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgListener};
use sqlx::{ConnectOptions, Connection};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // The server inherits this: pgrx would append a Rust backtrace to the
    // DETAIL of Postgres errors raised inside SPI if the extension let it.
    std::env::set_var("RUST_BACKTRACE", "1");
    install_notice_capture();
    let cluster = Arc::new(Cluster::start("redaction"));
    cluster
        .append_conf(
            "log_min_messages = debug5\n\
             log_error_verbosity = verbose\n\
             log_statement = 'all'\n\
             log_parameter_max_length = 0\n\
             log_parameter_max_length_on_error = 0\n\
             log_min_error_statement = debug5\n\
             log_connections = on\n\
             log_disconnections = on",
        )
        .expect("configure logging");
    cluster.reload();
    let trials = trials![&cluster;
        every_error_path_is_redacted,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Notices: sqlx reports each NoticeResponse as a tracing event
// (target `sqlx::postgres::notice`, the message only); keep every event.

static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("{} {}:", event.metadata().level(), event.metadata().target()));
        event.record(&mut fields);
        EVENTS.lock().unwrap_or_else(|p| p.into_inner()).push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn install_notice_capture() {
    tracing::subscriber::set_global_default(Capture).expect("install the tracing subscriber");
}

fn notices() -> Vec<String> {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| e.contains("sqlx::postgres::notice"))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// What was seen

/// Every text the test saw (path, text) and what each path raised.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
    /// (path, expected SQLSTATE, got SQLSTATE, DETAIL carries a Rust backtrace)
    paths: Vec<(String, String, String, bool)>,
    /// path -> DETAIL of its error
    details: std::collections::HashMap<String, Option<String>>,
    problems: Vec<String>,
}

/// A Rust backtrace as pgrx appends it to a DETAIL: numbered frames.
fn has_backtrace(text: &str) -> bool {
    text.contains("\n   0: ")
        || text.contains("stack backtrace")
        || text.contains("rust_begin_unwind")
        || text.contains("pgrx_pg_sys::")
}

impl Seen {
    fn text(&mut self, path: &str, text: impl Into<String>) {
        self.texts.push((path.to_string(), text.into()));
    }

    /// Records every field of a database error.
    fn error(&mut self, path: &str, err: &sqlx::Error) -> Option<(String, bool)> {
        let pg = err.as_database_error()?.try_downcast_ref::<PgDatabaseError>()?;
        let fields = [
            Some(pg.message()),
            pg.detail(),
            pg.hint(),
            pg.r#where(),
            pg.schema(),
            pg.table(),
            pg.column(),
            pg.data_type(),
            pg.constraint(),
            pg.routine(),
            pg.file(),
        ];
        let all: Vec<&str> = fields.into_iter().flatten().collect();
        self.text(path, all.join("\n"));
        self.details.insert(path.to_string(), pg.detail().map(str::to_string));
        Some((pg.code().to_string(), pg.detail().is_some_and(has_backtrace)))
    }

    /// Expects `result` to fail with `code`; records everything it said.
    fn expect<T>(&mut self, path: &str, code: &str, result: std::result::Result<T, sqlx::Error>) {
        match result {
            Ok(_) => {
                self.problems.push(format!("{path}: expected SQLSTATE {code}, but it succeeded"));
                self.paths.push((path.into(), code.into(), "success".into(), false));
            }
            Err(e) => match self.error(path, &e) {
                Some((got, bt)) => {
                    if got != code {
                        self.problems.push(format!("{path}: expected SQLSTATE {code}, got {got}"));
                    }
                    self.paths.push((path.into(), code.into(), got, bt));
                }
                None => {
                    self.problems.push(format!("{path}: expected SQLSTATE {code}, got a non-database error: {e}"));
                    self.paths.push((path.into(), code.into(), "non-database error".into(), false));
                }
            },
        }
    }

    /// Expects success (a path whose outcome is a row, a WARNING or a NOTIFY).
    fn ok<T>(&mut self, path: &str, result: std::result::Result<T, sqlx::Error>) -> Option<T> {
        match result {
            Ok(v) => {
                self.paths.push((path.into(), "success".into(), "success".into(), false));
                Some(v)
            }
            Err(e) => {
                let got = self.error(path, &e).map(|g| g.0).unwrap_or_else(|| e.to_string());
                self.problems.push(format!("{path}: expected success, got {got}"));
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Needles

/// Bytea escape format (`bytea_output = 'escape'`) of `bytes`.
fn bytea_escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

/// Every form a stored plaintext, a ciphertext or a key could leak in.
struct Needles {
    list: Vec<(String, &'static str)>,
}

impl Needles {
    fn new(plaintexts: &[String], ciphertexts: &BTreeSet<Vec<u8>>, keys: &[TestKeys]) -> Needles {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut list = Vec::new();
        for p in plaintexts {
            list.push((p.clone(), "a stored plaintext"));
            list.push((hex::encode(p.as_bytes()), "a stored plaintext (hex)"));
            list.push((b64(p.as_bytes()), "a stored plaintext (base64)"));
        }
        for c in ciphertexts {
            list.push((hex::encode(c), "a ciphertext (hex)"));
            list.push((hex::encode_upper(c), "a ciphertext (HEX)"));
            list.push((hex::encode(&c[..16]), "the first 16 bytes of a ciphertext (hex)"));
            list.push((hex::encode(&c[c.len() - 16..]), "the tag of a ciphertext (hex)"));
            list.push((b64(c), "a ciphertext (base64)"));
            list.push((b64(&c[..15]), "the first 15 bytes of a ciphertext (base64)"));
            list.push((bytea_escape(c), "a ciphertext (bytea escape)"));
        }
        for k in keys {
            for e in k.encodings() {
                list.push((e, "a key"));
            }
            for key in k.keys.values() {
                list.push((hex::encode(&key[..12]), "a key prefix (hex)"));
                list.push((bytea_escape(key), "a key (bytea escape)"));
            }
        }
        Needles { list }
    }

    /// What leaks in `text` (descriptions only, never the needle).
    fn leaks(&self, text: &str) -> Vec<&'static str> {
        let mut found: Vec<&'static str> =
            self.list.iter().filter(|(n, _)| text.contains(n.as_str())).map(|(_, w)| *w).collect();
        if long_hex_run(text) {
            found.push("a long \\x hex string (a bytea of ciphertext size)");
        }
        found.sort();
        found.dedup();
        found
    }
}

/// `\x` followed by at least 56 hex digits: a bytea of 28+ bytes, the size of
/// the smallest ciphertext (nonce + tag), whoever's it is.
fn long_hex_run(text: &str) -> bool {
    text.match_indices("\\x").any(|(i, _)| text[i + 2..].chars().take_while(char::is_ascii_hexdigit).count() >= 56)
}

// ---------------------------------------------------------------------------
// Setup helpers

/// A row of `secretgate.verify_secrets()`.
type VerifyRow = (Option<Uuid>, String, String, Option<String>);

async fn connect_debug(url: &str) -> Result<PgConnection> {
    let opts = PgConnectOptions::from_str(url)?.options([("client_min_messages", "debug5")]);
    opts.connect().await.context("connect")
}

async fn workspace(conn: &mut PgConnection, kind: &str, model: Option<&str>) -> Result<Uuid> {
    sqlx::query_scalar("INSERT INTO public.workspaces (kind, model) VALUES ($1, $2) RETURNING id")
        .bind(kind)
        .bind(model)
        .fetch_one(conn)
        .await
        .described("insert workspace")
}

async fn set(conn: &mut PgConnection, ws: Uuid, key: &str, value: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
        .bind(ws)
        .bind(key)
        .bind(value)
        .execute(conn)
        .await
        .described("set_secret")?;
    Ok(())
}

async fn ciphertexts(conn: &mut PgConnection, into: &mut BTreeSet<Vec<u8>>) -> Result<()> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT encrypted_value FROM public.workspace_secrets UNION ALL SELECT encrypted_value FROM public.global_secrets",
    )
    .fetch_all(conn)
    .await
    .described("ciphertexts")?;
    into.extend(rows);
    Ok(())
}

async fn exec(conn: &mut PgConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(|_| ())
}

/// Runs `sql` with psql (verbose errors, every notice, NOTIFY payloads):
/// stdout and stderr together.
fn psql(cluster: &Cluster, db: &str, script: &str) -> Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(cluster.bin().join("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &cluster.port().to_string(), "-U", "postgres", "-d", db, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run psql")?;
    child.stdin.take().ok_or_else(|| anyhow!("psql stdin"))?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

// ---------------------------------------------------------------------------
// The trial

async fn every_error_path_is_redacted(cluster: Arc<Cluster>) -> Result<()> {
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
    let name = db_name("redact");
    let (url, setup) = migrated_database(&cluster, &name).await?;
    setup.close().await?;
    let mut c = connect_debug(&url).await?;
    let mut seen = Seen::default();
    let mut plaintexts: Vec<String> = Vec::new();
    let mut blobs: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut keys = vec![cluster.initial_keys().clone()];
    let mut fresh = || {
        let v = cluster.fresh_secret();
        plaintexts.push(v.clone());
        v
    };

    // NOTIFY payloads, on their own connection.
    let mut listener = PgListener::connect(&url).await.context("listener")?;
    listener.listen("secretgate_events").await.context("LISTEN")?;

    // --- Fixture: ordinary, platform and BYOK workspaces with values everywhere.
    let ws = workspace(&mut c, "workspace", None).await?;
    let api = fresh();
    set(&mut c, ws, "API_TOKEN", &api).await?;
    let global = fresh();
    sqlx::query("SELECT secretgate.set_global_secret('GLOBAL_TOKEN', $1)")
        .bind(&global)
        .execute(&mut c)
        .await
        .described("global")?;
    let plat = workspace(&mut c, "platform", None).await?;
    let model = fresh();
    set(&mut c, plat, "MODEL", &model).await?;
    let plat_token = fresh();
    set(&mut c, plat, "PLATFORM_TOKEN", &plat_token).await?;
    exec(&mut c, &format!("UPDATE public.workspaces SET status = 'online' WHERE id = '{plat}'"))
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    let plat_empty = workspace(&mut c, "platform", None).await?;
    // BYOK workspaces: created with their credential in one transaction.
    let mut byok = Vec::new();
    for _ in 0..3 {
        exec(&mut c, "BEGIN").await.map_err(|e| anyhow!(describe(&e)))?;
        let id = workspace(&mut c, "workspace", Some("claude-opus-4-7")).await?;
        let cred = fresh();
        set(&mut c, id, "ANTHROPIC_API_KEY", &cred).await?;
        exec(&mut c, "COMMIT").await.map_err(|e| anyhow!(describe(&e)))?;
        byok.push(id);
    }
    let (byok_missing, byok_dead, byok_transient) = (byok[0], byok[1], byok[2]);
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1")
        .bind(byok_missing)
        .execute(&mut c)
        .await
        .described("delete cred")?;
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok_dead)
        .execute(&mut c)
        .await
        .described("dead")?;
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 503)")
        .bind(byok_transient)
        .execute(&mut c)
        .await
        .described("transient")?;
    // Undecryptable rows (gates detached while planting them).
    let bad = workspace(&mut c, "workspace", None).await?;
    let plat_bad = workspace(&mut c, "platform", None).await?;
    for (id, key) in [(bad, "CORRUPT"), (bad, "V9"), (bad, "BAD_OLD"), (plat_bad, "MODEL")] {
        let v = fresh();
        set(&mut c, id, key, &v).await?;
    }
    ciphertexts(&mut c, &mut blobs).await?;
    exec(&mut c, "SELECT secretgate.detach_gates()").await.map_err(|e| anyhow!(describe(&e)))?;
    for (id, key) in [(bad, "CORRUPT"), (plat_bad, "MODEL"), (bad, "BAD_OLD")] {
        sqlx::query("UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 255) WHERE workspace_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .execute(&mut c)
            .await
            .described("corrupt")?;
    }
    sqlx::query("UPDATE public.workspace_secrets SET encryption_version = 9 WHERE workspace_id = $1 AND key = 'V9'")
        .bind(bad)
        .execute(&mut c)
        .await
        .described("v9")?;
    // A legacy MODEL_PROVIDER row whose value is a provider name (for SG107 through rename).
    let legacy_ws = workspace(&mut c, "workspace", None).await?;
    sqlx::query("INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'MODEL_PROVIDER', secretgate.encrypt('minimax', $1, 'MODEL_PROVIDER'), 2)")
        .bind(legacy_ws)
        .execute(&mut c)
        .await
        .described("legacy row")?;
    exec(
        &mut c,
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;
    ciphertexts(&mut c, &mut blobs).await?;
    // Roles: one that may not read the secrets table, one that may.
    exec(
        &mut c,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'redact_noread') THEN CREATE ROLE redact_noread LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'redact_app') THEN CREATE ROLE redact_app LOGIN; END IF;
         END $$;
         GRANT USAGE ON SCHEMA public TO redact_noread, redact_app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspaces, public.workspace_secrets, public.global_secrets TO redact_app;",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;

    // --- Argument errors: 22004, 22023.
    let r = sqlx::query("SELECT secretgate.read_secret(NULL, 'API_TOKEN')").execute(&mut c).await;
    seen.expect("read_secret(NULL workspace)", "22004", r);
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', NULL)").bind(ws).execute(&mut c).await;
    seen.expect("set_secret(NULL value)", "22004", r);
    let r = sqlx::query("SELECT secretgate.record_liveness($1, NULL, 401)").bind(ws).execute(&mut c).await;
    seen.expect("record_liveness(NULL key)", "22004", r);
    let r = sqlx::query("SELECT secretgate.rename_secret_key(NULL, 'X')").execute(&mut c).await;
    seen.expect("rename_secret_key(NULL)", "22004", r);
    let r = sqlx::query("SELECT secretgate.reencrypt(0)").execute(&mut c).await;
    seen.expect("reencrypt(0)", "22023", r);
    let r =
        sqlx::query("SELECT secretgate.byok_credential_present($1, 'nosuchprovider')").bind(ws).execute(&mut c).await;
    seen.expect("byok_credential_present(unknown provider)", "22023", r);
    let r = exec(&mut c, "SET secretgate.caller = 'nobody'").await;
    seen.expect("SET secretgate.caller = invalid", "22023", r);
    let r = sqlx::query("SELECT secretgate.record_liveness($1, 'NO_SUCH_KEY', 401)").bind(ws).execute(&mut c).await;
    seen.expect("record_liveness(no such credential)", "P0002", r);

    // --- SG001 / SG002: undecryptable rows, on every path that reads them.
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'CORRUPT')").bind(bad).execute(&mut c).await;
    seen.expect("read_secret(corrupt)", "SG001", r);
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'V9')").bind(bad).execute(&mut c).await;
    seen.expect("read_secret(unknown version)", "SG002", r);
    let r = sqlx::query("SELECT secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key) FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'CORRUPT'")
        .bind(bad)
        .execute(&mut c)
        .await;
    seen.expect("decrypt(corrupt)", "SG001", r);
    // A ciphertext copied to another key name (bound to its row).
    let copied = sqlx::query("SELECT secretgate.decrypt(encrypted_value, encryption_version, workspace_id, 'OTHER') FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'API_TOKEN'")
        .bind(ws)
        .execute(&mut c)
        .await;
    seen.expect("decrypt(ciphertext of another key)", "SG001", copied);
    let r = sqlx::query("SELECT secretgate.has_model_secret($1)").bind(plat_bad).execute(&mut c).await;
    seen.expect("has_model_secret(corrupt MODEL)", "SG001", r);
    let r = sqlx::query("SELECT secretgate.rename_secret_key('BAD_OLD', 'BAD_NEW')").execute(&mut c).await;
    seen.expect("rename_secret_key(corrupt row)", "SG001", r);
    let rows: Option<Vec<VerifyRow>> =
        seen.ok("verify_secrets", sqlx::query_as("SELECT * FROM secretgate.verify_secrets()").fetch_all(&mut c).await);
    if let Some(rows) = rows {
        seen.text("verify_secrets rows", format!("{rows:?}"));
    }
    // The trigger's MODEL check on a direct UPDATE that writes an undecryptable MODEL.
    let r = sqlx::query("UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 20, get_byte(encrypted_value, 20) # 1) WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(plat)
        .execute(&mut c)
        .await;
    seen.expect("direct UPDATE of MODEL with a corrupt ciphertext (trigger)", "SG001", r);
    // reencrypt meets the corrupt rows (a new current version makes every row stale).
    let mut rotated = cluster.initial_keys().clone();
    rotated.add_version(3);
    keys.push(rotated.clone());
    cluster.write_keyring(&rotated.to_json(), 0o600);
    let r = sqlx::query("SELECT secretgate.reencrypt(100000)").execute(&mut c).await;
    let code = match &r {
        Err(e) => sqlstate(e).unwrap_or_default(),
        Ok(_) => String::new(),
    };
    // Whichever undecryptable row comes first: SG001 or SG002.
    seen.expect("reencrypt over undecryptable rows", if code == "SG002" { "SG002" } else { "SG001" }, r);
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);

    // --- Gates: SG101, SG105, SG106, SG107, SG102, SG103, SG104.
    let agent_value = fresh();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'PLATFORM_TOKEN', $2)")
        .bind(plat)
        .bind(&agent_value)
        .execute(&mut c)
        .await;
    seen.expect("agent set_secret on a platform workspace", "SG101", r);
    exec(&mut c, "ROLLBACK").await.ok();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let blob = blobs.iter().next().cloned().unwrap_or_default();
    let r = sqlx::query("INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'INJECTED', $2, 2)")
        .bind(plat)
        .bind(&blob)
        .execute(&mut c)
        .await;
    seen.expect("agent direct INSERT of a ciphertext into a platform workspace (trigger)", "SG101", r);
    exec(&mut c, "ROLLBACK").await.ok();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let r = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(plat)
        .execute(&mut c)
        .await;
    seen.expect("agent DELETE of a platform secret (trigger)", "SG101", r);
    exec(&mut c, "ROLLBACK").await.ok();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let r =
        sqlx::query("UPDATE public.workspaces SET kind = 'workspace' WHERE id = $1").bind(plat).execute(&mut c).await;
    seen.expect("agent demotes a platform workspace (trigger)", "SG101", r);
    exec(&mut c, "ROLLBACK").await.ok();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let r = sqlx::query("DELETE FROM public.workspaces WHERE id = $1").bind(plat).execute(&mut c).await;
    seen.expect("agent deletes a platform workspace (trigger)", "SG101", r);
    exec(&mut c, "ROLLBACK").await.ok();
    exec(&mut c, "BEGIN; SET LOCAL secretgate.caller = 'agent'").await.map_err(|e| anyhow!(describe(&e)))?;
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', $2)")
        .bind(Uuid::new_v4())
        .bind(&v)
        .execute(&mut c)
        .await;
    seen.expect("agent set_secret on an unknown workspace", "SG106", r);
    exec(&mut c, "ROLLBACK").await.ok();
    let v = fresh();
    let r =
        sqlx::query("SELECT secretgate.set_secret($1, 'MODEL_PROVIDER', $2)").bind(ws).bind(&v).execute(&mut c).await;
    seen.expect("set_secret of a forbidden key", "SG105", r);
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_global_secret('MODEL_PROVIDER', $1)").bind(&v).execute(&mut c).await;
    seen.expect("set_global_secret of a forbidden key", "SG105", r);
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'minimax')").bind(ws).execute(&mut c).await;
    seen.expect("set_secret MODEL = a provider name", "SG107", r);
    let r = sqlx::query("SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL')").execute(&mut c).await;
    seen.expect("rename_secret_key of a legacy provider slug", "SG107", r);
    let r = sqlx::query("SELECT * FROM secretgate.register_workspace($1)").bind(Uuid::new_v4()).execute(&mut c).await;
    seen.expect("register_workspace(unknown id)", "SG106", r);
    let r = sqlx::query("SELECT secretgate.check_byok($1)").bind(Uuid::new_v4()).execute(&mut c).await;
    seen.expect("check_byok(unknown id)", "SG106", r);
    let r = sqlx::query("SELECT secretgate.ensure_concierge_provider($1)").bind(Uuid::new_v4()).execute(&mut c).await;
    seen.expect("ensure_concierge_provider(unknown id)", "SG106", r);
    let r = sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1")
        .bind(plat_empty)
        .execute(&mut c)
        .await;
    seen.expect("platform set online without MODEL (commit)", "SG102", r);
    exec(&mut c, "BEGIN").await.map_err(|e| anyhow!(describe(&e)))?;
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(plat)
        .execute(&mut c)
        .await
        .described("delete MODEL")?;
    let r = exec(&mut c, "COMMIT").await;
    seen.expect("MODEL of an online platform deleted (commit)", "SG102", r);
    let r = exec(&mut c, "TRUNCATE public.workspace_secrets").await;
    seen.expect("TRUNCATE while a platform is online", "SG102", r);
    let r = sqlx::query("SELECT secretgate.check_byok($1)").bind(byok_missing).execute(&mut c).await;
    seen.expect("check_byok(no credential)", "SG103", r);
    let r = sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1")
        .bind(byok_missing)
        .execute(&mut c)
        .await;
    seen.expect("BYOK workspace set online without credential (commit)", "SG103", r);
    let r = sqlx::query("SELECT secretgate.check_byok($1)").bind(byok_dead).execute(&mut c).await;
    seen.expect("check_byok(dead credential)", "SG104", r);
    seen.ok(
        "check_byok(transient verdict: WARNING)",
        sqlx::query("SELECT secretgate.check_byok($1)").bind(byok_transient).execute(&mut c).await,
    );
    // An unroutable model: a NOTICE, naming the model column (not a secret).
    let r = sqlx::query("UPDATE public.workspaces SET model = 'zzz-unroutable-model' WHERE id = $1")
        .bind(ws)
        .execute(&mut c)
        .await;
    seen.ok("unroutable model (NOTICE)", r);

    // register_workspace failures commit and NOTIFY.
    for (path, id) in [
        ("register_workspace(platform without MODEL)", plat_empty),
        ("register_workspace(platform with corrupt MODEL)", plat_bad),
        ("register_workspace(BYOK missing)", byok_missing),
        ("register_workspace(BYOK dead)", byok_dead),
    ] {
        let row: Option<(String, Option<String>)> = seen.ok(
            path,
            sqlx::query_as("SELECT * FROM secretgate.register_workspace($1)").bind(id).fetch_one(&mut c).await,
        );
        match row {
            Some((status, Some(code))) if status == "failed" => seen.text(path, code),
            other => seen.problems.push(format!("{path}: expected ('failed', code), got {:?}", other.map(|o| o.0))),
        }
    }

    // Concierge helpers fail closed with a WARNING.
    let conc = workspace(&mut c, "platform", None).await?;
    let corrupt_provider = fresh();
    set(&mut c, conc, "LLM_PROVIDER", &corrupt_provider).await?;
    ciphertexts(&mut c, &mut blobs).await?;
    exec(&mut c, "SELECT secretgate.detach_gates()").await.map_err(|e| anyhow!(describe(&e)))?;
    sqlx::query("UPDATE public.workspace_secrets SET encryption_version = 7 WHERE workspace_id = $1")
        .bind(conc)
        .execute(&mut c)
        .await
        .described("v7")?;
    exec(
        &mut c,
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;
    let r: Option<String> = seen.ok(
        "ensure_concierge_provider(unreadable LLM_PROVIDER)",
        sqlx::query_scalar("SELECT secretgate.ensure_concierge_provider($1)").bind(conc).fetch_one(&mut c).await,
    );
    if r.as_deref() != Some("fail_closed") {
        seen.problems.push(format!("ensure_concierge_provider should fail closed, said {r:?}"));
    }

    // --- Privileges: 42501 at the call, and inside SPI (pgrx's rethrow).
    let mut app = connect_debug(&cluster.url_as("redact_app", &name)).await?;
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.encrypt($1, $2, 'API_TOKEN')").bind(&v).bind(ws).execute(&mut app).await;
    seen.expect("encrypt without EXECUTE", "42501", r);
    let r = sqlx::query("SELECT secretgate.reencrypt(10)").execute(&mut app).await;
    seen.expect("reencrypt without EXECUTE", "42501", r);
    let r = sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok_dead)
        .execute(&mut app)
        .await;
    seen.expect("record_liveness without EXECUTE", "42501", r);
    let r = sqlx::query("SELECT secretgate.rename_secret_key('A', 'B')").execute(&mut app).await;
    seen.expect("rename_secret_key without EXECUTE", "42501", r);
    app.close().await.ok();
    let mut noread = connect_debug(&cluster.url_as("redact_noread", &name)).await?;
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'API_TOKEN')").bind(ws).execute(&mut noread).await;
    seen.expect("read_secret without SELECT on the table (SPI)", "42501", r);
    let v = fresh();
    let r =
        sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', $2)").bind(ws).bind(&v).execute(&mut noread).await;
    seen.expect("set_secret without privileges on the table (SPI)", "42501", r);
    noread.close().await.ok();

    // --- Postgres' own errors inside the extension's SPI statements.
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', $2)")
        .bind(Uuid::new_v4())
        .bind(&v)
        .execute(&mut c)
        .await;
    seen.expect("set_secret on a missing workspace: FK violation (SPI)", "23503", r);
    exec(
        &mut c,
        "ALTER TABLE public.workspace_secrets ADD CONSTRAINT redact_key_upper CHECK (key = upper(key)) NOT VALID",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'lower_key', $2)").bind(ws).bind(&v).execute(&mut c).await;
    seen.expect("set_secret violating a CHECK constraint (SPI)", "23514", r);
    // Control: the same violation by a direct INSERT is Postgres' own DETAIL
    // ("Failing row contains"), which shows the ciphertext: the detector must
    // see it. Kept out of the server log, which is checked as a whole.
    exec(&mut c, "SET log_min_messages = panic; SET log_min_error_statement = panic")
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    let known = blobs.iter().next().cloned().unwrap_or_default();
    let r = sqlx::query("INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'lower_direct', $2, 2)")
        .bind(ws)
        .bind(&known)
        .execute(&mut c)
        .await;
    seen.expect("control: direct INSERT violating a CHECK constraint (no extension involved)", "23514", r);
    exec(&mut c, "RESET log_min_messages; RESET log_min_error_statement").await.map_err(|e| anyhow!(describe(&e)))?;
    exec(&mut c, "ALTER TABLE public.workspace_secrets DROP CONSTRAINT redact_key_upper")
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    // A lock held by another transaction, with lock_timeout: 55P03 inside SPI.
    let mut holder = PgConnection::connect(&url).await.context("holder")?;
    exec(&mut holder, "BEGIN").await.map_err(|e| anyhow!(describe(&e)))?;
    sqlx::query("SELECT 1 FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'API_TOKEN' FOR UPDATE")
        .bind(ws)
        .execute(&mut holder)
        .await
        .described("lock")?;
    exec(&mut c, "SET lock_timeout = '200ms'").await.map_err(|e| anyhow!(describe(&e)))?;
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', $2)").bind(ws).bind(&v).execute(&mut c).await;
    seen.expect("set_secret on a locked row with lock_timeout (SPI)", "55P03", r);
    exec(&mut c, "RESET lock_timeout").await.map_err(|e| anyhow!(describe(&e)))?;
    exec(&mut holder, "ROLLBACK").await.ok();
    holder.close().await.ok();

    // --- The same inside rename_secret_key and reencrypt, and a NOT NULL
    // column the DBA added, in a database of their own (no undecryptable rows).
    let maint_name = db_name("redact_maint");
    let (maint_url, m0) = migrated_database(&cluster, &maint_name).await?;
    m0.close().await?;
    let mut m = connect_debug(&maint_url).await?;
    let mws = workspace(&mut m, "workspace", None).await?;
    for key in ["MAINT_A", "MAINT_B"] {
        let v = fresh();
        set(&mut m, mws, key, &v).await?;
    }
    let v = fresh();
    sqlx::query("SELECT secretgate.set_global_secret('MAINT_G', $1)")
        .bind(&v)
        .execute(&mut m)
        .await
        .described("global")?;
    ciphertexts(&mut m, &mut blobs).await?;
    exec(
        &mut m,
        "ALTER TABLE public.workspace_secrets ADD CONSTRAINT redact_key_upper CHECK (key = upper(key)) NOT VALID",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;
    let r = sqlx::query("SELECT secretgate.rename_secret_key('MAINT_A', 'maint_lower')").execute(&mut m).await;
    seen.expect("rename_secret_key violating a CHECK constraint (SPI)", "23514", r);
    exec(&mut m, "ALTER TABLE public.workspace_secrets ADD CONSTRAINT redact_old_versions CHECK (encryption_version < 3) NOT VALID")
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    cluster.write_keyring(&rotated.to_json(), 0o600);
    let r = sqlx::query("SELECT secretgate.reencrypt(10)").execute(&mut m).await;
    seen.expect("reencrypt violating a CHECK constraint (SPI)", "23514", r);
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
    exec(
        &mut m,
        "ALTER TABLE public.workspace_secrets DROP CONSTRAINT redact_old_versions, DROP CONSTRAINT redact_key_upper",
    )
    .await
    .map_err(|e| anyhow!(describe(&e)))?;
    exec(&mut m, "ALTER TABLE public.workspace_secrets ADD COLUMN created_by text NOT NULL DEFAULT 'dba'; ALTER TABLE public.workspace_secrets ALTER COLUMN created_by DROP DEFAULT")
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'MAINT_C', $2)").bind(mws).bind(&v).execute(&mut m).await;
    seen.expect("set_secret violating a NOT NULL column (SPI)", "23502", r);
    let pws = workspace(&mut m, "platform", None).await?;
    let r = sqlx::query_scalar::<_, String>("SELECT secretgate.ensure_concierge_model($1, 'claude-opus-4-7')")
        .bind(pws)
        .fetch_one(&mut m)
        .await;
    seen.expect("ensure_concierge_model seeding into a NOT NULL violation (SPI)", "23502", r);
    m.close().await.ok();

    // --- 55000: before attach_gates, and attaching other tables.
    let r = exec(&mut c, "CREATE TABLE public.other_ws (LIKE public.workspaces INCLUDING ALL)").await;
    seen.ok("create other tables", r);
    let r = exec(
        &mut c,
        "SELECT secretgate.attach_gates('public.other_ws', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .await;
    seen.expect("attach_gates(other tables)", "55000", r);
    let r = exec(
        &mut c,
        "SELECT secretgate.attach_gates('public.global_secrets', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .await;
    seen.expect("attach_gates(table without a column)", "42703", r);
    let (_u, mut empty) = empty_database(&cluster, &db_name("redact_empty")).await?;
    exec(&mut empty, "CREATE EXTENSION secretgate").await.map_err(|e| anyhow!(describe(&e)))?;
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'API_TOKEN')").bind(ws).execute(&mut empty).await;
    seen.expect("read_secret before attach_gates", "55000", r);
    empty.close().await.ok();

    // --- SG003: the keyring unusable, in several ways, on every path.
    let k = cluster.initial_keys();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let broken = [
        ("removed", None),
        (
            "not JSON",
            Some(format!(
                "{{\"current_version\": 2, \"keys\": {{\"1\": \"{}\", \"2\": \"{}\"",
                b64(&k.keys[&1]),
                b64(&k.keys[&2])
            )),
        ),
        (
            "key not base64",
            Some(format!(
                "{{\"current_version\": 2, \"keys\": {{\"1\": \"{}\", \"2\": \"!!{}\"}}}}",
                b64(&k.keys[&1]),
                b64(&k.keys[&2])
            )),
        ),
        (
            "short key",
            Some(format!(
                "{{\"current_version\": 2, \"keys\": {{\"1\": \"{}\", \"2\": \"{}\"}}}}",
                b64(&k.keys[&1]),
                b64(&k.keys[&2][..31])
            )),
        ),
        (
            "key as hex",
            Some(format!(
                "{{\"current_version\": 2, \"keys\": {{\"1\": \"{}\", \"2\": \"{}\"}}}}",
                hex::encode(&k.keys[&1]),
                hex::encode(&k.keys[&2])
            )),
        ),
    ];
    for (what, contents) in &broken {
        match contents {
            None => cluster.remove_keyring(),
            Some(json) => cluster.write_keyring(json, 0o600),
        }
        let r = sqlx::query("SELECT secretgate.read_secret($1, 'API_TOKEN')").bind(ws).execute(&mut c).await;
        seen.expect(&format!("read_secret, keyring {what}"), "SG003", r);
    }
    cluster.write_keyring(&k.to_json(), 0o644);
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'API_TOKEN')").bind(ws).execute(&mut c).await;
    seen.expect("read_secret, keyring group-readable", "SG003", r);
    cluster.remove_keyring();
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'API_TOKEN', $2)").bind(ws).bind(&v).execute(&mut c).await;
    seen.expect("set_secret, no keyring", "SG003", r);
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.set_global_secret('GLOBAL_TOKEN', $1)").bind(&v).execute(&mut c).await;
    seen.expect("set_global_secret, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.read_global_secret('GLOBAL_TOKEN')").execute(&mut c).await;
    seen.expect("read_global_secret, no keyring", "SG003", r);
    let v = fresh();
    let r = sqlx::query("SELECT secretgate.encrypt($1, NULL, 'K')").bind(&v).execute(&mut c).await;
    seen.expect("encrypt, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key) FROM public.workspace_secrets WHERE workspace_id = $1")
        .bind(ws)
        .execute(&mut c)
        .await;
    seen.expect("decrypt, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.current_key_version()").execute(&mut c).await;
    seen.expect("current_key_version, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.reencrypt(10)").execute(&mut c).await;
    seen.expect("reencrypt, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.rename_secret_key('API_TOKEN', 'API_TOKEN_2')").execute(&mut c).await;
    seen.expect("rename_secret_key, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.has_model_secret($1)").bind(plat).execute(&mut c).await;
    // plat's MODEL is intact (the delete above rolled back).
    seen.expect("has_model_secret, no keyring", "SG003", r);
    let r =
        sqlx::query("SELECT secretgate.byok_credential_present($1, 'anthropic')").bind(byok_dead).execute(&mut c).await;
    seen.expect("byok_credential_present, no keyring", "SG003", r);
    let r = sqlx::query("SELECT secretgate.check_byok($1)").bind(byok_dead).execute(&mut c).await;
    seen.expect("check_byok, no keyring", "SG003", r);
    let r = sqlx::query("UPDATE public.workspaces SET model = 'claude-sonnet-4' WHERE id = $1")
        .bind(byok_transient)
        .execute(&mut c)
        .await;
    seen.expect("BYOK gate at commit, no keyring", "SG003", r);
    let v = fresh();
    let r = sqlx::query("UPDATE public.workspace_secrets SET encrypted_value = secretgate.encrypt($2, workspace_id, key) WHERE workspace_id = $1")
        .bind(ws)
        .bind(&v)
        .execute(&mut c)
        .await;
    seen.expect("direct UPDATE through encrypt(), no keyring", "SG003", r);
    let r: Option<String> = seen.ok(
        "ensure_concierge_model, no keyring (WARNING)",
        sqlx::query_scalar("SELECT secretgate.ensure_concierge_model($1, 'claude-opus-4-7')")
            .bind(plat)
            .fetch_one(&mut c)
            .await,
    );
    if r.as_deref() != Some("fail_closed") {
        seen.problems.push(format!("ensure_concierge_model without a keyring should fail closed, said {r:?}"));
    }
    let row: Option<(String, Option<String>)> = seen.ok(
        "register_workspace(platform), no keyring",
        sqlx::query_as("SELECT * FROM secretgate.register_workspace($1)").bind(plat).fetch_one(&mut c).await,
    );
    if row.as_ref().map(|r| r.0.as_str()) != Some("failed") {
        seen.problems.push("register_workspace without a keyring should report failed".into());
    }
    let rows: Option<Vec<VerifyRow>> = seen.ok(
        "verify_secrets, no keyring",
        sqlx::query_as("SELECT * FROM secretgate.verify_secrets()").fetch_all(&mut c).await,
    );
    if let Some(rows) = rows {
        seen.text("verify_secrets rows, no keyring", format!("{rows:?}"));
    }
    let verify = run_cli(Some(&url), &["verify"]).await?;
    seen.text("secretgate verify, no keyring", format!("{}{}", verify.stdout, verify.stderr));
    let rotate = run_cli(Some(&url), &["rotate"]).await?;
    seen.text("secretgate rotate, no keyring", format!("{}{}", rotate.stdout, rotate.stderr));
    if verify.code != Some(1) || rotate.code != Some(1) {
        seen.problems
            .push(format!("verify / rotate without a keyring should exit 1: {:?} / {:?}", verify.code, rotate.code));
    }
    cluster.write_keyring(&k.to_json(), 0o600);

    // --- psql: the value-free statements again, with every notice in verbose form.
    let script = format!(
        "\\set VERBOSITY verbose\n\\set SHOW_CONTEXT always\nSET client_min_messages = debug5;\nLISTEN secretgate_events;\n\
         SELECT secretgate.read_secret('{bad}', 'CORRUPT');\n\
         SELECT secretgate.read_secret('{bad}', 'V9');\n\
         SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets();\n\
         SELECT secretgate.has_model_secret('{plat_bad}');\n\
         SELECT * FROM secretgate.register_workspace('{plat_empty}');\n\
         SELECT * FROM secretgate.register_workspace('{byok_dead}');\n\
         SELECT secretgate.check_byok('{byok_missing}');\n\
         SELECT secretgate.check_byok('{byok_dead}');\n\
         SELECT secretgate.check_byok('{byok_transient}');\n\
         SELECT secretgate.rename_secret_key('BAD_OLD', 'BAD_NEW');\n\
         SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL');\n\
         SELECT secretgate.ensure_concierge_provider('{conc}');\n\
         UPDATE public.workspaces SET model = 'zzz-other-unroutable' WHERE id = '{ws}';\n\
         BEGIN; SET LOCAL secretgate.caller = 'agent'; DELETE FROM public.workspace_secrets WHERE workspace_id = '{plat}' AND key = 'MODEL';\nROLLBACK;\n\
         SET ROLE redact_noread; SELECT secretgate.read_secret('{ws}', 'API_TOKEN');\nRESET ROLE;\n\
         SELECT secretgate.record_liveness('{ws}', 'NO_SUCH_KEY', 401);\n"
    );
    let out = psql(&cluster, &name, &script)?;
    seen.text("psql session", out.clone());
    for code in ["SG001", "SG002", "SG103", "SG104", "SG107", "SG101", "42501", "P0002"] {
        if !out.contains(&format!("ERROR:  {code}:")) {
            seen.problems.push(format!("psql: no ERROR {code} in the session output"));
        }
    }
    for needle in ["WARNING:  01000:", "NOTICE:  00000:", "Asynchronous notification \"secretgate_events\"", "DEBUG:  "]
    {
        if !out.contains(needle) {
            seen.problems.push(format!("psql: expected {needle:?} in the session output"));
        }
    }

    // --- NOTIFY payloads.
    let mut payloads = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        payloads.push(n.payload().to_string());
    }
    for p in &payloads {
        seen.text("NOTIFY payload", p.clone());
        let json: serde_json::Value = serde_json::from_str(p).unwrap_or_default();
        let fields: BTreeSet<String> = json.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        if fields != ["code", "event", "workspace_id"].iter().map(|s| s.to_string()).collect() {
            seen.problems.push(format!("a NOTIFY payload has other fields than event, code, workspace_id: {fields:?}"));
        }
    }
    // 4 failures above, 1 without a keyring, 2 from psql.
    if payloads.len() < 7 {
        seen.problems.push(format!("expected at least 7 NOTIFY payloads, got {}", payloads.len()));
    }

    // --- Client-side notices (sqlx), the audit lines and the whole server log.
    let client_notices = notices();
    if !client_notices.iter().any(|n| n.contains("not seeded (fail closed)"))
        || !client_notices.iter().any(|n| n.contains("transient"))
    {
        seen.problems.push(format!(
            "sqlx should have delivered the fail-closed and transient WARNINGs ({} notices)",
            client_notices.len()
        ));
    }
    for n in EVENTS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        seen.text("client tracing event", n.clone());
    }
    let log = cluster.log_contents();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("secretgate audit: ")).collect();
    if audit.len() < 15 {
        seen.problems.push(format!("expected at least 15 audit lines, found {}", audit.len()));
    }
    for line in &audit {
        let json = line.split_once("secretgate audit: ").map(|x| x.1).unwrap_or_default();
        if serde_json::from_str::<serde_json::Value>(json).is_err() {
            seen.problems.push("an audit line is not JSON".into());
        }
    }
    seen.text("server log", log.clone());

    // --- The verdict.
    ciphertexts(&mut c, &mut blobs).await?;
    let needles = Needles::new(&plaintexts, &blobs, &keys);
    let mut leaks = Vec::new();
    for (path, text) in &seen.texts {
        let found = needles.leaks(text);
        if path.starts_with("control:") {
            ensure!(
                found.iter().any(|f| f.contains("ciphertext")),
                "the leak detector should find the ciphertext in the control path's DETAIL"
            );
        } else if !found.is_empty() {
            leaks.push(format!("{path}: {}", found.join(", ")));
        }
    }
    let with_backtrace: Vec<String> = seen.paths.iter().filter(|p| p.3).map(|p| format!("{} ({})", p.0, p.2)).collect();
    if !with_backtrace.is_empty() {
        seen.problems.push(format!("a Rust backtrace reached the DETAIL of: {with_backtrace:?}"));
    }
    // Postgres' own DETAIL of an error inside a write of a ciphertext is withheld.
    const WITHHELD: &str =
        "secretgate: Postgres' DETAIL is withheld, as it can show the row being written, ciphertext included";
    for (path, detail) in &seen.details {
        if path.contains("(SPI)") && path.contains("violat") && detail.as_deref() != Some(WITHHELD) {
            seen.problems.push(format!("{path}: Postgres' DETAIL should be withheld"));
        }
    }
    eprintln!(
        "[redaction] {} paths exercised, {} texts checked ({} bytes of server log)",
        seen.paths.len(),
        seen.texts.len(),
        log.len()
    );
    for (path, want, got, bt) in &seen.paths {
        eprintln!(
            "[redaction]   {got:>7} {}{path}{}",
            if want == got { "" } else { "UNEXPECTED " },
            if *bt { "  [Rust backtrace in DETAIL]" } else { "" }
        );
    }
    eprintln!("[redaction] paths whose DETAIL carries a Rust backtrace: {with_backtrace:?}");
    if !leaks.is_empty() {
        bail!("values leaked (what, not the value): {leaks:#?}\nother problems: {:#?}", seen.problems);
    }
    ensure!(seen.problems.is_empty(), "problems: {:#?}", seen.problems);
    Ok(())
}
