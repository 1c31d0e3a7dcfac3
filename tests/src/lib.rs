//! secretgate's black-box test harness.
//!
//! Each test binary (`tests/blackbox/*.rs`, run with libtest-mimic) starts ONE
//! throwaway PostgreSQL 15 cluster with [`Cluster::start`], runs its trials
//! against it over sqlx and stops it with [`finish`], even when trials fail.
//!
//! Rules every test follows:
//! * secret values are bind parameters, never SQL literals (Postgres logs the
//!   text of failed statements);
//! * assertion messages print SQLSTATEs, messages and details, never a value
//!   a test stored: values come from [`Cluster::fresh_secret`], and [`finish`]
//!   checks the server log contains none of them and no key.

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use libtest_mimic::{Conclusion, Failed, Trial};
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use libtest_mimic;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The migration runner's advisory lock key (`cli/src/migrate.rs`, `LOCK_KEY`).
pub const MIGRATION_LOCK_KEY: i64 = 0x5365_6372_6574_4761;

/// The project's migrations, embedded, for binaries that need a migrated database
/// without going through the command-line tool.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

// ---------------------------------------------------------------------------
// Random bytes and test keys

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// A short random lowercase hex string, for unique names.
pub fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// Versioned random AES-256 keys and the keyring JSON that holds them.
#[derive(Clone)]
pub struct TestKeys {
    pub current_version: i32,
    pub keys: BTreeMap<i32, Vec<u8>>,
}

impl TestKeys {
    /// Versions 1..=`versions`, the last one current.
    pub fn generate(versions: i32) -> TestKeys {
        let mut keys = TestKeys { current_version: versions, keys: BTreeMap::new() };
        for v in 1..=versions {
            keys.keys.insert(v, random_bytes(32));
        }
        keys
    }

    /// Adds a fresh random key `version` and makes it current (rotation).
    pub fn add_version(&mut self, version: i32) -> &mut Self {
        self.keys.insert(version, random_bytes(32));
        self.current_version = version;
        self
    }

    /// The same keys without `version` (an old key retired).
    pub fn without(&self, version: i32) -> TestKeys {
        let mut keys = self.clone();
        keys.keys.remove(&version);
        keys
    }

    /// `{"current_version": N, "keys": {"1": "<base64>", ...}}`
    pub fn to_json(&self) -> String {
        let keys: serde_json::Map<String, serde_json::Value> =
            self.keys.iter().map(|(v, k)| (v.to_string(), serde_json::Value::String(b64(k)))).collect();
        serde_json::json!({"current_version": self.current_version, "keys": keys}).to_string()
    }

    /// The same keys as the pure core sees them, to check ciphertexts independently.
    pub fn keyring(&self) -> secretgate_core::Keyring {
        secretgate_core::Keyring::parse(self.to_json().as_bytes()).expect("test keyring parses")
    }

