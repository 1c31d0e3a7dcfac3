//! Black-box tests of secret storage (CONTRACT §2–§5): set/read, try_read,
//! global secrets, encrypt/decrypt, current_key_version, verify_secrets,
//! attach_gates validation and the keyring GUC's visibility. None of these
//! trials touches the keyring file, so they run in parallel, each in its own
//! database.

use anyhow::{bail, ensure, Result};
use secretgate_core::{Code, Scope, NONCE_LEN, TAG_LEN};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("secrets"));
    let trials = trials![&cluster;
        set_and_read_round_trip,
        set_secret_upserts_with_fresh_nonces,
        unset_and_try_read_states,
        global_secrets_round_trip,
        encrypt_decrypt_match_the_core,
        decrypt_refuses_wrong_row_and_corruption,
        tampered_rows_fail_closed,
        verify_secrets_reports_every_row,
        functions_before_attach_raise_55000,
        attach_gates_validates_tables,
        keyring_setting_hidden_from_non_superusers,
        no_function_returns_key_bytes,
        sessions_follow_renames_and_reattachment,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

async fn workspace(conn: &mut PgConnection) -> Result<Uuid> {
    sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('workspace') RETURNING id")
        .fetch_one(conn)
        .await
        .described("insert workspace")
}

async fn set_secret(conn: &mut PgConnection, ws: Uuid, key: &str, value: &str) -> Result<()> {
    sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
        .bind(ws)
        .bind(key)
        .bind(value)
        .execute(conn)
        .await
        .described(&format!("set_secret({key})"))?;
    Ok(())
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

async fn read_secret(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)").bind(ws).bind(key).fetch_one(conn).await
}

async fn read_global(conn: &mut PgConnection, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_global_secret($1)").bind(key).fetch_one(conn).await
}

type TryRead = (String, Option<String>, Option<String>);

async fn try_read(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<TryRead> {
    let rows: Vec<TryRead> = sqlx::query_as("SELECT state, value, error_code FROM secretgate.try_read_secret($1, $2)")
        .bind(ws)
        .bind(key)
        .fetch_all(conn)
        .await
        .described(&format!("try_read_secret({key})"))?;
    ensure!(rows.len() == 1, "try_read_secret({key}) should return exactly one row, got {}", rows.len());
    Ok(rows.into_iter().next().unwrap())
}

/// Compares a read value with the expected one without printing either.
fn same_value(got: Option<&str>, want: &str, what: &str) -> Result<()> {
    match got {
        Some(v) if v == want => Ok(()),
        Some(_) => bail!("{what}: returned a different value than was stored"),
        None => bail!("{what}: returned NULL for a stored value"),
    }
}

async fn stored_row(conn: &mut PgConnection, ws: Uuid, key: &str) -> Result<(Vec<u8>, i32)> {
    sqlx::query_as(
        "SELECT encrypted_value, encryption_version FROM public.workspace_secrets WHERE workspace_id = $1 AND key = $2",
    )
    .bind(ws)
    .bind(key)
    .fetch_one(conn)
    .await
    .described(&format!("stored row {key}"))
}

async fn current_version(conn: &mut PgConnection) -> Result<i32> {
    sqlx::query_scalar("SELECT secretgate.current_key_version()").fetch_one(conn).await.described("current_key_version")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The DETAIL names the row: workspace_id (when given) and key.
fn names_row(e: &DbError, ws: Option<Uuid>, key: &str) -> Result<()> {
    if let Some(ws) = ws {
        ensure!(
            e.field("workspace_id").as_deref() == Some(ws.to_string().as_str()),
            "DETAIL should carry workspace_id: {e}"
        );
    }
    ensure!(e.field("key").as_deref() == Some(key), "DETAIL should carry key {key:?}: {e}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Trials

async fn set_and_read_round_trip(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_roundtrip")).await?;
    let ws = workspace(&mut conn).await?;
    let keyring = cluster.initial_keys().keyring();
    ensure!(current_version(&mut conn).await? == 2, "current_key_version() should be the keyring's current_version 2");

    let plain = cluster.fresh_secret();
    let unicode = format!("{}-ünïcødé-🔑", cluster.fresh_secret());
    let long = format!("{}{}", cluster.fresh_secret(), "x".repeat(10_000));
    for (key, value) in
        [("BB_PLAIN", plain.as_str()), ("BB_UNICODE", unicode.as_str()), ("BB_EMPTY", ""), ("BB_LONG", long.as_str())]
    {
        set_secret(&mut conn, ws, key, value).await?;
        let got = read_secret(&mut conn, ws, key).await.described(&format!("read_secret({key})"))?;
        same_value(got.as_deref(), value, &format!("read_secret({key})"))?;

        let (blob, version) = stored_row(&mut conn, ws, key).await?;
        ensure!(version == 2, "{key}: stored under version {version}, expected the current version 2");
        ensure!(
            blob.len() == NONCE_LEN + value.len() + TAG_LEN,
            "{key}: encrypted_value is {} bytes, expected nonce(12) + {} + tag(16)",
            blob.len(),
            value.len()
        );
        ensure!(!contains(&blob, value.as_bytes()), "{key}: encrypted_value contains the plaintext");
        match keyring.decrypt(&blob, version, Scope::Workspace(ws), key) {
            Ok(v) if v == value => {}
            Ok(_) => bail!("{key}: the core decrypts the stored row to a different value"),
            Err(e) => bail!(
                "{key}: the core cannot decrypt the stored row ({e}): not the contract's format or associated data"
            ),
        }
    }
    Ok(())
}

async fn set_secret_upserts_with_fresh_nonces(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_upsert")).await?;
    let ws = workspace(&mut conn).await?;
    let first = cluster.fresh_secret();
    let second = cluster.fresh_secret();
    set_secret(&mut conn, ws, "BB_TOKEN", &first).await?;
    let (blob1, _) = stored_row(&mut conn, ws, "BB_TOKEN").await?;
    set_secret(&mut conn, ws, "BB_TOKEN", &second).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.workspace_secrets WHERE workspace_id = $1")
        .bind(ws)
        .fetch_one(&mut conn)
        .await
        .described("count")?;
    ensure!(rows == 1, "set_secret twice should upsert one row, found {rows}");
    let got = read_secret(&mut conn, ws, "BB_TOKEN").await.described("read_secret")?;
    same_value(got.as_deref(), &second, "read_secret after upsert")?;

    let (blob2, _) = stored_row(&mut conn, ws, "BB_TOKEN").await?;
    set_secret(&mut conn, ws, "BB_TOKEN", &second).await?;
    let (blob3, _) = stored_row(&mut conn, ws, "BB_TOKEN").await?;
    ensure!(blob2[..NONCE_LEN] != blob3[..NONCE_LEN], "the same value stored twice must get a fresh nonce");
    ensure!(blob1[..NONCE_LEN] != blob2[..NONCE_LEN], "every write must get a fresh nonce");

    // Another workspace with the same key name is a separate row.
    let other = workspace(&mut conn).await?;
    set_secret(&mut conn, other, "BB_TOKEN", &first).await?;
    let got = read_secret(&mut conn, ws, "BB_TOKEN").await.described("read_secret")?;
    same_value(got.as_deref(), &second, "a write to another workspace must not change this one")?;
    Ok(())
}

async fn unset_and_try_read_states(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_unset")).await?;
    let ws = workspace(&mut conn).await?;
    let value = cluster.fresh_secret();
    set_secret(&mut conn, ws, "BB_SET", &value).await?;

    let missing = read_secret(&mut conn, ws, "BB_MISSING").await.described("read_secret of a missing key")?;
    ensure!(missing.is_none(), "read_secret of a key with no row should be NULL");
    let nobody =
        read_secret(&mut conn, Uuid::new_v4(), "BB_SET").await.described("read_secret of an unknown workspace")?;
    ensure!(nobody.is_none(), "read_secret for a workspace with no rows should be NULL");

    let (state, v, code) = try_read(&mut conn, ws, "BB_MISSING").await?;
    ensure!(
        state == "unset" && v.is_none() && code.is_none(),
        "try_read_secret of a missing key: expected ('unset', NULL, NULL), got ({state:?}, {}, {code:?})",
        if v.is_some() { "<value>" } else { "NULL" }
    );

    let (state, v, code) = try_read(&mut conn, ws, "BB_SET").await?;
    ensure!(
        state == "value" && code.is_none(),
        "try_read_secret of a stored key: expected state 'value' and no error code, got ({state:?}, {code:?})"
    );
    same_value(v.as_deref(), &value, "try_read_secret value")?;
    Ok(())
}

async fn global_secrets_round_trip(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_global")).await?;
    let keyring = cluster.initial_keys().keyring();
    let value = cluster.fresh_secret();
    set_global(&mut conn, "BB_GLOBAL", &value).await?;
    let got = read_global(&mut conn, "BB_GLOBAL").await.described("read_global_secret")?;
    same_value(got.as_deref(), &value, "read_global_secret")?;
    let missing = read_global(&mut conn, "BB_NOT_THERE").await.described("read_global_secret of a missing key")?;
    ensure!(missing.is_none(), "read_global_secret of a missing key should be NULL");

    let (blob, version): (Vec<u8>, i32) =
        sqlx::query_as("SELECT encrypted_value, encryption_version FROM public.global_secrets WHERE key = 'BB_GLOBAL'")
            .fetch_one(&mut conn)
            .await
            .described("global row")?;
    ensure!(version == 2, "global secret stored under version {version}, expected 2");
    ensure!(!contains(&blob, value.as_bytes()), "global encrypted_value contains the plaintext");
    ensure!(
        matches!(keyring.decrypt(&blob, version, Scope::Global, "BB_GLOBAL"), Ok(ref v) if *v == value),
        "the core cannot decrypt the global row with scope 'global'"
    );

    let newer = cluster.fresh_secret();
    set_global(&mut conn, "BB_GLOBAL", &newer).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM public.global_secrets WHERE key = 'BB_GLOBAL'")
        .fetch_one(&mut conn)
        .await
        .described("count")?;
    ensure!(count == 1, "set_global_secret twice should upsert one row");
    let got = read_global(&mut conn, "BB_GLOBAL").await.described("read_global_secret")?;
    same_value(got.as_deref(), &newer, "read_global_secret after upsert")?;
    Ok(())
}

async fn encrypt_decrypt_match_the_core(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_crypt")).await?;
    let keys = cluster.initial_keys();
    let keyring = keys.keyring();
    let ws = Uuid::new_v4();
    let value = cluster.fresh_secret();

    for scope in [Some(ws), None] {
        let blob: Vec<u8> = sqlx::query_scalar("SELECT secretgate.encrypt($1, $2, 'BB_KEY')")
            .bind(&value)
            .bind(scope)
            .fetch_one(&mut conn)
            .await
            .described("encrypt")?;
        ensure!(blob.len() == NONCE_LEN + value.len() + TAG_LEN, "encrypt output has the wrong length");
        let core_scope = Scope::from_workspace(scope);
        ensure!(
            matches!(keyring.decrypt(&blob, 2, core_scope, "BB_KEY"), Ok(ref v) if *v == value),
            "the core cannot decrypt secretgate.encrypt's output (scope {core_scope})"
        );
        let back: Option<String> = sqlx::query_scalar("SELECT secretgate.decrypt($1, 2, $2, 'BB_KEY')")
            .bind(&blob)
            .bind(scope)
            .fetch_one(&mut conn)
            .await
            .described("decrypt")?;
        same_value(back.as_deref(), &value, "decrypt(encrypt(v))")?;
        let again: Vec<u8> = sqlx::query_scalar("SELECT secretgate.encrypt($1, $2, 'BB_KEY')")
            .bind(&value)
            .bind(scope)
            .fetch_one(&mut conn)
            .await
            .described("encrypt")?;
        ensure!(again != blob, "two encryptions of one value must differ (random nonce)");
    }

    // An application encrypting on its own side, under the old version 1 too.
    for version in [1, 2] {
        let blob = keyring
            .encrypt_with_nonce(
                version,
                random_bytes(12).try_into().unwrap(),
                value.as_bytes(),
                Scope::Workspace(ws),
                "BB_APP",
            )
            .map_err(|e| anyhow::anyhow!("core encrypt: {e}"))?;
        let back: Option<String> = sqlx::query_scalar("SELECT secretgate.decrypt($1, $2, $3, 'BB_APP')")
            .bind(&blob)
            .bind(version)
            .bind(ws)
            .fetch_one(&mut conn)
            .await
            .described(&format!("decrypt of a core ciphertext under version {version}"))?;
        same_value(back.as_deref(), &value, &format!("decrypt of a core ciphertext under version {version}"))?;
    }
    Ok(())
}

async fn decrypt_refuses_wrong_row_and_corruption(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_decrypt_err")).await?;
    let ws = Uuid::new_v4();
    let value = cluster.fresh_secret();
    let blob: Vec<u8> = sqlx::query_scalar("SELECT secretgate.encrypt($1, $2, 'BB_KEY')")
        .bind(&value)
        .bind(ws)
        .fetch_one(&mut conn)
        .await
        .described("encrypt")?;
    let mut flipped = blob.clone();
    flipped[NONCE_LEN + 2] ^= 0x01;
    let mut bad_tag = blob.clone();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 0x80;
    let keys = cluster.initial_keys().encodings();
    let mut needles: Vec<&str> = vec![value.as_str()];
    needles.extend(keys.iter().map(String::as_str));

    // (what, ciphertext, version, workspace, key, expected code)
    type Case<'a> = (&'a str, Vec<u8>, i32, Option<Uuid>, &'a str, Code);
    let cases: Vec<Case> = vec![
        ("another workspace", blob.clone(), 2, Some(Uuid::new_v4()), "BB_KEY", Code::DecryptFailed),
        ("another key name", blob.clone(), 2, Some(ws), "BB_OTHER", Code::DecryptFailed),
        ("global scope", blob.clone(), 2, None, "BB_KEY", Code::DecryptFailed),
        ("another key version", blob.clone(), 1, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("a flipped ciphertext bit", flipped, 2, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("a flipped tag bit", bad_tag, 2, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("truncated to 20 bytes", blob[..20].to_vec(), 2, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("truncated to the nonce", blob[..NONCE_LEN].to_vec(), 2, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("empty", Vec::new(), 2, Some(ws), "BB_KEY", Code::DecryptFailed),
        ("unknown version 9", blob.clone(), 9, Some(ws), "BB_KEY", Code::UnknownKeyVersion),
    ];
    for (what, bytes, version, scope, key, code) in cases {
        let result: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar("SELECT secretgate.decrypt($1, $2, $3, $4)")
                .bind(&bytes)
                .bind(version)
                .bind(scope)
                .bind(key)
                .fetch_one(&mut conn)
                .await;
        let e = expect_sg(result, code).map_err(|e| e.context(format!("decrypt with {what}")))?;
        e.assert_no_leak(&needles).map_err(|e| e.context(format!("decrypt with {what}")))?;
    }
    Ok(())
}

async fn tampered_rows_fail_closed(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_tamper")).await?;
    let ws = workspace(&mut conn).await?;
    let other = workspace(&mut conn).await?;
    let value = cluster.fresh_secret();
    let global_value = cluster.fresh_secret();
    let keys = cluster.initial_keys().encodings();
    let mut needles: Vec<&str> = vec![value.as_str(), global_value.as_str()];
    needles.extend(keys.iter().map(String::as_str));

    for key in ["BB_FLIP", "BB_TRUNC", "BB_VERSION", "BB_SOURCE"] {
        set_secret(&mut conn, ws, key, &value).await?;
    }
    set_global(&mut conn, "BB_G_FLIP", &global_value).await?;
    let updates = [
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1) WHERE workspace_id = $1 AND key = 'BB_FLIP'",
        "UPDATE public.workspace_secrets SET encrypted_value = substring(encrypted_value from 1 for 11) WHERE workspace_id = $1 AND key = 'BB_TRUNC'",
        "UPDATE public.workspace_secrets SET encryption_version = 7 WHERE workspace_id = $1 AND key = 'BB_VERSION'",
        // The same ciphertext copied to another workspace and to another key name.
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) \
         SELECT $2, key, encrypted_value, encryption_version FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'BB_SOURCE'",
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) \
         SELECT workspace_id, 'BB_COPY', encrypted_value, encryption_version FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'BB_SOURCE'",
    ];
    for sql in updates {
        let q = sqlx::query(sql).bind(ws);
        let q = if sql.contains("$2") { q.bind(other) } else { q };
        q.execute(&mut conn).await.described("tamper")?;
    }
    sqlx::query("UPDATE public.global_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1) WHERE key = 'BB_G_FLIP'")
        .execute(&mut conn)
        .await
        .described("tamper global")?;
    // A global ciphertext copied into a workspace row.
    sqlx::query("SELECT secretgate.set_global_secret('BB_G_OK', $1)")
        .bind(&global_value)
        .execute(&mut conn)
        .await
        .described("set global")?;
    sqlx::query(
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) \
         SELECT $1, key, encrypted_value, encryption_version FROM public.global_secrets WHERE key = 'BB_G_OK'",
    )
    .bind(ws)
    .execute(&mut conn)
    .await
    .described("copy global")?;

    let cases = [
        (ws, "BB_FLIP", Code::DecryptFailed),
        (ws, "BB_TRUNC", Code::DecryptFailed),
        (ws, "BB_VERSION", Code::UnknownKeyVersion),
        (other, "BB_SOURCE", Code::DecryptFailed),
        (ws, "BB_COPY", Code::DecryptFailed),
        (ws, "BB_G_OK", Code::DecryptFailed),
    ];
    for (target, key, code) in cases {
        let e = expect_sg(read_secret(&mut conn, target, key).await, code)
            .map_err(|e| e.context(format!("read_secret of tampered {key}")))?;
        names_row(&e, Some(target), key).map_err(|e| e.context(format!("read_secret of tampered {key}")))?;
        e.assert_no_leak(&needles)?;

        let (state, v, got_code) = try_read(&mut conn, target, key).await?;
        ensure!(
            state == "error" && v.is_none() && got_code.as_deref() == Some(code.sqlstate()),
            "try_read_secret of tampered {key}: expected ('error', NULL, {:?}), got ({state:?}, {}, {got_code:?})",
            code.sqlstate(),
            if v.is_some() { "<value>" } else { "NULL" }
        );
    }
    // Untouched rows still read.
    let got = read_secret(&mut conn, ws, "BB_SOURCE").await.described("read_secret of the untouched source")?;
    same_value(got.as_deref(), &value, "untouched source row")?;

    let e = expect_sg(read_global(&mut conn, "BB_G_FLIP").await, Code::DecryptFailed)
        .map_err(|e| e.context("read_global_secret of a tampered row"))?;
    names_row(&e, None, "BB_G_FLIP")?;
    e.assert_no_leak(&needles)?;
    Ok(())
}

async fn verify_secrets_reports_every_row(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_verify")).await?;
    let a = workspace(&mut conn).await?;
    let b = workspace(&mut conn).await?;
    for (ws, key) in [(a, "BB_OK"), (a, "BB_BAD"), (b, "BB_OLD")] {
        set_secret(&mut conn, ws, key, &cluster.fresh_secret()).await?;
    }
    for key in ["BB_G_OK", "BB_G_BAD"] {
        set_global(&mut conn, key, &cluster.fresh_secret()).await?;
    }
    sqlx::query("UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 13, get_byte(encrypted_value, 13) # 4) WHERE key = 'BB_BAD'")
        .execute(&mut conn)
        .await
        .described("tamper")?;
    sqlx::query("UPDATE public.workspace_secrets SET encryption_version = 42 WHERE key = 'BB_OLD'")
        .execute(&mut conn)
        .await
        .described("tamper")?;
    sqlx::query("UPDATE public.global_secrets SET encrypted_value = substring(encrypted_value from 1 for 5) WHERE key = 'BB_G_BAD'")
        .execute(&mut conn)
        .await
        .described("tamper")?;

    let rows: Vec<(Option<Uuid>, String, String, Option<String>)> =
        sqlx::query_as("SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()")
            .fetch_all(&mut conn)
            .await
            .described("verify_secrets")?;
    let got: BTreeMap<(Option<Uuid>, String), (String, Option<String>)> =
        rows.iter().map(|(w, k, s, c)| ((*w, k.clone()), (s.clone(), c.clone()))).collect();
    // The tampering UPDATEs kept the good ciphertexts they replaced (0.5.0
    // history): verify lists them too, as `KEY (kept version N)`.
    ensure!(
        rows.len() == 7 && got.len() == 7,
        "verify_secrets should return one row per stored secret and kept version (5 + 2), got {rows:?}"
    );
    let want = [
        ((Some(a), "BB_BAD (kept version 1)"), ("ok", None)),
        ((None, "BB_G_BAD (kept version 1)"), ("ok", None)),
        ((Some(a), "BB_OK"), ("ok", None)),
        ((Some(a), "BB_BAD"), ("error", Some("SG001"))),
        ((Some(b), "BB_OLD"), ("error", Some("SG002"))),
        ((None, "BB_G_OK"), ("ok", None)),
        ((None, "BB_G_BAD"), ("error", Some("SG001"))),
    ];
    for ((ws, key), (state, code)) in want {
        match got.get(&(ws, key.to_string())) {
            Some((s, c)) if s == state && c.as_deref() == code => {}
            other => bail!("verify_secrets row ({ws:?}, {key}): expected ({state}, {code:?}), got {other:?}"),
        }
    }

    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(proargnames) FROM pg_proc WHERE proname = 'verify_secrets' AND pronamespace = 'secretgate'::regnamespace",
    )
    .fetch_all(&mut conn)
    .await
    .described("verify_secrets columns")?;
    ensure!(!columns.iter().any(|c| c.contains("value")), "verify_secrets must not return values: columns {columns:?}");
    Ok(())
}

const TABLES_DDL: &str = "
    CREATE TABLE public.workspaces (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL,
        status text NOT NULL DEFAULT 'provisioning', runtime text, model text);
    CREATE TABLE public.workspace_secrets (workspace_id uuid NOT NULL REFERENCES public.workspaces(id) ON DELETE CASCADE,
        key text NOT NULL, encrypted_value bytea NOT NULL, encryption_version int NOT NULL, PRIMARY KEY (workspace_id, key));
    CREATE TABLE public.global_secrets (key text PRIMARY KEY, encrypted_value bytea NOT NULL, encryption_version int NOT NULL);
";

async fn functions_before_attach_raise_55000(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = empty_database(&cluster, &db_name("sec_unattached")).await?;
    sqlx::raw_sql("CREATE EXTENSION secretgate").execute(&mut conn).await.described("CREATE EXTENSION")?;
    sqlx::raw_sql(TABLES_DDL).execute(&mut conn).await.described("tables")?;
    let ws = workspace(&mut conn).await?;
    let value = cluster.fresh_secret();

    let r = sqlx::query("SELECT secretgate.set_secret($1, 'BB_K', $2)").bind(ws).bind(&value).execute(&mut conn).await;
    expect_sqlstate(r, "55000").map_err(|e| e.context("set_secret before attach_gates"))?.assert_no_leak(&[&value])?;
    let r = sqlx::query("SELECT secretgate.set_global_secret('BB_K', $1)").bind(&value).execute(&mut conn).await;
    expect_sqlstate(r, "55000")
        .map_err(|e| e.context("set_global_secret before attach_gates"))?
        .assert_no_leak(&[&value])?;
    expect_sqlstate(read_secret(&mut conn, ws, "BB_K").await, "55000")
        .map_err(|e| e.context("read_secret before attach_gates"))?;
    expect_sqlstate(read_global(&mut conn, "BB_K").await, "55000")
        .map_err(|e| e.context("read_global_secret before attach_gates"))?;

    // try_read_secret must not claim 'unset' when it cannot look: an error or state 'error'.
    let r: Result<Vec<TryRead>, sqlx::Error> =
        sqlx::query_as("SELECT state, value, error_code FROM secretgate.try_read_secret($1, 'BB_K')")
            .bind(ws)
            .fetch_all(&mut conn)
            .await;
    match r {
        Err(e) => {
            ensure!(sqlstate(&e).as_deref() == Some("55000"), "try_read_secret before attach_gates: {}", describe(&e))
        }
        Ok(rows) => ensure!(
            rows.len() == 1 && rows[0].0 == "error",
            "try_read_secret before attach_gates must fail closed, got states {:?}",
            rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>()
        ),
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.workspace_secrets) + (SELECT count(*) FROM public.global_secrets)",
    )
    .fetch_one(&mut conn)
    .await
    .described("count")?;
    ensure!(stored == 0, "nothing may be stored before attach_gates");
    Ok(())
}

async fn attach(conn: &mut PgConnection, ws: &str, secrets: &str, global: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT secretgate.attach_gates($1::regclass, $2::regclass, $3::regclass)")
        .bind(ws)
        .bind(secrets)
        .bind(global)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn attach_gates_validates_tables(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = empty_database(&cluster, &db_name("sec_attach")).await?;
    sqlx::raw_sql("CREATE EXTENSION secretgate").execute(&mut conn).await.described("CREATE EXTENSION")?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA good; CREATE SCHEMA bad; CREATE SCHEMA other;
         {}
         -- extra columns are fine; a UNIQUE constraint instead of a primary key is a unique key too
         CREATE TABLE good.ws (id uuid PRIMARY KEY, kind text, status text, runtime text, model text, extra int);
         CREATE TABLE good.sec (workspace_id uuid NOT NULL, key text NOT NULL, encrypted_value bytea NOT NULL,
                                encryption_version int NOT NULL, note text, UNIQUE (workspace_id, key));
         CREATE TABLE good.glob (key text UNIQUE NOT NULL, encrypted_value bytea NOT NULL, encryption_version int NOT NULL);
         -- no model column is fine (the MODEL secret is the model); a status that is no label is not
         CREATE TABLE bad.ws_int_status (id uuid PRIMARY KEY, kind text, status int, runtime text);
         CREATE TABLE bad.ws_missing_runtime (id uuid PRIMARY KEY, kind text, status text);
         CREATE TABLE bad.ws_text_id (id text PRIMARY KEY, kind text, status text, runtime text, model text);
         CREATE TABLE bad.sec_text_version (workspace_id uuid, key text, encrypted_value bytea, encryption_version text,
                                            PRIMARY KEY (workspace_id, key));
         CREATE TABLE bad.sec_no_value (workspace_id uuid, key text, encryption_version int, PRIMARY KEY (workspace_id, key));
         CREATE TABLE bad.glob_missing_value (key text PRIMARY KEY, encryption_version int);
         CREATE TABLE bad.sec_not_unique (workspace_id uuid, key text, encrypted_value bytea, encryption_version int);
         CREATE TABLE bad.sec_unique_key_only (workspace_id uuid, key text UNIQUE, encrypted_value bytea, encryption_version int);
         CREATE TABLE bad.glob_not_unique (key text, encrypted_value bytea, encryption_version int);
         CREATE TABLE other.ws (id uuid PRIMARY KEY, kind text, status text, runtime text, model text);
         CREATE TABLE other.sec (workspace_id uuid, key text, encrypted_value bytea, encryption_version int, PRIMARY KEY (workspace_id, key));
         CREATE TABLE other.glob (key text PRIMARY KEY, encrypted_value bytea, encryption_version int);",
        TABLES_DDL
    ))
    .execute(&mut conn)
    .await
    .described("tables")?;

    let (w, s, g) = ("public.workspaces", "public.workspace_secrets", "public.global_secrets");
    let refused = [
        ("bad.ws_int_status", s, g, "42804", "ws_int_status", "status"),
        ("bad.ws_missing_runtime", s, g, "42703", "ws_missing_runtime", "runtime"),
        ("bad.ws_text_id", s, g, "42804", "ws_text_id", "id"),
        (w, "bad.sec_text_version", g, "42804", "sec_text_version", "encryption_version"),
        (w, "bad.sec_no_value", g, "42703", "sec_no_value", "encrypted_value"),
        (w, s, "bad.glob_missing_value", "42703", "glob_missing_value", "encrypted_value"),
        (w, "bad.sec_not_unique", g, "42P10", "sec_not_unique", "workspace_id"),
        (w, "bad.sec_unique_key_only", g, "42P10", "sec_unique_key_only", "workspace_id"),
        (w, s, "bad.glob_not_unique", "42P10", "glob_not_unique", "key"),
    ];
    for (ws_t, sec_t, glob_t, code, table, column) in refused {
        let e = expect_sqlstate(attach(&mut conn, ws_t, sec_t, glob_t).await, code)
            .map_err(|e| e.context(format!("attach_gates with {table}")))?;
        let text = e.all_text();
        // Missing and mistyped columns are named; for a missing unique key the table is enough.
        let names_column = code == "42P10" || text.contains(column);
        ensure!(
            text.contains(table) && names_column,
            "attach_gates with {table}: the error should name {table} and {column}: {e}"
        );
    }

    attach(&mut conn, "good.ws", "good.sec", "good.glob")
        .await
        .described("attach_gates with valid tables and extra columns")?;
    attach(&mut conn, "good.ws", "good.sec", "good.glob").await.described("attach_gates twice with the same tables")?;
    let e = expect_sqlstate(attach(&mut conn, w, s, g).await, "55000")
        .map_err(|e| e.context("attach_gates with other tables"))?;
    ensure!(!e.message.is_empty(), "55000 needs a message");

    // Attached to good.*: set_secret writes there.
    let ws: Uuid = sqlx::query_scalar(
        "INSERT INTO good.ws (id, kind, status) VALUES (gen_random_uuid(), 'workspace', 'provisioning') RETURNING id",
    )
    .fetch_one(&mut conn)
    .await
    .described("insert good.ws")?;
    set_secret(&mut conn, ws, "BB_K", &cluster.fresh_secret()).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM good.sec").fetch_one(&mut conn).await.described("count")?;
    ensure!(n == 1, "set_secret should write into the attached good.sec");

    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut conn).await.described("detach_gates")?;
    attach(&mut conn, "other.ws", "other.sec", "other.glob").await.described("attach_gates after detach_gates")?;
    let ws: Uuid = sqlx::query_scalar(
        "INSERT INTO other.ws (id, kind, status) VALUES (gen_random_uuid(), 'workspace', 'provisioning') RETURNING id",
    )
    .fetch_one(&mut conn)
    .await
    .described("insert other.ws")?;
    let value = cluster.fresh_secret();
    set_secret(&mut conn, ws, "BB_K", &value).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM other.sec").fetch_one(&mut conn).await.described("count")?;
    ensure!(n == 1, "after re-attaching, set_secret should write into other.sec");
    let got = read_secret(&mut conn, ws, "BB_K").await.described("read_secret after re-attach")?;
    same_value(got.as_deref(), &value, "read_secret after re-attach")?;
    Ok(())
}

async fn keyring_setting_hidden_from_non_superusers(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut conn) = migrated_database(&cluster, &db_name("sec_guc")).await?;
    let path = cluster.keyring_path().display().to_string();
    let shown: String = sqlx::query_scalar("SELECT current_setting('secretgate.keyring_file')")
        .fetch_one(&mut conn)
        .await
        .described("superuser current_setting")?;
    ensure!(shown == path, "a superuser should read secretgate.keyring_file");
    let show_all: Vec<(String, String, String)> =
        sqlx::query_as("SHOW ALL").fetch_all(&mut conn).await.described("superuser SHOW ALL")?;
    ensure!(
        !show_all.iter().any(|(n, _, _)| n == "secretgate.keyring_file"),
        "secretgate.keyring_file must be hidden from SHOW ALL"
    );

    let role = format!("bb_user_{}", random_hex(4));
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN")).execute(&mut conn).await.described("CREATE ROLE")?;
    let dbname = url.rsplit('/').next().unwrap_or("postgres");
    // A fresh session that has called nothing of secretgate's yet, then the same after a call.
    let mut user = PgConnection::connect(&cluster.url_as(&role, dbname)).await?;
    for round in ["fresh session", "after calling current_key_version"] {
        for sql in [
            "SHOW secretgate.keyring_file",
            "SELECT current_setting('secretgate.keyring_file')",
            "SELECT current_setting('secretgate.keyring_file', true)",
        ] {
            let r = sqlx::query(sql).fetch_all(&mut user).await;
            expect_sqlstate(r, "42501").map_err(|e| e.context(format!("{round}: non-superuser {sql}")))?;
        }
        let show_all: Vec<(String, String, String)> =
            sqlx::query_as("SHOW ALL").fetch_all(&mut user).await.described("non-superuser SHOW ALL")?;
        ensure!(
            !show_all.iter().any(|(n, v, _)| n == "secretgate.keyring_file" || v.contains(&path)),
            "{round}: secretgate.keyring_file must be hidden from a non-superuser's SHOW ALL"
        );
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_settings WHERE name = 'secretgate.keyring_file' OR setting = $1",
        )
        .bind(&path)
        .fetch_one(&mut user)
        .await
        .described("pg_settings")?;
        ensure!(n == 0, "{round}: secretgate.keyring_file must not appear in a non-superuser's pg_settings");
        // Whether the role may call it is not fixed; either way it loads the library.
        let _ = sqlx::query("SELECT secretgate.current_key_version()").execute(&mut user).await;
    }
    user.close().await?;
    Ok(())
}

