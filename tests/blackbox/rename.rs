//! Black-box tests of the MODEL_PROVIDER → MODEL rename (DOMAIN incident 5,
//! CONTRACT §5 `rename_secret_key`), through the deploy path: the rename
//! migration is reverted (a no-op on data), legacy rows are planted with the
//! gates detached, and `secretgate migrate run` applies the rename again.

use anyhow::{ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("rename"));
    let trials = trials![&cluster;
        legacy_rows_become_readable_model_rows,
        "a_corrupt_legacy_row_fails_the_migration_with_nothing_changed" => a_corrupt_legacy_row_fails_the_migration,
        a_provider_slug_is_not_renamed_into_model,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

/// A migrated database with the rename migration reverted, ready for legacy rows.
async fn legacy_database(cluster: &Cluster, prefix: &str) -> Result<(String, PgConnection)> {
    let url = cluster.create_database(&db_name(prefix));
    let run = run_cli(Some(&url), &["migrate", "run"]).await?;
    ensure!(run.code == Some(0), "migrate run: {run}");
    let revert = run_cli(Some(&url), &["migrate", "revert"]).await?;
    ensure!(revert.code == Some(0), "revert the rename: {revert}");
    let conn = PgConnection::connect(&url).await.context("connect")?;
    Ok((url, conn))
}

async fn workspace(conn: &mut PgConnection) -> Result<Uuid> {
    sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('platform') RETURNING id")
        .fetch_one(conn)
        .await
        .described("ws")
}

/// Legacy rows can only exist from before the gates: plant them detached.
async fn plant(conn: &mut PgConnection, rows: &[(Option<Uuid>, &str, &str)]) -> Result<()> {
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut *conn).await.described("detach")?;
    for (ws, key, value) in rows {
        let sql = match ws {
            Some(_) => {
                "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) \
                        VALUES ($1, $2, secretgate.encrypt($3, $1, $2), secretgate.current_key_version())"
            }
            None => {
                "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version) \
                     SELECT $2, secretgate.encrypt($3, $1, $2), secretgate.current_key_version()"
            }
        };
        sqlx::query(sql).bind(ws).bind(key).bind(value).execute(&mut *conn).await.described("plant")?;
    }
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut *conn)
    .await
    .described("attach")?;
    Ok(())
}

/// Every stored row: (workspace or nil for global, key) → (version, ciphertext).
async fn snapshot(conn: &mut PgConnection) -> Result<BTreeMap<(Uuid, String), (i32, Vec<u8>)>> {
    let rows: Vec<(Uuid, String, i32, Vec<u8>)> = sqlx::query_as(
        "SELECT workspace_id, key, encryption_version, encrypted_value FROM public.workspace_secrets \
         UNION ALL SELECT '00000000-0000-0000-0000-000000000000', key, encryption_version, encrypted_value FROM public.global_secrets",
    )
    .fetch_all(conn)
    .await
    .described("snapshot")?;
    Ok(rows.into_iter().map(|(w, k, v, b)| ((w, k), (v, b))).collect())
}

async fn read(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)")
        .bind(ws)
        .bind(key)
        .fetch_one(conn)
        .await
        .described("read")
}

