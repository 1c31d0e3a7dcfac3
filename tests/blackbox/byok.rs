//! Black-box tests of provider-aware BYOK (CONTRACT §5–§6, DOMAIN incident 4):
//! a bring-your-own-key workspace needs a usable credential that *its*
//! provider accepts, at create time and when going online; a credential known
//! dead is SG104 until rotated; a transient verdict passes. Each trial has
//! its own database; values are always bind parameters.

use anyhow::{ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use uuid::Uuid;

const ANTHROPIC_MODEL: &str = "anthropic:claude-opus-4-7";

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("byok"));
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
