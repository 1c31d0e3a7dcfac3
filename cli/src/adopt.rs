//! `secretgate adopt`: where a database stands on the way to secretgate
//! (docs/adopting.md). It changes nothing: it reads the catalog, asks the server
//! whether the tables attach (`secretgate.attach_check`), counts rows per key
//! version and format and the rows the current keyring cannot read
//! (`secretgate.adoption_rows`: decrypted in the server, never a value here),
//! says where the model comes from and which roles are agents, and names
//! the next step. The last line is `status: <stage>`.
//!
//! Exit codes: 0 ready (attached, every row readable and bound, the current
//! key version bound); 1 not there yet (the report says why); 2 usage or
//! connection error.

use crate::db;
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use anyhow::anyhow;
use clap::Args;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

#[derive(Args)]
pub struct AdoptArgs {
    /// The workspaces table to check (when none is attached yet)
    #[arg(long, default_value = "public.workspaces", value_name = "TABLE")]
    workspaces: String,
    /// The workspace secrets table to check (when none is attached yet)
    #[arg(long, default_value = "public.workspace_secrets", value_name = "TABLE")]
    secrets: String,
    /// The global secrets table to check (when none is attached yet)
    #[arg(long, default_value = "public.global_secrets", value_name = "TABLE")]
    global_secrets: String,
}

/// Where the database stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Something keeps the tables from being attached (or the extension is missing).
    Blocked,
    /// The tables attach; they are not attached yet.
    Attachable,
    /// Attached; rows remain unreadable, unbound or plaintext, or the current version is not bound.
    Adopting,
    /// Attached, every row readable and bound under the current, bound version.
    Ready,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Blocked => "blocked",
            Stage::Attachable => "attachable",
            Stage::Adopting => "adopting",
            Stage::Ready => "ready",
        }
    }
}

/// Rows of one key version.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: Option<i32>,
    pub format: String,
    pub rows: i64,
    pub unreadable: i64,
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    pub attached: bool,
    pub problems: Vec<String>,
    /// (version, format, current) of the keyring.
    pub keyring: Vec<(i32, String, bool)>,
    pub rows: Vec<Version>,
}

/// The stage and the next step, from what was found.
pub fn next_step(f: &Findings) -> (Stage, String) {
    if !f.problems.is_empty() {
        return (Stage::Blocked, "fix the problems listed under \"attach\", then run secretgate adopt again".into());
    }
    if !f.attached {
        return (
            Stage::Attachable,
            "attach the gates as the tables' owner (or a superuser): SELECT secretgate.attach_gates(workspaces, secrets, global_secrets)".into(),
        );
    }
    let unreadable: i64 = f.rows.iter().map(|v| v.unreadable).sum();
    if unreadable > 0 {
        let versions: Vec<String> = f
            .rows
            .iter()
            .filter(|v| v.unreadable > 0)
            .map(|v| v.version.map_or("NULL".to_string(), |n| n.to_string()))
            .collect();
        return (
            Stage::Adopting,
            format!(
                "{unreadable} row(s) cannot be read with the current keyring (version(s) {}): add the key each version was written under to the keyring (\"unbound\" for the application's own AES-256-GCM key, \"plaintext\" for unencrypted rows), or set those rows again",
                versions.join(", ")
            ),
        );
    }
    let current = f.keyring.iter().find(|(_, _, current)| *current);
    let Some((current, format, _)) = current else {
        return (Stage::Adopting, "the keyring has no current version".into());
    };
    if format != "bound" {
        return (
            Stage::Adopting,
            format!(
                "the current key version {current} is {format}: add a bound key version (a bare base64 key), make it current, then run secretgate rotate"
            ),
        );
    }
    let stale: i64 = f.rows.iter().filter(|v| v.version != Some(*current) || v.format != "bound").map(|v| v.rows).sum();
    if stale > 0 {
        return (
            Stage::Adopting,
            format!("{stale} row(s) are not under the current bound version {current}: run secretgate rotate, then secretgate verify"),
        );
    }
    let leftovers: Vec<String> = f
        .keyring
        .iter()
        .filter(|(_, format, _)| format != "bound")
        .map(|(v, format, _)| format!("{v} ({format})"))
        .collect();
    if leftovers.is_empty() {
        (Stage::Ready, "none: every row is bound under the current key version".into())
    } else {
        (
            Stage::Ready,
            format!("no row uses key version(s) {} any more: remove them from the keyring", leftovers.join(", ")),
        )
    }
}

