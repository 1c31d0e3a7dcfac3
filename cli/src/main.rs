//! `secretgate`: the command-line tool (docs/reference/cli.md).
//!
//! Exit codes: 0 success, 1 a check failed, 2 usage or connection error.

mod adopt;
mod audit;
mod db;
mod db_error;
mod failure;
mod history;
mod keyring;
mod manual;
mod migrate;
mod probe;
mod restore;
mod rotate;
mod verify;

use clap::{CommandFactory, Parser, Subcommand};
use failure::{one_line, Failure};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "secretgate",
    version,
    about = "secretgate: migrations and maintenance for encrypted workspace secrets"
)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, value_name = "URL")]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the audit trail (refusals, administrative events, audited reads; never a value), or follow it
    Audit(audit::AuditArgs),
    /// List the kept versions of a workspace's (or the global) secrets, newest first: when each
    /// was replaced, by whom, why, and whether it decrypts; never a value
    History(history::HistoryArgs),
    /// Bring a kept version of a secret back (through every gate), after showing it and asking
    Restore(restore::RestoreArgs),
    /// Apply, list or revert the embedded schema migrations
    Migrate(migrate::MigrateArgs),
    /// Probe every BYOK credential (or one workspace's) against its provider and record the verdict
    Probe(probe::ProbeArgs),
    /// List every secret that does not decrypt (workspace, key, error code; never a value); exit 1 if any
    Verify,
    /// Re-encrypt every secret under the current key version, in batches, with a progress bar;
    /// resumable after an interruption; ends with the verification pass
    Rotate(rotate::RotateArgs),
    /// Make a keyring file (new), add a current key version (add-version FILE), or compare the
    /// server's keyring with the database's key check values (check)
    Keyring(keyring::KeyringArgs),
    /// Check a database before and during adoption, changing nothing: whether the tables attach
    /// (and what blocks them), rows per key version and format, unreadable rows, where the model
    /// comes from, which roles are agents, and the next step; exit 0 only when ready
    Adopt(adopt::AdoptArgs),
    /// Write the man pages and shell completions into a folder (used by scripts/package.sh)
    #[command(hide = true)]
    GenerateManual {
        /// Folder to write `man/` and `completions/` into
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::GenerateManual { out } = &cli.command {
        return match manual::write(Cli::command(), out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        if let Command::Keyring(args) = cli.command {
            return keyring::main(cli.database_url.as_deref(), args).await;
        }
        let url = cli.database_url.ok_or_else(|| {
            Failure::usage(anyhow::anyhow!("no database given: pass --database-url or set DATABASE_URL"))
        })?;
        match cli.command {
            Command::Audit(args) => audit::main(&url, args).await,
            Command::History(args) => history::main(&url, args).await,
            Command::Restore(args) => restore::main(&url, args).await,
            Command::Migrate(args) => migrate::main(&url, args).await,
            Command::Probe(args) => probe::main(&url, args).await,
            Command::Verify => verify::main(&url).await,
            Command::Rotate(args) => rotate::main(&url, args).await,
            Command::Keyring(_) => unreachable!("handled above"),
            Command::Adopt(args) => adopt::main(&url, args).await,
            Command::GenerateManual { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", one_line(&format!("{:#}", failure.error)));
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restore_version_is_the_version_to_restore_not_the_tools() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["secretgate", "restore", "--global", "--key", "MODEL", "--version", "3"])?;
        assert!(matches!(cli.command, Command::Restore(_)));
        let e = Cli::try_parse_from(["secretgate", "--version"]).err().map(|e| e.kind());
        assert_eq!(e, Some(clap::error::ErrorKind::DisplayVersion));
        Ok(())
    }

    #[test]
    fn history_and_restore_have_a_man_page_and_completions() -> Result<(), Box<dyn std::error::Error>> {
        let out = std::env::temp_dir().join(format!("secretgate-manual-{}", std::process::id()));
        let written = manual::write(Cli::command(), &out);
        let pages: Vec<String> = std::fs::read_dir(out.join("man"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        let bash = std::fs::read_to_string(out.join("completions").join("secretgate.bash"))?;
        std::fs::remove_dir_all(&out)?;
        written?;
        for page in ["secretgate-history.1", "secretgate-restore.1", "secretgate-audit.1"] {
            assert!(pages.iter().any(|p| p == page), "{page} not in {pages:?}");
        }
        for word in ["--reads", "--global", "--yes"] {
            assert!(bash.contains(word), "{word} not completed");
        }
        Ok(())
    }
}
