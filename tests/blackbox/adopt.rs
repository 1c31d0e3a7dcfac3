//! Adoption by a live platform (issue 13): the platform's own schema (an
//! enum status used in a partial unique index, no model column, external
//! agents marked by runtime) and the rows it wrote before secretgate
//! (version 0 plaintext, version 1 AES-256-GCM without associated data under
//! its own key, written here by the test with aes-gcm) attach unchanged, read
//! back, meet the gates exactly as the gates say, and rotate to a bound
//! version with every plaintext unchanged; `secretgate adopt` reports each
//! stage. Also: the tables' owner (not a superuser) runs the migrations, the
//! autocommit `SET LOCAL` trap, the agent login role, and the Python client
//! snippet of docs/adopting.md run against this cluster.
//!
//! The trials share the cluster's keyring and the walk changes it, so they
//! run one at a time.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

/// The platform's own key (its environment variable, base64 of 32 bytes).
static APP_KEY: OnceLock<Vec<u8>> = OnceLock::new();

fn app_key() -> &'static [u8] {
    APP_KEY.get().expect("the app key is set in main")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The keyring a DBA writes first: the platform's plaintext rows as version
/// 0, its key as unbound version 1, current.
fn adoption_keyring() -> String {
    serde_json::json!({
        "current_version": 1,
        "keys": {"0": {"format": "plaintext"}, "1": {"key": b64(app_key()), "format": "unbound"}}
    })
    .to_string()
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("adopt"));
    let key = random_bytes(32);
    cluster.remember_secret(&b64(&key));
    cluster.remember_secret(&hex::encode(&key));
    APP_KEY.set(key).expect("set once");
    cluster.write_keyring(&adoption_keyring(), 0o600);
    migrate_once(&cluster);
    let trials = trials![&cluster;
        the_platform_adopts_secretgate_step_by_step,
        an_unadapted_schema_is_reported_blocked,
        the_tables_owner_runs_the_migrations,
        autocommit_set_local_is_not_an_agent,
        an_agent_login_role_needs_no_setting,
        the_python_snippet_in_docs_adopting_runs,
        the_node_snippet_in_docs_adopting_runs,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// The platform, as it is before secretgate

/// What the service does with its key today: nonce || ct || tag, no associated data.
fn app_seal(plaintext: &str) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(app_key()).expect("32-byte key");
    let nonce = random_bytes(12);
    let mut blob = nonce.clone();
    blob.extend(cipher.encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes()).expect("encrypt"));
    blob
}

fn app_open(blob: &[u8]) -> Result<String> {
    let cipher = Aes256Gcm::new_from_slice(app_key()).expect("32-byte key");
    ensure!(blob.len() >= 28, "a stored ciphertext is too short to be nonce || ct || tag");
    let plain = cipher
        .decrypt(Nonce::from_slice(&blob[..12]), &blob[12..])
        .map_err(|_| anyhow!("the platform's own key cannot open a row secretgate wrote"))?;
    String::from_utf8(plain).context("utf-8")
}

/// The platform's schema: an enum status with its ten labels, a partial
/// unique index on it, kind text with a CHECK and at most one platform row,
/// external agents by runtime, no model column, secrets with their own ids.
const PLATFORM_SCHEMA: &str = "
CREATE TYPE workspace_status AS ENUM ('provisioning', 'online', 'offline', 'degraded', 'failed', 'removed',
                                      'paused', 'hibernated', 'awaiting_agent', 'hibernating');
