//! Black-box tests of keyring faults and rotation (CONTRACT §3): every trial
//! mutates the cluster-wide keyring file or setting, so they run one at a
//! time, each starting from and returning to the baseline keyring.

use anyhow::{bail, ensure, Result};
use secretgate_core::{Code, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("keyring"));
    let trials = trials![&cluster;
        rotation_is_picked_up_without_reload,
        retired_key_version_gives_sg002,
        missing_file_fails_closed_then_recovers,
        insecure_mode_fails_closed_then_recovers,
        malformed_keyrings_fail_closed,
        directory_instead_of_file_fails_closed,
        file_unreadable_by_server_fails_closed,
        unset_or_relative_setting_fails_closed,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

fn baseline(cluster: &Cluster) {
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
}

/// A migrated database with one workspace secret and one global secret,
/// both stored under the baseline keyring.
struct Fixture {
    conn: PgConnection,
    ws: Uuid,
    value: String,
    global_value: String,
    /// The two values and every key encoding: none may appear in an error.
    needles: Vec<String>,
}

async fn fixture(cluster: &Cluster, prefix: &str) -> Result<Fixture> {
    baseline(cluster);
    let (_url, mut conn) = migrated_database(cluster, &db_name(prefix)).await?;
    let ws: Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('workspace') RETURNING id")
        .fetch_one(&mut conn)
        .await
        .described("insert workspace")?;
    let value = cluster.fresh_secret();
    let global_value = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'BB_K', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut conn)
        .await
        .described("set_secret")?;
    sqlx::query("SELECT secretgate.set_global_secret('BB_G', $1)")
        .bind(&global_value)
        .execute(&mut conn)
        .await
        .described("set_global_secret")?;
    let mut needles = vec![value.clone(), global_value.clone()];
    needles.extend(cluster.initial_keys().encodings());
    Ok(Fixture { conn, ws, value, global_value, needles })
}

impl Fixture {
    fn needles(&self) -> Vec<&str> {
        self.needles.iter().map(String::as_str).collect()
    }

