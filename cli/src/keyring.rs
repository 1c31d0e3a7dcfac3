//! `secretgate keyring new | add-version FILE | check` (docs/reference/keyring.md).
//!
//! `new` and `add-version` work on a keyring file and need no database: the
//! file is written 0600 through a temporary file in the same directory and
//! an atomic rename, and a key is never printed (unless `new --stdout`,
//! which prints the keyring and writes nothing, to pipe into a KMS).
//! `check` asks the server (`secretgate.key_check_status()`) how its keyring
//! compares with the database's key check values; no row is decrypted.

use crate::db::{self, TOOL_VERSION};
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use anyhow::anyhow;
use clap::{Args, Subcommand};
use sqlx::Connection;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct KeyringArgs {
    #[command(subcommand)]
    command: KeyringCommand,
}

#[derive(Subcommand)]
enum KeyringCommand {
    /// Write a new keyring (one random 32-byte key, version 1) to FILE, mode 0600; the key is never printed
    New {
        /// Where to write it (refuses to replace an existing file)
        #[arg(long, value_name = "FILE", required_unless_present = "stdout", conflicts_with = "stdout")]
        out: Option<PathBuf>,
        /// Print the keyring on standard output instead (to encrypt it for a KMS); writes no file
        #[arg(long)]
        stdout: bool,
    },
    /// Add a new random key to FILE as the next version and make it current, keeping the old ones
    AddVersion {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Compare the server's keyring with the database's key check values, per version,
    /// without decrypting any row; exit 1 on a mismatch or a key missing from the keyring
    Check,
}

pub async fn main(url: Option<&str>, args: KeyringArgs) -> Result<(), Failure> {
    match args.command {
        KeyringCommand::New { stdout: true, .. } => {
            let json = secretgate_core::new_keyring_json();
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::usage(anyhow!(e)))
        }
        KeyringCommand::New { out: Some(path), .. } => {
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(Failure::usage(anyhow!(
                    "{} exists already: refusing to replace a keyring (use `secretgate keyring add-version` to add a key)",
                    path.display()
                )));
            }
            let json = secretgate_core::new_keyring_json();
            write_atomically(&path, json.as_bytes())?;
            println!("wrote a new keyring to {} (mode 0600): key version 1, current", path.display());
            println!(
                "give it to the server's user (chown postgres), set secretgate.keyring_file = '{}' and reload",
                absolute(&path).display()
            );
            Ok(())
        }
        KeyringCommand::New { .. } => Err(Failure::usage(anyhow!("give --out FILE or --stdout"))),
        KeyringCommand::AddVersion { file } => {
            let old = zeroize::Zeroizing::new(
                std::fs::read(&file).map_err(|e| Failure::usage(anyhow!("cannot read {}: {e}", file.display())))?,
            );
            let (json, version) = secretgate_core::add_version_json(&old)
                .map_err(|e| Failure::usage(anyhow!("{}: {e}", file.display())))?;
            write_atomically(&file, json.as_bytes())?;
            println!("added key version {version} to {} and made it current (mode 0600)", file.display());
            println!(
                "next: reload the server (SELECT pg_reload_conf()), run `secretgate rotate`, then `secretgate keyring check`; \
                 retire an old version only once it shows `unused`"
            );
            Ok(())
        }
        KeyringCommand::Check => {
            let url = url
                .ok_or_else(|| Failure::usage(anyhow!("no database given: pass --database-url or set DATABASE_URL")))?;
            check(url).await
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes `bytes` to a new 0600 file next to `path`, syncs it, and renames it
/// over `path`: a reader sees the old keyring or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Failure::usage(anyhow!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The mode is 0600 whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::usage(anyhow!("cannot write {}: {e}", path.display()))
    })
}

/// One key version as the server reports it.
pub struct VersionStatus {
    pub version: i32,
    pub status: String,
    pub secrets: i64,
    pub current: bool,
}

/// `secretgate.key_check_status()`.
pub async fn statuses(conn: &mut sqlx::PgConnection) -> Result<Vec<VersionStatus>, sqlx::Error> {
    let rows: Vec<(i32, String, i64, bool)> =
        sqlx::query_as("SELECT version, status, secrets, is_current FROM secretgate.key_check_status() ORDER BY 1")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(version, status, secrets, current)| VersionStatus { version, status, secrets, current })
        .collect())
}

async fn check(url: &str) -> Result<(), Failure> {
    let mut conn = db::connect(url, "secretgate-keyring-check").await?;
    let result = statuses(&mut conn).await;
    let _ = conn.close().await;
    let rows = result.map_err(|e| match sqlstate(&e) {
        Some(code) if code.starts_with("SG") => {
            Failure::check(anyhow!("the server cannot use its keyring ({})", describe(&e)))
        }
        Some(_) => Failure::usage(anyhow!(
            "cannot compare the keyring ({}); is the secretgate extension at {TOOL_VERSION} and migrated?",
            describe(&e)
        )),
        None => Failure::usage(anyhow!("lost the database connection: {}", describe(&e))),
    })?;
    let mut problems = 0;
    for r in &rows {
        let current = if r.current { ", current" } else { "" };
        let note = match r.status.as_str() {
            "mismatch" => {
                problems += 1;
                ": the server's key is not the one this database's secrets were written with (SG004)"
            }
            "missing from keyring" => {
                problems += 1;
                ": rows use it and the server's keyring has no key for it (SG002)"
            }
            "unused" => ": no secret uses it; it may be retired from the keyring once every database shows this",
            "unchecked" => ": no key check value recorded yet (it is recorded at the version's next use)",
            _ => "",
        };
        println!("key version {}: {} ({} secret(s){current}){note}", r.version, r.status, r.secrets);
    }
    if problems > 0 {
        return Err(Failure::check(anyhow!("{problems} key version(s) do not match this database (listed above)")));
    }
    Ok(())
}