CREATE TABLE workspaces (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    kind       text NOT NULL DEFAULT 'workspace' CHECK (kind IN ('workspace', 'platform')),
    status     workspace_status NOT NULL DEFAULT 'provisioning',
    runtime    text NOT NULL DEFAULT 'claude-code',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX workspaces_name_live ON workspaces (name) WHERE status <> 'removed';
CREATE UNIQUE INDEX workspaces_one_platform ON workspaces ((true)) WHERE kind = 'platform';
CREATE TABLE workspace_secrets (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id       uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    key                text NOT NULL,
    encrypted_value    bytea NOT NULL,
    encryption_version int NOT NULL DEFAULT 0,
    UNIQUE (workspace_id, key)
);
CREATE TABLE global_secrets (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key                text NOT NULL UNIQUE,
    encrypted_value    bytea NOT NULL,
    encryption_version int NOT NULL DEFAULT 0
);
";

/// A row the platform wrote, and the value it holds.
struct Stored {
    workspace: Option<Uuid>,
    key: String,
    value: String,
}

struct Platform {
    db: String,
    admin: PgConnection,
    owner: String,
    service: PgConnection,
    concierge: Uuid,
    byok: Uuid,
    external: Uuid,
    rows: Vec<Stored>,
}

/// A database with the platform's schema, owned by a login role that is not
/// a superuser (the service's), the extension installed by the DBA, and
/// rows the service wrote before secretgate: plaintext (version 0) and its
/// own AES-256-GCM (version 1).
async fn platform(cluster: &Cluster, prefix: &str) -> Result<Platform> {
    let db = db_name(prefix);
    let (_url, mut admin) = empty_database(cluster, &db).await?;
    let owner = format!("{prefix}_owner_{}", random_hex(3));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {owner} LOGIN; GRANT CREATE ON DATABASE \"{db}\" TO {owner}; GRANT CREATE ON SCHEMA public TO {owner};"
    ))
    .execute(&mut admin)
    .await
    .described("create the owner role")?;
    let mut service = PgConnection::connect(&cluster.url_as(&owner, &db)).await.context("connect as the owner")?;
    sqlx::raw_sql(PLATFORM_SCHEMA).execute(&mut service).await.described("the platform's schema")?;

    let (concierge, byok, external) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, name, kind, runtime) in [
        (concierge, "concierge", "platform", "claude-code"),
        (byok, "byok", "workspace", "claude-code"),
        (external, "outside", "workspace", "external"),
    ] {
        sqlx::query(
            "INSERT INTO workspaces (id, name, kind, status, runtime) VALUES ($1, $2, $3, $4::workspace_status, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(kind)
        .bind("online")
        .bind(runtime)
        .execute(&mut service)
        .await
        .described("a workspace")?;
    }
    // The same name again, removed: the partial unique index allows it.
    sqlx::query(
        "INSERT INTO workspaces (name, kind, status) VALUES ('byok', 'workspace', 'removed'::workspace_status)",
    )
    .execute(&mut service)
    .await
    .described("a removed namesake")?;

    let mut rows = Vec::new();
    let plain = |w: Option<Uuid>, k: &str, v: String| (w, k.to_string(), v, 0);
    let sealed = |w: Option<Uuid>, k: &str, v: String| (w, k.to_string(), v, 1);
    let written = vec![
        plain(Some(concierge), "MODEL", "claude-sonnet-4-5".into()),
        sealed(Some(byok), "MODEL", "claude-opus-4-1".into()),
        sealed(Some(byok), "ANTHROPIC_API_KEY", cluster.fresh_secret()),
        plain(Some(byok), "GITHUB_TOKEN", cluster.fresh_secret()),
        plain(Some(external), "MODEL", "gemini-2.5-pro".into()),
        sealed(None, "ANTHROPIC_API_KEY", cluster.fresh_secret()),
        plain(None, "SLACK_WEBHOOK", cluster.fresh_secret()),
    ];
    for (workspace, key, value, version) in written {
        let blob = if version == 0 { value.clone().into_bytes() } else { app_seal(&value) };
        let q = match workspace {
            Some(w) => sqlx::query(
                "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4)",
            )
            .bind(w),
            None => sqlx::query("INSERT INTO global_secrets (key, encrypted_value, encryption_version) VALUES ($1, $2, $3)"),
        };
        q.bind(&key).bind(blob).bind(version).execute(&mut service).await.described("a secret the service wrote")?;
        rows.push(Stored { workspace, key, value });
    }
    // The DBA's part: the extension (preload and keyring are the cluster's).
    sqlx::raw_sql("CREATE EXTENSION secretgate").execute(&mut admin).await.described("CREATE EXTENSION")?;
    Ok(Platform { db, admin, owner, service, concierge, byok, external, rows })
}

async fn adopt(cluster: &Cluster, role: &str, db: &str) -> Result<CliRun> {
    run_cli(Some(&cluster.url_as(role, db)), &["adopt"]).await
}

fn expect_stage(run: &CliRun, stage: &str, code: i32, says: &[&str]) -> Result<()> {
    ensure!(run.code == Some(code), "secretgate adopt: expected exit {code} at stage {stage}:\n{run}");
    ensure!(run.stdout.contains(&format!("status: {stage}")), "secretgate adopt: expected status {stage}:\n{run}");
    for line in says {
        ensure!(run.stdout.contains(line), "secretgate adopt at stage {stage} should say {line:?}:\n{run}");
    }
    Ok(())
}

