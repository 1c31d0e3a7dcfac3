//! Black-box tests of keys from a KMS (issue 16, CONTRACT §3, §7):
//! `secretgate.keyring_command` with the `age` example of `contrib/keyring/`
//! (run once per start and per reload, never per connection; no keyring file
//! on disk), its failures (SG003 naming the exit status or the parse problem,
//! never the output), key check values (a wrong key is SG004 once per version,
//! a corrupt row still SG001), `secretgate keyring new | add-version | check`,
//! the rotation walk, and the cloud examples against fake CLIs. Every trial
//! changes the server's keyring, so they run one at a time.

use anyhow::{anyhow, bail, ensure, Context, Result};
use secretgate_core::{Code, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("kms"));
    let trials = trials![&cluster;
        age_command_runs_once_per_start_and_reload,
        command_failures_fail_closed_with_sg003,
        wrong_key_is_sg004_once_per_version_and_corrupt_row_sg001,
        keyring_new_and_add_version_write_0600_files,
        rotation_walk_with_age_command,
        cloud_examples_with_fake_clis,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// The age keyring and the command

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The server's copy of contrib/keyring/age.sh.
fn age_script(cluster: &Cluster) -> PathBuf {
    kms_dir(cluster).join("age.sh")
}

fn kms_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir().join("kms")
}

fn identity(cluster: &Cluster) -> PathBuf {
    kms_dir(cluster).join("identity.txt")
}

fn age_file(cluster: &Cluster) -> PathBuf {
    kms_dir(cluster).join("keyring.age")
}

fn counter(cluster: &Cluster) -> PathBuf {
    kms_dir(cluster).join("runs")
}

fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program} (is it installed? scripts/setup.sh installs age)"))?;
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input)?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{program} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

/// The age identity (0600, the server's user's) and the command that counts
/// its runs, then runs contrib/keyring/age.sh. Made once per cluster.
fn age_command(cluster: &Cluster) -> Result<String> {
    let dir = kms_dir(cluster);
    if !identity(cluster).exists() {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        cluster.chown(&dir)?;
        run("age-keygen", &["-o", identity(cluster).to_str().unwrap()], None)?;
        std::fs::set_permissions(identity(cluster), std::fs::Permissions::from_mode(0o600))?;
        cluster.chown(&identity(cluster))?;
        // Installed where the server's user can run it, as the docs say: the
        // source tree may sit in a folder only root can enter (a CI clone).
        std::fs::copy(repo().join("contrib/keyring/age.sh"), age_script(cluster))?;
        std::fs::set_permissions(age_script(cluster), std::fs::Permissions::from_mode(0o755))?;
        cluster.chown(&age_script(cluster))?;
    }
    Ok(format!(
        "echo run >> {counter}; exec {script} {identity} {file}",
        counter = counter(cluster).display(),
        script = age_script(cluster).display(),
        identity = identity(cluster).display(),
        file = age_file(cluster).display(),
    ))
}

/// Encrypts `json` to the identity's recipient as the keyring the command decrypts.
fn publish(cluster: &Cluster, json: &str) -> Result<()> {
    let recipient = String::from_utf8(run("age-keygen", &["-y", identity(cluster).to_str().unwrap()], None)?)?;
    let tmp = kms_dir(cluster).join("keyring.age.tmp");
    run("age", &["-r", recipient.trim(), "-o", tmp.to_str().unwrap()], Some(json.as_bytes()))?;
    cluster.chown(&tmp)?;
    std::fs::rename(&tmp, age_file(cluster))?;
    Ok(())
}

fn runs(cluster: &Cluster) -> usize {
    std::fs::read_to_string(counter(cluster)).map(|s| s.lines().count()).unwrap_or(0)
}

/// Switches the server from keyring_file to the age command (a restart), with
/// `json` as the keyring, and removes the keyring file. Returns the runs
/// counted after the start.
async fn command_mode(cluster: &Cluster, json: &str) -> Result<()> {
    let command = age_command(cluster)?;
    publish(cluster, json)?;
    cluster.append_conf(&format!(
        "secretgate.keyring_file = ''\nsecretgate.keyring_command = '{command}'\nsecretgate.keyring_command_timeout = 10"
    ))?;
    cluster.remove_keyring();
    let _ = std::fs::remove_file(counter(cluster));
    cluster.restart("fast")?;
    wait_runs(cluster, 1).await
}

