//! Black-box test of pg_dump and restore (issue 5): a database with gates,
//! registry edits, verdicts and secrets, dumped and restored into a fresh
//! database on the same keyring, gives identical ciphertexts and plaintexts
//! (no trigger re-encrypts or refuses the restore), the DBA's registry edits,
//! and working gates.

use anyhow::{ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::process::Command;
use std::sync::Arc;
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("dump"));
    let trials = trials![&cluster;
        "plain_dump_restores_secrets_registry_and_gates" => |c| round_trip(c, Format::Plain),
        "custom_format_dump_restores_too" => |c| round_trip(c, Format::Custom),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

#[derive(Clone, Copy)]
enum Format {
    Plain,
    Custom,
}

/// Runs a client program of the server under test (its own major's pg_dump and psql).
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(pg_bin().join(program)).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().take(20).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// Everything stored, as (scope, key, version, ciphertext, plaintext), ordered.
async fn contents(conn: &mut PgConnection) -> Result<Vec<(Option<Uuid>, String, i32, Vec<u8>, Option<String>)>> {
    sqlx::query_as(
        "SELECT workspace_id, key, encryption_version, encrypted_value, secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key) \
         FROM public.workspace_secrets \
         UNION ALL SELECT NULL, key, encryption_version, encrypted_value, secretgate.decrypt(encrypted_value, encryption_version, NULL, key) \
         FROM public.global_secrets ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await
    .described("contents")
}

async fn registry(conn: &mut PgConnection) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT format('%s|%s|%s|%s|%s|%s', name, is_platform, auth_env, base_url, auth_header, auth_scheme) FROM secretgate.providers \
         UNION ALL SELECT format('route %s|%s|%s', pattern, provider, runtime) FROM secretgate.model_routes \
         UNION ALL SELECT format('forbidden %s|%s', key, reason) FROM secretgate.forbidden_keys \
         UNION ALL SELECT format('verdict %s|%s|%s|%s', workspace_id, key, verdict, encode(ciphertext_sha256, 'hex')) FROM secretgate.liveness \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .described("registry")
}

async fn round_trip(cluster: Arc<Cluster>, format: Format) -> Result<()> {
    let source = db_name("d_src");
    let (_, mut src) = migrated_database(&cluster, &source).await?;

    // A platform workspace online with its MODEL, a BYOK workspace, a global key.
    let model = format!("anthropic:claude-opus-4-7-{}", random_hex(3));
    let (anthropic, openai) = (cluster.fresh_secret(), cluster.fresh_secret());
    let mut tx = src.begin().await?;
    let platform: Uuid =
        sqlx::query_scalar("INSERT INTO public.workspaces (kind, status) VALUES ('platform', 'online') RETURNING id")
            .fetch_one(&mut *tx)
            .await
            .described("platform")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', $2)")
        .bind(platform)
        .bind(&model)
        .execute(&mut *tx)
        .await
        .described("MODEL")?;
    let byok: Uuid = sqlx::query_scalar(
        "INSERT INTO public.workspaces (kind, model) VALUES ('workspace', 'anthropic:claude-opus-4-7') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .described("byok")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(byok)
        .bind(&anthropic)
        .execute(&mut *tx)
        .await
        .described("key")?;
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)")
        .bind(&openai)
        .execute(&mut *tx)
        .await
        .described("global")?;
    tx.commit().await.described("commit")?;
    // The DBA's registry edits, and a dead verdict.
    for sql in [
        "UPDATE secretgate.providers SET base_url = 'https://llm-proxy.internal/v1' WHERE name = 'openai'",
        "INSERT INTO secretgate.providers (name, auth_env, base_url) VALUES ('acme', '{ACME_API_KEY}', 'https://api.acme.example/v1')",
        "INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('acme:', 'acme')",
        "UPDATE secretgate.model_routes SET provider = 'openrouter' WHERE pattern = 'gpt-'",
        "UPDATE secretgate.forbidden_keys SET reason = 'edited by the DBA' WHERE key = 'MODEL_PROVIDER'",
        "INSERT INTO secretgate.forbidden_keys VALUES ('OLD_TOKEN', 'retired')",
    ] {
        sqlx::query(sql).execute(&mut src).await.described(sql)?;
    }
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok)
        .execute(&mut src)
        .await
        .described("dead")?;
    let (want_contents, want_registry) = (contents(&mut src).await?, registry(&mut src).await?);
    ensure!(want_contents.len() == 3, "three secrets stored");

    // Dump and restore into a fresh database.
    let port = cluster.port().to_string();
    let file = cluster.dir().join(format!("{source}.dump"));
    let file = file.to_str().context("dump path")?;
    let target = db_name("d_dst");
    let target_url = cluster.create_database(&target);
    match format {
        Format::Plain => {
            run("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-f", file, &source])?;
            run(
                "psql",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                    file,
                    &target,
                ],
            )?;
        }
        Format::Custom => {
            run("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-Fc", "-f", file, &source])?;
            run(
                "pg_restore",
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--exit-on-error", "-d", &target, file],
            )?;
        }
    }
    let mut dst = PgConnection::connect(&target_url).await.context("connect to the restored database")?;

    // Same ciphertexts (nothing re-encrypted), same plaintexts, same registry.
    ensure!(
        contents(&mut dst).await? == want_contents,
        "restored secrets differ from the source (ciphertext or plaintext)"
    );
    ensure!(
        registry(&mut dst).await? == want_registry,
        "restored registry, forbidden keys or verdicts differ from the source"
    );

    // The gates work in the restored database.
    let mut tx = dst.begin().await?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("agent")?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'X', 'v')").bind(platform).execute(&mut *tx).await;
    expect_sg(r, Code::ConciergeSelfWriteBlocked)?;
    drop(tx);
    let r =
        sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1").bind(byok).execute(&mut dst).await;
    expect_sg(r, Code::ByokCredentialInvalid).context("the dead verdict survives the restore")?;
    let r = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(platform)
        .execute(&mut dst)
        .await;
    expect_sg(r, Code::PlatformAgentIdentityGate)?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'OLD_TOKEN', 'v')").bind(byok).execute(&mut dst).await;
    expect_sg(r, Code::ForbiddenSecretKey).context("a forbidden key the DBA added survives the restore")?;
    ensure!(contents(&mut dst).await? == want_contents, "refused writes changed the restored secrets");
    let resolved: Option<String> = sqlx::query_scalar("SELECT secretgate.resolve_provider(NULL, 'acme:large')")
        .fetch_one(&mut dst)
        .await
        .described("resolve")?;
    ensure!(resolved.as_deref() == Some("acme"), "the DBA's route survives the restore");
    std::fs::remove_file(file).ok();
    Ok(())
}