/// Every row the platform wrote reads back, through read_secret and
/// try_read_secret, as the value it holds.
async fn every_row_reads_back(conn: &mut PgConnection, rows: &[Stored]) -> Result<()> {
    for row in rows {
        let read: Option<String> = match row.workspace {
            Some(w) => sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)").bind(w).bind(&row.key),
            None => sqlx::query_scalar("SELECT secretgate.read_global_secret($1)").bind(&row.key),
        }
        .fetch_one(&mut *conn)
        .await
        .described(&format!("read {}", row.key))?;
        ensure!(read.as_deref() == Some(row.value.as_str()), "{} reads back differently", row.key);
        if let Some(w) = row.workspace {
            let (state, value): (String, Option<String>) =
                sqlx::query_as("SELECT state, value FROM secretgate.try_read_secret($1, $2)")
                    .bind(w)
                    .bind(&row.key)
                    .fetch_one(&mut *conn)
                    .await
                    .described("try_read_secret")?;
            ensure!(state == "value" && value.as_deref() == Some(row.value.as_str()), "try_read_secret of {}", row.key);
        }
    }
    Ok(())
}

/// Rows of `verify_secrets` by state: the attached tables' rows (kept
/// versions of overwritten secrets, listed as `KEY (kept version N)`, apart:
/// they must all read too).
async fn verify_counts(conn: &mut PgConnection) -> Result<Vec<(String, i64)>> {
    let kept_unreadable: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM secretgate.verify_secrets() WHERE key LIKE '% (kept version %)' AND state <> 'ok'",
    )
    .fetch_one(&mut *conn)
    .await
    .described("verify_secrets, kept versions")?;
    anyhow::ensure!(kept_unreadable == 0, "{kept_unreadable} kept versions do not read");
    sqlx::query_as(
        "SELECT state, count(*) FROM secretgate.verify_secrets() WHERE key IS NULL OR key NOT LIKE '% (kept version %)' \
          GROUP BY state ORDER BY state",
    )
        .fetch_all(conn)
        .await
        .described("verify_secrets")
}

async fn insert_model(conn: &mut PgConnection, ws: Uuid, blob: Vec<u8>, version: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'MODEL', $2, $3) \
         ON CONFLICT (workspace_id, key) DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version",
    )
    .bind(ws)
    .bind(blob)
    .bind(version)
    .execute(conn)
    .await
    .map(drop)
}

/// The heartbeat: the service flips a status with its enum cast, in autocommit.
async fn heartbeat(conn: &mut PgConnection, ws: Uuid, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE workspaces SET status = $2::workspace_status WHERE id = $1 AND status <> $2::workspace_status")
        .bind(ws)
        .bind(status)
        .execute(conn)
        .await
        .map(drop)
}