    /// Every key in base64 and hex, to assert none of them leaks anywhere.
    pub fn encodings(&self) -> Vec<String> {
        self.keys.values().flat_map(|k| [b64(k), hex::encode(k)]).collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------
// The cluster

/// A throwaway PostgreSQL 15 cluster under /tmp, run by the `postgres` OS user
/// when we are root (the server refuses root), else by ourselves.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    /// (uid, gid) of the server user when we are root.
    owner: Option<(u32, u32)>,
    initial_keys: TestKeys,
    stopped: Mutex<bool>,
    secrets: Mutex<Vec<String>>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str, user: &str) -> Result<u32> {
    let out = Command::new("id").args([flag, user]).output().context("run id")?;
    if !out.status.success() {
        bail!("no OS user {user:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    /// initdb + configure + start. Panics with the server log on failure.
    pub fn start(name: &str) -> Cluster {
        match Cluster::try_start(name) {
            Ok(c) => c,
            Err(e) => panic!("cannot start the test cluster {name:?}: {e:#}"),
        }
    }

    fn try_start(name: &str) -> Result<Cluster> {
        let owner = if is_root() { Some((id_of("-u", "postgres")?, id_of("-g", "postgres")?)) } else { None };
        let dir = PathBuf::from(format!("/tmp/secretgate-bb-{name}-{}-{}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let cluster = Cluster {
            dir,
            port: free_port()?,
            owner,
            initial_keys: TestKeys::generate(2),
            stopped: Mutex::new(true),
            secrets: Mutex::new(Vec::new()),
        };
        cluster.chown(&cluster.dir)?;

        cluster.pg(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data_dir()),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        cluster.write_keyring(&cluster.initial_keys.to_json(), 0o600);

        let mut conf = format!(
            "\n# secretgate black-box harness\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             secretgate.keyring_file = '{keyring}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             log_min_messages = info\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = cluster.port,
            dir = cluster.dir.display(),
            keyring = cluster.keyring_path().display(),
        );
        if preload_wanted() {
            conf.push_str("shared_preload_libraries = 'secretgate'\n");
        }
        let conf_path = cluster.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).context("read postgresql.conf")?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).context("write postgresql.conf")?;

        *cluster.stopped.lock().unwrap() = false;
        let log = cluster.log_path();
        if let Err(e) = cluster
            .pg("pg_ctl", &["-D", path_str(&cluster.data_dir()), "-l", path_str(&log), "-w", "-t", "60", "start"])
        {
            *cluster.stopped.lock().unwrap() = true;
            bail!("{e:#}\n--- server.log ---\n{}", cluster.log_contents());
        }
        Ok(cluster)
    }

    /// Runs a PostgreSQL binary as the server user, in the cluster directory.
    fn pg(&self, program: &str, args: &[&str]) -> Result<()> {
        run_pg(self.owner.is_some(), &self.dir, program, args)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's URL for database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A URL for another role (trust authentication: no password).
    pub fn url_as(&self, role: &str, dbname: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn keyring_path(&self) -> PathBuf {
        self.dir.join("keyring.json")
    }

    /// The keys the cluster started with (versions 1 and 2, current 2).
    pub fn initial_keys(&self) -> &TestKeys {
        &self.initial_keys
    }

    /// Atomically replaces the keyring file (temp file + rename), owned by the
    /// server user, with `mode`.
    pub fn write_keyring(&self, json: &str, mode: u32) {
        let tmp = self.dir.join(format!(".keyring.{}.tmp", random_hex(4)));
        let result = (|| -> Result<()> {
            std::fs::write(&tmp, json)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            self.chown(&tmp)?;
            std::fs::rename(&tmp, self.keyring_path())?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            panic!("cannot write the keyring: {e:#}");
        }
    }

    pub fn chmod_keyring(&self, mode: u32) {
        std::fs::set_permissions(self.keyring_path(), std::fs::Permissions::from_mode(mode)).expect("chmod keyring");
    }

    /// Gives the keyring file to root (only meaningful when the server runs as `postgres`).
    pub fn chown_keyring_to_root(&self) {
        std::os::unix::fs::chown(self.keyring_path(), Some(0), Some(0)).expect("chown keyring");
    }

    pub fn restore_keyring_owner(&self) {
        self.chown(&self.keyring_path()).expect("chown keyring");
    }

    pub fn server_runs_as_other_user(&self) -> bool {
        self.owner.is_some()
    }

    pub fn remove_keyring(&self) {
        match std::fs::remove_file(self.keyring_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove the keyring: {e}"),
        }
    }

    /// `SELECT pg_reload_conf()`, then a short wait for backends to see it.
    pub fn reload(&self) {
        let url = self.url("postgres");
        blocking(move || async move {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await?;
            conn.close().await?;
            Ok(())
        })
        .expect("pg_reload_conf");
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Creates database `name` and returns its superuser URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "plain database names only: {name:?}");
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE \"{name}\"");
        blocking(move || async move {
            let mut conn = PgConnection::connect(&admin).await?;
            sqlx::raw_sql(&sql).execute(&mut conn).await?;
            conn.close().await?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e:#}"));
        self.url(name)
    }

    /// A recognizable random secret value (`sk-bb-<hex>`), remembered so that
    /// [`finish`] can check that it never reached the server log.
    pub fn fresh_secret(&self) -> String {
        let value = format!("sk-bb-{}", random_hex(12));
        self.secrets.lock().unwrap().push(value.clone());
        value
    }

    /// Remembers another value (or key encoding) that must never reach the log.
    pub fn remember_secret(&self, value: &str) {
        self.secrets.lock().unwrap().push(value.to_string());
    }

    /// Every value handed out by [`Cluster::fresh_secret`] so far.
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.lock().unwrap().clone()
    }

    /// `pg_ctl -m fast stop`; idempotent.
    pub fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        if let Err(e) = self.pg("pg_ctl", &["-D", path_str(&self.data_dir()), "-m", "fast", "-w", "stop"]) {
            eprintln!("warning: cannot stop the test cluster in {}: {e:#}", self.dir.display());
        }
        *stopped = true;
    }

    /// `pg_ctl restart -m <mode>` (`fast`, `immediate`, `smart`), waiting until
    /// the server accepts connections again. The log keeps growing in the same file.
    pub fn restart(&self, mode: &str) -> Result<()> {
        let data = self.data_dir();
        let log = self.log_path();
        self.pg("pg_ctl", &["-D", path_str(&data), "-l", path_str(&log), "-m", mode, "-w", "-t", "60", "restart"])
    }

    /// Appends settings to `postgresql.conf` (they apply at the next reload or restart).
    pub fn append_conf(&self, lines: &str) -> Result<()> {
        let path = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).context("read postgresql.conf")?;
        text.push('\n');
        text.push_str(lines);
        text.push('\n');
        std::fs::write(&path, text).context("write postgresql.conf")
    }

    /// Stops the server and deletes its directory.
    pub fn destroy(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a PostgreSQL binary in `dir`, as `postgres` when `as_postgres`.
fn run_pg(as_postgres: bool, dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    let exe = format!("{PG_BIN}/{program}");
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &exe]);
        c
    } else {
        Command::new(&exe)
    };
    let out =
        cmd.args(args).current_dir(dir).env_remove("PGDATA").output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Preload the library when it is installed (`SECRETGATE_PRELOAD=0` disables):
/// a GUC defined by a library is only superuser-protected once the library
/// is loaded in the backend.
fn preload_wanted() -> bool {
    match std::env::var("SECRETGATE_PRELOAD").as_deref() {
        Ok("0") | Ok("false") | Ok("no") => false,
        Ok("1") | Ok("true") | Ok("yes") => true,
        _ => Path::new("/usr/lib/postgresql/15/lib/secretgate.so").exists(),
    }
}

/// Runs an async body on its own thread and runtime, so sync helpers work from
/// inside a test's tokio runtime too.
fn blocking<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(body())
    })
    .join()
    .map_err(|_| anyhow!("helper thread panicked"))?
}

