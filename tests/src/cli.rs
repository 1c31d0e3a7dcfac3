//! The `secretgate` command-line tool, run or spawned against a test database.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The migration runner's advisory lock key (`cli/src/migrate.rs`, `LOCK_KEY`).
pub const MIGRATION_LOCK_KEY: i64 = 0x5365_6372_6574_4761;

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