async fn the_platform_adopts_secretgate_step_by_step(cluster: Arc<Cluster>) -> Result<()> {
    cluster.write_keyring(&adoption_keyring(), 0o600);
    let mut p = platform(&cluster, "walk").await?;
    let (owner, db) = (p.owner.clone(), p.db.clone());

    // Before attaching: the schema fits as it is, every row is readable.
    let run = adopt(&cluster, &owner, &db).await?;
    expect_stage(
        &run,
        "attachable",
        1,
        &[
            "attach: the tables attach as they are",
            "version 0 (plaintext): 4 row(s), 0 unreadable",
            "version 1 (unbound): 3 row(s), 0 unreadable",
            "keyring: version(s) 0 (plaintext), 1 (unbound, current)",
            "MODEL secret (no model column)",
            "attach_gates",
        ],
    )?;

    // The owner attaches, the schema unchanged.
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut p.service)
    .await
    .described("attach_gates as the tables' owner")?;
    let status_type: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'workspaces'::regclass AND attname = 'status'",
    )
    .fetch_one(&mut p.service)
    .await
    .described("status type")?;
    ensure!(status_type == "workspace_status", "attaching changed the status column to {status_type}");
    let run = adopt(&cluster, &owner, &db).await?;
    expect_stage(&run, "adopting", 1, &["attach: attached", "current key version 1 is unbound"])?;

    // Every existing row reads back; verify calls plaintext rows unencrypted.
    every_row_reads_back(&mut p.service, &p.rows).await?;
    let states = verify_counts(&mut p.service).await?;
    ensure!(states == vec![("ok".to_string(), 3), ("unencrypted".to_string(), 4)], "verify_secrets states: {states:?}");

    // The service's statement shapes.
    // Heartbeats with the enum cast: allowed for the credentialed workspace and the external one.
    heartbeat(&mut p.service, p.byok, "degraded").await.described("heartbeat degraded")?;
    heartbeat(&mut p.service, p.byok, "online").await.described("heartbeat online (credential present)")?;
    heartbeat(&mut p.service, p.external, "hibernating").await.described("external hibernating")?;
    heartbeat(&mut p.service, p.external, "online").await.described("external agent online (no credential needed)")?;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM workspaces WHERE status <> $1::workspace_status")
        .bind("removed")
        .fetch_one(&mut p.service)
        .await
        .described("the service's own enum comparison")?;
    ensure!(live == 3, "live workspaces: {live}");

    // The create transaction (no MODEL yet: nothing to route), then MODEL after commit.
    let fresh = Uuid::new_v4();
    let mut tx = p.service.begin().await.described("begin")?;
    sqlx::query("INSERT INTO workspaces (id, name, kind, status, runtime) VALUES ($1, 'fresh', 'workspace', $2::workspace_status, 'claude-code')")
        .bind(fresh)
        .bind("provisioning")
        .execute(&mut *tx)
        .await
        .described("create")?;
    tx.commit().await.described("create commits")?;
    // A MODEL routed to a provider with no credential: refused at its (autocommit) commit.
    let refused = insert_model(&mut p.service, fresh, app_seal("gemini-2.5-pro"), 1).await;
    expect_sg(refused, Code::MissingByokCredential)?;
    // A MODEL that is a provider slug: refused, in either old format.
    expect_sg(insert_model(&mut p.service, fresh, app_seal("openai"), 1).await, Code::InvalidModelId)?;
    expect_sg(insert_model(&mut p.service, fresh, b"anthropic".to_vec(), 0).await, Code::InvalidModelId)?;
    // Its credential first (the service's own format), then the MODEL: allowed.
    let gemini = cluster.fresh_secret();
    sqlx::query("INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, 'GEMINI_API_KEY', $2, 1)")
        .bind(fresh)
        .bind(app_seal(&gemini))
        .execute(&mut p.service)
        .await
        .described("old-format credential write while unbound v1 is current")?;
    insert_model(&mut p.service, fresh, app_seal("gemini-2.5-pro"), 1).await.described("MODEL after its credential")?;
    heartbeat(&mut p.service, fresh, "online").await.described("fresh workspace online")?;
    p.rows.push(Stored { workspace: Some(fresh), key: "GEMINI_API_KEY".into(), value: gemini });
    p.rows.push(Stored { workspace: Some(fresh), key: "MODEL".into(), value: "gemini-2.5-pro".into() });
    // The external agent needs no credential for its MODEL either.
    insert_model(&mut p.service, p.external, b"gemini-2.5-flash".to_vec(), 0).await.described("external MODEL")?;
    p.rows.iter_mut().find(|r| r.workspace == Some(p.external) && r.key == "MODEL").expect("row").value =
        "gemini-2.5-flash".into();
    // A BYOK workspace without its credential cannot go online.
    let bare = Uuid::new_v4();
    sqlx::query("INSERT INTO workspaces (id, name, status) VALUES ($1, 'bare', 'provisioning'::workspace_status)")
        .bind(bare)
        .execute(&mut p.service)
        .await
        .described("bare")?;
    expect_sg(insert_model(&mut p.service, bare, app_seal("kimi-k2"), 1).await, Code::MissingByokCredential)?;

    // set_secret writes under the current (unbound) version: the service's own key opens it.
    let via_db = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'OPENAI_API_KEY', $2)")
        .bind(p.byok)
        .bind(&via_db)
        .execute(&mut p.service)
        .await
        .described("set_secret")?;
    let (blob, version): (Vec<u8>, i32) = sqlx::query_as(
        "SELECT encrypted_value, encryption_version FROM workspace_secrets WHERE workspace_id = $1 AND key = 'OPENAI_API_KEY'",
    )
    .bind(p.byok)
    .fetch_one(&mut p.service)
    .await
    .described("read the raw row")?;
    ensure!(version == 1 && app_open(&blob)? == via_db, "set_secret's row is not readable by the service's own key");
    p.rows.push(Stored { workspace: Some(p.byok), key: "OPENAI_API_KEY".into(), value: via_db });

    // Platform identity: the concierge's (plaintext) MODEL cannot go while it is online.
    let gone = sqlx::query("DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(p.concierge)
        .execute(&mut p.service)
        .await;
    expect_sg(gone, Code::PlatformAgentIdentityGate)?;

    // register_workspace sets the enum status, and reports a BYOK failure as 'failed'.
    let reg = Uuid::new_v4();
    let reg_key = cluster.fresh_secret();
    let mut tx = p.service.begin().await.described("begin")?;
    sqlx::query("INSERT INTO workspaces (id, name, status) VALUES ($1, 'reg', 'provisioning'::workspace_status)")
        .bind(reg)
        .execute(&mut *tx)
        .await
        .described("reg")?;
    sqlx::query(
        "SELECT secretgate.set_secret($1, 'GEMINI_API_KEY', $2), secretgate.set_secret($1, 'MODEL', 'gemini-2.5-pro')",
    )
    .bind(reg)
    .bind(&reg_key)
    .execute(&mut *tx)
    .await
    .described("reg's credential and MODEL")?;
    tx.commit().await.described("create with credential and MODEL in one transaction")?;
    let registered: (String, Option<String>) =
        sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)")
            .bind(reg)
            .fetch_one(&mut p.service)
            .await
            .described("register_workspace")?;
    ensure!(registered == ("online".to_string(), None), "register_workspace: {registered:?}");
    // Revoking the credential is always allowed; the next registration fails, and that commits.
    sqlx::query("DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = 'GEMINI_API_KEY'")
        .bind(reg)
        .execute(&mut p.service)
        .await
        .described("revoke the credential")?;
    let registered: (String, Option<String>) =
        sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)")
            .bind(reg)
            .fetch_one(&mut p.service)
            .await
            .described("register_workspace without its credential")?;
    ensure!(
        registered == ("failed".to_string(), Some("MISSING_BYOK_CREDENTIAL".to_string())),
        "register_workspace: {registered:?}"
    );
    let status: String = sqlx::query_scalar("SELECT status::text FROM workspaces WHERE id = $1")
        .bind(reg)
        .fetch_one(&mut p.service)
        .await
        .described("status")?;
    ensure!(status == "failed", "the enum status is {status} after a failed registration");
    // Its MODEL changed: checked (refused, no credential); written again unchanged: not a change.
    expect_sg(
        sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'gemini-2.5-flash')")
            .bind(reg)
            .execute(&mut p.service)
            .await,
        Code::MissingByokCredential,
    )?;
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'gemini-2.5-pro')")
        .bind(reg)
        .execute(&mut p.service)
        .await
        .described("the same MODEL written again")?;
    p.rows.push(Stored { workspace: Some(reg), key: "MODEL".into(), value: "gemini-2.5-pro".into() });

    // A bound version becomes current: adopt says rotate.
    let bound = random_bytes(32);
    cluster.remember_secret(&b64(&bound));
    let rotated = serde_json::json!({"current_version": 2, "keys": {
        "0": {"format": "plaintext"}, "1": {"key": b64(app_key()), "format": "unbound"}, "2": b64(&bound)}})
    .to_string();
    cluster.write_keyring(&rotated, 0o600);
    let run = adopt(&cluster, &owner, &db).await?;
    expect_stage(
        &run,
        "adopting",
        1,
        &["keyring: version(s) 0 (plaintext), 1 (unbound), 2 (bound, current)", "secretgate rotate"],
    )?;

    // secretgate rotate (the DBA's call) moves every row, plaintext ones included; re-encrypting
    // a MODEL is no change of model, so reg (failed, without its credential) does not stop it.
    let admin_url = cluster.url(&db);
    let run = run_cli(Some(&admin_url), &["rotate"]).await?;
    ensure!(run.code == Some(0), "secretgate rotate:\n{run}");
    let versions: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT encryption_version, count(*) FROM (SELECT encryption_version FROM workspace_secrets
                                                  UNION ALL SELECT encryption_version FROM global_secrets) r
          GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut p.admin)
    .await
    .described("versions after rotate")?;
    ensure!(versions == vec![(2, p.rows.len() as i64)], "after rotate: {versions:?}");
    every_row_reads_back(&mut p.service, &p.rows).await?;
    let states = verify_counts(&mut p.service).await?;
    ensure!(states == vec![("ok".to_string(), p.rows.len() as i64)], "verify after rotate: {states:?}");
    let run = run_cli(Some(&admin_url), &["verify"]).await?;
    ensure!(run.code == Some(0), "secretgate verify after rotate:\n{run}");

    // Ready; then the old versions leave the keyring.
    let run = adopt(&cluster, &owner, &db).await?;
    expect_stage(&run, "ready", 0, &["remove them from the keyring", "0 (plaintext), 1 (unbound)"])?;
    let only_bound = serde_json::json!({"current_version": 2, "keys": {"2": b64(&bound)}}).to_string();
    cluster.write_keyring(&only_bound, 0o600);
    let run = adopt(&cluster, &owner, &db).await?;
    expect_stage(&run, "ready", 0, &["next: none"])?;
    every_row_reads_back(&mut p.service, &p.rows).await?;
    cluster.write_keyring(&adoption_keyring(), 0o600);
    Ok(())
}

