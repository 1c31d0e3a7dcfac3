//! `secretgate audit`: the rows of `secretgate.audit_events` (refusals,
//! administrative events and audited reads), as a table or as JSON lines;
//! `--follow` keeps printing new rows as the extension's audit writers
//! announce them (`NOTIFY secretgate_audit`), without polling. Rows never
//! hold a value, so there is none to print.
//!
//! `--reads` keeps only the audited reads (event `secret.read`, recorded as
//! `secretgate.audit_reads` says) and shows what a read row carries: its
//! state (`value`, `unset`, `error`), workspace, key name, role, the
//! `secretgate.caller` setting, `application_name` and client address.
//!
//! Exit codes: 0 success; 2 usage or connection error (a bad duration, no
//! extension, a role that may not read the table: grant it secretgate_auditor).

use crate::db::{self, TOOL_VERSION};
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use anyhow::anyhow;
use clap::Args;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgListener};
use uuid::Uuid;

#[derive(Args)]
pub struct AuditArgs {
    /// Only rows newer than this: a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<f64>,
    /// Only rows with this code word (e.g. CONCIERGE_SELF_WRITE_BLOCKED) or SQLSTATE (e.g. SG101)
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// Only rows about this workspace
    #[arg(long, value_name = "ID")]
    workspace: Option<Uuid>,
    /// Only audited reads (event secret.read), with their state, caller and client address
    #[arg(long)]
    reads: bool,
    /// Keep printing new rows as they are written (until interrupted)
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of a table
    #[arg(long)]
    json: bool,
}

/// Seconds in `30s`, `15m`, `24h`, `7d`, `2w` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 30m, 24h or 7d"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 604_800.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use s, m, h, d or w")),
    };
    Ok(n * scale)
}

const SELECT: &str = "SELECT a.id, pg_catalog.to_jsonb(a)::text FROM secretgate.audit_events a
     WHERE a.id > $1
       AND ($2::float8 IS NULL OR a.at >= pg_catalog.now() - pg_catalog.make_interval(secs => $2))
       AND ($3::text IS NULL OR a.code = $3 OR a.sqlstate = $3)
       AND ($4::uuid IS NULL OR a.workspace_id = $4)
       AND ($5::text IS NULL OR a.event = $5)
     ORDER BY a.id";

