//! `secretgate history`: the versions the extension keeps of a secret
//! (`secretgate.secret_versions`, `secretgate.global_secret_versions`), newest
//! first: when each was replaced, by whom (role, `secretgate.caller` setting,
//! `application_name`), why (`set`, `delete`, `rename`, `restore`) and whether
//! it still decrypts (`ok`, `unencrypted`, `error`). Never a value: the
//! functions return none.
//!
//! With `--key`, that key name's versions, whether or not a row of it exists
//! now. Without it, the versions of every key name the scope has a row of
//! now, read from the attached secrets table (found through
//! `secretgate.attached_tables`): a key deleted outright is listed only when
//! named with `--key`.
//!
//! The scope, the listing query and the table are shared with `restore`,
//! which shows the version it is about to bring back.
//!
//! Exit codes: 0 success (an empty history included); 2 usage or connection
//! error (an extension without secret history, a role that may not read it).

use crate::db::{self, TOOL_VERSION};
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
use anyhow::anyhow;
use clap::Args;
use serde_json::{Map, Value};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use uuid::Uuid;

/// `--workspace ID` or `--global`: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// The workspace whose secrets these are
    #[arg(long, value_name = "ID")]
    workspace: Option<Uuid>,
    /// The global secrets instead of a workspace's
    #[arg(long)]
    global: bool,
}

/// A workspace's secrets or the global ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Workspace(Uuid),
    Global,
}

impl ScopeArgs {
    pub fn scope(&self) -> Scope {
        // clap's group makes exactly one of the two present.
        match self.workspace {
            Some(id) => Scope::Workspace(id),
            None => Scope::Global,
        }
    }
}

impl Scope {
    /// The workspace id, or None for the global scope (as the SQL functions take it).
    pub fn workspace(self) -> Option<Uuid> {
        match self {
            Scope::Workspace(id) => Some(id),
            Scope::Global => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Workspace(id) => write!(f, "workspace {id}"),
            Scope::Global => f.write_str("the global scope"),
        }
    }
}

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Only this key name's versions. Without it, every key name the scope has
    /// a row of now (a deleted key's history: give --key)
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// One JSON object per line instead of a table
    #[arg(long)]
    json: bool,
}

/// One kept version of one secret, as the extension described it (never a value).
pub struct Version {
    pub key: String,
    /// The function's row as a JSON object: version, replaced_at, replaced_by, reason, state.
    pub row: Map<String, Value>,
}

impl Version {
    pub fn number(&self) -> Option<i64> {
        self.row.get("version").and_then(Value::as_i64)
    }

    fn text(&self, column: &str) -> String {
        match self.row.get(column) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".to_string(),
            Some(other) => other.to_string(),
        }
    }

    /// `role/caller/application_name` of whoever replaced it; `-` for a part not known.
    pub fn by(&self) -> String {
        let by = self.row.get("replaced_by");
        ["role", "caller", "application_name"]
            .map(|k| match by.and_then(|b| b.get(k)) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Null) | None => "-".to_string(),
                Some(Value::String(_)) => "-".to_string(),
                Some(other) => other.to_string(),
            })
            .join("/")
    }

    /// The JSON line of `--json`: the function's columns plus the scope and key name.
    pub fn json(&self, scope: Scope) -> String {
        let mut row = self.row.clone();
        row.insert("workspace_id".into(), scope.workspace().map_or(Value::Null, |w| Value::String(w.to_string())));
        row.insert("key".into(), Value::String(self.key.clone()));
        Value::Object(row).to_string()
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.key.clone(),
            self.number().map_or_else(|| self.text("version"), |n| n.to_string()),
            self.text("replaced_at"),
            self.by(),
            self.text("reason"),
            self.text("state"),
        ]
    }
}

/// The table's header; `by` is role/caller/application_name.
const HEADER: [&str; 6] = ["KEY", "VERSION", "REPLACED AT", "BY (ROLE/CALLER/APP)", "REASON", "STATE"];