    async fn read(&mut self, key: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)")
            .bind(self.ws)
            .bind(key)
            .fetch_one(&mut self.conn)
            .await
    }

    /// Every operation that needs the keyring works and returns the stored values.
    async fn assert_works(&mut self, what: &str) -> Result<()> {
        let got = self.read("BB_K").await.described(&format!("{what}: read_secret"))?;
        ensure!(got.as_deref() == Some(self.value.as_str()), "{what}: read_secret did not return the stored value");
        let got: Option<String> = sqlx::query_scalar("SELECT secretgate.read_global_secret('BB_G')")
            .fetch_one(&mut self.conn)
            .await
            .described(&format!("{what}: read_global_secret"))?;
        ensure!(
            got.as_deref() == Some(self.global_value.as_str()),
            "{what}: read_global_secret did not return the stored value"
        );
        let v: i32 = sqlx::query_scalar("SELECT secretgate.current_key_version()")
            .fetch_one(&mut self.conn)
            .await
            .described(&format!("{what}: current_key_version"))?;
        ensure!(v == 2, "{what}: current_key_version() = {v}, expected 2");
        Ok(())
    }

    /// Every operation that needs the keyring fails with `code`, and nothing is written.
    async fn assert_fails(&mut self, code: Code, what: &str) -> Result<()> {
        let needles = self.needles.clone();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let check = |r: Result<DbError>, op: &str| -> Result<DbError> {
            let e = r.map_err(|e| e.context(format!("{what}: {op}")))?;
            e.assert_no_leak(&needles).map_err(|e| e.context(format!("{what}: {op}")))?;
            if code == Code::KeyringUnavailable {
                ensure!(
                    e.field("reason").is_some_and(|r| !r.is_empty()),
                    "{what}: {op}: DETAIL should carry a \"reason\": {e}"
                );
            }
            Ok(e)
        };

        let e = check(expect_sg(self.read("BB_K").await, code), "read_secret")?;
        ensure!(e.field("key").as_deref() == Some("BB_K"), "{what}: read_secret DETAIL should name key BB_K: {e}");
        let r: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar("SELECT secretgate.read_global_secret('BB_G')").fetch_one(&mut self.conn).await;
        check(expect_sg(r, code), "read_global_secret")?;

        let rows: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT state, value, error_code FROM secretgate.try_read_secret($1, 'BB_K')")
                .bind(self.ws)
                .fetch_all(&mut self.conn)
                .await
                .described(&format!("{what}: try_read_secret"))?;
        ensure!(
            rows.len() == 1
                && rows[0].0 == "error"
                && rows[0].1.is_none()
                && rows[0].2.as_deref() == Some(code.sqlstate()),
            "{what}: try_read_secret should return ('error', NULL, {:?}), got states/codes {:?}",
            code.sqlstate(),
            rows.iter().map(|r| (r.0.clone(), r.2.clone())).collect::<Vec<_>>()
        );

        let rows: Vec<(Option<Uuid>, String, String, Option<String>)> =
            sqlx::query_as("SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()")
                .fetch_all(&mut self.conn)
                .await
                .described(&format!("{what}: verify_secrets"))?;
        ensure!(
            rows.len() == 2 && rows.iter().all(|r| r.2 == "error" && r.3.as_deref() == Some(code.sqlstate())),
            "{what}: verify_secrets should report both rows as error {:?}, got {rows:?}",
            code.sqlstate()
        );

        if code == Code::KeyringUnavailable {
            // Writing and the pure functions need the keyring too.
            let fresh = format!("{}-write", self.value);
            let r = sqlx::query("SELECT secretgate.set_secret($1, 'BB_NEW', $2)")
                .bind(self.ws)
                .bind(&fresh)
                .execute(&mut self.conn)
                .await;
            check(expect_sg(r, code), "set_secret")?;
            let r = sqlx::query("SELECT secretgate.set_global_secret('BB_NEW', $1)")
                .bind(&fresh)
                .execute(&mut self.conn)
                .await;
            check(expect_sg(r, code), "set_global_secret")?;
            let r: Result<i32, sqlx::Error> =
                sqlx::query_scalar("SELECT secretgate.current_key_version()").fetch_one(&mut self.conn).await;
            check(expect_sg(r, code), "current_key_version")?;
            let r: Result<Vec<u8>, sqlx::Error> = sqlx::query_scalar("SELECT secretgate.encrypt($1, $2, 'BB_K')")
                .bind(&fresh)
                .bind(self.ws)
                .fetch_one(&mut self.conn)
                .await;
            check(expect_sg(r, code), "encrypt")?;
            let r: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
                "SELECT secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key) FROM public.workspace_secrets WHERE key = 'BB_K'",
            )
            .fetch_one(&mut self.conn)
            .await;
            check(expect_sg(r, code), "decrypt")?;
            let n: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM public.workspace_secrets WHERE key = 'BB_NEW') + (SELECT count(*) FROM public.global_secrets WHERE key = 'BB_NEW')",
            )
            .fetch_one(&mut self.conn)
            .await
            .described("count")?;
            ensure!(n == 0, "{what}: a refused write must store nothing");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Trials