// ---------------------------------------------------------------------------
// Trials

/// A trial running an async test body on its own current-thread runtime.
pub fn trial<F, Fut>(name: &str, cluster: &Arc<Cluster>, body: F) -> Trial
where
    F: FnOnce(Arc<Cluster>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>>,
{
    let cluster = Arc::clone(cluster);
    Trial::test(name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
        rt.block_on(body(cluster)).map_err(|e| Failed::from(format!("{e:#}")))
    })
}

/// Ends a test binary: checks the server log holds no stored value and no
/// key, stops the cluster (keeping its directory when something failed) and
/// exits with libtest's code.
pub fn finish(cluster: Arc<Cluster>, conclusion: Conclusion) -> ! {
    let log_problems = log_leaks(&cluster);
    for problem in &log_problems {
        eprintln!("server log check FAILED: {problem}");
    }
    let failed = conclusion.has_failed() || !log_problems.is_empty();
    if failed {
        cluster.stop();
        eprintln!(
            "test cluster kept for inspection: {} (server log: {})",
            cluster.dir.display(),
            cluster.log_path().display()
        );
        std::process::exit(101);
    }
    cluster.destroy();
    std::process::exit(0)
}

/// Where the server log contains a value from `fresh_secret` or a key (line
/// numbers only: never the value itself).
pub fn log_leaks(cluster: &Cluster) -> Vec<String> {
    leaks_in(cluster, &cluster.log_contents(), "server.log")
}