/// Prints the versions as a table, columns as wide as their widest cell.
pub fn print_table(versions: &[Version]) {
    let rows: Vec<Vec<String>> = versions.iter().map(Version::cells).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.trim_end().to_string()
    };
    println!("{}", line(&HEADER));
    for row in &rows {
        println!("{}", line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
}

/// The kept versions of `key` in `scope`, newest first; without a key, those
/// of every key name the scope has a row of now, by key name.
pub async fn versions(conn: &mut PgConnection, scope: Scope, key: Option<&str>) -> Result<Vec<Version>, Failure> {
    // WITH ORDINALITY keeps the function's own order (newest first) per key
    // name; the ordinality column is dropped from the row again.
    let rows: Vec<(String, String)> = match (scope, key) {
        (Scope::Workspace(ws), Some(key)) => {
            sqlx::query_as(
                "SELECT $2::text, (pg_catalog.to_jsonb(v) - 'ordinality')::text
                 FROM secretgate.secret_versions($1, $2) WITH ORDINALITY v
                 ORDER BY v.ordinality",
            )
            .bind(ws)
            .bind(key)
            .fetch_all(&mut *conn)
            .await
        }
        (Scope::Global, Some(key)) => {
            sqlx::query_as(
                "SELECT $1::text, (pg_catalog.to_jsonb(v) - 'ordinality')::text
                 FROM secretgate.global_secret_versions($1) WITH ORDINALITY v
                 ORDER BY v.ordinality",
            )
            .bind(key)
            .fetch_all(&mut *conn)
            .await
        }
        (Scope::Workspace(ws), None) => {
            let table = attached(conn, scope).await?;
            sqlx::query_as(&format!(
                "SELECT k.key::text, (pg_catalog.to_jsonb(v) - 'ordinality')::text
                 FROM (SELECT DISTINCT s.key FROM {table} s WHERE s.workspace_id = $1) k
                 CROSS JOIN LATERAL secretgate.secret_versions($1, k.key::text) WITH ORDINALITY v
                 ORDER BY k.key, v.ordinality"
            ))
            .bind(ws)
            .fetch_all(&mut *conn)
            .await
        }
        (Scope::Global, None) => {
            let table = attached(conn, scope).await?;
            sqlx::query_as(&format!(
                "SELECT k.key::text, (pg_catalog.to_jsonb(v) - 'ordinality')::text
                 FROM (SELECT DISTINCT g.key FROM {table} g) k
                 CROSS JOIN LATERAL secretgate.global_secret_versions(k.key::text) WITH ORDINALITY v
                 ORDER BY k.key, v.ordinality"
            ))
            .fetch_all(&mut *conn)
            .await
        }
    }
    .map_err(|e| query_failure("cannot read the secret history", &e))?;
    rows.into_iter()
        .map(|(key, json)| match serde_json::from_str(&json) {
            Ok(Value::Object(row)) => Ok(Version { key, row }),
            _ => {
                Err(Failure::check(anyhow!("the secret history of key {key} returned a row that is not a JSON object")))
            }
        })
        .collect()
}

/// The attached table of the scope's secrets (`secrets` or `global_secrets`
/// of `secretgate.attached_tables`), as a quoted, schema-qualified name.
async fn attached(conn: &mut PgConnection, scope: Scope) -> Result<String, Failure> {
    let column = match scope {
        Scope::Workspace(_) => "a.secrets",
        Scope::Global => "a.global_secrets",
    };
    let tables: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT format('%I.%I', n.nspname, c.relname)
         FROM secretgate.attached_tables a
         JOIN pg_catalog.pg_class c ON c.oid = {column}
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| query_failure("cannot read secretgate.attached_tables", &e))?;
    match tables.as_slice() {
        [table] => Ok(table.clone()),
        [] => Err(Failure::usage(anyhow!(
            "no tables are attached (secretgate.attached_tables is empty); run `secretgate migrate run` first"
        ))),
        _ => {
            Err(Failure::usage(anyhow!("secretgate.attached_tables has more than one row; expected one set of tables")))
        }
    }
}

/// A query that reads (never writes) failed: secretgate's own refusal is a
/// failed check (1); an extension without secret history, a missing
/// privilege or a lost connection is exit 2.
pub fn query_failure(what: &str, e: &sqlx::Error) -> Failure {
    match sqlstate(e).as_deref() {
        None => Failure::usage(anyhow!("{what}: lost the database connection ({})", describe(e))),
        Some(code) if code.starts_with("SG") => Failure::check(anyhow!("{what} ({})", describe(e))),
        Some(code) if is_missing_object(code) => Failure::usage(anyhow!(
            "{what} ({}); this tool needs secretgate {TOOL_VERSION} (secret_versions, restore_secret): \
             run ALTER EXTENSION secretgate UPDATE",
            describe(e)
        )),
        Some("42501") => Failure::usage(anyhow!("{what} ({})", describe(e))),
        Some(_) => {
            Failure::usage(anyhow!("{what} ({}); is the secretgate extension installed and migrated?", describe(e)))
        }
    }
}

