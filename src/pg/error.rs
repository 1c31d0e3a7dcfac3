//! The one place secretgate talks to Postgres' error system.
//!
//! pgrx's `PgSqlErrorCode` only knows standard SQLSTATEs, so refusals
//! (`SG001`…) are raised through Postgres' own `errstart`/`errfinish`.
//! `errfinish` at ERROR does not return (it longjmps), so callers build a
//! [`Failure`], let every Rust value they own go out of scope, and raise at
//! the SQL boundary with [`Failure::raise`]: only the message strings are
//! live then, and they are dropped before the jump.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgLogLevel, PgTryBuilder};
use secretgate_core::Code;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::ffi::{c_char, c_int, CString};

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
    fn errdetail_internal(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errhidestmt(hide_stmt: bool) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// An error on its way to the client: SQLSTATE, message, optional DETAIL and HINT.
#[derive(Debug)]
pub struct Failure {
    sqlstate: Cow<'static, str>,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    /// The `secretgate audit:` line this failure writes when raised.
    audit: Option<String>,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    /// A secretgate refusal: message `WORD: reason`, DETAIL a JSON object
    /// with `code`, `sqlstate`, `reason` and whatever [`Refusal::with`] adds.
    pub fn refusal(code: Code, reason: impl Into<String>) -> Refusal {
        let reason = reason.into();
        let mut detail = Map::new();
        detail.insert("code".into(), code.word().into());
        detail.insert("sqlstate".into(), code.sqlstate().into());
        detail.insert("reason".into(), reason.clone().into());
        Refusal { code, reason, detail, hint: None, audit: None }
    }

    /// An error with a standard SQLSTATE (`55000`, `42703`, …).
    pub fn sql(sqlstate: &'static str, message: impl Into<String>) -> Failure {
        Failure { sqlstate: sqlstate.into(), message: message.into(), detail: None, hint: None, audit: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// Raises this failure as an ERROR. Does not return.
    pub fn raise(self) -> ! {
        let Failure { sqlstate, message, detail, hint, audit } = self;
        if let Some(audit) = audit {
            log_line(&audit);
        }
        let message = c_string(message);
        let detail = detail.map(c_string);
        let hint = hint.map(c_string);
        unsafe {
            if errstart(PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(make_sqlstate(&sqlstate));
                errmsg_internal(c"%s".as_ptr(), message.as_ptr());
                if let Some(detail) = &detail {
                    errdetail_internal(c"%s".as_ptr(), detail.as_ptr());
                }
                if let Some(hint) = &hint {
                    errhint(c"%s".as_ptr(), hint.as_ptr());
                }
            }
            // Postgres copied the strings; free ours before the longjmp.
            drop((message, detail, hint));
            errfinish(c"secretgate".as_ptr(), 0, c"secretgate".as_ptr());
        }
        unreachable!("errfinish(ERROR) returned")
    }

    /// `Ok(v)` → `v`; `Err(f)` → raise `f`.
    pub fn unwrap_or_raise<T>(result: Result<T>) -> T {
        result.unwrap_or_else(|f| f.raise())
    }
}

/// What replaces the DETAIL of a Postgres error raised inside a write of a
/// ciphertext (see [`withholding_row_detail`]).
pub const WITHHELD_DETAIL: &str =
    "secretgate: Postgres' DETAIL is withheld, as it can show the row being written, ciphertext included";

/// Runs `work`, which writes ciphertexts through SPI. An ERROR Postgres raises
/// inside it (a CHECK, NOT NULL, unique or foreign-key violation on an
/// attached table, a lock timeout…) comes back as a [`Failure`] with its own
/// SQLSTATE, message and HINT, but not its DETAIL: for a row being written,
/// Postgres' DETAIL can show the whole row ("Failing row contains (…)") or a
/// key, ciphertext included, and it would reach the client and the server
/// log. A secretgate refusal raised by a trigger inside `work` keeps its JSON
/// DETAIL (it never holds a value).
pub fn withholding_row_detail<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(work))
        .catch_others(|caught| match caught {
            CaughtError::PostgresError(report) if matches!(report.level(), PgLogLevel::ERROR) => {
                let caught = unpack_sqlstate(report.sql_error_code() as c_int);
                // A secretgate refusal raised by a trigger inside `work` (a
                // concurrent commit changed what the pre-check saw) comes back
                // from pgrx as XX000: it knows only Postgres' own codes. Its
                // message and JSON DETAIL name the real one.
                let refusal = refusal_code(report.message(), report.detail());
                let (sqlstate, detail) = match refusal {
                    Some(code) => (Cow::Borrowed(code.sqlstate()), report.detail().map(str::to_string)),
                    None => (Cow::Owned(caught), report.detail().map(|_| WITHHELD_DETAIL.to_string())),
                };
                Err(Failure {
                    sqlstate,
                    message: report.message().to_string(),
                    detail,
                    hint: report.hint().map(str::to_string),
                    audit: None,
                })
            }
            other => other.rethrow(),
        })
        .execute()
}

/// The code of a secretgate refusal, recognised by its shape: a message
/// starting with the code word and a JSON DETAIL naming the same SQLSTATE.
fn refusal_code(message: &str, detail: Option<&str>) -> Option<Code> {
    let detail: Value = serde_json::from_str(detail?).ok()?;
    let code = Code::from_sqlstate(detail.get("sqlstate")?.as_str()?)?;
    let word_matches = detail.get("code").and_then(Value::as_str) == Some(code.word())
        && message.strip_prefix(code.word()).is_some_and(|rest| rest.starts_with(": "));
    word_matches.then_some(code)
}

/// Builder for a refusal's JSON DETAIL.
pub struct Refusal {
    code: Code,
    reason: String,
    detail: Map<String, Value>,
    hint: Option<String>,
    audit: Option<(String, Value)>,
}

impl Refusal {
    /// Writes an audit line when raised: the DETAIL's fields plus `event`
    /// and `caller`. The DETAIL never holds a value, so neither does this.
    pub fn audit(mut self, event: &str, caller: Value) -> Refusal {
        self.audit = Some((event.into(), caller));
        self
    }

    /// Adds a DETAIL field (`workspace_id`, `key`, `provider`, …). Never a secret value.
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Refusal {
        self.detail.insert(field.into(), value.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Refusal {
        self.hint = Some(hint.into());
        self
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        let audit = r.audit.map(|(event, caller)| {
            let mut line = r.detail.clone();
            line.insert("event".into(), event.into());
            line.insert("caller".into(), caller);
            Value::Object(line).to_string()
        });
        Failure {
            sqlstate: r.code.sqlstate().into(),
            message: format!("{}: {}", r.code.word(), r.reason),
            detail: Some(Value::Object(r.detail).to_string()),
            hint: r.hint,
            audit,
        }
    }
}

/// Writes `secretgate audit: {json}` to the server log only (never to the
/// client), without the statement text next to it. Log lines survive a rollback.
pub fn log_line(json: &str) {
    let line = c_string(format!("secretgate audit: {json}"));
    unsafe {
        if errstart(PgLogLevel::LOG_SERVER_ONLY as c_int, std::ptr::null()) {
            errmsg_internal(c"%s".as_ptr(), line.as_ptr());
            errhidestmt(true);
            errfinish(c"secretgate".as_ptr(), 0, c"secretgate".as_ptr());
        }
    }
}

fn c_string(s: String) -> CString {
    // Interior NULs cannot reach a C string; show them escaped instead.
    CString::new(s).unwrap_or_else(|e| {
        let escaped = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\\0");
        CString::new(escaped).unwrap_or_default()
    })
}

/// Postgres' MAKE_SQLSTATE: six bits per character.
fn make_sqlstate(sqlstate: &str) -> c_int {
    sqlstate
        .bytes()
        .take(5)
        .enumerate()
        .fold(0, |acc, (i, ch)| acc | ((((ch as c_int) - ('0' as c_int)) & 0x3F) << (6 * i)))
}

/// The five characters of a SQLSTATE packed by MAKE_SQLSTATE.
fn unpack_sqlstate(code: c_int) -> String {
    (0..5).map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn make_sqlstate_matches_postgres_encoding() {
        // ERRCODE_INTERNAL_ERROR is MAKE_SQLSTATE('X','X','0','0','0').
        assert_eq!(super::make_sqlstate("XX000"), pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32);
        assert_eq!(super::make_sqlstate("42703"), pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN as i32);
        for code in ["XX000", "23514", "SG101", "55P03", "40P01"] {
            assert_eq!(super::unpack_sqlstate(super::make_sqlstate(code)), code);
        }
    }

    #[test]
    fn refusal_code_needs_message_and_detail_to_agree() {
        use secretgate_core::Code;
        let detail = r#"{"code":"CONCIERGE_SELF_WRITE_BLOCKED","sqlstate":"SG101","reason":"r"}"#;
        let code = super::refusal_code("CONCIERGE_SELF_WRITE_BLOCKED: r", Some(detail));
        assert_eq!(code.map(Code::sqlstate), Some("SG101"));
        assert!(super::refusal_code("something else: r", Some(detail)).is_none());
        assert!(super::refusal_code("CONCIERGE_SELF_WRITE_BLOCKED: r", Some("Failing row contains (x)")).is_none());
        assert!(super::refusal_code("CONCIERGE_SELF_WRITE_BLOCKED: r", None).is_none());
    }
}