/// Where `text` (another server's log, a tool's output) contains a value from
/// `fresh_secret` or a key of `cluster` (line numbers only, as [`log_leaks`]).
pub fn leaks_in(cluster: &Cluster, log: &str, name: &str) -> Vec<String> {
    let mut needles: Vec<(String, &str)> = cluster.secrets().into_iter().map(|s| (s, "a stored test value")).collect();
    needles.extend(cluster.initial_keys.encodings().into_iter().map(|k| (k, "a keyring key")));
    let mut problems = Vec::new();
    for (i, line) in log.lines().enumerate() {
        for (needle, what) in &needles {
            if line.contains(needle.as_str()) {
                problems.push(format!("{what} appears in {name} line {}", i + 1));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Hot standby

/// A hot standby of a [`Cluster`]: `pg_basebackup -R` over loopback run by
/// the server user, started with `hot_standby = on` on its own port. It keeps
/// the primary's postgresql.conf, so it reads the same keyring file.
/// Dropping it stops it; [`Standby::destroy`] also deletes its directory.
pub struct Standby {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: Mutex<bool>,
}

impl Standby {
    /// Base backup of `primary` (fast checkpoint, WAL streamed), then start.
    pub fn start(primary: &Cluster, name: &str) -> Result<Standby> {
        let dir = PathBuf::from(format!("/tmp/secretgate-bb-{name}-standby-{}-{}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        primary.chown(&dir)?;
        let standby =
            Standby { dir, port: free_port()?, as_postgres: primary.owner.is_some(), stopped: Mutex::new(true) };
        let data = standby.data_dir();
        let primary_port = primary.port().to_string();
        standby.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        // Later lines win: its own port and socket directory, reads allowed.
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).context("read the standby's postgresql.conf")?;
        text.push_str(&format!(
            "\n# secretgate black-box harness: hot standby\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            standby.port,
            standby.dir.display()
        ));
        std::fs::write(&conf_path, text).context("write the standby's postgresql.conf")?;
        *standby.stopped.lock().unwrap() = false;
        let log = standby.log_path();
        if let Err(e) = standby.pg("pg_ctl", &["-D", path_str(&data), "-l", path_str(&log), "-w", "-t", "60", "start"])
        {
            *standby.stopped.lock().unwrap() = true;
            bail!("{e:#}\n--- standby server.log ---\n{}", standby.log_contents());
        }
        Ok(standby)
    }

    fn pg(&self, program: &str, args: &[&str]) -> Result<()> {
        run_pg(self.as_postgres, &self.dir, program, args)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's URL for database `dbname` on the standby.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// `pg_ctl -m fast stop`; idempotent.
    pub fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        if let Err(e) = self.pg("pg_ctl", &["-D", path_str(&self.data_dir()), "-m", "fast", "-w", "stop"]) {
            eprintln!("warning: cannot stop the standby in {}: {e:#}", self.dir.display());
        }
        *stopped = true;
    }

    /// Stops the standby and deletes its directory.
    pub fn destroy(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `standby` has replayed everything `primary` had committed when
/// called (`pg_last_wal_replay_lsn() >= pg_current_wal_insert_lsn()`: the
/// insert position, since with `synchronous_commit = off` a commit record may
/// not be written out yet); an error after `limit`, so a broken replication
/// fails instead of hanging.
pub async fn wait_for_replay(primary: &mut PgConnection, standby: &mut PgConnection, limit: Duration) -> Result<()> {
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *primary)
        .await
        .described("pg_current_wal_insert_lsn")?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let caught_up: Option<bool> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&target)
            .fetch_one(&mut *standby)
            .await
            .described("pg_last_wal_replay_lsn")?;
        if caught_up == Some(true) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the standby did not replay up to {target} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Databases

/// A fresh database with every project migration applied (tables, extension,
/// gates attached), using sqlx's own migrator.
pub async fn migrated_database(cluster: &Cluster, name: &str) -> Result<(String, PgConnection)> {
    let url = cluster.create_database(name);
    let mut conn = PgConnection::connect(&url).await.context("connect")?;
    MIGRATOR.run(&mut conn).await.map_err(|e| anyhow!("applying the migrations to {name}: {e}"))?;
    Ok((url, conn))
}

/// Connects to `url`, retrying for up to `limit` while the server is starting
/// up or recovering from a crash (any backend killed makes the postmaster
/// restart every session).
pub async fn connect_when_ready(url: &str, limit: Duration) -> Result<PgConnection> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("the server did not accept connections within {}s: {}", limit.as_secs(), describe(&e)),
        }
    }
}

/// A fresh database with nothing in it.
pub async fn empty_database(cluster: &Cluster, name: &str) -> Result<(String, PgConnection)> {
    let url = cluster.create_database(name);
    let conn = PgConnection::connect(&url).await.context("connect")?;
    Ok((url, conn))
}

/// A unique database name: `prefix_<hex>`.
pub fn db_name(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(4))
}

// ---------------------------------------------------------------------------
// Errors

/// What a test may look at in a database error: never a stored value.
#[derive(Debug, Clone)]
pub struct DbError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// DETAIL parsed as JSON, when it is JSON.
    pub detail_json: Option<serde_json::Value>,
}

impl DbError {
    /// A DETAIL JSON field as a string, if present.
    pub fn field(&self, name: &str) -> Option<String> {
        self.detail_json.as_ref()?.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Message, detail and hint together, for leak checks.
    pub fn all_text(&self) -> String {
        format!("{}\n{}\n{}", self.message, self.detail.as_deref().unwrap_or(""), self.hint.as_deref().unwrap_or(""))
    }

    /// Fails when any of `needles` appears in the message, detail or hint
    /// (without printing the needle).
    pub fn assert_no_leak(&self, needles: &[&str]) -> Result<()> {
        let text = self.all_text();
        for (i, needle) in needles.iter().enumerate() {
            if !needle.is_empty() && text.contains(needle) {
                bail!("error {} leaks stored value #{i} in its message, detail or hint", self.sqlstate);
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQLSTATE {} message {:?}", self.sqlstate, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " detail {d:?}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint {h:?}")?;
        }
        Ok(())
    }
}

/// The SQLSTATE of a database error.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
}

/// The parts of a Postgres error.
pub fn db_error(err: &sqlx::Error) -> Option<DbError> {
    let pg = err.as_database_error()?.try_downcast_ref::<PgDatabaseError>()?;
    let detail = pg.detail().map(str::to_string);
    Some(DbError {
        sqlstate: pg.code().to_string(),
        message: pg.message().to_string(),
        detail_json: detail.as_deref().and_then(|d| serde_json::from_str(d).ok()),
        detail,
        hint: pg.hint().map(str::to_string),
    })
}

/// Describes a sqlx error without values: a database error's parts, or the error kind.
pub fn describe(err: &sqlx::Error) -> String {
    match db_error(err) {
        Some(e) => e.to_string(),
        None => format!("non-database error: {err}"),
    }
}

/// Expects `result` to fail with `code`; returns the error's parts. The
/// successful value, if any, is never printed.
pub fn expect_sqlstate<T>(result: std::result::Result<T, sqlx::Error>, code: &str) -> Result<DbError> {
    match result {
        Ok(_) => bail!("expected SQLSTATE {code}, but the statement succeeded"),
        Err(err) => match db_error(&err) {
            Some(e) if e.sqlstate == code => Ok(e),
            Some(e) => bail!("expected SQLSTATE {code}, got {e}"),
            None => bail!("expected SQLSTATE {code}, got a non-database error: {err}"),
        },
    }
}

/// Like [`expect_sqlstate`] for a secretgate code: also checks that the
/// message starts with `WORD: ` and DETAIL is JSON with `code` and `sqlstate`.
pub fn expect_sg<T>(result: std::result::Result<T, sqlx::Error>, code: secretgate_core::Code) -> Result<DbError> {
    let e = expect_sqlstate(result, code.sqlstate())?;
    let prefix = format!("{}: ", code.word());
    if !e.message.starts_with(&prefix) {
        bail!("message should start with {prefix:?}: {e}");
    }
    if !e.detail_json.as_ref().is_some_and(|d| d.is_object()) {
        bail!("DETAIL should be a JSON object: {e}");
    }
    if e.field("code").as_deref() != Some(code.word()) {
        bail!("DETAIL \"code\" should be {:?}: {e}", code.word());
    }
    if e.field("sqlstate").as_deref() != Some(code.sqlstate()) {
        bail!("DETAIL \"sqlstate\" should be {:?}: {e}", code.sqlstate());
    }
    Ok(e)
}

/// Turns a sqlx result into an anyhow one that describes the error without values.
pub trait Described<T> {
    fn described(self, what: &str) -> Result<T>;
}

impl<T> Described<T> for std::result::Result<T, sqlx::Error> {
    fn described(self, what: &str) -> Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", describe(&e)))
    }
}

// ---------------------------------------------------------------------------
// The command-line tool

/// The `secretgate` binary: `SECRETGATE_BIN`, else `<workspace>/target/debug/secretgate`.
pub fn secretgate_bin() -> PathBuf {
    match std::env::var_os("SECRETGATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/secretgate"),
    }
}