async fn no_function_returns_key_bytes(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("sec_nokeys")).await?;
    let bytea_fns: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = 'secretgate'::regnamespace
            AND (p.prorettype = 'bytea'::regtype OR 'bytea'::regtype = ANY (coalesce(p.proallargtypes, '{}'::oid[])))
          ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .described("pg_proc")?;
    ensure!(
        bytea_fns.iter().all(|f| f == "encrypt" || f == "decrypt"),
        "only encrypt (and decrypt's argument) may carry bytea in schema secretgate, found {bytea_fns:?}"
    );
    // encrypt's output never contains a key.
    let blob: Vec<u8> = sqlx::query_scalar("SELECT secretgate.encrypt('', NULL, 'BB_K')")
        .fetch_one(&mut conn)
        .await
        .described("encrypt")?;
    for key in cluster.initial_keys().keys.values() {
        ensure!(!contains(&blob, &key[..8]), "encrypt's output contains key bytes");
    }
    Ok(())
}

/// Each backend keeps the attached tables it looked up; another session's
/// rename of a table or its schema, or a detach and attach to other tables,
/// must reach it (no stale name, no gate on the old tables).
async fn read_notes(conn: &mut PgConnection, ws: Uuid) -> std::result::Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, 'NOTES')").bind(ws).fetch_one(conn).await
}