fn query_failed(what: &str, e: &sqlx::Error) -> Failure {
    match sqlstate(e) {
        Some(_) => Failure::usage(anyhow!("cannot {what} ({})", describe(e))),
        None => Failure::usage(anyhow!("lost the database connection while trying to {what}: {}", describe(e))),
    }
}

pub async fn main(url: &str, args: AdoptArgs) -> Result<(), Failure> {
    let mut conn = db::connect(url, "secretgate-adopt").await?;
    let result = report(&mut conn, url, &args).await;
    let _ = conn.close().await;
    match result? {
        Stage::Ready => Ok(()),
        stage => Err(Failure::check(anyhow!("not ready: {} (see the next step above)", stage.as_str()))),
    }
}

async fn report(conn: &mut PgConnection, url: &str, args: &AdoptArgs) -> Result<Stage, Failure> {
    println!("secretgate adopt: {}", db::masked(url));
    let version: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'secretgate'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| query_failed("read the extension's version", &e))?;
    let Some(version) = version else {
        println!("extension: not installed");
        println!(
            "next: (the DBA) add secretgate to shared_preload_libraries, set secretgate.keyring_file to a keyring holding the application's key as an \"unbound\" version (and {{\"format\": \"plaintext\"}} for unencrypted rows), restart, then CREATE EXTENSION secretgate"
        );
        println!("status: {}", Stage::Blocked.as_str());
        return Ok(Stage::Blocked);
    };
    println!("extension: secretgate {version}");
    let mut f = Findings::default();

    match sqlx::query_as::<_, (i32, String, bool)>(
        "SELECT version, format, is_current FROM secretgate.key_formats() ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(versions) => {
            let shown: Vec<String> = versions
                .iter()
                .map(|(v, format, current)| format!("{v} ({format}{})", if *current { ", current" } else { "" }))
                .collect();
            println!("keyring: version(s) {}", shown.join(", "));
            f.keyring = versions;
        }
        Err(e) => {
            println!("keyring: unavailable ({})", describe(&e));
            println!(
                "next: (the DBA) fix the server's keyring (secretgate.keyring_file), then run secretgate adopt again"
            );
            println!("status: {}", Stage::Blocked.as_str());
            return Ok(Stage::Blocked);
        }
    }

    let attached: Option<(String, String, String)> =
        sqlx::query_as("SELECT workspaces::text, secrets::text, global_secrets::text FROM secretgate.attached_tables")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| query_failed("read secretgate.attached_tables", &e))?;
    f.attached = attached.is_some();
    let (workspaces, secrets, global) = attached
        .clone()
        .unwrap_or_else(|| (args.workspaces.clone(), args.secrets.clone(), args.global_secrets.clone()));
    println!("tables: {workspaces}, {secrets}, {global} ({})", if f.attached { "attached" } else { "not attached" });

    let mut missing = Vec::new();
    for name in [&workspaces, &secrets, &global] {
        let found: Option<String> = sqlx::query_scalar("SELECT pg_catalog.to_regclass($1)::text")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| query_failed("look the tables up", &e))?;
        if found.is_none() {
            missing.push(format!("{name}: no such table"));
        }
    }
    if !missing.is_empty() {
        f.problems = missing;
    } else if !f.attached {
        let problems: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT relation, sqlstate, problem FROM secretgate.attach_check($1::regclass, $2::regclass, $3::regclass)",
        )
        .bind(&workspaces)
        .bind(&secrets)
        .bind(&global)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| query_failed("check the tables", &e))?;
        f.problems = problems.into_iter().map(|(_, code, problem)| format!("{code} {problem}")).collect();
    }
    if f.problems.is_empty() {
        println!("attach: {}", if f.attached { "attached" } else { "the tables attach as they are" });
    } else {
        println!("attach: blocked by {} problem(s):", f.problems.len());
        for p in &f.problems {
            println!("  - {p}");
        }
    }

    if missing_tables(&f) {
        let (stage, next) = next_step(&f);
        println!("next: {next}");
        println!("status: {}", stage.as_str());
        return Ok(stage);
    }

    let has_model: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = 'model' AND attnum > 0 AND NOT attisdropped)",
    )
    .bind(&workspaces)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| query_failed("look for a model column", &e))?;
    println!(
        "model: {}",
        if has_model {
            format!("the column {workspaces}.model")
        } else {
            "each workspace's MODEL secret (no model column); BYOK is checked again when a MODEL is written, changed or removed".to_string()
        }
    );

    match sqlx::query_as::<_, (Option<i32>, String, i64, i64)>(
        "SELECT encryption_version, format, rows, unreadable FROM secretgate.adoption_rows($1::regclass, $2::regclass) ORDER BY encryption_version NULLS FIRST",
    )
    .bind(&secrets)
    .bind(&global)
    .fetch_all(&mut *conn)
    .await
    {
        Ok(rows) => {
            f.rows = rows
                .into_iter()
                .map(|(version, format, rows, unreadable)| Version { version, format, rows, unreadable })
                .collect();
            if f.rows.is_empty() {
                println!("rows: none");
            } else {
                println!("rows:");
                for v in &f.rows {
                    let version = v.version.map_or("NULL".to_string(), |n| n.to_string());
                    println!("  version {version} ({}): {} row(s), {} unreadable", v.format, v.rows, v.unreadable);
                }
            }
        }
        Err(e) => {
            println!("rows: cannot be counted ({})", describe(&e));
            println!("next: make the secrets tables readable by this role (or run as their owner), then run secretgate adopt again");
            println!("status: {}", Stage::Blocked.as_str());
            return Ok(Stage::Blocked);
        }
    }

    let agents: Vec<(String, bool)> = sqlx::query_as(
        "WITH RECURSIVE m(member) AS (
             SELECT a.member FROM pg_catalog.pg_auth_members a
              WHERE a.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'secretgate_agent')
             UNION
             SELECT a.member FROM pg_catalog.pg_auth_members a JOIN m ON a.roleid = m.member)
         SELECT r.rolname::text, r.rolcanlogin FROM pg_catalog.pg_roles r JOIN m ON r.oid = m.member ORDER BY r.rolname",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| query_failed("list the members of secretgate_agent", &e))?;
    if agents.is_empty() {
        println!("agents: no role is a member of secretgate_agent; only sessions that SET LOCAL secretgate.caller = 'agent' inside a transaction are agents");
    } else {
        let shown: Vec<String> =
            agents.iter().map(|(name, login)| format!("{name}{}", if *login { " (login)" } else { "" })).collect();
        println!(
            "agents: members of secretgate_agent: {} (always agents); any other session only when it SET LOCALs secretgate.caller = 'agent' inside a transaction",
            shown.join(", ")
        );
    }

    let (stage, next) = next_step(&f);
    println!("next: {next}");
    println!("status: {}", stage.as_str());
    Ok(stage)
}