/// What one run of the tool did.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CliRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `secretgate <args>` with `DATABASE_URL` set to `url` (when given).
pub async fn run_cli(url: Option<&str>, args: &[&str]) -> Result<CliRun> {
    let bin = secretgate_bin();
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build -p secretgate-cli) or set SECRETGATE_BIN", bin.display());
    }
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args).env_remove("DATABASE_URL").kill_on_drop(true);
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .map_err(|_| anyhow!("secretgate {args:?} did not finish within 180s"))?
        .with_context(|| format!("run {}", bin.display()))?;
    Ok(CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A running `secretgate` whose output is collected while it runs.
pub struct RunningCli {
    child: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

pub fn spawn_cli(url: &str, args: &[&str]) -> Result<RunningCli> {
    let bin = secretgate_bin();
    ensure!(
        bin.exists(),
        "{} not found: build it first (cargo build -p secretgate-cli) or set SECRETGATE_BIN",
        bin.display()
    );
    let mut child = tokio::process::Command::new(&bin)
        .args(args)
        .env("DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut err = child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?;
    let stdout = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut out, &mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let stderr = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    Ok(RunningCli { child, stdout, stderr })
}

impl RunningCli {
    pub fn exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    pub async fn wait(mut self, limit: Duration) -> Result<CliRun> {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.start_kill();
                bail!("secretgate did not finish within {}s", limit.as_secs());
            }
        };
        Ok(CliRun { code: status.code(), stdout: self.stdout.await?, stderr: self.stderr.await? })
    }

    pub async fn kill(mut self) -> Result<CliRun> {
        self.child.start_kill()?;
        self.wait(Duration::from_secs(30)).await
    }
}

/// Migrates one throwaway database before a binary's parallel trials: the
/// first CREATE EXTENSION creates the cluster-wide role `secretgate_agent`,
/// and two of them racing in different databases can fail with 23505 on
/// pg_authid_rolname_index (the extension's IF NOT EXISTS check is not atomic).
pub fn migrate_once(cluster: &Arc<Cluster>) {
    let cluster = Arc::clone(cluster);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let (_url, conn) = migrated_database(&cluster, &db_name("warmup")).await?;
        conn.close().await?;
        anyhow::Ok(())
    })
    .unwrap_or_else(|e| panic!("warm-up migration: {e:#}"));
}