async fn an_unadapted_schema_is_reported_blocked(cluster: Arc<Cluster>) -> Result<()> {
    cluster.write_keyring(&adoption_keyring(), 0o600);
    let db = db_name("blocked");
    let (_url, mut admin) = empty_database(&cluster, &db).await?;
    sqlx::raw_sql(
        "CREATE EXTENSION secretgate;
         CREATE TABLE workspaces (id uuid PRIMARY KEY, kind text, status int, runtime text);
         CREATE TABLE workspace_secrets (workspace_id uuid, key text, encrypted_value bytea, encryption_version int);
         CREATE TABLE global_secrets (key text PRIMARY KEY, encrypted_value bytea, encryption_version int);",
    )
    .execute(&mut admin)
    .await
    .described("an unadapted schema")?;
    let run = run_cli(Some(&cluster.url(&db)), &["adopt"]).await?;
    expect_stage(
        &run,
        "blocked",
        1,
        &["attach: blocked by 2 problem(s)", "42804", "\"status\" is integer", "42P10", "(key, workspace_id)"],
    )?;
    let problems: Vec<String> = sqlx::query_scalar(
        "SELECT sqlstate FROM secretgate.attach_check('workspaces', 'workspace_secrets', 'global_secrets')",
    )
    .fetch_all(&mut admin)
    .await
    .described("attach_check")?;
    ensure!(problems == vec!["42804".to_string(), "42P10".to_string()], "attach_check: {problems:?}");
    let refused = sqlx::query("SELECT secretgate.attach_gates('workspaces', 'workspace_secrets', 'global_secrets')")
        .execute(&mut admin)
        .await;
    expect_sqlstate(refused, "42804")?;
    // No extension at all: adopt says what the DBA does first.
    let (url, _bare) = empty_database(&cluster, &db_name("noext")).await?;
    let run = run_cli(Some(&url), &["adopt"]).await?;
    expect_stage(&run, "blocked", 1, &["extension: not installed", "CREATE EXTENSION secretgate"])?;
    Ok(())
}