async fn rotation_is_picked_up_without_reload(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_rotate").await?;
    f.assert_works("baseline").await?;
    let mut rotated = cluster.initial_keys().clone();
    rotated.add_version(3);
    for k in rotated.encodings() {
        cluster.remember_secret(&k);
    }
    cluster.write_keyring(&rotated.to_json(), 0o600);

    // Same session, no reload.
    let v: i32 = sqlx::query_scalar("SELECT secretgate.current_key_version()")
        .fetch_one(&mut f.conn)
        .await
        .described("current_key_version after rotation")?;
    ensure!(v == 3, "current_key_version() should be 3 once the file says so, without a reload; got {v}");

    let newer = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'BB_K3', $2)")
        .bind(f.ws)
        .bind(&newer)
        .execute(&mut f.conn)
        .await
        .described("set_secret under v3")?;
    let (blob, version): (Vec<u8>, i32) =
        sqlx::query_as("SELECT encrypted_value, encryption_version FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'BB_K3'")
            .bind(f.ws)
            .fetch_one(&mut f.conn)
            .await
            .described("row")?;
    ensure!(version == 3, "a write after rotation should use version 3, used {version}");
    ensure!(
        matches!(rotated.keyring().decrypt(&blob, 3, Scope::Workspace(f.ws), "BB_K3"), Ok(ref v) if *v == newer),
        "the core cannot decrypt the version-3 row with the new key"
    );
    let old = f.read("BB_K").await.described("read a version-2 row after rotation")?;
    ensure!(old.as_deref() == Some(f.value.as_str()), "version-2 rows must stay readable after rotation");

    // A second session sees the rotated keyring too.
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, error_code FROM secretgate.verify_secrets()")
            .fetch_all(&mut f.conn)
            .await
            .described("verify_secrets")?;
    ensure!(rows.len() == 3 && rows.iter().all(|r| r.0 == "ok"), "verify_secrets after rotation: {rows:?}");

    // Back to the baseline: the version-3 row now names a version the keyring lacks.
    baseline(&cluster);
    let e = expect_sg(f.read("BB_K3").await, Code::UnknownKeyVersion)
        .map_err(|e| e.context("version-3 row after rolling back"))?;
    e.assert_no_leak(&[newer.as_str()])?;
    f.assert_works("after rolling the keyring back").await
}

async fn retired_key_version_gives_sg002(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_retire").await?;
    let mut rotated = cluster.initial_keys().clone();
    rotated.add_version(3);
    for k in rotated.encodings() {
        cluster.remember_secret(&k);
    }
    // Version 2 retired while rows still use it.
    cluster.write_keyring(&rotated.without(2).to_json(), 0o600);
    let e =
        expect_sg(f.read("BB_K").await, Code::UnknownKeyVersion).map_err(|e| e.context("read of a retired version"))?;
    e.assert_no_leak(&f.needles())?;
    ensure!(
        e.field("workspace_id").as_deref() == Some(f.ws.to_string().as_str()),
        "DETAIL should name the workspace: {e}"
    );
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, error_code FROM secretgate.verify_secrets()")
            .fetch_all(&mut f.conn)
            .await
            .described("verify_secrets")?;
    ensure!(
        rows.len() == 2 && rows.iter().all(|r| r.0 == "error" && r.1.as_deref() == Some("SG002")),
        "verify_secrets with version 2 retired: {rows:?}"
    );
    baseline(&cluster);
    f.assert_works("after restoring version 2").await
}

async fn missing_file_fails_closed_then_recovers(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_missing").await?;
    f.assert_works("baseline").await?;
    cluster.remove_keyring();
    f.assert_fails(Code::KeyringUnavailable, "keyring file removed").await?;
    baseline(&cluster);
    f.assert_works("after restoring the file").await
}

async fn insecure_mode_fails_closed_then_recovers(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_mode").await?;
    f.assert_works("baseline").await?;
    for mode in [0o644, 0o640, 0o604, 0o660] {
        // In place: only the mode changes, not the content or the mtime.
        cluster.chmod_keyring(mode);
        f.assert_fails(Code::KeyringUnavailable, &format!("keyring chmod {mode:o}")).await?;
        cluster.chmod_keyring(0o600);
        f.assert_works(&format!("after chmod 600 (from {mode:o})")).await?;
    }
    // A replaced file that arrives group-readable.
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o644);
    f.assert_fails(Code::KeyringUnavailable, "new keyring file with mode 644").await?;
    cluster.chmod_keyring(0o600);
    f.assert_works("after chmod 600 of the new file").await?;
    // Owner read-only is fine.
    cluster.chmod_keyring(0o400);
    f.assert_works("keyring mode 400").await?;
    baseline(&cluster);
    Ok(())
}