/// undefined_function, undefined_table, invalid_schema_name: the extension is
/// missing or older than this tool.
pub fn is_missing_object(sqlstate: &str) -> bool {
    matches!(sqlstate, "42883" | "42P01" | "3F000")
}

pub async fn main(url: &str, args: HistoryArgs) -> Result<(), Failure> {
    let scope = args.scope.scope();
    let mut conn = db::connect(url, "secretgate-history").await?;
    let result = versions(&mut conn, scope, args.key.as_deref()).await;
    let _ = conn.close().await;
    let versions = result?;
    if args.json {
        for v in &versions {
            println!("{}", v.json(scope));
        }
        return Ok(());
    }
    if versions.is_empty() {
        match &args.key {
            Some(key) => println!("no versions of key {key} are kept in {scope}"),
            None => println!("no versions are kept for the keys {scope} has now (a deleted key's history: give --key)"),
        }
        return Ok(());
    }
    print_table(&versions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: HistoryArgs,
    }

    const WS: &str = "6f1c0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

    fn parse(args: &[&str]) -> Result<HistoryArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("history").chain(args.iter().copied())).map(|c| c.args)
    }

    fn kind(args: &[&str]) -> Option<ErrorKind> {
        parse(args).err().map(|e| e.kind())
    }

    #[test]
    fn a_workspace_or_the_global_scope_exactly() -> Result<(), Box<dyn std::error::Error>> {
        let a = parse(&["--workspace", WS])?;
        assert_eq!(a.scope.scope(), Scope::Workspace(WS.parse()?));
        assert_eq!((a.key, a.json), (None, false));
        let a = parse(&["--global", "--key", "MODEL", "--json"])?;
        assert_eq!(a.scope.scope(), Scope::Global);
        assert_eq!((a.key.as_deref(), a.json), (Some("MODEL"), true));

        assert_eq!(kind(&["--workspace", WS, "--global"]), Some(ErrorKind::ArgumentConflict));
        assert_eq!(kind(&["--key", "MODEL"]), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(kind(&["--workspace", "acme"]), Some(ErrorKind::ValueValidation));
        assert_eq!(kind(&["--global", "--key"]), Some(ErrorKind::InvalidValue));
        Ok(())
    }

    fn version(json: &str) -> Result<Version, Box<dyn std::error::Error>> {
        match serde_json::from_str(json)? {
            Value::Object(row) => Ok(Version { key: "MODEL".into(), row }),
            _ => Err(format!("not an object: {json}").into()),
        }
    }

    #[test]
    fn a_version_line_names_who_replaced_it_and_never_more() -> Result<(), Box<dyn std::error::Error>> {
        let v = version(
            r#"{"version": 3, "replaced_at": "2026-12-01T10:00:00+00:00",
                "replaced_by": {"role": "app", "caller": "agent", "application_name": "api"},
                "reason": "set", "state": "ok"}"#,
        )?;
        assert_eq!(v.number(), Some(3));
        assert_eq!(v.cells(), ["MODEL", "3", "2026-12-01T10:00:00+00:00", "app/agent/api", "set", "ok"]);
        let json: Value = serde_json::from_str(&v.json(Scope::Global))?;
        assert_eq!(json["workspace_id"], Value::Null);
        assert_eq!(json["key"], "MODEL");
        assert_eq!(json["version"], 3);
        assert_eq!(json["replaced_by"]["caller"], "agent");

        let v = version(
            r#"{"version": 1, "replaced_at": null, "replaced_by": {"role": "ops", "caller": null, "application_name": ""},
                "reason": "delete", "state": "error"}"#,
        )?;
        assert_eq!(v.by(), "ops/-/-");
        assert_eq!(v.cells(), ["MODEL", "1", "-", "ops/-/-", "delete", "error"]);
        let json: Value = serde_json::from_str(&v.json(Scope::Workspace(WS.parse()?)))?;
        assert_eq!(json["workspace_id"], WS);
        Ok(())
    }
}