async fn the_tables_owner_runs_the_migrations(cluster: Arc<Cluster>) -> Result<()> {
    let db = db_name("owner");
    let (_url, mut admin) = empty_database(&cluster, &db).await?;
    let owner = format!("owner_{}", random_hex(3));
    let other = format!("other_{}", random_hex(3));
    // The DBA: the extension, and the maintenance function the migrations call.
    sqlx::raw_sql(&format!(
        "CREATE ROLE {owner} LOGIN; CREATE ROLE {other} LOGIN;
         GRANT CREATE ON DATABASE \"{db}\" TO {owner}; GRANT CREATE ON SCHEMA public TO {owner};
         CREATE EXTENSION secretgate;
         GRANT EXECUTE ON FUNCTION secretgate.rename_secret_key(text, text) TO {owner};"
    ))
    .execute(&mut admin)
    .await
    .described("the DBA's part")?;
    let url = cluster.url_as(&owner, &db);
    let run = run_cli(Some(&url), &["migrate", "run"]).await?;
    ensure!(run.code == Some(0), "secretgate migrate run as the tables' owner:\n{run}");
    let attached: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.attached_tables")
        .fetch_one(&mut admin)
        .await
        .described("attached")?;
    ensure!(attached == 1, "the owner's migrations did not attach the gates");
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&owner)
        .fetch_one(&mut admin)
        .await
        .described("rolsuper")?;
    ensure!(!superuser, "the owner must not be a superuser");
    // Another role may neither detach nor attach.
    let mut conn = PgConnection::connect(&cluster.url_as(&other, &db)).await.context("connect as another role")?;
    expect_sqlstate(sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await, "42501")?;
    expect_sqlstate(
        sqlx::query(
            "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
        )
        .execute(&mut conn)
        .await,
        "42501",
    )?;
    // The owner may, both ways.
    let mut conn = PgConnection::connect(&url).await.context("connect as the owner")?;
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach as the owner")?;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut conn)
    .await
    .described("attach as the owner")?;
    Ok(())
}

/// A platform workspace online with its MODEL, in a migrated database.
async fn concierge_db(cluster: &Cluster, prefix: &str) -> Result<(String, PgConnection, Uuid)> {
    let db = db_name(prefix);
    let (_url, mut admin) = migrated_database(cluster, &db).await?;
    let concierge = Uuid::new_v4();
    let mut tx = admin.begin().await.described("begin")?;
    sqlx::query("INSERT INTO workspaces (id, kind, status, runtime) VALUES ($1, 'platform', 'online', 'claude-code')")
        .bind(concierge)
        .execute(&mut *tx)
        .await
        .described("concierge")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'platform:default')")
        .bind(concierge)
        .execute(&mut *tx)
        .await
        .described("MODEL")?;
    tx.commit().await.described("commit")?;
    Ok((db, admin, concierge))
}

