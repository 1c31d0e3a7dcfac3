//! The packages on a system that never built secretgate (issue 15), run by
//! `scripts/package-test.sh`, which prepares a Debian 12 root (debootstrap,
//! with Debian's postgresql-15) holding the packages in `/tmp/packages`, and
//! passes its path in `SECRETGATE_CLEAN_ROOT`. Not part of a plain
//! `cargo test` (`test = false`): it installs and removes packages in that root.
//!
//! The walk, in order, every step in the root (`chroot`), the client on the
//! host over loopback (values are bind parameters):
//! 1. `dpkg -i` the previous version's extension package and the tool; a
//!    cluster with the documented configuration; `secretgate migrate run`;
//!    secrets stored.
//! 2. `dpkg -i` this version's package over it, restart, `ALTER EXTENSION
//!    secretgate UPDATE`: the stored secrets still read back.
//! 3. The tour; a refusal per gate (SG101, SG102, SG103, SG105, SG107) with
//!    its SQLSTATE; a rotation with the packaged tool.
//! 4. `dpkg -r` both packages: no secretgate file left in the root.

use anyhow::{bail, ensure, Context, Result};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Inside the root.
const DATA: &str = "/var/lib/postgresql/secretgate-test";
const KEYRING: &str = "/etc/secretgate/keyring.json";

struct Root {
    path: PathBuf,
    port: u16,
}

