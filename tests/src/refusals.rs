//! One refusal per gate, for the walks that install secretgate some other way
//! than the harness's cluster (the packages, the container image).

use crate::errors::expect_sg;
use crate::keys::random_hex;
use anyhow::{ensure, Result};
use secretgate_core::Code;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use uuid::Uuid;

/// One refusal per gate, each with its SQLSTATE, in a migrated database
/// holding the ordinary workspace `ws`: SG101, SG105, SG107, SG102 at commit
/// and SG103; then `verify_secrets` lists nothing.
/// The installed-system walks (packages, the container image) run it.
pub async fn one_refusal_per_gate(conn: &mut PgConnection, ws: Uuid) -> Result<()> {
    let concierge = Uuid::new_v4();
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO workspaces (id, kind, status, runtime, model) VALUES ($1, 'platform', 'provisioning', 'claude-code', 'platform:default')")
        .bind(concierge)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', $2)")
        .bind(concierge)
        .bind("anthropic:claude-opus-4-7")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'LLM_PROVIDER', $2)")
        .bind(concierge)
        .bind(random_hex(8))
        .execute(&mut *tx)
        .await;
    expect_sg(r, Code::ConciergeSelfWriteBlocked)?;
    tx.rollback().await?;

    let r = sqlx::query("SELECT secretgate.set_secret($1, 'MODEL_PROVIDER', $2)")
        .bind(ws)
        .bind(random_hex(8))
        .execute(&mut *conn)
        .await;
    expect_sg(r, Code::ForbiddenSecretKey)?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'anthropic')").bind(ws).execute(&mut *conn).await;
    expect_sg(r, Code::InvalidModelId)?;

    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(concierge)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE workspaces SET status = 'online' WHERE id = $1").bind(concierge).execute(&mut *tx).await?;
    expect_sg(tx.commit().await, Code::PlatformAgentIdentityGate)?;

    let r = sqlx::query(
        "INSERT INTO workspaces (id, kind, status, runtime, model) VALUES ($1, 'workspace', 'provisioning', 'claude-code', 'anthropic:claude-opus-4-7')",
    )
    .bind(Uuid::new_v4())
    .execute(&mut *conn)
    .await;
    // No ANTHROPIC_API_KEY for a new workspace, at its scope or globally (only OPENAI_API_KEY is global).
    expect_sg(r, Code::MissingByokCredential)?;
    let rows =
        sqlx::query("SELECT state FROM secretgate.verify_secrets() WHERE state <> 'ok'").fetch_all(&mut *conn).await?;
    ensure!(rows.is_empty(), "verify_secrets lists {} row(s) that do not decrypt", rows.len());
    Ok(())
}