/// A bind parameter for [`execute_with`] (values are never printed).
#[derive(Clone)]
pub enum Arg {
    Id(uuid::Uuid),
    Text(String),
    Bytes(Vec<u8>),
}

/// Runs `sql` with `args` bound in order.
pub async fn execute_with(conn: &mut PgConnection, sql: &str, args: &[Arg]) -> std::result::Result<(), sqlx::Error> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Id(id) => q.bind(*id),
            Arg::Text(t) => q.bind(t.clone()),
            Arg::Bytes(b) => q.bind(b.clone()),
        };
    }
    q.execute(conn).await.map(|_| ())
}

// ---------------------------------------------------------------------------
// Rotation fixtures (rotate.rs, faults.rs): rows whose plaintexts derive from a salt

pub fn restore_baseline_keyring(cluster: &Cluster) {
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
}

/// The baseline keys plus a fresh version 3, current, written to the keyring.
pub fn rotate_keyring(cluster: &Cluster) -> TestKeys {
    let mut keys = cluster.initial_keys().clone();
    keys.add_version(3);
    for k in keys.encodings() {
        cluster.remember_secret(&k);
    }
    cluster.write_keyring(&keys.to_json(), 0o600);
    keys
}

/// Rows whose plaintext is not the one `populate` derived (rows named in
/// `skip` excluded). Fails if any row cannot be decrypted.
pub async fn mismatches(conn: &mut PgConnection, salt: &str, skip: &[(uuid::Uuid, String)]) -> Result<i64> {
    let skip_ws: Vec<uuid::Uuid> = skip.iter().map(|s| s.0).collect();
    let skip_keys: Vec<String> = skip.iter().map(|s| s.1.clone()).collect();
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.workspace_secrets s
                 WHERE secretgate.decrypt(s.encrypted_value, s.encryption_version, s.workspace_id, s.key)
                       IS DISTINCT FROM md5($1 || substr(s.key, 3))
                   AND (s.workspace_id, s.key) NOT IN (SELECT * FROM unnest($2::uuid[], $3::text[])))
              + (SELECT count(*) FROM public.global_secrets g
                 WHERE secretgate.decrypt(g.encrypted_value, g.encryption_version, NULL, g.key)
                       IS DISTINCT FROM md5($1 || 'g' || substr(g.key, 3)))",
    )
    .bind(salt)
    .bind(&skip_ws)
    .bind(&skip_keys)
    .fetch_one(&mut *conn)
    .await
    .described("compare every plaintext with the derived one")
}

