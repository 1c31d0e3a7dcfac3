//! What a test may look at in a database error (never a stored value), and
//! the assertions on SQLSTATEs and secretgate codes.

use anyhow::{anyhow, bail, Result};
use sqlx::postgres::PgDatabaseError;

/// What a test may look at in a database error: never a stored value.
#[derive(Debug, Clone)]
pub struct DbError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// DETAIL parsed as JSON, when it is JSON.
    pub detail_json: Option<serde_json::Value>,
}

impl DbError {
    /// A DETAIL JSON field as a string, if present.
    pub fn field(&self, name: &str) -> Option<String> {
        self.detail_json.as_ref()?.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Message, detail and hint together, for leak checks.
    pub fn all_text(&self) -> String {
        format!("{}\n{}\n{}", self.message, self.detail.as_deref().unwrap_or(""), self.hint.as_deref().unwrap_or(""))
    }

    /// Fails when any of `needles` appears in the message, detail or hint
    /// (without printing the needle).
    pub fn assert_no_leak(&self, needles: &[&str]) -> Result<()> {
        let text = self.all_text();
        for (i, needle) in needles.iter().enumerate() {
            if !needle.is_empty() && text.contains(needle) {
                bail!("error {} leaks stored value #{i} in its message, detail or hint", self.sqlstate);
            }
        }
        Ok(())
    }
}

impl DbError {
    /// Fails when the message, detail or hint holds what looks like a
    /// ciphertext: a run of 32 or more hex digits (a nonce and a tag alone are
    /// 56), or a bytea literal (`\x…`). Ids (uuids) never have such a run.
    pub fn assert_no_ciphertext(&self) -> Result<()> {
        let text = self.all_text();
        let mut run = 0;
        for c in text.chars() {
            run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
            if run >= 32 {
                bail!("error {} shows a long hex string (a ciphertext?) in its message, detail or hint", self.sqlstate);
            }
        }
        if text.contains("\\x") {
            bail!("error {} shows a bytea literal in its message, detail or hint", self.sqlstate);
        }
        Ok(())
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQLSTATE {} message {:?}", self.sqlstate, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " detail {d:?}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint {h:?}")?;
        }
        Ok(())
    }
}

/// The SQLSTATE of a database error.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
}

/// The parts of a Postgres error.
pub fn db_error(err: &sqlx::Error) -> Option<DbError> {
    let pg = err.as_database_error()?.try_downcast_ref::<PgDatabaseError>()?;
    let detail = pg.detail().map(str::to_string);
    Some(DbError {
        sqlstate: pg.code().to_string(),
        message: pg.message().to_string(),
        detail_json: detail.as_deref().and_then(|d| serde_json::from_str(d).ok()),
        detail,
        hint: pg.hint().map(str::to_string),
    })
}

/// Describes a sqlx error without values: a database error's parts, or the error kind.
pub fn describe(err: &sqlx::Error) -> String {
    match db_error(err) {
        Some(e) => e.to_string(),
        None => format!("non-database error: {err}"),
    }
}

/// Expects `result` to fail with `code`; returns the error's parts. The
/// successful value, if any, is never printed.
pub fn expect_sqlstate<T>(result: std::result::Result<T, sqlx::Error>, code: &str) -> Result<DbError> {
    match result {
        Ok(_) => bail!("expected SQLSTATE {code}, but the statement succeeded"),
        Err(err) => match db_error(&err) {
            Some(e) if e.sqlstate == code => Ok(e),
            Some(e) => bail!("expected SQLSTATE {code}, got {e}"),
            None => bail!("expected SQLSTATE {code}, got a non-database error: {err}"),
        },
    }
}

/// Like [`expect_sqlstate`] for a secretgate code: also checks that the
/// message starts with `WORD: ` and DETAIL is JSON with `code` and `sqlstate`.
pub fn expect_sg<T>(result: std::result::Result<T, sqlx::Error>, code: secretgate_core::Code) -> Result<DbError> {
    let e = expect_sqlstate(result, code.sqlstate())?;
    let prefix = format!("{}: ", code.word());
    if !e.message.starts_with(&prefix) {
        bail!("message should start with {prefix:?}: {e}");
    }
    if !e.detail_json.as_ref().is_some_and(|d| d.is_object()) {
        bail!("DETAIL should be a JSON object: {e}");
    }
    if e.field("code").as_deref() != Some(code.word()) {
        bail!("DETAIL \"code\" should be {:?}: {e}", code.word());
    }
    if e.field("sqlstate").as_deref() != Some(code.sqlstate()) {
        bail!("DETAIL \"sqlstate\" should be {:?}: {e}", code.sqlstate());
    }
    Ok(e)
}

/// Turns a sqlx result into an anyhow one that describes the error without values.
pub trait Described<T> {
    fn described(self, what: &str) -> Result<T>;
}

impl<T> Described<T> for std::result::Result<T, sqlx::Error> {
    fn described(self, what: &str) -> Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", describe(&e)))
    }
}