fn missing_tables(f: &Findings) -> bool {
    f.problems.iter().any(|p| p.ends_with(": no such table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i32, format: &str, rows: i64, unreadable: i64) -> Version {
        Version { version: Some(version), format: format.into(), rows, unreadable }
    }

    #[test]
    fn each_stage_and_its_next_step() {
        let mut f = Findings { problems: vec!["42804 kind is integer".into()], ..Default::default() };
        assert_eq!(next_step(&f).0, Stage::Blocked);
        f.problems.clear();
        assert_eq!(next_step(&f).0, Stage::Attachable);
        assert!(next_step(&f).1.contains("attach_gates"));

        f.attached = true;
        f.keyring = vec![(0, "plaintext".into(), false), (1, "unbound".into(), true)];
        f.rows = vec![v(0, "plaintext", 3, 0), v(1, "unbound", 4, 1)];
        let (stage, next) = next_step(&f);
        assert_eq!(stage, Stage::Adopting);
        assert!(next.contains("1 row(s) cannot be read") && next.contains("version(s) 1"), "{next}");

        f.rows[1].unreadable = 0;
        let (stage, next) = next_step(&f);
        assert_eq!(stage, Stage::Adopting);
        assert!(next.contains("current key version 1 is unbound"), "{next}");

        f.keyring = vec![(0, "plaintext".into(), false), (1, "unbound".into(), false), (2, "bound".into(), true)];
        let (stage, next) = next_step(&f);
        assert_eq!(stage, Stage::Adopting);
        assert!(next.contains("7 row(s)") && next.contains("secretgate rotate"), "{next}");

        f.rows = vec![v(2, "bound", 7, 0)];
        let (stage, next) = next_step(&f);
        assert_eq!(stage, Stage::Ready);
        assert!(next.contains("0 (plaintext), 1 (unbound)"), "{next}");

        f.keyring = vec![(2, "bound".into(), true)];
        assert_eq!(next_step(&f), (Stage::Ready, "none: every row is bound under the current key version".into()));
    }
}
