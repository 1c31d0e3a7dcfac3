//! Black-box tests of provider-aware BYOK (CONTRACT §5–§6, DOMAIN incident 4):
//! a bring-your-own-key workspace needs a usable credential that *its*
//! provider accepts, at create time and when going online; a credential known
//! dead is SG104 until rotated; a transient verdict passes; verdicts are kept
//! per provider; `byok_credentials()` says what to probe, wherever the
//! attached tables live. Each trial has its own database; values are always
//! bind parameters.

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::{Column, Connection, Row};
use std::sync::Arc;
use uuid::Uuid;

const ANTHROPIC_MODEL: &str = "anthropic:claude-opus-4-7";

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("byok"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        no_credential_is_sg103,
        another_providers_key_does_not_count,
        own_key_in_the_same_transaction_is_allowed,
        global_key_is_allowed,
        empty_value_is_sg103,
        corrupt_credential_fails_closed,
        exempt_workspaces_need_no_key,
        switching_to_a_byok_model_needs_its_key,
        dead_verdict_is_sg104_until_rotated,
        transient_verdict_is_allowed_and_logged,
        record_liveness_classifies,
        deleting_a_credential_is_allowed_and_register_reports_it,
        byok_credentials_on_tables_in_another_schema,
        liveness_is_kept_per_provider,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

async fn db(cluster: &Cluster, prefix: &str) -> Result<PgConnection> {
    Ok(migrated_database(cluster, &db_name(prefix)).await?.1)
}

/// Creates a workspace and its credentials in one transaction; the BYOK gate
/// answers at COMMIT.
async fn create(
    conn: &mut PgConnection,
    kind: &str,
    model: Option<&str>,
    credentials: &[(&str, &str)],
) -> std::result::Result<Uuid, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let id: Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind, model) VALUES ($1, $2) RETURNING id")
        .bind(kind)
        .bind(model)
        .fetch_one(&mut *tx)
        .await?;
    for (key, value) in credentials {
        sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
            .bind(id)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id)
}

async fn workspace_count(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM public.workspaces").fetch_one(conn).await.described("count workspaces")
}

async fn secret_count(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM public.workspace_secrets").fetch_one(conn).await.described("count secrets")
}

/// Expects a create to be refused at commit with `code`, leaving nothing behind.
async fn refused_create(
    conn: &mut PgConnection,
    code: Code,
    model: &str,
    credentials: &[(&str, &str)],
) -> Result<DbError> {
    let (workspaces, secrets) = (workspace_count(conn).await?, secret_count(conn).await?);
    let e = expect_sg(create(conn, "workspace", Some(model), credentials).await, code)?;
    ensure!(workspace_count(conn).await? == workspaces, "a refused create left a workspace");
    ensure!(secret_count(conn).await? == secrets, "a refused create left a secret");
    Ok(e)
}

