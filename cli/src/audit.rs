//! `secretgate audit`: the rows of `secretgate.audit_events` (refusals and admin events),
//! as a table or as JSON lines; `--follow` keeps printing new rows as the
//! extension's audit writers announce them (`NOTIFY secretgate_audit`),
//! without polling. Rows never hold a value, so there is none to print.
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
        println!(
            "{:<32} {:<28} {:<30} {:<36} {:<20} {:<12} caller",
            "at", "event", "code", "workspace", "key", "provider"
        );
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

#[cfg(test)]
mod tests {
    use super::parse_duration;

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
