//! Black-box test of extension upgrades (issue 5): a database created at
//! each released version (0.1.0, 0.2.0: their frozen scripts in sql/released/),
//! holding secrets, registry edits and a verdict, is upgraded with
//! `ALTER EXTENSION secretgate UPDATE`. Afterwards its catalog (functions,
//! triggers, tables, grants, configuration tables) equals a fresh install's,
//! every old ciphertext is untouched and still decrypts, the DBA's edits are
//! kept and the gates work.

use anyhow::{ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeSet;
use std::sync::Arc;
use uuid::Uuid;

/// Every released version (its full script frozen in sql/released/): each
/// must update to this build's version.
const RELEASED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.4.0"];

/// This source tree's extension version: the root package's version.
fn current() -> String {
    let manifest = include_str!("../../Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the root Cargo.toml has a version line")
        .to_string()
}

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("upgrade"));
    let mut trials = Vec::new();
    for &from in RELEASED {
        trials.push(trial(&format!("update_path_from_{from}_exists"), &cluster, move |c| update_path_exists(c, from)));
        trials.push(trial(
            &format!("database_upgraded_from_{from}_equals_a_fresh_install_and_keeps_its_secrets"),
            &cluster,
            move |c| upgrade_keeps_everything(c, from),
        ));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

/// Everything about the extension's objects that an upgrade must reproduce, one
/// line per fact. Object names, definitions and grants only: no data, no OIDs.
const CATALOG: &str = r#"
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'secretgate'),
     rels AS (SELECT c.* FROM pg_class c WHERE c.relnamespace = 'secretgate'::regnamespace)
SELECT 'extension ' || extversion || ' schema=' || extnamespace::regnamespace || ' relocatable=' || extrelocatable FROM ext
UNION ALL
SELECT 'config ' || u.tbl::regclass || ' where ' || coalesce(u.cond, '') FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(tbl, cond)
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
UNION ALL
SELECT 'schema ' || nspname || ' owner=' || pg_get_userbyid(nspowner) || ' acl=' || coalesce(nspacl::text, 'default')
  FROM pg_namespace WHERE nspname = 'secretgate'
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid) || ' owner=' || pg_get_userbyid(p.proowner) || ' acl=' || coalesce(p.proacl::text, 'default')
  FROM pg_proc p WHERE p.pronamespace = 'secretgate'::regnamespace
UNION ALL
SELECT 'relation ' || relname || ' kind=' || relkind::text || ' owner=' || pg_get_userbyid(relowner) || ' acl=' || coalesce(relacl::text, 'default')
  || ' rls=' || relrowsecurity FROM rels
UNION ALL
SELECT 'column ' || c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname || ' '
  || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
  || ' acl=' || coalesce(a.attacl::text, 'default')
  FROM rels c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  WHERE c.relkind IN ('r', 'v', 'p')
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN rels c ON c.oid = con.conrelid
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'secretgate'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text FROM pg_trigger t WHERE NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || tablename || ' ' || policyname FROM pg_policies WHERE schemaname = 'secretgate'
UNION ALL
SELECT 'rule ' || definition FROM pg_rules WHERE schemaname = 'secretgate'
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text FROM pg_type t
  WHERE t.typnamespace = 'secretgate'::regnamespace AND t.typrelid = 0 AND t.typelem = 0
"#;

async fn catalog(conn: &mut PgConnection) -> Result<BTreeSet<String>> {
    let lines: Vec<String> = sqlx::query_scalar(CATALOG).fetch_all(conn).await.described("catalog snapshot")?;
    Ok(lines.into_iter().collect())
}

/// The seeded and edited configuration rows (registry, forbidden keys).
async fn registry(conn: &mut PgConnection) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT format('provider %s', p) FROM secretgate.providers p \
         UNION ALL SELECT format('route %s', r) FROM secretgate.model_routes r \
         UNION ALL SELECT format('forbidden %s', f) FROM secretgate.forbidden_keys f ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .described("registry")
}

