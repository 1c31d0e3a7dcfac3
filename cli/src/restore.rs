//! `secretgate restore`: brings a kept version of a secret back
//! (`secretgate.restore_secret`, `secretgate.restore_global_secret`).
//!
//! It shows the version's line from `secret_versions` (never a value), asks
//! on a terminal unless `--yes` is given, then, in one transaction, reads the
//! line again (a version that changed while the question was open is not
//! restored) and calls the restore function with bind parameters. The
//! restore writes through every gate, so the server may refuse it (SG101 for
//! an agent caller on a platform workspace, SG105, SG107, SG102 at commit,
//! …); its error is printed as every command prints a database error, with
//! its SQLSTATE.
//!
//! Exit codes: 0 restored; 1 the server refused it, the version is not kept,
//! or the answer was not yes; 2 usage or connection error (standard input is
//! not a terminal and no `--yes`, an extension without secret history).

use crate::db;
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use crate::history::{self, is_missing_object, query_failure, Scope, ScopeArgs, Version};
use anyhow::anyhow;
use clap::Args;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::io::{BufRead, IsTerminal, Write};

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// The key name to restore
    #[arg(long, value_name = "KEY")]
    key: String,
    /// The version to bring back, as `secretgate history` numbers it (1 or more)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    version: i32,
    /// Restore without asking (required when standard input is not a terminal)
    #[arg(long)]
    yes: bool,
}

pub async fn main(url: &str, args: RestoreArgs) -> Result<(), Failure> {
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(Failure::usage(anyhow!(
            "standard input is not a terminal, so there is no one to ask: pass --yes to restore without asking"
        )));
    }
    let scope = args.scope.scope();
    let mut conn = db::connect(url, "secretgate-restore").await?;
    let result = run(&mut conn, scope, &args).await;
    let _ = conn.close().await;
    result
}

async fn run(conn: &mut PgConnection, scope: Scope, args: &RestoreArgs) -> Result<(), Failure> {
    let key = args.key.as_str();
    let shown = version_line(conn, scope, key, args.version).await?;
    println!("restoring key {key} of {scope} to this version:");
    history::print_table(std::slice::from_ref(&shown));
    if !args.yes && !confirmed(&format!("restore version {} of {key}? [y/N] ", args.version)) {
        return Err(Failure::check(anyhow!("not restored: the answer was not yes")));
    }

    let mut tx = conn.begin().await.map_err(|e| restore_failure(&e))?;
    let now = version_line(&mut tx, scope, key, args.version).await?;
    if now.row != shown.row {
        let _ = tx.rollback().await;
        return Err(Failure::check(anyhow!(
            "not restored: version {} of key {key} changed while the question was open; run secretgate history and try again",
            args.version
        )));
    }
    let call = match scope {
        Scope::Workspace(ws) => {
            sqlx::query("SELECT secretgate.restore_secret($1, $2, $3)").bind(ws).bind(key).bind(args.version)
        }
        Scope::Global => sqlx::query("SELECT secretgate.restore_global_secret($1, $2)").bind(key).bind(args.version),
    };
    call.execute(&mut *tx).await.map_err(|e| restore_failure(&e))?;
    // Gates checked at commit (a platform workspace's MODEL) refuse here.
    tx.commit().await.map_err(|e| restore_failure(&e))?;
    println!("restored: key {key} of {scope} holds version {}'s value again", args.version);
    Ok(())
}

/// The line of version `n` of `key`; a version that is not kept is a failed check.
async fn version_line(conn: &mut PgConnection, scope: Scope, key: &str, n: i32) -> Result<Version, Failure> {
    let versions = history::versions(conn, scope, Some(key)).await?;
    versions.into_iter().find(|v| v.number() == Some(i64::from(n))).ok_or_else(|| {
        let listing = match scope {
            Scope::Workspace(ws) => format!("secretgate history --workspace {ws} --key {key}"),
            Scope::Global => format!("secretgate history --global --key {key}"),
        };
        Failure::check(anyhow!("not restored: key {key} of {scope} has no version {n} kept (`{listing}` lists them)"))
    })
}

/// Asks `question` on standard error and reads one line: yes only for `y` or `yes`.
fn confirmed(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(_) => is_yes(&answer),
        Err(_) => false,
    }
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// The restore (or its commit) failed: a refusal by the server is a failed
/// check (1); an extension without `restore_secret` or a lost connection is 2.
fn restore_failure(e: &sqlx::Error) -> Failure {
    match sqlstate(e).as_deref() {
        None => Failure::usage(anyhow!(
            "lost the database connection while restoring ({}); run secretgate history to see whether it committed",
            describe(e)
        )),
        Some(code) if is_missing_object(code) => query_failure("cannot restore", e),
        Some(_) => Failure::check(anyhow!("restore refused: {}", describe(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RestoreArgs,
    }

    const WS: &str = "6f1c0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

    fn parse(args: &[&str]) -> Result<RestoreArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("restore").chain(args.iter().copied())).map(|c| c.args)
    }

    fn kind(args: &[&str]) -> Option<ErrorKind> {
        parse(args).err().map(|e| e.kind())
    }

    #[test]
    fn a_scope_a_key_and_a_version_from_one() -> Result<(), Box<dyn std::error::Error>> {
        let a = parse(&["--workspace", WS, "--key", "MODEL", "--version", "2"])?;
        assert_eq!(a.scope.scope(), Scope::Workspace(WS.parse()?));
        assert_eq!((a.key.as_str(), a.version, a.yes), ("MODEL", 2, false));
        let a = parse(&["--global", "--key", "OPENAI_API_KEY", "--version", "1", "--yes"])?;
        assert_eq!(a.scope.scope(), Scope::Global);
        assert_eq!((a.key.as_str(), a.version, a.yes), ("OPENAI_API_KEY", 1, true));

        assert_eq!(
            kind(&["--workspace", WS, "--global", "--key", "K", "--version", "1"]),
            Some(ErrorKind::ArgumentConflict)
        );
        assert_eq!(kind(&["--key", "K", "--version", "1"]), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(kind(&["--global", "--version", "1"]), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(kind(&["--global", "--key", "K"]), Some(ErrorKind::MissingRequiredArgument));
        for bad in ["0", "-1", "two", "2147483648"] {
            let arg = format!("--version={bad}");
            assert_eq!(kind(&["--global", "--key", "K", &arg]), Some(ErrorKind::ValueValidation), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn only_y_or_yes_confirms() {
        for yes in ["y", "Y", "yes", "YES\n", " y \n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y es", "oui"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