async fn sessions_follow_renames_and_reattachment(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut admin) = migrated_database(&cluster, &db_name("s_cache")).await?;
    let mut reader = PgConnection::connect(&url).await?;
    let ws = workspace(&mut admin).await?;
    let value = cluster.fresh_secret();
    set_secret(&mut admin, ws, "NOTES", &value).await?;
    ensure!(read_notes(&mut reader, ws).await.described("read")?.as_deref() == Some(value.as_str()), "first read");

    // Renamed table, then renamed schema: the reader's next call still finds the row.
    sqlx::query("ALTER TABLE public.workspace_secrets RENAME TO ws_secrets")
        .execute(&mut admin)
        .await
        .described("rename")?;
    ensure!(
        read_notes(&mut reader, ws).await.described("after rename")?.as_deref() == Some(value.as_str()),
        "read after a table rename"
    );
    sqlx::raw_sql("CREATE SCHEMA app; ALTER TABLE public.workspaces SET SCHEMA app; ALTER TABLE public.ws_secrets SET SCHEMA app; \
                   ALTER TABLE public.global_secrets SET SCHEMA app; ALTER SCHEMA app RENAME TO platform")
        .execute(&mut admin)
        .await
        .described("move and rename the schema")?;
    ensure!(
        read_notes(&mut reader, ws).await.described("after schema rename")?.as_deref() == Some(value.as_str()),
        "read after a schema rename"
    );
    // A look-alike left under the old names is not what the reader reads.
    sqlx::raw_sql("CREATE TABLE public.workspace_secrets (LIKE platform.ws_secrets)")
        .execute(&mut admin)
        .await
        .described("decoy")?;
    ensure!(
        read_notes(&mut reader, ws).await.described("with a decoy")?.as_deref() == Some(value.as_str()),
        "read with a decoy table"
    );

    // Detach, and attach other tables: the reader sees the new attachment.
    sqlx::raw_sql(
        "SELECT secretgate.detach_gates();
         CREATE TABLE public.workspaces (LIKE platform.workspaces INCLUDING ALL);
         CREATE TABLE public.global_secrets (LIKE platform.global_secrets INCLUDING ALL);
         DROP TABLE public.workspace_secrets;
         CREATE TABLE public.workspace_secrets (LIKE platform.ws_secrets INCLUDING ALL);
         SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets');",
    )
    .execute(&mut admin)
    .await
    .described("re-attach to new tables")?;
    ensure!(
        read_notes(&mut reader, ws).await.described("after re-attach")?.is_none(),
        "the reader still reads the old tables"
    );
    // And the gates now guard the new tables for the reader's session too.
    sqlx::query("INSERT INTO public.workspaces (id, kind) VALUES ($1, 'platform')")
        .bind(ws)
        .execute(&mut admin)
        .await
        .described("ws")?;
    let mut tx = reader.begin().await?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("agent")?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'NOTES', 'v')").bind(ws).execute(&mut *tx).await;
    expect_sg(r, Code::ConciergeSelfWriteBlocked)?;
    Ok(())
}