pub async fn main(url: &str, args: AuditArgs) -> Result<(), Failure> {
    let mut conn = db::connect(url, "secretgate audit").await?;
    let mut listener = if args.follow {
        let mut l =
            PgListener::connect(url).await.map_err(|e| Failure::usage(anyhow!("{}", db::scrub(url, describe(&e)))))?;
        l.listen("secretgate_audit").await.map_err(|e| Failure::usage(anyhow!("LISTEN secretgate_audit: {e}")))?;
        Some(l)
    } else {
        None
    };
    if !args.json {
        if args.reads {
            println!(
                "{:<32} {:<12} {:<36} {:<20} {:<20} {:<10} {:<24} client",
                "at", "state", "workspace", "key", "role", "caller", "application"
            );
        } else {
            println!(
                "{:<32} {:<28} {:<30} {:<36} {:<20} {:<12} caller",
                "at", "event", "code", "workspace", "key", "provider"
            );
        }
    }
    let mut last = print_new(&mut conn, &args, 0).await?;
    let Some(listener) = listener.as_mut() else { return Ok(()) };
    loop {
        tokio::select! {
            n = listener.recv() => {
                n.map_err(|e| Failure::usage(anyhow!("waiting for new audit rows: {e}")))?;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        last = print_new(&mut conn, &args, last).await?;
    }
}

/// Prints the rows after id `after` that pass the filters; returns the last id seen.
async fn print_new(conn: &mut PgConnection, args: &AuditArgs, after: i64) -> Result<i64, Failure> {
    let rows: Vec<(i64, String)> = sqlx::query_as(SELECT)
        .bind(after)
        .bind(args.since)
        .bind(args.code.as_deref())
        .bind(args.workspace)
        .bind(args.reads.then_some(READ_EVENT))
        .fetch_all(conn)
        .await
        .map_err(|e| {
            let hint = match sqlstate(&e).as_deref() {
                Some("42501") => " (reading the audit trail needs membership in secretgate_auditor)".to_string(),
                Some("42P01") => format!(" (no secretgate.audit_events: is secretgate {TOOL_VERSION} installed here?)"),
                _ => String::new(),
            };
            Failure::usage(anyhow!("reading secretgate.audit_events: {}{hint}", describe(&e)))
        })?;
    let mut last = after;
    for (id, json) in rows {
        last = id;
        if args.json {
            println!("{json}");
            continue;
        }
        let row: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
        if args.reads {
            println!("{}", read_line(&row));
            continue;
        }
        let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let caller = &row["caller"];
        let who = format!(
            "{}{}",
            caller.get("role").and_then(Value::as_str).unwrap_or(""),
            if caller.get("agent").and_then(Value::as_bool) == Some(true) { " (agent)" } else { "" }
        );
        println!(
            "{:<32} {:<28} {:<30} {:<36} {:<20} {:<12} {who}",
            s("at"),
            s("event"),
            s("code"),
            s("workspace_id"),
            s("key"),
            s("provider")
        );
    }
    Ok(last)
}

/// The event of an audited read.
const READ_EVENT: &str = "secret.read";

/// One row of `--reads`: time, state, workspace (`global` for a global
/// secret), key name, role, caller setting, application_name, client address.
///
/// A read row's state is its `state` column, or else its `reason`; an error
/// read adds its SQLSTATE. The client address is its `client_addr` column, or
/// else the caller's `client_addr`.
fn read_line(row: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let s = |k: &str| row.get(k).map(text).unwrap_or_default();
    let caller = &row["caller"];
    let mut state = match row.get("state") {
        Some(v) if !v.is_null() => text(v),
        _ => s("reason"),
    };
    let sqlstate = s("sqlstate");
    if !sqlstate.is_empty() && !state.contains(&sqlstate) {
        state = format!("{state} {sqlstate}").trim().to_string();
    }
    let role = format!(
        "{}{}",
        caller.get("role").map(text).unwrap_or_default(),
        if caller.get("agent").and_then(Value::as_bool) == Some(true) { " (agent)" } else { "" }
    );
    let client = match row.get("client_addr") {
        Some(v) if !v.is_null() => text(v),
        _ => caller.get("client_addr").map(text).unwrap_or_default(),
    };
    format!(
        "{:<32} {:<12} {:<36} {:<20} {:<20} {:<10} {:<24} {client}",
        s("at"),
        state,
        // A read without a workspace is a global secret's.
        match s("workspace_id") {
            w if w.is_empty() => "global".to_string(),
            w => w,
        },
        s("key"),
        role,
        caller.get("setting").map(text).unwrap_or_default(),
        s("application_name"),
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AuditArgs,
    }

    #[test]
    fn reads_combine_with_every_other_filter() -> Result<(), clap::Error> {
        let a =
            Cli::try_parse_from(["audit", "--reads", "--since", "1h", "--code", "SG001", "--follow", "--json"])?.args;
        assert!(a.reads && a.follow && a.json);
        assert_eq!((a.since, a.code.as_deref()), (Some(3600.0), Some("SG001")));
        let a = Cli::try_parse_from(["audit"])?.args;
        assert!(!a.reads, "without --reads every event is shown, as before");
        Ok(())
    }

    #[test]
    fn a_read_line_shows_state_caller_and_client_and_no_value() -> Result<(), serde_json::Error> {
        let row: Value = serde_json::from_str(
            r#"{"id": 7, "at": "2026-12-01T10:00:00+00:00", "event": "secret.read", "code": "DECRYPT_FAILED",
                "sqlstate": "SG001", "reason": "error", "workspace_id": "6f1c0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                "key": "MODEL", "provider": null, "application_name": "api",
                "caller": {"role": "app", "setting": "agent", "agent": true, "client_addr": "10.0.0.7"}}"#,
        )?;
        let line = read_line(&row);
        for part in ["error SG001", "6f1c0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "MODEL", "app (agent)", "agent", "api"] {
            assert!(line.contains(part), "{part} not in {line}");
        }
        assert!(line.ends_with("10.0.0.7"), "{line}");

        let row: Value = serde_json::from_str(
            r#"{"at": "2026-12-01T10:00:00+00:00", "event": "secret.read", "state": "unset", "reason": null,
                "workspace_id": null, "key": "OPENAI_API_KEY", "application_name": null,
                "client_addr": "192.0.2.1/32", "caller": {"role": "ops", "setting": null, "agent": false}}"#,
        )?;
        let line = read_line(&row);
        assert!(
            line.contains(" unset ") && line.contains(" global ") && line.contains("ops ") && !line.contains("(agent)"),
            "{line}"
        );
        assert!(line.ends_with("192.0.2.1/32"), "{line}");
        Ok(())
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_duration("90"), Ok(90.0));
        assert_eq!(parse_duration("30m"), Ok(1800.0));
        assert_eq!(parse_duration("24h"), Ok(86_400.0));
        assert_eq!(parse_duration("7d"), Ok(604_800.0));
        assert_eq!(parse_duration("1.5h"), Ok(5400.0));
        assert!(parse_duration("yesterday").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }
}