/// Every stored secret as (scope, key, version, ciphertext), read without decrypting.
async fn stored(conn: &mut PgConnection) -> Result<Vec<(Option<Uuid>, String, i32, Vec<u8>)>> {
    sqlx::query_as(
        "SELECT workspace_id, key, encryption_version, encrypted_value FROM public.workspace_secrets \
         UNION ALL SELECT NULL, key, encryption_version, encrypted_value FROM public.global_secrets ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await
    .described("stored secrets")
}

/// The difference of two catalog snapshots, for the failure message (object
/// definitions only: the catalog holds no secret).
fn difference(upgraded: &BTreeSet<String>, fresh: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for line in upgraded.difference(fresh) {
        out.push_str(&format!("\n  only after the upgrade: {line}"));
    }
    for line in fresh.difference(upgraded) {
        out.push_str(&format!("\n  only in a fresh install: {line}"));
    }
    out
}

async fn update_path_exists(cluster: Arc<Cluster>, from: &'static str) -> Result<()> {
    let (_, mut conn) = empty_database(&cluster, &db_name("u_path")).await?;
    let default: String =
        sqlx::query_scalar("SELECT default_version FROM pg_available_extensions WHERE name = 'secretgate'")
            .fetch_one(&mut conn)
            .await
            .described("default version")?;
    let current = current();
    ensure!(default == current, "the installed control file's default version is {default}, this build is {current}");
    let versions: Vec<String> =
        sqlx::query_scalar("SELECT version FROM pg_available_extension_versions WHERE name = 'secretgate' ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .described("available versions")?;
    ensure!(
        versions.iter().any(|v| v == from),
        "version {from} is not installed (scripts/install.sh copies sql/released/): available {versions:?}"
    );
    let path: Option<String> = sqlx::query_scalar(
        "SELECT path FROM pg_extension_update_paths('secretgate') WHERE source = $1 AND target = $2",
    )
    .bind(from)
    .bind(&current)
    .fetch_one(&mut conn)
    .await
    .described("update path")?;
    ensure!(path.is_some(), "no update path from {from} to {current}");
    Ok(())
}

async fn upgrade_keeps_everything(cluster: Arc<Cluster>, from: &'static str) -> Result<()> {
    // The old database: a released version, then the project's migrations
    // (CREATE EXTENSION IF NOT EXISTS keeps the old version, attach_gates is the old one).
    let (old_url, mut old) = empty_database(&cluster, &db_name("u_old")).await?;
    sqlx::query(&format!("CREATE EXTENSION secretgate VERSION '{from}'"))
        .execute(&mut old)
        .await
        .described("create old version")?;
    MIGRATOR.run(&mut old).await.context("migrations on the old version")?;
    let version: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'secretgate'")
        .fetch_one(&mut old)
        .await
        .described("old version")?;
    ensure!(version == from, "the old database runs {version}, not {from}");

    // Data written by the old version: a platform workspace online with its
    // MODEL, a BYOK workspace with a key and a dead verdict, a global key, secrets
    // under both key versions of the keyring.
    let values: Vec<String> = (0..4).map(|_| cluster.fresh_secret()).collect();
    let mut tx = old.begin().await?;
    let platform: Uuid =
        sqlx::query_scalar("INSERT INTO public.workspaces (kind, status) VALUES ('platform', 'online') RETURNING id")
            .fetch_one(&mut *tx)
            .await
            .described("platform")?;
    let model = format!("anthropic:claude-opus-4-7-{}", random_hex(3));
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
        .bind(&values[0])
        .execute(&mut *tx)
        .await
        .described("key")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'NOTES', $2)")
        .bind(byok)
        .bind(&values[1])
        .execute(&mut *tx)
        .await
        .described("notes")?;
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)")
        .bind(&values[2])
        .execute(&mut *tx)
        .await
        .described("global")?;
    tx.commit().await.described("commit")?;
    // One row under the older key version (v1 of the two-version test keyring).
    let mut v1_keys = cluster.initial_keys().clone();
    v1_keys.current_version = 1;
    let (version, v1) =
        v1_keys.keyring().encrypt(values[3].as_bytes(), secretgate_core::Scope::Global, "LEGACY_TOKEN")?;
    ensure!(version == 1, "the legacy row is under key version 1");
    sqlx::query(
        "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version) VALUES ('LEGACY_TOKEN', $1, 1)",
    )
    .bind(&v1)
    .execute(&mut old)
    .await
    .described("v1 row")?;
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok)
        .execute(&mut old)
        .await
        .described("verdict")?;
    let edits = [
        "UPDATE secretgate.providers SET base_url = 'https://llm-proxy.internal/v1' WHERE name = 'openai'",
        "INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('acme-', 'openai')",
        "INSERT INTO secretgate.forbidden_keys VALUES ('OLD_TOKEN', 'retired')",
    ];
    for sql in edits {
        sqlx::query(sql).execute(&mut old).await.described(sql)?;
    }
    let before = stored(&mut old).await?;
    ensure!(before.len() == 5, "five secrets stored at {from}, found {}", before.len());

    // The upgrade, in one transaction like a deploy would run it.
    let mut tx = old.begin().await?;
    sqlx::query("ALTER EXTENSION secretgate UPDATE")
        .execute(&mut *tx)
        .await
        .described("ALTER EXTENSION secretgate UPDATE")?;
    tx.commit().await.described("commit the upgrade")?;
    drop(old);
    // A new session, so nothing of the old version lingers in the backend.
    let mut upgraded = PgConnection::connect(&old_url).await.context("reconnect after the upgrade")?;

    // A fresh install of this version, with the same registry edits.
    let (_, mut fresh) = migrated_database(&cluster, &db_name("u_fresh")).await?;
    for sql in edits {
        sqlx::query(sql).execute(&mut fresh).await.described(sql)?;
    }
    let (got, want) = (catalog(&mut upgraded).await?, catalog(&mut fresh).await?);
    ensure!(
        got.iter().any(|l| l.starts_with(&format!("extension {} ", current()))),
        "the upgraded database does not run {}",
        current()
    );
    ensure!(got.len() > 50, "the catalog snapshot looks empty ({} lines): the query is broken", got.len());
    ensure!(got == want, "the upgraded catalog differs from a fresh install:{}", difference(&got, &want));
    ensure!(
        registry(&mut upgraded).await? == registry(&mut fresh).await?,
        "the upgraded registry differs from a fresh install with the same edits"
    );

    // Every old ciphertext untouched and still readable, with the same plaintext.
    ensure!(stored(&mut upgraded).await? == before, "the upgrade changed stored ciphertexts");
    let unreadable: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.verify_secrets() WHERE state <> 'ok'")
        .fetch_one(&mut upgraded)
        .await
        .described("verify")?;
    ensure!(unreadable == 0, "{unreadable} secrets no longer decrypt after the upgrade");
    let read = |scope: Option<Uuid>, key: &'static str| {
        let sql = match scope {
            Some(_) => "SELECT secretgate.read_secret($1, $2)",
            None => "SELECT secretgate.read_global_secret($2)",
        };
        sqlx::query_scalar::<_, Option<String>>(sql).bind(scope).bind(key)
    };
    let expected = [
        (Some(platform), "MODEL", &model),
        (Some(byok), "ANTHROPIC_API_KEY", &values[0]),
        (Some(byok), "NOTES", &values[1]),
        (None, "OPENAI_API_KEY", &values[2]),
        (None, "LEGACY_TOKEN", &values[3]),
    ];
    for (scope, key, want) in expected {
        let got = read(scope, key).fetch_one(&mut upgraded).await.described(key)?;
        ensure!(got.as_deref() == Some(want.as_str()), "{key} reads back differently after the upgrade");
    }

    // The gates and the verdict work in the upgraded database.
    let mut tx = upgraded.begin().await?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("agent")?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'X', 'v')").bind(platform).execute(&mut *tx).await;
    expect_sg(r, Code::ConciergeSelfWriteBlocked)?;
    drop(tx);
    let r = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(platform)
        .execute(&mut upgraded)
        .await;
    expect_sg(r, Code::PlatformAgentIdentityGate)?;
    let r = sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1")
        .bind(byok)
        .execute(&mut upgraded)
        .await;
    expect_sg(r, Code::ByokCredentialInvalid).context("the dead verdict survives the upgrade")?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'OLD_TOKEN', 'v')").bind(byok).execute(&mut upgraded).await;
    expect_sg(r, Code::ForbiddenSecretKey).context("a forbidden key the DBA added survives the upgrade")?;
    ensure!(stored(&mut upgraded).await? == before, "refused writes changed the stored secrets");
    Ok(())
}
