//! `secretgate verify`: every stored secret that does not decrypt (CONTRACT §5
//! `verify_secrets`, §7).
//!
//! The extension decrypts every row of the attached secrets tables, in the
//! server, and reports `ok` or the error's SQLSTATE for each; only the rows
//! that fail and the total count come back to this tool. It prints each
//! failing row's scope (workspace id or `global`), key name and error code, and
//! a summary line. A value never leaves the server: there is none to print.
//!
//! Exit codes: 0 every secret decrypts; 1 at least one does not; 2 usage or
//! connection error (including an extension that is not installed or has no
//! attached tables).

use crate::{db, one_line, Failure};
use anyhow::anyhow;
use secretgate_core::Code;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::collections::BTreeMap;
use uuid::Uuid;

/// One secret that does not decrypt: where it is and why (never its value).
pub struct Undecryptable {
    /// None for a global secret.
    pub workspace: Option<Uuid>,
    pub key: String,
    /// The SQLSTATE verify_secrets reported (SG001, SG002, SG003), or the
    /// state itself when the extension reported something unexpected.
    pub error_code: String,
}

impl Undecryptable {
    pub fn scope(&self) -> String {
        self.workspace.map_or_else(|| "global".to_string(), |w| w.to_string())
    }
}

/// The outcome of one verification pass.
pub struct Report {
    pub checked: i64,
    pub failed: Vec<Undecryptable>,
}

/// Runs `secretgate.verify_secrets()` once and keeps only what does not
/// decrypt, and the count of every row checked. A failure to run it is a
/// usage or connection error (exit 2).
pub async fn check(conn: &mut PgConnection) -> Result<Report, Failure> {
    type Row = (i64, Option<Uuid>, Option<String>, Option<String>, Option<String>);
    // The CTE is referenced twice, so it is materialized: verify_secrets runs once.
    let rows: Vec<Row> = sqlx::query_as(
        "WITH v AS (SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()),
              n AS (SELECT count(*) AS checked FROM v)
         SELECT n.checked, f.workspace_id, f.key, f.state, f.error_code
         FROM n LEFT JOIN (SELECT * FROM v WHERE state IS DISTINCT FROM 'ok') f ON true
         ORDER BY f.workspace_id NULLS LAST, f.key",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| match sqlstate(&e) {
        Some(code) => Failure::usage(anyhow!(
            "cannot verify the secrets (SQLSTATE {code}: {}); is the secretgate extension installed and migrated?",
            db_message(&e)
        )),
        None => Failure::usage(anyhow!("lost the database connection while verifying: {}", db_message(&e))),
    })?;
    let checked = rows.first().map_or(0, |r| r.0);
    let failed = rows
        .into_iter()
        // The LEFT JOIN gives one row of NULLs when nothing failed.
        .filter(|r| r.2.is_some() || r.3.is_some())
        .map(|(_, workspace, key, state, error_code)| Undecryptable {
            workspace,
            key: key.unwrap_or_default(),
            error_code: error_code.or(state).unwrap_or_default(),
        })
        .collect();
    Ok(Report { checked, failed })
}

/// Prints the failing rows (a table), a hint per error code and the summary line.
pub fn print(report: &Report) {
    if !report.failed.is_empty() {
        let header = ["WORKSPACE", "KEY", "ERROR"];
        let rows: Vec<[String; 3]> =
            report.failed.iter().map(|f| [f.scope(), f.key.clone(), describe_code(&f.error_code)]).collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        println!("{:<w0$}  {:<w1$}  {}", header[0], header[1], header[2], w0 = widths[0], w1 = widths[1]);
        for row in &rows {
            println!("{:<w0$}  {:<w1$}  {}", row[0], row[1], row[2], w0 = widths[0], w1 = widths[1]);
        }
        let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &report.failed {
            *by_code.entry(f.error_code.as_str()).or_default() += 1;
        }
        for (code, n) in &by_code {
            println!("{code}: {n} secret(s): {}", hint(code));
        }
    }
    let unencrypted = report.failed.iter().filter(|f| f.error_code == UNENCRYPTED).count();
    if unencrypted == 0 {
        println!("summary: {} secret(s) checked, {} failed to decrypt", report.checked, report.failed.len());
    } else {
        println!(
            "summary: {} secret(s) checked, {} failed to decrypt, {unencrypted} stored unencrypted",
            report.checked,
            report.failed.len() - unencrypted
        );
    }
}

/// `SG001 DECRYPT_FAILED`, or the code alone when it is not one of ours.
fn describe_code(code: &str) -> String {
    match Code::from_sqlstate(code) {
        Some(c) => format!("{code} {}", c.word()),
        None => code.to_string(),
    }
}

/// The state verify_secrets gives a row stored under a plaintext key version.
const UNENCRYPTED: &str = "unencrypted";

fn hint(code: &str) -> &'static str {
    if code == UNENCRYPTED {
        return "stored without encryption (a plaintext key version): make a bound version current and run secretgate rotate";
    }
    match Code::from_sqlstate(code) {
        Some(Code::DecryptFailed) => {
            "the ciphertext does not authenticate (corrupt, truncated, or copied from another row); set the value again or delete the row"
        }
        Some(Code::UnknownKeyVersion) => {
            "the row's encryption_version is not in the keyring; restore that key version to the keyring (never retire a version still in use)"
        }
        Some(Code::KeyringUnavailable) => {
            "the server cannot use its keyring (secretgate.keyring_file missing, unreadable, malformed or insecure); fix it, then verify again"
        }
        _ => "unexpected error code",
    }
}

pub async fn main(url: &str) -> Result<(), Failure> {
    let mut conn = db::connect(url, "secretgate-verify").await?;
    let result = check(&mut conn).await;
    let _ = conn.close().await;
    let report = result?;
    print(&report);
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::check(anyhow!(
            "{} secret(s) do not decrypt or are stored unencrypted (listed above)",
            report.failed.len()
        )))
    }
}

pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// The server's message (secretgate's errors never carry a value).
pub fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => one_line(d.message()),
        None => one_line(&e.to_string()),
    }
}