async fn malformed_keyrings_fail_closed(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_malformed").await?;
    let keys = cluster.initial_keys();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let k1 = b64(&keys.keys[&1]);
    let k2 = b64(&keys.keys[&2]);
    let short = b64(&keys.keys[&2][..31]);
    let cases = [
        ("not JSON", format!("{{\"current_version\": 2, \"keys\": {{\"1\": \"{k1}\", \"2\": \"{k2}\"")),
        ("empty file", String::new()),
        ("no keys", "{\"current_version\": 2, \"keys\": {}}".to_string()),
        (
            "current key of 31 bytes",
            format!("{{\"current_version\": 2, \"keys\": {{\"1\": \"{k1}\", \"2\": \"{short}\"}}}}"),
        ),
        (
            "old key of 31 bytes",
            format!("{{\"current_version\": 2, \"keys\": {{\"1\": \"{short}\", \"2\": \"{k2}\"}}}}"),
        ),
        ("key not base64", format!("{{\"current_version\": 2, \"keys\": {{\"1\": \"{k1}\", \"2\": \"!!{k2}\"}}}}")),
        (
            "current_version without a key",
            format!("{{\"current_version\": 5, \"keys\": {{\"1\": \"{k1}\", \"2\": \"{k2}\"}}}}"),
        ),
        (
            "version not a number",
            format!("{{\"current_version\": 2, \"keys\": {{\"one\": \"{k1}\", \"2\": \"{k2}\"}}}}"),
        ),
    ];
    for (what, json) in &cases {
        cluster.write_keyring(json, 0o600);
        f.assert_fails(Code::KeyringUnavailable, what).await?;
        baseline(&cluster);
        f.assert_works(&format!("after fixing: {what}")).await?;
    }
    Ok(())
}

async fn directory_instead_of_file_fails_closed(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_dir").await?;
    cluster.remove_keyring();
    std::fs::create_dir(cluster.keyring_path())?;
    let result = f.assert_fails(Code::KeyringUnavailable, "keyring path is a directory").await;
    std::fs::remove_dir(cluster.keyring_path())?;
    result?;
    baseline(&cluster);
    f.assert_works("after replacing the directory with the file").await
}

async fn file_unreadable_by_server_fails_closed(cluster: Arc<Cluster>) -> Result<()> {
    if !cluster.server_runs_as_other_user() {
        return Ok(()); // only root can give the file to someone else
    }
    let mut f = fixture(&cluster, "kr_owner").await?;
    cluster.chown_keyring_to_root();
    let result = f.assert_fails(Code::KeyringUnavailable, "keyring owned by root, mode 600").await;
    cluster.restore_keyring_owner();
    result?;
    f.assert_works("after giving the file back to the server user").await
}

async fn set_keyring_setting(conn: &mut PgConnection, cluster: &Cluster, value: Option<&str>) -> Result<()> {
    let sql = match value {
        Some(v) => format!("ALTER SYSTEM SET secretgate.keyring_file = '{}'", v.replace('\'', "''")),
        None => "ALTER SYSTEM RESET secretgate.keyring_file".to_string(),
    };
    sqlx::raw_sql(&sql).execute(&mut *conn).await.described("ALTER SYSTEM")?;
    cluster.reload();
    Ok(())
}

async fn unset_or_relative_setting_fails_closed(cluster: Arc<Cluster>) -> Result<()> {
    let mut f = fixture(&cluster, "kr_guc").await?;
    let settings = ["", "keyring.json", "/nonexistent/secretgate-keyring.json"];
    let mut outcome = Ok(());
    for setting in settings {
        if let Err(e) = set_keyring_setting(&mut f.conn, &cluster, Some(setting)).await {
            outcome = Err(e);
            break;
        }
        if let Err(e) =
            f.assert_fails(Code::KeyringUnavailable, &format!("secretgate.keyring_file = {setting:?}")).await
        {
            outcome = Err(e);
            break;
        }
    }
    // Always put the configuration back, then check full recovery.
    set_keyring_setting(&mut f.conn, &cluster, None).await?;
    outcome?;
    let shown: String = sqlx::query_scalar("SELECT current_setting('secretgate.keyring_file')")
        .fetch_one(&mut f.conn)
        .await
        .described("current_setting")?;
    if shown != cluster.keyring_path().display().to_string() {
        bail!("after ALTER SYSTEM RESET and reload the setting should be back to the configured path");
    }
    f.assert_works("after resetting the setting").await
}
