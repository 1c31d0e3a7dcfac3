//! A hot standby of a test cluster.

use crate::cluster::{free_port, path_str, run_pg, Cluster};
use crate::errors::Described;
use crate::keys::random_hex;
use anyhow::{bail, Context, Result};
use sqlx::postgres::PgConnection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A hot standby of a [`Cluster`]: `pg_basebackup -R` over loopback run by
/// the server user, started with `hot_standby = on` on its own port. It keeps
/// the primary's postgresql.conf, so it reads the same keyring file.
/// Dropping it stops it; [`Standby::destroy`] also deletes its directory.
pub struct Standby {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The primary's server `bin` directory.
    bin: PathBuf,
    stopped: Mutex<bool>,
}

impl Standby {
    /// Base backup of `primary` (fast checkpoint, WAL streamed), then start.
    pub fn start(primary: &Cluster, name: &str) -> Result<Standby> {
        let dir = PathBuf::from(format!("/tmp/secretgate-bb-{name}-standby-{}-{}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        primary.chown(&dir)?;
        let standby = Standby {
            dir,
            port: free_port()?,
            as_postgres: primary.owner.is_some(),
            bin: primary.bin().to_path_buf(),
            stopped: Mutex::new(true),
        };
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
        run_pg(&self.bin, self.as_postgres, &self.dir, program, args)
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