/// md5 over every plaintext, in a stable order. Decrypted with
/// `secretgate.decrypt` on the stored columns: `read_secret` (one lookup per
/// row) gives the same plaintexts but takes ~20x longer over 100,000 rows.
pub async fn checksum(conn: &mut PgConnection) -> Result<String> {
    sqlx::query_scalar(
        "SELECT md5(coalesce((SELECT string_agg(secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key), ','
                                                ORDER BY workspace_id, key)
                              FROM public.workspace_secrets), '')
                    || '|' ||
                    coalesce((SELECT string_agg(secretgate.decrypt(encrypted_value, encryption_version, NULL, key), ',' ORDER BY key)
                              FROM public.global_secrets), ''))",
    )
    .fetch_one(&mut *conn)
    .await
    .described("checksum of every plaintext")
}

/// (encryption_version, rows) over both tables.
pub async fn histogram(conn: &mut PgConnection) -> Result<Vec<(i32, i64)>> {
    sqlx::query_as(
        "SELECT encryption_version, count(*) FROM
           (SELECT encryption_version FROM public.workspace_secrets UNION ALL SELECT encryption_version FROM public.global_secrets) x
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .described("versions histogram")
}

/// (state, rows) of verify_secrets over everything.
pub async fn verify_states(conn: &mut PgConnection) -> Result<Vec<(String, Option<String>, i64)>> {
    sqlx::query_as("SELECT state, error_code, count(*) FROM secretgate.verify_secrets() GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(&mut *conn)
        .await
        .described("verify_secrets")
}