async fn autocommit_set_local_is_not_an_agent(cluster: Arc<Cluster>) -> Result<()> {
    cluster.write_keyring(&adoption_keyring(), 0o600);
    let (_db, mut conn, concierge) = concierge_db(&cluster, "trap").await?;
    let value = cluster.fresh_secret();
    // The trap: outside a transaction block SET LOCAL only warns, and the
    // next statement runs as a non-agent: its write to the concierge passes.
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut conn).await.described("SET LOCAL")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'TRAP_KEY', $2)")
        .bind(concierge)
        .bind(&value)
        .execute(&mut conn)
        .await
        .described("the autocommit write after SET LOCAL (not an agent: allowed)")?;
    let caller: String = sqlx::query_scalar("SELECT current_setting('secretgate.caller')")
        .fetch_one(&mut conn)
        .await
        .described("caller")?;
    ensure!(caller == "unset", "SET LOCAL in autocommit left secretgate.caller = {caller}");
    // Inside a transaction the same setting makes an agent.
    let mut tx = conn.begin().await.described("begin")?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("SET LOCAL")?;
    let refused = sqlx::query("SELECT secretgate.set_secret($1, 'TRAP_KEY', $2)")
        .bind(concierge)
        .bind(&value)
        .execute(&mut *tx)
        .await;
    expect_sg(refused, Code::ConciergeSelfWriteBlocked)?;
    Ok(())
}

async fn an_agent_login_role_needs_no_setting(cluster: Arc<Cluster>) -> Result<()> {
    cluster.write_keyring(&adoption_keyring(), 0o600);
    let (db, mut admin, concierge) = concierge_db(&cluster, "pool").await?;
    let agent = format!("agent_pool_{}", random_hex(3));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {agent} LOGIN IN ROLE secretgate_agent;
         GRANT SELECT, INSERT, UPDATE, DELETE ON workspaces, workspace_secrets, global_secrets TO {agent};"
    ))
    .execute(&mut admin)
    .await
    .described("the agent-facing pool's role")?;
    let mut conn = PgConnection::connect(&cluster.url_as(&agent, &db)).await.context("connect as the agent role")?;
    let value = cluster.fresh_secret();
    // Autocommit, no setting: still an agent.
    let refused = sqlx::query("SELECT secretgate.set_secret($1, 'POOL_KEY', $2)")
        .bind(concierge)
        .bind(&value)
        .execute(&mut conn)
        .await;
    expect_sg(refused, Code::ConciergeSelfWriteBlocked)?;
    // Saying otherwise does not help.
    sqlx::query("SET secretgate.caller = 'operator'").execute(&mut conn).await.described("SET")?;
    let refused = sqlx::query("DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(concierge)
        .execute(&mut conn)
        .await;
    expect_sg(refused, Code::ConciergeSelfWriteBlocked)?;
    // adopt names it.
    let run = run_cli(Some(&cluster.url(&db)), &["adopt"]).await?;
    ensure!(run.stdout.contains(&format!("{agent} (login)")), "secretgate adopt should list the agent role:\n{run}");
    Ok(())
}