async fn legacy_rows_become_readable_model_rows(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut conn) = legacy_database(&cluster, "r_ok").await?;
    let (a, b) = (workspace(&mut conn).await?, workspace(&mut conn).await?);
    let (legacy_a, legacy_b, model_b, global) = (
        format!("anthropic:claude-opus-4-7-{}", random_hex(4)),
        format!("openai:gpt-5-{}", random_hex(4)),
        format!("anthropic:claude-sonnet-4-{}", random_hex(4)),
        format!("openai:gpt-5-mini-{}", random_hex(4)),
    );
    for v in [&legacy_a, &legacy_b, &model_b, &global] {
        cluster.remember_secret(v);
    }
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', $2)")
        .bind(b)
        .bind(&model_b)
        .execute(&mut conn)
        .await
        .described("b MODEL")?;
    plant(
        &mut conn,
        &[
            (Some(a), "MODEL_PROVIDER", &legacy_a),
            (Some(b), "MODEL_PROVIDER", &legacy_b),
            (None, "MODEL_PROVIDER", &global),
        ],
    )
    .await?;

    let run = run_cli(Some(&url), &["migrate", "run"]).await?;
    ensure!(run.code == Some(0), "the rename migration: {run}");
    ensure!(!run.stdout.contains(&legacy_a) && !run.stderr.contains(&legacy_a), "the tool printed a value");

    ensure!(
        read(&mut conn, a, "MODEL").await?.as_deref() == Some(legacy_a.as_str()),
        "a's legacy value became its MODEL"
    );
    ensure!(read(&mut conn, b, "MODEL").await?.as_deref() == Some(model_b.as_str()), "b's existing MODEL wins");
    let g: Option<String> = sqlx::query_scalar("SELECT secretgate.read_global_secret('MODEL')")
        .fetch_one(&mut conn)
        .await
        .described("g")?;
    ensure!(g.as_deref() == Some(global.as_str()), "the global legacy row is renamed too");
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.workspace_secrets WHERE key = 'MODEL_PROVIDER') \
              + (SELECT count(*) FROM public.global_secrets WHERE key = 'MODEL_PROVIDER')",
    )
    .fetch_one(&mut conn)
    .await
    .described("leftovers")?;
    ensure!(leftovers == 0, "no MODEL_PROVIDER row is left");

    // A second run changes nothing.
    let before = snapshot(&mut conn).await?;
    let again: i64 = sqlx::query_scalar("SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL')")
        .fetch_one(&mut conn)
        .await
        .described("second rename")?;
    ensure!(again == 0, "a second run renames nothing (got {again})");
    ensure!(snapshot(&mut conn).await? == before, "a second run changed rows");
    Ok(())
}

async fn a_corrupt_legacy_row_fails_the_migration(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut conn) = legacy_database(&cluster, "r_corrupt").await?;
    let (a, b) = (workspace(&mut conn).await?, workspace(&mut conn).await?);
    let (va, vb) = (format!("anthropic:claude-{}", random_hex(4)), format!("openai:gpt-{}", random_hex(4)));
    cluster.remember_secret(&va);
    cluster.remember_secret(&vb);
    plant(&mut conn, &[(Some(a), "MODEL_PROVIDER", &va), (Some(b), "MODEL_PROVIDER", &vb)]).await?;
    // Updating a MODEL_PROVIDER row is itself refused (SG105): corrupt it detached.
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach")?;
    sqlx::query(
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1) \
         WHERE workspace_id = $1",
    )
    .bind(b)
    .execute(&mut conn)
    .await
    .described("corrupt")?;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut conn)
    .await
    .described("attach")?;
    let before = snapshot(&mut conn).await?;

    let run = run_cli(Some(&url), &["migrate", "run"]).await?;
    ensure!(run.code == Some(1), "a corrupt legacy row must fail the migration: {run}");
    ensure!(run.stderr.contains("SG001") || run.stderr.contains("DECRYPT_FAILED"), "names the decrypt failure: {run}");
    ensure!(!run.stderr.contains(&va) && !run.stderr.contains(&vb), "the tool printed a value");
    ensure!(snapshot(&mut conn).await? == before, "a failed rename changed rows");

    let direct = sqlx::query("SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL')").execute(&mut conn).await;
    let e = expect_sg(direct, Code::DecryptFailed)?;
    ensure!(e.field("workspace_id").as_deref() == Some(b.to_string().as_str()), "DETAIL names the bad row: {e}");
    e.assert_no_leak(&[&va, &vb])?;
    ensure!(snapshot(&mut conn).await? == before, "a failed rename changed rows");
    Ok(())
}

async fn a_provider_slug_is_not_renamed_into_model(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut conn) = legacy_database(&cluster, "r_slug").await?;
    let a = workspace(&mut conn).await?;
    plant(&mut conn, &[(Some(a), "MODEL_PROVIDER", "minimax")]).await?;
    let before = snapshot(&mut conn).await?;
    let direct = sqlx::query("SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL')").execute(&mut conn).await;
    expect_sg(direct, Code::InvalidModelId)?;
    ensure!(snapshot(&mut conn).await? == before, "a refused rename changed rows");
    // The fix: give the workspace a real MODEL; it wins and the leftover goes.
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', 'minimax:MiniMax-M2')")
        .bind(a)
        .execute(&mut conn)
        .await
        .described("fix")?;
    let run = run_cli(Some(&url), &["migrate", "run"]).await?;
    ensure!(run.code == Some(0), "after the fix: {run}");
    ensure!(read(&mut conn, a, "MODEL").await?.as_deref() == Some("minimax:MiniMax-M2"), "the real MODEL stays");
    ensure!(read(&mut conn, a, "MODEL_PROVIDER").await?.is_none(), "the leftover is gone");
    Ok(())
}
