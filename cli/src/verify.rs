//! `secretgate verify`: every stored secret that does not decrypt
//! (`secretgate.verify_secrets()`).
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

use crate::db;
use crate::db_error::{describe, sqlstate};
use crate::failure::Failure;
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
    /// A key version whose key does not match (SG004): verify_secrets reports
    /// it once (NULL workspace and key), not per row.
    pub mismatch: bool,
}

impl Undecryptable {
    pub fn scope(&self) -> String {
        self.workspace.map_or_else(|| "global".to_string(), |w| w.to_string())
    }
}

/// The key versions whose key does not match, with their rows, when the
/// server tells (key_check_status needs the EXECUTE right verify does not).
async fn mismatched_versions(conn: &mut PgConnection) -> Vec<(i32, i64)> {
    match crate::keyring::statuses(conn).await {
        Ok(rows) => rows.into_iter().filter(|r| r.status == "mismatch").map(|r| (r.version, r.secrets)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The outcome of one verification pass.
pub struct Report {
    pub checked: i64,
    pub failed: Vec<Undecryptable>,
    /// (version, rows) of each key version that does not match, if known.
    pub mismatched: Vec<(i32, i64)>,
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
        Some(_) => Failure::usage(anyhow!(
            "cannot verify the secrets ({}); is the secretgate extension installed and migrated?",
            describe(&e)
        )),
        None => Failure::usage(anyhow!("lost the database connection while verifying: {}", describe(&e))),
    })?;
    let checked = rows.first().map_or(0, |r| r.0);
    let failed = rows
        .into_iter()
        // The LEFT JOIN gives one row of NULLs when nothing failed.
        .filter(|r| r.2.is_some() || r.3.is_some())
        .map(|(_, workspace, key, state, error_code)| Undecryptable {
            workspace,
            mismatch: key.is_none() && error_code.as_deref() == Some(Code::KeyMismatch.sqlstate()),
            key: key.unwrap_or_default(),
            error_code: error_code.or(state).unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    let mismatched = if failed.iter().any(|f| f.mismatch) { mismatched_versions(&mut *conn).await } else { Vec::new() };
    Ok(Report { checked, failed, mismatched })
}

/// Prints the failing rows (a table), a hint per error code and the summary line.
pub fn print(report: &Report) {
    // A wrong key is one line per version, not one per row.
    for f in report.failed.iter().filter(|f| f.mismatch) {
        let versions: Vec<String> =
            report.mismatched.iter().map(|(v, n)| format!("key version {v} ({n} secret(s))")).collect();
        let which = if versions.is_empty() { "a key version".to_string() } else { versions.join(", ") };
        println!(
            "{} KEY_MISMATCH: the server's keyring holds another key for {which} than the one this database's secrets were written with; \
             its secrets were not checked one by one: point the server at the right keyring (`secretgate keyring check` compares)",
            f.error_code
        );
    }
    let rows: Vec<&Undecryptable> = report.failed.iter().filter(|f| !f.mismatch).collect();
    if !rows.is_empty() {
        let header = ["WORKSPACE", "KEY", "ERROR"];
        let table: Vec<[String; 3]> =
            rows.iter().map(|f| [f.scope(), f.key.clone(), describe_code(&f.error_code)]).collect();
        let mut widths = header.map(str::len);
        for row in &table {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        println!("{:<w0$}  {:<w1$}  {}", header[0], header[1], header[2], w0 = widths[0], w1 = widths[1]);
        for row in &table {
            println!("{:<w0$}  {:<w1$}  {}", row[0], row[1], row[2], w0 = widths[0], w1 = widths[1]);
        }
        let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &rows {
            *by_code.entry(f.error_code.as_str()).or_default() += 1;
        }
        for (code, n) in &by_code {
            println!("{code}: {n} secret(s): {}", hint(code));
        }
    }
    // A mismatch line stands for every secret of its version.
    let lines = report.failed.iter().filter(|f| f.mismatch).count() as i64;
    let under_wrong_key: i64 =
        if report.mismatched.is_empty() { lines } else { report.mismatched.iter().map(|m| m.1).sum() };
    let checked = report.checked - lines + under_wrong_key;
    let unencrypted = rows.iter().filter(|f| f.error_code == UNENCRYPTED).count() as i64;
    let failed = rows.len() as i64 - unencrypted + under_wrong_key;
    if unencrypted == 0 {
        println!("summary: {checked} secret(s) checked, {failed} failed to decrypt");
    } else {
        println!("summary: {checked} secret(s) checked, {failed} failed to decrypt, {unencrypted} stored unencrypted");
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
            "the server cannot use its keyring (secretgate.keyring_file missing, unreadable, malformed or insecure, or secretgate.keyring_command failed); fix it, then verify again"
        }
        Some(Code::KeyMismatch) => {
            "the server's key for this version is not the one this database's secrets were written with; point the server at the right keyring"
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