/// The repository's root (the docs and target/ live there).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first ```lang snippet of docs/adopting.md.
fn adopting_snippet(lang: &str) -> Result<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/adopting.md")).context("read docs/adopting.md")?;
    doc.split(&format!("```{lang}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("docs/adopting.md has no ```{lang} snippet"))
}

/// What a client snippet runs against: a database with a concierge and an
/// ordinary workspace, and a folder for the script. Returns (database,
/// concierge, ordinary workspace, folder).
async fn snippet_world(cluster: &Cluster, prefix: &str) -> Result<(String, Uuid, Uuid, std::path::PathBuf)> {
    cluster.write_keyring(&adoption_keyring(), 0o600);
    let (db, _admin, concierge) = concierge_db(cluster, prefix).await?;
    let ordinary = Uuid::new_v4();
    let mut admin = PgConnection::connect(&cluster.url(&db)).await.context("connect")?;
    sqlx::query(
        "INSERT INTO workspaces (id, kind, status, runtime) VALUES ($1, 'workspace', 'provisioning', 'claude-code')",
    )
    .bind(ordinary)
    .execute(&mut admin)
    .await
    .described("ordinary workspace")?;
    let dir = cluster.dir().join(format!("snippet-{}", random_hex(3)));
    std::fs::create_dir_all(&dir)?;
    Ok((db, concierge, ordinary, dir))
}

/// The Python (psycopg) snippet of docs/adopting.md, run against this
/// cluster with the virtualenv scripts/setup.sh makes: it maps SQLSTATEs to
/// HTTP answers, and must give 403 for a self-write and 200 for a plain write.
async fn the_python_snippet_in_docs_adopting_runs(cluster: Arc<Cluster>) -> Result<()> {
    let snippet = adopting_snippet("python")?;
    let python = std::env::var("SECRETGATE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/py-venv/bin/python"));
    if !python.exists() {
        bail!(
            "{} not found: scripts/setup.sh makes the virtualenv with psycopg (or set SECRETGATE_PYTHON)",
            python.display()
        );
    }
    let (db, concierge, ordinary, dir) = snippet_world(&cluster, "snippet").await?;
    let script = dir.join("snippet.py");
    let value = cluster.fresh_secret();
    let harness = format!(
        r#"{snippet}


import os
conninfo = os.environ["DATABASE_URL"]
value = os.environ["SNIPPET_VALUE"]
with psycopg.connect(conninfo, autocommit=True) as conn:
    denied = set_workspace_secret(conn, "{concierge}", "SNIPPET_KEY", value, agent=True)
    allowed = set_workspace_secret(conn, "{ordinary}", "SNIPPET_KEY", value, agent=True)
print(denied[0], denied[1].get("error"), allowed[0])
"#
    );
    std::fs::write(&script, harness)?;
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("DATABASE_URL", cluster.url(&db))
        .env("SNIPPET_VALUE", &value)
        .output()
        .await
        .with_context(|| format!("run {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "the snippet failed:\n{stdout}\n{stderr}");
    ensure!(
        stdout.trim() == "403 CONCIERGE_SELF_WRITE_BLOCKED 200",
        "the snippet answered {:?} (expected 403 CONCIERGE_SELF_WRITE_BLOCKED, then 200)\n{stderr}",
        stdout.trim()
    );
    ensure!(!stdout.contains(&value) && !stderr.contains(&value), "the snippet printed the value");
    Ok(())
}

/// The Node.js (`pg`) snippet of docs/adopting.md, run against this cluster
/// with the package scripts/setup.sh installs into target/node-pg, inside a
/// function giving it what it names (`client`, `workspaceId`, `key`, `value`,
/// an Express-like `res`): 403 for a self-write, 200 for a plain write.
async fn the_node_snippet_in_docs_adopting_runs(cluster: Arc<Cluster>) -> Result<()> {
    let snippet = adopting_snippet("js")?;
    let modules = std::env::var("SECRETGATE_NODE_MODULES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/node-pg/node_modules"));
    if !modules.join("pg").exists() {
        bail!("{} has no pg: scripts/setup.sh installs it (or set SECRETGATE_NODE_MODULES)", modules.display());
    }
    let (db, concierge, ordinary, dir) = snippet_world(&cluster, "nodesnip").await?;
    let script = dir.join("snippet.js");
    let value = cluster.fresh_secret();
    let harness = format!(
        r#"const {{ Client }} = require('pg');
const res = {{ status: (code) => ({{ json: (body) => [code, body.error] }}) }};

async function setWorkspaceSecret(client, workspaceId, key, value) {{
{snippet}
  return [200, null];
}}

(async () => {{
  const client = new Client({{ connectionString: process.env.DATABASE_URL }});
  await client.connect();
  const value = process.env.SNIPPET_VALUE;
  const denied = await setWorkspaceSecret(client, '{concierge}', 'SNIPPET_KEY', value);
  const allowed = await setWorkspaceSecret(client, '{ordinary}', 'SNIPPET_KEY', value);
  console.log(denied[0], denied[1], allowed[0]);
  await client.end();
}})().catch((err) => {{
  console.error('the snippet failed:', err.code);
  process.exit(1);
}});
"#
    );
    std::fs::write(&script, harness)?;
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .env("DATABASE_URL", cluster.url(&db))
        .env("SNIPPET_VALUE", &value)
        .output()
        .await
        .context("run node")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!stdout.contains(&value) && !stderr.contains(&value), "the snippet printed the value");
    ensure!(out.status.success(), "the snippet failed:\n{stdout}\n{stderr}");
    ensure!(
        stdout.trim() == "403 CONCIERGE_SELF_WRITE_BLOCKED 200",
        "the snippet answered {:?} (expected 403 CONCIERGE_SELF_WRITE_BLOCKED, then 200)\n{stderr}",
        stdout.trim()
    );
    Ok(())
}