/// Waits until the command has run `n` times in all, then a moment for its
/// output to be published.
async fn wait_runs(cluster: &Cluster, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(cluster) < n {
        ensure!(Instant::now() < deadline, "the keyring command ran {} time(s), expected {n}", runs(cluster));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// Publishes a keyring and reloads; waits for the command's next run.
async fn republish(cluster: &Cluster, json: &str) -> Result<()> {
    publish(cluster, json)?;
    let before = runs(cluster);
    cluster.reload();
    wait_runs(cluster, before + 1).await
}

fn remember(cluster: &Cluster, keys: &TestKeys) {
    for k in keys.encodings() {
        cluster.remember_secret(&k);
    }
}

/// The baseline keys, as the command's keyring, in command mode.
async fn baseline(cluster: &Cluster) -> Result<()> {
    let json = cluster.initial_keys().to_json();
    if runs(cluster) == 0 {
        command_mode(cluster, &json).await
    } else {
        republish(cluster, &json).await
    }
}

async fn workspace(conn: &mut PgConnection) -> Result<Uuid> {
    sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('workspace') RETURNING id")
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
        .described(&format!("set_secret {key}"))
        .map(|_| ())
}

async fn read(conn: &mut PgConnection, ws: Uuid, key: &str) -> std::result::Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.read_secret($1, $2)").bind(ws).bind(key).fetch_one(conn).await
}

/// Files under `dir` holding any of `needles` (the keyring must be nowhere on disk).
fn files_holding(dir: &Path, needles: &[String], found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            files_holding(&path, needles, found);
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                let text = String::from_utf8_lossy(&bytes);
                if needles.iter().any(|n| text.contains(n.as_str())) {
                    found.push(path);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Trials

async fn age_command_runs_once_per_start_and_reload(cluster: Arc<Cluster>) -> Result<()> {
    let keys = cluster.initial_keys().clone();
    command_mode(&cluster, &keys.to_json()).await?;
    ensure!(runs(&cluster) == 1, "the command should have run once at start, ran {}", runs(&cluster));
    ensure!(!cluster.keyring_path().exists(), "the keyring file should be gone");

    let (url, mut conn) = migrated_database(&cluster, &db_name("kms_age")).await?;
    let ws = workspace(&mut conn).await?;
    let value = cluster.fresh_secret();
    set(&mut conn, ws, "AGE_K", &value).await?;

    // 100 connections, 10 at a time, each reading and writing.
    for batch in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let url = url.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = PgConnection::connect(&url).await.context("connect")?;
                let got = read(&mut c, ws, "AGE_K").await.described("read_secret")?;
                ensure!(got.as_deref() == Some(value.as_str()), "a connection read another value");
                set(&mut c, ws, &format!("AGE_{batch}_{i}"), &value).await?;
                let v: i32 = sqlx::query_scalar("SELECT secretgate.current_key_version()")
                    .fetch_one(&mut c)
                    .await
                    .described("current_key_version")?;
                ensure!(v == 2, "current_key_version() = {v}");
                c.close().await?;
                Ok(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| anyhow!("task: {e}"))??;
        }
    }
    ensure!(runs(&cluster) == 1, "100 connections made the command run {} time(s) in all; expected 1", runs(&cluster));

    cluster.reload();
    wait_runs(&cluster, 2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(runs(&cluster) == 2, "one reload should run the command once more: {} run(s)", runs(&cluster));
    let got = read(&mut conn, ws, "AGE_K").await.described("read after reload")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the value should read back after the reload");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.workspace_secrets WHERE workspace_id = $1 AND key LIKE 'AGE\\_%'",
    )
    .bind(ws)
    .fetch_one(&mut conn)
    .await
    .described("count")?;
    ensure!(n == 101, "expected 101 rows written, found {n}");

    // The keyring exists on disk only encrypted: no file holds a key.
    let mut found = Vec::new();
    files_holding(cluster.dir(), &keys.encodings(), &mut found);
    ensure!(found.is_empty(), "files on disk hold a key: {found:?}");
    eprintln!("[kms] 100 connections and one reload: the keyring command ran {} time(s)", runs(&cluster));
    Ok(())
}

/// Polls `current_key_version()` on fresh connections until `want` holds.
async fn until_version(
    url: &str,
    what: &str,
    want: impl Fn(&std::result::Result<i32, sqlx::Error>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = PgConnection::connect(url).await.context("connect")?;
        let r: std::result::Result<i32, sqlx::Error> =
            sqlx::query_scalar("SELECT secretgate.current_key_version()").fetch_one(&mut c).await;
        let _ = c.close().await;
        if want(&r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: never happened; last answer: {}", r.as_ref().map_or_else(describe, |v| v.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sg003_saying(r: &std::result::Result<i32, sqlx::Error>, words: &str) -> bool {
    match r {
        Err(e) => db_error(e).is_some_and(|d| {
            d.sqlstate == "SG003" && d.field("reason").is_some_and(|r| r.contains(words)) && d.message.contains(words)
        }),
        Ok(_) => false,
    }
}

async fn command_failures_fail_closed_with_sg003(cluster: Arc<Cluster>) -> Result<()> {
    baseline(&cluster).await?;
    let (url, mut conn) = migrated_database(&cluster, &db_name("kms_fail")).await?;
    let ws = workspace(&mut conn).await?;
    let value = cluster.fresh_secret();
    set(&mut conn, ws, "F_K", &value).await?;
    let good = age_command(&cluster)?;
    // What the commands print comes from files: Postgres logs a changed
    // setting's text, so the command line itself must hold nothing secret.
    let noise = cluster.fresh_secret();
    let not_a_keyring = cluster.fresh_secret();
    let noise_file = kms_dir(&cluster).join("noise");
    let output_file = kms_dir(&cluster).join("output");
    std::fs::write(&noise_file, &noise)?;
    std::fs::write(&output_file, &not_a_keyring)?;
    cluster.chown(&noise_file)?;
    cluster.chown(&output_file)?;

    let cases: [(String, &str, &str); 3] = [
        (format!("cat {} >&2; exit 3", noise_file.display()), "10", "exited with status 3"),
        (format!("cat {}", output_file.display()), "10", "printed an invalid keyring"),
        ("sleep 30".to_string(), "1", "did not finish within 1 s"),
    ];
    for (command, timeout, words) in &cases {
        cluster.append_conf(&format!(
            "secretgate.keyring_command = '{command}'\nsecretgate.keyring_command_timeout = {timeout}"
        ))?;
        cluster.reload();
        until_version(&url, words, |r| sg003_saying(r, words)).await?;
        let e = expect_sg(read(&mut conn, ws, "F_K").await, Code::KeyringUnavailable)?;
        e.assert_no_leak(&[&value, &noise, &not_a_keyring])?;
        ensure!(e.hint.is_some(), "SG003 should carry a hint: {e}");
    }

    // Both sources at once: refused, naming both.
    cluster.append_conf(&format!(
        "secretgate.keyring_command = '{good}'\nsecretgate.keyring_command_timeout = 10\nsecretgate.keyring_file = '{}'",
        cluster.keyring_path().display()
    ))?;
    cluster.reload();
    until_version(&url, "both set", |r| sg003_saying(r, "secretgate.keyring_file and secretgate.keyring_command"))
        .await?;

    // The next reload with a good command recovers.
    cluster.append_conf("secretgate.keyring_file = ''")?;
    cluster.reload();
    until_version(&url, "recovery", |r| matches!(r, Ok(2))).await?;
    let got = read(&mut conn, ws, "F_K").await.described("read after recovery")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the value should read back after recovery");
    ensure!(!cluster.log_contents().contains(&noise), "the command's standard error reached the server log");
    Ok(())
}

async fn wrong_key_is_sg004_once_per_version_and_corrupt_row_sg001(cluster: Arc<Cluster>) -> Result<()> {
    baseline(&cluster).await?;
    let (url, mut conn) = migrated_database(&cluster, &db_name("kms_wrong")).await?;
    let ws = workspace(&mut conn).await?;
    let keys = cluster.initial_keys().clone();

    // Three rows under version 1 (as an application wrote them before a
    // rotation), two under version 2.
    let v1 = keys.keyring();
    let mut values = Vec::new();
    for i in 0..3 {
        let key = format!("OLD_{i}");
        let value = cluster.fresh_secret();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&random_bytes(12));
        let blob = v1.encrypt_with_nonce(1, nonce, value.as_bytes(), Scope::Workspace(ws), &key)?;
        sqlx::query("INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, 1)")
            .bind(ws)
            .bind(&key)
            .bind(&blob)
            .execute(&mut conn)
            .await
            .described("insert a version-1 row")?;
        values.push((key, value));
    }
    let new_value = cluster.fresh_secret();
    set(&mut conn, ws, "NEW", &new_value).await?;
    set(&mut conn, ws, "DAMAGED", &cluster.fresh_secret()).await?;
    // Reading a version-1 row records its check value (first use).
    let got = read(&mut conn, ws, "OLD_0").await.described("read OLD_0")?;
    ensure!(got.as_deref() == Some(values[0].1.as_str()), "OLD_0 should read back");
    let recorded: Vec<i32> = sqlx::query_scalar("SELECT version FROM secretgate.key_checks ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .described("key_checks")?;
    ensure!(recorded == vec![1, 2], "key_checks should hold versions 1 and 2, holds {recorded:?}");

    // Corrupt one version-2 row.
    sqlx::query(
        "UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 20, get_byte(encrypted_value, 20) # 1)
         WHERE workspace_id = $1 AND key = 'DAMAGED'",
    )
    .bind(ws)
    .execute(&mut conn)
    .await
    .described("corrupt a row")?;

    // The server now gets another key under version 1.
    let mut wrong = keys.clone();
    wrong.keys.insert(1, random_bytes(32));
    remember(&cluster, &wrong);
    republish(&cluster, &wrong.to_json()).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let mut needles: Vec<String> = values.iter().map(|v| v.1.clone()).collect();
    needles.extend(wrong.encodings());
    needles.extend(keys.encodings());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();

    for (key, _) in &values {
        let e = expect_sg(read(&mut conn, ws, key).await, Code::KeyMismatch)?;
        ensure!(e.field("version").as_deref() == Some("1"), "SG004 DETAIL should name version 1: {e}");
        ensure!(e.message.contains("version 1"), "SG004 should name version 1: {e}");
        e.assert_no_leak(&needles)?;
    }
    let (state, value, code): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT state, value, error_code FROM secretgate.try_read_secret($1, 'OLD_1')")
            .bind(ws)
            .fetch_one(&mut conn)
            .await
            .described("try_read_secret")?;
    ensure!(
        state == "error" && value.is_none() && code.as_deref() == Some("SG004"),
        "try_read_secret should be ('error', NULL, 'SG004'), got ({state}, {}, {code:?})",
        if value.is_some() { "a value" } else { "NULL" }
    );
    let got = read(&mut conn, ws, "NEW").await.described("read NEW")?;
    ensure!(got.as_deref() == Some(new_value.as_str()), "a version-2 row should still read");
    let e = expect_sg(read(&mut conn, ws, "DAMAGED").await, Code::DecryptFailed)?;
    e.assert_no_leak(&needles)?;

    type VerifyRow = (Option<Uuid>, Option<String>, String, Option<String>);
    let states: Vec<VerifyRow> =
        sqlx::query_as("SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()")
            .fetch_all(&mut conn)
            .await
            .described("verify_secrets")?;
    let mismatch: Vec<_> = states.iter().filter(|s| s.3.as_deref() == Some("SG004")).collect();
    ensure!(
        mismatch.len() == 1 && mismatch[0].0.is_none() && mismatch[0].1.is_none(),
        "verify_secrets should report SG004 once, with no workspace or key: {mismatch:?}"
    );
    let corrupt: Vec<_> = states.iter().filter(|s| s.3.as_deref() == Some("SG001")).collect();
    ensure!(
        corrupt.len() == 1 && corrupt[0].1.as_deref() == Some("DAMAGED"),
        "verify_secrets should list the damaged row as SG001: {corrupt:?}"
    );

    let out = run_cli(Some(&url), &["verify"]).await?;
    ensure!(out.code == Some(1), "secretgate verify should exit 1:\n{out}");
    let sg004: Vec<&str> = out.stdout.lines().filter(|l| l.contains("SG004")).collect();
    ensure!(
        sg004.len() == 1 && sg004[0].contains("key version 1") && sg004[0].contains("3 secret(s)"),
        "secretgate verify should say SG004 in one line naming version 1 and its 3 rows:\n{out}"
    );
    ensure!(
        out.stdout.contains("DAMAGED") && out.stdout.contains("SG001"),
        "verify should list the damaged row:\n{out}"
    );
    ensure!(!out.stdout.contains("OLD_"), "verify should not list the version-1 rows one by one:\n{out}");
    for n in &needles {
        ensure!(!out.stdout.contains(n) && !out.stderr.contains(n), "secretgate verify printed a value or key");
    }

    let out = run_cli(Some(&url), &["keyring", "check"]).await?;
    ensure!(out.code == Some(1), "keyring check should exit 1 on a mismatch:\n{out}");
    // Version 2: NEW, DAMAGED, and the good ciphertext the tampering UPDATE replaced (a kept version).
    ensure!(
        out.stdout.contains("key version 1: mismatch (3 secret(s))")
            && out.stdout.contains("key version 2: ok (3 secret(s), current)"),
        "keyring check should show version 1 mismatched and 2 ok:\n{out}"
    );

    // A rotation leaves the version-1 rows where they are and says so once.
    let out = run_cli(Some(&url), &["rotate"]).await?;
    ensure!(out.code == Some(1), "rotate over a mismatched version should exit 1:\n{out}");
    ensure!(
        out.stdout.contains("3 secret(s) could not be decrypted and were left on their key version")
            && out.stdout.lines().filter(|l| l.contains("SG004")).count() == 1,
        "rotate should skip version 1's 3 rows and name SG004 once:\n{out}"
    );
    let v1_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.workspace_secrets WHERE encryption_version = 1")
        .fetch_one(&mut conn)
        .await
        .described("count version 1")?;
    ensure!(v1_rows == 3, "the version-1 rows stay on version 1: {v1_rows}");

    // Writes under a current version with a wrong key are refused too.
    let mut wrong2 = keys.clone();
    wrong2.keys.insert(2, random_bytes(32));
    remember(&cluster, &wrong2);
    republish(&cluster, &wrong2.to_json()).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'NEW', $2)")
        .bind(ws)
        .bind(cluster.fresh_secret())
        .execute(&mut conn)
        .await;
    let e = expect_sg(r, Code::KeyMismatch)?;
    ensure!(e.field("version").as_deref() == Some("2"), "SG004 should name version 2: {e}");

    republish(&cluster, &keys.to_json()).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let got = read(&mut conn, ws, "OLD_2").await.described("read OLD_2 with the right key")?;
    ensure!(got.as_deref() == Some(values[2].1.as_str()), "the right key reads the version-1 rows again");
    Ok(())
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

fn keys_of(json: &str) -> Result<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let keys = v["keys"].as_object().ok_or_else(|| anyhow!("no keys object"))?;
    Ok(keys.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
}

async fn keyring_new_and_add_version_write_0600_files(cluster: Arc<Cluster>) -> Result<()> {
    let dir = cluster.dir().join("cli-keyrings");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("keyring.json");
    let path = file.to_str().unwrap();

    let out = run_cli(None, &["keyring", "new", "--out", path]).await?;
    ensure!(out.code == Some(0), "keyring new:\n{out}");
    ensure!(mode_of(&file)? == 0o600, "keyring new should write mode 0600, wrote {:o}", mode_of(&file)?);
    let first = std::fs::read_to_string(&file)?;
    let k =
        secretgate_core::Keyring::parse(first.as_bytes()).map_err(|e| anyhow!("new keyring does not parse: {e}"))?;
    ensure!(k.current_version() == 1 && k.versions().collect::<Vec<_>>() == vec![1], "new keyring: {k:?}");
    let key1 = keys_of(&first)?[0].1.clone();
    cluster.remember_secret(&key1);
    ensure!(!out.stdout.contains(&key1) && !out.stderr.contains(&key1), "keyring new printed the key");

    let again = run_cli(None, &["keyring", "new", "--out", path]).await?;
    ensure!(again.code == Some(2), "keyring new over an existing file should exit 2:\n{again}");
    ensure!(std::fs::read_to_string(&file)? == first, "the existing keyring was changed");
    let none = run_cli(None, &["keyring", "new"]).await?;
    ensure!(none.code == Some(2), "keyring new without --out or --stdout should exit 2:\n{none}");

    let out = run_cli(None, &["keyring", "add-version", path]).await?;
    ensure!(out.code == Some(0), "keyring add-version:\n{out}");
    ensure!(mode_of(&file)? == 0o600, "add-version should keep mode 0600");
    let second = std::fs::read_to_string(&file)?;
    let k2 = secretgate_core::Keyring::parse(second.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    ensure!(k2.current_version() == 2 && k2.versions().collect::<Vec<_>>() == vec![1, 2], "after add-version: {k2:?}");
    let keys2 = keys_of(&second)?;
    ensure!(keys2.iter().any(|(v, k)| v == "1" && *k == key1), "add-version must keep version 1's key");
    for (_, k) in &keys2 {
        cluster.remember_secret(k);
        ensure!(!out.stdout.contains(k.as_str()) && !out.stderr.contains(k.as_str()), "add-version printed a key");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)?.flatten().filter(|e| e.path() != file).collect();
    ensure!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");

    let out = run_cli(None, &["keyring", "new", "--stdout"]).await?;
    ensure!(out.code == Some(0), "keyring new --stdout:\n{out}");
    let k3 = secretgate_core::Keyring::parse(out.stdout.as_bytes()).map_err(|e| anyhow!("--stdout output: {e}"))?;
    ensure!(k3.current_version() == 1, "--stdout keyring: {k3:?}");
    for (_, k) in keys_of(&out.stdout)? {
        cluster.remember_secret(&k);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

async fn rotation_walk_with_age_command(cluster: Arc<Cluster>) -> Result<()> {
    // A keyring made by the tool, encrypted with age: the server reads it
    // through the command.
    let made = run_cli(None, &["keyring", "new", "--stdout"]).await?;
    ensure!(made.code == Some(0), "keyring new --stdout:\n{made}");
    for (_, k) in keys_of(&made.stdout)? {
        cluster.remember_secret(&k);
    }
    if runs(&cluster) == 0 {
        command_mode(&cluster, &made.stdout).await?;
    } else {
        republish(&cluster, &made.stdout).await?;
    }
    let (url, mut conn) = migrated_database(&cluster, &db_name("kms_rotate")).await?;
    let ws = workspace(&mut conn).await?;
    let mut values = Vec::new();
    for i in 0..20 {
        let value = cluster.fresh_secret();
        set(&mut conn, ws, &format!("ROT_{i}"), &value).await?;
        values.push(value);
    }
    let out = run_cli(Some(&url), &["keyring", "check"]).await?;
    ensure!(
        out.code == Some(0) && out.stdout.contains("key version 1: ok (20 secret(s), current)"),
        "check before:\n{out}"
    );

    // add-version, on a plaintext copy that lives only for the step (with a
    // KMS: add the version there).
    let work = kms_dir(&cluster).join("edit.json");
    std::fs::write(&work, &made.stdout)?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o600))?;
    let out = run_cli(None, &["keyring", "add-version", work.to_str().unwrap()]).await?;
    ensure!(out.code == Some(0), "add-version:\n{out}");
    let two = std::fs::read_to_string(&work)?;
    std::fs::remove_file(&work)?;
    for (_, k) in keys_of(&two)? {
        cluster.remember_secret(&k);
    }
    // Reload: the command runs once and the server has version 2.
    republish(&cluster, &two).await?;
    until_version(&url, "version 2 current", |r| matches!(r, Ok(2))).await?;

    let out = run_cli(Some(&url), &["rotate"]).await?;
    ensure!(out.code == Some(0), "secretgate rotate:\n{out}");
    let out = run_cli(Some(&url), &["keyring", "check"]).await?;
    ensure!(
        out.code == Some(0)
            && out.stdout.contains("key version 1: unused (0 secret(s))")
            && out.stdout.contains("key version 2: ok (20 secret(s), current)"),
        "after the rotation, check should show version 1 unused:\n{out}"
    );

    // Remove the old version.
    let mut v: serde_json::Value = serde_json::from_str(&two)?;
    v["keys"].as_object_mut().unwrap().remove("1");
    republish(&cluster, &v.to_string()).await?;
    let mut conn = PgConnection::connect(&url).await?;
    for (i, value) in values.iter().enumerate() {
        let got = read(&mut conn, ws, &format!("ROT_{i}")).await.described("read after retiring version 1")?;
        ensure!(got.as_deref() == Some(value.as_str()), "ROT_{i} should read back after retiring version 1");
    }
    let out = run_cli(Some(&url), &["keyring", "check"]).await?;
    ensure!(
        out.code == Some(0) && out.stdout.contains("key version 2: ok (20 secret(s), current)"),
        "after retiring version 1:\n{out}"
    );
    let out = run_cli(Some(&url), &["verify"]).await?;
    ensure!(out.code == Some(0), "verify after the walk:\n{out}");
    Ok(())
}

/// The cloud examples, each with a fake CLI first on PATH that records its
/// arguments and answers as the real one does.
async fn cloud_examples_with_fake_clis(cluster: Arc<Cluster>) -> Result<()> {
    use base64::Engine;
    let dir = cluster.dir().join("fake-clis");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let keys = TestKeys::generate(1);
    remember(&cluster, &keys);
    let json = keys.to_json();
    std::fs::write(dir.join("keyring.json"), &json)?;
    std::fs::write(dir.join("keyring.b64"), base64::engine::general_purpose::STANDARD.encode(&json))?;
    let args_log = dir.join("args.log");
    let fake = |name: &str, answer: &str| -> Result<()> {
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> {log}\ncat {answer}\n",
                log = args_log.display(),
                answer = answer
            ),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    fake("aws", dir.join("keyring.b64").to_str().unwrap())?;
    fake("gcloud", dir.join("keyring.json").to_str().unwrap())?;
    fake("vault", dir.join("keyring.json").to_str().unwrap())?;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script = |name: &str| repo().join("contrib/keyring").join(name);

    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("aws-kms.sh", vec!["/etc/secretgate/keyring.kms"], "aws kms decrypt --ciphertext-blob fileb:///etc/secretgate/keyring.kms --query Plaintext --output text"),
        ("aws-kms.sh", vec!["/k.kms", "alias/sg"], "aws kms decrypt --ciphertext-blob fileb:///k.kms --query Plaintext --output text --key-id alias/sg"),
        ("gcloud-kms.sh", vec!["/etc/secretgate/keyring.enc", "projects/p/locations/l/keyRings/r/cryptoKeys/k"], "gcloud kms decrypt --key projects/p/locations/l/keyRings/r/cryptoKeys/k --ciphertext-file /etc/secretgate/keyring.enc --plaintext-file -"),
        ("vault.sh", vec!["secret/secretgate/keyring"], "vault kv get -field=keyring secret/secretgate/keyring"),
    ];
    for (name, args, expected) in &cases {
        let _ = std::fs::remove_file(&args_log);
        let out = Command::new(script(name)).args(args).env("PATH", &path).output()?;
        ensure!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let k = secretgate_core::Keyring::parse(&out.stdout).map_err(|e| anyhow!("{name} output: {e}"))?;
        ensure!(k.current_version() == 1, "{name}: {k:?}");
        let logged = std::fs::read_to_string(&args_log)?;
        ensure!(logged.trim() == *expected, "{name} ran {logged:?}, expected {expected:?}");
    }
    // A failing CLI fails the command (the server would answer SG003).
    std::fs::write(bin.join("aws"), "#!/bin/sh\nexit 254\n")?;
    let out = Command::new(script("aws-kms.sh")).arg("/k.kms").env("PATH", &path).output()?;
    ensure!(!out.status.success(), "aws-kms.sh should fail when aws fails");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