async fn set_status(conn: &mut PgConnection, id: Uuid, status: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("UPDATE public.workspaces SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn status(conn: &mut PgConnection, id: Uuid) -> Result<String> {
    sqlx::query_scalar("SELECT status FROM public.workspaces WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .described("status")
}

async fn record(conn: &mut PgConnection, id: Option<Uuid>, key: &str, http: i32) -> Result<String> {
    sqlx::query_scalar("SELECT secretgate.record_liveness($1, $2, $3)")
        .bind(id)
        .bind(key)
        .bind(http)
        .fetch_one(conn)
        .await
        .described("record_liveness")
}

async fn no_credential_is_sg103(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_none").await?;
    let e = refused_create(&mut conn, Code::MissingByokCredential, ANTHROPIC_MODEL, &[]).await?;
    ensure!(e.field("provider").as_deref() == Some("anthropic"), "DETAIL names the provider: {e}");
    Ok(())
}

async fn another_providers_key_does_not_count(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_other").await?;
    let openai = cluster.fresh_secret();
    let e =
        refused_create(&mut conn, Code::MissingByokCredential, ANTHROPIC_MODEL, &[("OPENAI_API_KEY", &openai)]).await?;
    e.assert_no_leak(&[&openai])?;
    // And the other way round: an Anthropic key does not satisfy an OpenAI model.
    let anthropic = cluster.fresh_secret();
    refused_create(&mut conn, Code::MissingByokCredential, "gpt-5", &[("ANTHROPIC_API_KEY", &anthropic)]).await?;
    Ok(())
}

async fn own_key_in_the_same_transaction_is_allowed(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_own").await?;
    let key = cluster.fresh_secret();
    let id = create(&mut conn, "workspace", Some(ANTHROPIC_MODEL), &[("ANTHROPIC_API_KEY", &key)])
        .await
        .described("create")?;
    // The Claude CLI's OAuth token is an Anthropic credential too.
    let token = cluster.fresh_secret();
    create(&mut conn, "workspace", Some("claude-sonnet-4"), &[("CLAUDE_CODE_OAUTH_TOKEN", &token)])
        .await
        .described("oauth")?;
    let present: (bool, bool) = sqlx::query_as(
        "SELECT secretgate.byok_credential_present($1, 'anthropic'), secretgate.byok_credential_present($1, 'openai')",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .described("byok_credential_present")?;
    ensure!(present == (true, false), "presence is per provider: {present:?}");
    sqlx::query("SELECT secretgate.check_byok($1)").bind(id).execute(&mut conn).await.described("check_byok")?;
    set_status(&mut conn, id, "online").await.described("online")?;
    Ok(())
}

async fn global_key_is_allowed(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_global").await?;
    let key = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)")
        .bind(&key)
        .execute(&mut conn)
        .await
        .described("global")?;
    let id = create(&mut conn, "workspace", Some("gpt-5"), &[]).await.described("create with a global key")?;
    set_status(&mut conn, id, "online").await.described("online")?;
    Ok(())
}

async fn empty_value_is_sg103(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_empty").await?;
    refused_create(&mut conn, Code::MissingByokCredential, ANTHROPIC_MODEL, &[("ANTHROPIC_API_KEY", "")]).await?;
    // A workspace's own empty value overrides the global one: still unusable.
    let key = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_global_secret('ANTHROPIC_API_KEY', $1)")
        .bind(&key)
        .execute(&mut conn)
        .await
        .described("g")?;
    refused_create(&mut conn, Code::MissingByokCredential, ANTHROPIC_MODEL, &[("ANTHROPIC_API_KEY", "")]).await?;
    Ok(())
}

async fn corrupt_credential_fails_closed(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_corrupt").await?;
    let key = cluster.fresh_secret();
    let id = create(&mut conn, "workspace", None, &[("ANTHROPIC_API_KEY", &key)]).await.described("create")?;
    sqlx::query(
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1) \
         WHERE workspace_id = $1",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .described("corrupt")?;
    // Never "absent", never "present": the read error itself.
    let e = expect_sg(
        sqlx::query("SELECT secretgate.byok_credential_present($1, 'anthropic')").bind(id).execute(&mut conn).await,
        Code::DecryptFailed,
    )?;
    e.assert_no_leak(&[&key])?;
    let r = sqlx::query("UPDATE public.workspaces SET model = $2 WHERE id = $1")
        .bind(id)
        .bind(ANTHROPIC_MODEL)
        .execute(&mut conn)
        .await;
    let err = r.err().context("switching to the corrupt credential's provider succeeded")?;
    let state = sqlstate(&err);
    ensure!(matches!(state.as_deref(), Some("SG001" | "SG103")), "want SG001 or SG103, got {}", describe(&err));
    let model: Option<String> = sqlx::query_scalar("SELECT model FROM public.workspaces WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .described("model")?;
    ensure!(model.is_none(), "the refused update changed the model");
    Ok(())
}

async fn exempt_workspaces_need_no_key(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_exempt").await?;
    create(&mut conn, "workspace", Some("platform:default"), &[]).await.described("platform model")?;
    create(&mut conn, "workspace", Some("mystery-model-9"), &[]).await.described("underivable model")?;
    create(&mut conn, "workspace", None, &[]).await.described("no model")?;
    let id = create(&mut conn, "external", Some(ANTHROPIC_MODEL), &[]).await.described("external")?;
    set_status(&mut conn, id, "online").await.described("external online")?;
    Ok(())
}

async fn switching_to_a_byok_model_needs_its_key(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_switch").await?;
    let id = create(&mut conn, "workspace", Some("platform:default"), &[]).await.described("create")?;
    let r = sqlx::query("UPDATE public.workspaces SET model = 'gpt-5' WHERE id = $1").bind(id).execute(&mut conn).await;
    expect_sg(r, Code::MissingByokCredential)?;
    let model: String = sqlx::query_scalar("SELECT model FROM public.workspaces WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .described("m")?;
    ensure!(model == "platform:default", "model changed despite SG103");
    // Leaving external for an ordinary kind is a transition too.
    let ext = create(&mut conn, "external", Some("gpt-5"), &[]).await.described("external")?;
    let r =
        sqlx::query("UPDATE public.workspaces SET kind = 'workspace' WHERE id = $1").bind(ext).execute(&mut conn).await;
    expect_sg(r, Code::MissingByokCredential)?;
    Ok(())
}

async fn dead_verdict_is_sg104_until_rotated(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_dead").await?;
    let key = cluster.fresh_secret();
    let id = create(&mut conn, "workspace", Some(ANTHROPIC_MODEL), &[("ANTHROPIC_API_KEY", &key)])
        .await
        .described("create")?;
    ensure!(record(&mut conn, Some(id), "ANTHROPIC_API_KEY", 401).await? == "dead", "401 is dead");
    let e = expect_sg(set_status(&mut conn, id, "online").await, Code::ByokCredentialInvalid)?;
    e.assert_no_leak(&[&key])?;
    ensure!(status(&mut conn, id).await? == "provisioning", "status changed despite SG104");
    expect_sg(
        sqlx::query("SELECT secretgate.check_byok($1)").bind(id).execute(&mut conn).await,
        Code::ByokCredentialInvalid,
    )?;
    let (st, code): (String, Option<String>) = sqlx::query_as("SELECT * FROM secretgate.register_workspace($1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .described("register")?;
    ensure!(st == "failed" && code.as_deref() == Some("BYOK_CREDENTIAL_INVALID"), "register: {st} {code:?}");
    // A second, live credential of the same provider is enough.
    let token = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'CLAUDE_CODE_OAUTH_TOKEN', $2)")
        .bind(id)
        .bind(&token)
        .execute(&mut conn)
        .await
        .described("t")?;
    sqlx::query("SELECT secretgate.check_byok($1)")
        .bind(id)
        .execute(&mut conn)
        .await
        .described("check with a second key")?;
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'CLAUDE_CODE_OAUTH_TOKEN'")
        .bind(id)
        .execute(&mut conn)
        .await
        .described("delete token")?;
    // Rotating the dead credential (a new ciphertext) starts clean.
    let rotated = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(id)
        .bind(&rotated)
        .execute(&mut conn)
        .await
        .described("rotate")?;
    set_status(&mut conn, id, "online").await.described("online after rotation")?;
    Ok(())
}

async fn transient_verdict_is_allowed_and_logged(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_transient").await?;
    let key = cluster.fresh_secret();
    let id = create(&mut conn, "workspace", Some("gpt-5"), &[("OPENAI_API_KEY", &key)]).await.described("create")?;
    ensure!(record(&mut conn, Some(id), "OPENAI_API_KEY", 503).await? == "transient", "503 is transient");
    set_status(&mut conn, id, "online").await.described("online with a transient verdict")?;
    let log = cluster.log_contents();
    ensure!(
        log.lines().any(|l| l.contains("WARNING") && l.contains("transient") && l.contains(&id.to_string())),
        "a transient verdict is logged loudly (WARNING naming the workspace)"
    );
    Ok(())
}

async fn record_liveness_classifies(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_classify").await?;
    let key = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)")
        .bind(&key)
        .execute(&mut conn)
        .await
        .described("g")?;
    for (http, want) in [
        (401, "dead"),
        (403, "dead"),
        (0, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (200, "ok"),
        (404, "ok"),
    ] {
        let got = record(&mut conn, None, "OPENAI_API_KEY", http).await?;
        ensure!(got == want, "HTTP {http}: {got}, want {want}");
        let stored: (String, i32) = sqlx::query_as(
            "SELECT verdict, http_status FROM secretgate.liveness WHERE workspace_id IS NULL AND key = 'OPENAI_API_KEY'",
        )
        .fetch_one(&mut conn)
        .await
        .described("stored verdict")?;
        ensure!(stored == (want.to_string(), http), "stored {stored:?}");
    }
    let missing = sqlx::query("SELECT secretgate.record_liveness(NULL, 'NO_SUCH_KEY', 401)").execute(&mut conn).await;
    expect_sqlstate(missing, "P0002").context("a verdict for a credential that does not exist")?;
    Ok(())
}

async fn deleting_a_credential_is_allowed_and_register_reports_it(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_delete").await?;
    let key = cluster.fresh_secret();
    let id = create(&mut conn, "workspace", Some(ANTHROPIC_MODEL), &[("ANTHROPIC_API_KEY", &key)])
        .await
        .described("create")?;
    // A leaked key must be revocable at once, even by an agent.
    let mut tx = conn.begin().await.described("begin")?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("caller")?;
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .described("delete")?;
    tx.commit().await.described("commit delete")?;
    // The gate catches it at the next transition.
    expect_sg(set_status(&mut conn, id, "online").await, Code::MissingByokCredential)?;
    let (st, code): (String, Option<String>) = sqlx::query_as("SELECT * FROM secretgate.register_workspace($1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .described("register")?;
    ensure!(st == "failed" && code.as_deref() == Some("MISSING_BYOK_CREDENTIAL"), "register: {st} {code:?}");
    ensure!(status(&mut conn, id).await? == "failed", "the failure commits");
    Ok(())
}

// ---------------------------------------------------------------------------
// byok_credentials() and tables in another schema (0.4.0)

type CredentialRow = (Uuid, String, String, String);

/// `SELECT * FROM secretgate.byok_credentials()`, sorted; checks the columns
/// are exactly (workspace_id, provider, key, scope) and that no field holds
/// one of `values`.
async fn byok_credentials(conn: &mut PgConnection, values: &[&str]) -> Result<Vec<CredentialRow>> {
    let rows = sqlx::query("SELECT * FROM secretgate.byok_credentials()")
        .fetch_all(&mut *conn)
        .await
        .described("byok_credentials()")?;
    let mut out = Vec::new();
    for row in &rows {
        let columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
        ensure!(columns == ["workspace_id", "provider", "key", "scope"], "byok_credentials() columns: {columns:?}");
        let r: CredentialRow = (
            row.try_get("workspace_id").context("workspace_id")?,
            row.try_get("provider").context("provider")?,
            row.try_get("key").context("key")?,
            row.try_get("scope").context("scope")?,
        );
        for (i, v) in values.iter().enumerate() {
            if [&r.1, &r.2, &r.3].iter().any(|f| f.contains(v)) {
                bail!("byok_credentials() returns stored value #{i} in a column");
            }
        }
        out.push(r);
    }
    out.sort();
    Ok(out)
}

/// The contract's tables in schema `app`, attached: byok_credentials() finds
/// a workspace-scope key, then a global one, and never an external or a
/// platform-routed workspace.
async fn byok_credentials_on_tables_in_another_schema(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = empty_database(&cluster, &db_name("b_schema")).await?;
    sqlx::raw_sql(
        "CREATE SCHEMA app;
         CREATE TABLE app.ws (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL,
                              status text NOT NULL DEFAULT 'provisioning', runtime text, model text);
         CREATE TABLE app.sec (workspace_id uuid NOT NULL REFERENCES app.ws (id) ON DELETE CASCADE, key text NOT NULL,
                               encrypted_value bytea NOT NULL, encryption_version int NOT NULL,
                               PRIMARY KEY (workspace_id, key));
         CREATE TABLE app.glob (key text PRIMARY KEY, encrypted_value bytea NOT NULL, encryption_version int NOT NULL);
         CREATE EXTENSION secretgate;
         SELECT secretgate.attach_gates('app.ws', 'app.sec', 'app.glob');",
    )
    .execute(&mut conn)
    .await
    .described("tables in schema app, attached")?;
    let own = cluster.fresh_secret();
    let global = cluster.fresh_secret();
    let values = [own.as_str(), global.as_str()];

    // A BYOK workspace with its own key.
    let mut tx = conn.begin().await.described("BEGIN")?;
    let w1: Uuid = sqlx::query_scalar("INSERT INTO app.ws (kind, model) VALUES ('workspace', $1) RETURNING id")
        .bind(ANTHROPIC_MODEL)
        .fetch_one(&mut *tx)
        .await
        .described("a BYOK workspace")?;
    execute_with(
        &mut tx,
        "SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)",
        &[Arg::Id(w1), Arg::Text(own.clone())],
    )
    .await
    .described("its own key")?;
    tx.commit().await.described("COMMIT")?;
    let got = byok_credentials(&mut conn, &values).await?;
    let want = vec![(w1, "anthropic".to_string(), "ANTHROPIC_API_KEY".to_string(), "workspace".to_string())];
    ensure!(got == want, "one BYOK workspace with its own key: {got:?}, want {want:?}");

    // The key only in the global table; an external and a platform-routed workspace.
    execute_with(
        &mut conn,
        "SELECT secretgate.set_global_secret('ANTHROPIC_API_KEY', $1)",
        &[Arg::Text(global.clone())],
    )
    .await
    .described("the global key")?;
    let w2: Uuid = sqlx::query_scalar("INSERT INTO app.ws (kind, model) VALUES ('workspace', $1) RETURNING id")
        .bind(ANTHROPIC_MODEL)
        .fetch_one(&mut conn)
        .await
        .described("a BYOK workspace on the global key")?;
    let _external: Uuid = sqlx::query_scalar("INSERT INTO app.ws (kind, model) VALUES ('external', $1) RETURNING id")
        .bind(ANTHROPIC_MODEL)
        .fetch_one(&mut conn)
        .await
        .described("an external workspace")?;
    let _platform: Uuid =
        sqlx::query_scalar("INSERT INTO app.ws (kind, model) VALUES ('workspace', 'platform:bb-model') RETURNING id")
            .fetch_one(&mut conn)
            .await
            .described("a platform-routed workspace")?;
    let got = byok_credentials(&mut conn, &values).await?;
    let mut want = vec![
        (w1, "anthropic".to_string(), "ANTHROPIC_API_KEY".to_string(), "workspace".to_string()),
        (w2, "anthropic".to_string(), "ANTHROPIC_API_KEY".to_string(), "global".to_string()),
    ];
    want.sort();
    ensure!(got == want, "with a global key, an external and a platform-routed workspace: {got:?}, want {want:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Liveness per provider (0.4.0)

async fn record_for(conn: &mut PgConnection, ws: Uuid, http: i32, provider: Option<&str>) -> Result<String> {
    sqlx::query_scalar("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', $2, $3)")
        .bind(ws)
        .bind(http)
        .bind(provider)
        .fetch_one(conn)
        .await
        .described(&format!("record_liveness(.., {http}, {provider:?})"))
}

async fn verdicts(conn: &mut PgConnection, ws: Uuid) -> Result<Vec<(Option<String>, String)>> {
    sqlx::query_as(
        "SELECT provider, verdict FROM secretgate.liveness WHERE workspace_id = $1 AND key = 'ANTHROPIC_API_KEY' ORDER BY 1",
    )
    .bind(ws)
    .fetch_all(conn)
    .await
    .described("the stored verdicts")
}

/// Two providers accept the same key name; one stored credential has a
/// verdict per provider, and the BYOK gate asks the one the route names.
async fn liveness_is_kept_per_provider(cluster: Arc<Cluster>) -> Result<()> {
    let mut conn = db(&cluster, "b_perprov").await?;
    sqlx::raw_sql(
        "INSERT INTO secretgate.providers (name, auth_env) VALUES ('other', '{ANTHROPIC_API_KEY}');
         INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('other:', 'other');",
    )
    .execute(&mut conn)
    .await
    .described("a second provider of ANTHROPIC_API_KEY")?;
    let resolved: Option<String> =
        sqlx::query_scalar("SELECT secretgate.resolve_provider('bb-runtime', 'other:bb-model')")
            .fetch_one(&mut conn)
            .await
            .described("resolve_provider")?;
    ensure!(resolved.as_deref() == Some("other"), "the route to 'other': {resolved:?}");

    let key = cluster.fresh_secret();
    let ws = create(&mut conn, "workspace", Some(ANTHROPIC_MODEL), &[("ANTHROPIC_API_KEY", &key)])
        .await
        .described("a workspace routed to anthropic with its key")?;
    ensure!(record_for(&mut conn, ws, 401, Some("anthropic")).await? == "dead", "401 is dead");
    ensure!(record_for(&mut conn, ws, 200, Some("other")).await? == "ok", "200 is ok");
    let want = vec![(Some("anthropic".to_string()), "dead".to_string()), (Some("other".to_string()), "ok".to_string())];
    let got = verdicts(&mut conn, ws).await?;
    ensure!(got == want, "one credential, two providers: {got:?}, want {want:?}");

    // Routed to anthropic: its only credential is dead for anthropic.
    let e = expect_sg(set_status(&mut conn, ws, "online").await, Code::ByokCredentialInvalid)
        .context("online, routed to anthropic")?;
    e.assert_no_leak(&[&key])?;
    expect_sg(
        sqlx::query("SELECT secretgate.check_byok($1)").bind(ws).execute(&mut conn).await,
        Code::ByokCredentialInvalid,
    )
    .context("check_byok, routed to anthropic")?;
    // Routed to other: the same credential is ok for it.
    sqlx::query("UPDATE public.workspaces SET model = 'other:bb-model', status = 'online' WHERE id = $1")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("online, routed to other")?;
    sqlx::query("SELECT secretgate.check_byok($1)")
        .bind(ws)
        .execute(&mut conn)
        .await
        .described("check_byok, routed to other")?;
    ensure!(status(&mut conn, ws).await? == "online", "routed to other, the workspace is online");
    // And back to anthropic: refused again (a model change re-runs the gate).
    let r = sqlx::query("UPDATE public.workspaces SET model = $2 WHERE id = $1")
        .bind(ws)
        .bind(ANTHROPIC_MODEL)
        .execute(&mut conn)
        .await;
    expect_sg(r, Code::ByokCredentialInvalid).context("routed back to anthropic")?;
    ensure!(verdicts(&mut conn, ws).await? == want, "the verdicts are unchanged");

    // A NULL provider means the workspace's resolved provider.
    let key2 = cluster.fresh_secret();
    let ws2 = create(&mut conn, "workspace", Some("other:bb-model"), &[("ANTHROPIC_API_KEY", &key2)])
        .await
        .described("a workspace routed to other with its key")?;
    ensure!(record_for(&mut conn, ws2, 403, None).await? == "dead", "403 is dead");
    let got = verdicts(&mut conn, ws2).await?;
    ensure!(
        got == vec![(Some("other".to_string()), "dead".to_string())],
        "a NULL provider is the workspace's resolved one (other): {got:?}"
    );
    let e = expect_sg(set_status(&mut conn, ws2, "online").await, Code::ByokCredentialInvalid)
        .context("online, routed to other, dead for other")?;
    e.assert_no_leak(&[&key2])?;
    ensure!(record_for(&mut conn, ws, 200, None).await? == "ok", "200 is ok");
    let got = verdicts(&mut conn, ws).await?;
    ensure!(
        got == vec![(Some("anthropic".to_string()), "dead".to_string()), (Some("other".to_string()), "ok".to_string())],
        "a NULL provider for a workspace routed to other records for other: {got:?}"
    );
    Ok(())
}