impl Root {
    /// Runs `argv` inside the root as root; fails with its output when it fails.
    fn run(&self, argv: &[&str]) -> Result<String> {
        let out = Command::new("chroot")
            .arg(&self.path)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .output()
            .with_context(|| format!("chroot {argv:?}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "in the clean root, {argv:?} failed ({}):\n{text}", out.status);
        Ok(text)
    }

    /// Runs `argv` inside the root as the `postgres` user.
    fn run_as_postgres(&self, argv: &[&str]) -> Result<String> {
        let mut full = vec!["runuser", "-u", "postgres", "--"];
        full.extend_from_slice(argv);
        self.run(&full)
    }

    fn host_path(&self, inside: &str) -> PathBuf {
        self.path.join(inside.trim_start_matches('/'))
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `secretgate <args>` as installed by the package, inside the root.
    fn secretgate(&self, db: &str, args: &[&str]) -> Result<String> {
        let url = format!("--database-url={}", self.url(db));
        let mut argv = vec!["/usr/bin/secretgate", url.as_str()];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    fn write_keyring(&self, keys: &TestKeys) -> Result<()> {
        let path = self.host_path(KEYRING);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, keys.to_json())?;
        self.run(&["chown", "postgres:postgres", "/etc/secretgate/keyring.tmp"])?;
        self.run(&["chmod", "0600", "/etc/secretgate/keyring.tmp"])?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn pg_ctl(&self, action: &str) -> Result<String> {
        let log = format!("{DATA}/server.log");
        self.run_as_postgres(&[&format!("{PG_BIN}/pg_ctl"), action, "-w", "-D", &format!("{DATA}/data"), "-l", &log])
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.host_path(&format!("{DATA}/server.log"))).unwrap_or_default()
    }
}

fn package(dir: &Path, prefix: &str, version: &str) -> Result<String> {
    let name = format!("{prefix}_{version}_amd64.deb");
    ensure!(dir.join(&name).exists(), "{} missing (scripts/package-test.sh builds it)", dir.join(&name).display());
    Ok(format!("/tmp/packages/{name}"))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

fn main() {
    let Some(root) = std::env::var_os("SECRETGATE_CLEAN_ROOT") else {
        eprintln!("packages: SECRETGATE_CLEAN_ROOT is not set: run scripts/package-test.sh");
        std::process::exit(2);
    };
    let root = Root { path: PathBuf::from(root), port: free_port() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(walk(&root));
    let _ = root.pg_ctl("stop");
    match result {
        Ok(()) => println!("packages: the clean-system walk passed"),
        Err(e) => {
            eprintln!("packages: FAILED: {e:#}\n--- server log (tail) ---");
            let log = root.server_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
            std::process::exit(1);
        }
    }
}

async fn walk(root: &Root) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let previous = std::env::var("SECRETGATE_PREVIOUS_VERSION").context("SECRETGATE_PREVIOUS_VERSION")?;
    let packages = root.host_path("/tmp/packages");
    let previous_ext = package(&packages, "postgresql-15-secretgate", &previous)?;
    let current_ext = package(&packages, "postgresql-15-secretgate", version)?;
    let cli = package(&packages, "secretgate-cli", version)?;

    // 1. The previous version and the tool, a cluster configured as docs/installing.md says.
    ensure!(
        !root.host_path("/usr/lib/postgresql/15/lib/secretgate.so").exists(),
        "the clean root already holds secretgate.so"
    );
    root.run(&["dpkg", "-i", &previous_ext, &cli])?;
    let mut keys = TestKeys::generate(1);
    root.run(&["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", "/etc/secretgate", DATA])?;
    root.write_keyring(&keys)?;
    root.run_as_postgres(&[
        &format!("{PG_BIN}/initdb"),
        "-D",
        &format!("{DATA}/data"),
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
    ])?;
    let conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{DATA}'\n\
         shared_preload_libraries = 'secretgate'\nsecretgate.keyring_file = '{KEYRING}'\n",
        root.port
    );
    let conf_path = root.host_path(&format!("{DATA}/data/postgresql.conf"));
    let mut text = std::fs::read_to_string(&conf_path)?;
    text.push_str(&conf);
    std::fs::write(&conf_path, text)?;
    root.pg_ctl("start")?;
    let mut admin = connect_when_ready(&root.url("postgres"), Duration::from_secs(30)).await?;
    sqlx::query("CREATE DATABASE platform").execute(&mut admin).await?;
    root.secretgate("platform", &["migrate", "run"])?;
    let mut conn = PgConnection::connect(&root.url("platform")).await?;
    let installed: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'secretgate'")
        .fetch_one(&mut conn)
        .await?;
    ensure!(installed == previous, "the previous package created secretgate {installed}, not {previous}");
    let ws = Uuid::new_v4();
    sqlx::query("INSERT INTO workspaces (id, kind, status) VALUES ($1, 'workspace', 'provisioning')")
        .bind(ws)
        .execute(&mut conn)
        .await?;
    let value = random_hex(16);
    let global = random_hex(16);
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut conn)
        .await?;
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)").bind(&global).execute(&mut conn).await?;
    conn.close().await?;

    // 2. This version's package over the previous one.
    root.run(&["dpkg", "-i", &current_ext])?;
    root.pg_ctl("restart")?;
    let mut conn = connect_when_ready(&root.url("platform"), Duration::from_secs(30)).await?;
    sqlx::query("ALTER EXTENSION secretgate UPDATE").execute(&mut conn).await?;
    let updated: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'secretgate'")
        .fetch_one(&mut conn)
        .await?;
    ensure!(updated == version, "ALTER EXTENSION UPDATE left secretgate at {updated}, not {version}");
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')")
        .bind(ws)
        .fetch_one(&mut conn)
        .await?;
    ensure!(
        read.as_deref() == Some(value.as_str()),
        "a secret stored under {previous} does not read back after the update"
    );
    let read: Option<String> =
        sqlx::query_scalar("SELECT secretgate.read_global_secret('OPENAI_API_KEY')").fetch_one(&mut conn).await?;
    ensure!(read.as_deref() == Some(global.as_str()), "a global secret stored under {previous} does not read back");
    ensure!(root.secretgate("platform", &["--version"])?.contains(version), "secretgate --version is not {version}");

    // 3. The tour, then a refusal per gate and a rotation.
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tour.sql"), root.host_path("/tmp/tour.sql"))?;
    let port = root.port.to_string();
    let tour = root.run_as_postgres(&[
        &format!("{PG_BIN}/psql"),
        "-X",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-d",
        "platform",
        "-v",
        "ON_ERROR_STOP=0",
        "-f",
        "/tmp/tour.sql",
    ])?;
    for code in ["SG101", "SG102", "SG103", "SG105", "SG107", "SG001"] {
        ensure!(tour.contains(code), "the tour did not show {code}:\n{tour}");
    }
    one_refusal_per_gate(&mut conn, ws).await?;

    keys.add_version(2);
    root.write_keyring(&keys)?;
    sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await?;
    let rotated = root.secretgate("platform", &["rotate"])?;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM workspace_secrets WHERE encryption_version <> 2)
              + (SELECT count(*) FROM global_secrets WHERE encryption_version <> 2)",
    )
    .fetch_one(&mut conn)
    .await?;
    ensure!(left == 0, "after secretgate rotate, {left} row(s) are not under version 2:\n{rotated}");
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')")
        .bind(ws)
        .fetch_one(&mut conn)
        .await?;
    ensure!(read.as_deref() == Some(value.as_str()), "a rotated secret does not read back");
    root.secretgate("platform", &["verify"])?;
    conn.close().await?;
    admin.close().await?;

    // 4. Removal leaves nothing behind.
    root.pg_ctl("stop")?;
    root.run(&["dpkg", "-r", "postgresql-15-secretgate", "secretgate-cli"])?;
    // /etc/secretgate is the keyring this test made, not a package's file.
    let left = root.run(&["find", "/usr", "/etc", "-name", "*secretgate*", "-not", "-path", "/etc/secretgate*"])?;
    let left: Vec<&str> = left.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(left.is_empty(), "dpkg -r left secretgate files behind: {left:?}");
    let status = root.run(&["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\n"])?;
    if status.lines().any(|l| l.contains("secretgate")) {
        bail!("dpkg still knows a secretgate package: {status}");
    }
    Ok(())
}
