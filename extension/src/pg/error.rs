//! The one place secretgate talks to Postgres' error system.
//!
//! Every SQL entry point runs its work through [`run`]: the work returns a
//! [`Failure`] (a refusal built by the core's `policy`, or an error with a
//! standard SQLSTATE), and [`run`] raises it. A Postgres error raised inside
//! the work by anyone (an application's trigger, a constraint, a racing gate
//! of ours) keeps its own SQLSTATE, message and HINT.
//!
//! pgrx's `PgSqlErrorCode` only knows standard SQLSTATEs: a caught error with
//! another code (`SG101`, an application's `AB001`) reaches it as XX000. So
//! while the work runs, an error-context callback notes the code of every
//! error Postgres reports, and [`run`] puts the real code back. Refusals are
//! raised through Postgres' own `errstart`/`errfinish`; `errfinish` at ERROR
//! does not return (it longjmps), so only the message strings are live then,
//! and they are dropped before the jump.

use crate::pg::{audit_queue, audit_shmem};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgLogLevel, PgSqlErrorCode, PgTryBuilder};
use secretgate_core::policy::{self, Refusal};
use secretgate_core::{Code, Error as CoreError, Scope};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};
use std::panic::Location;

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
    fn errdetail_internal(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errhidestmt(hide_stmt: bool) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// An error on its way to the client: SQLSTATE, message, optional DETAIL and
/// HINT, the audit line it writes, and the place in the code that made it.
/// Boxed: it travels up every `Result` of the extension, and the happy
/// path should not carry its size.
#[derive(Debug)]
pub struct Failure(Box<Report>);

#[derive(Debug)]
struct Report {
    sqlstate: Cow<'static, str>,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    /// The `secretgate audit:` line this failure writes when raised.
    audit: Option<String>,
    location: &'static Location<'static>,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    /// An error with a standard SQLSTATE, named by pgrx's table.
    #[track_caller]
    pub fn sql(code: PgSqlErrorCode, message: impl Into<String>) -> Failure {
        let sqlstate = policy::unpack_sqlstate(code as i32);
        Failure::with_sqlstate(sqlstate.into(), message.into())
    }

    #[track_caller]
    fn with_sqlstate(sqlstate: Cow<'static, str>, message: String) -> Failure {
        Failure(Box::new(Report {
            sqlstate,
            message,
            detail: None,
            hint: None,
            audit: None,
            location: Location::caller(),
        }))
    }

    /// A refusal, with its audit line naming `caller` when it is audited.
    #[track_caller]
    pub fn refused(refusal: Refusal, caller: Value) -> Failure {
        let mut failure = Failure::with_sqlstate(refusal.code().sqlstate().into(), refusal.message());
        failure.0.detail = Some(refusal.detail_json());
        failure.0.hint = refusal.hint_text().map(str::to_string);
        failure.0.audit = refusal.audit_json(caller);
        failure
    }

    /// A crypto or keyring error about one row (or none).
    #[track_caller]
    pub fn core(e: &CoreError, scope: Option<Scope>, key: Option<&str>) -> Failure {
        Failure::from(Refusal::from_core(e, scope, key))
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.0.hint = Some(hint.into());
        self
    }

    /// Raises this failure as an ERROR. Does not return.
    pub fn raise(self) -> ! {
        let Report { sqlstate, message, detail, hint, audit, location } = *self.0;
        if let Some(audit) = audit {
            log_line(&audit);
        }
        let code = policy::pack_sqlstate(&sqlstate).unwrap_or(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32);
        let message = c_string(message);
        let detail = detail.map(c_string);
        let hint = hint.map(c_string);
        let file = c_string(location.file().to_string());
        // SAFETY: errstart/errcode/errmsg/errdetail/errhint/errfinish are
        // Postgres' ereport() sequence; every string is a valid NUL-terminated
        // C string that Postgres copies into its ErrorData before errfinish.
        unsafe {
            if errstart(PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(code);
                errmsg_internal(c"%s".as_ptr(), message.as_ptr());
                if let Some(detail) = &detail {
                    errdetail_internal(c"%s".as_ptr(), detail.as_ptr());
                }
                if let Some(hint) = &hint {
                    errhint(c"%s".as_ptr(), hint.as_ptr());
                }
            }
        }
        // Postgres copied the strings, except the file name, which it keeps a
        // pointer to: leak that one (an error path; a few bytes).
        drop((message, detail, hint));
        let file = file.into_raw();
        // SAFETY: errfinish(ERROR) longjmps out; no Rust value with a
        // destructor is live in this frame any more.
        unsafe { errfinish(file, location.line() as c_int, std::ptr::null()) };
        unreachable!("errfinish(ERROR) returned")
    }
}

impl From<Refusal> for Failure {
    #[track_caller]
    fn from(refusal: Refusal) -> Failure {
        Failure::refused(refusal, Value::Null)
    }
}

impl From<pgrx::spi::Error> for Failure {
    /// pgrx's own SPI failures (a type mismatch, no tuple table) are bugs
    /// in secretgate, not user errors: XX000 says so. A Postgres error
    /// raised inside SPI does not come this way: [`run`] catches it.
    #[track_caller]
    fn from(e: pgrx::spi::Error) -> Failure {
        Failure::sql(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("secretgate: internal SPI error: {e}"))
    }
}

/// What replaces the DETAIL of a Postgres error raised inside secretgate's
/// work: for a row being written, Postgres' DETAIL can show the whole row
/// ("Failing row contains (…)"), ciphertext included, and it would reach
/// the client and the server log. A secretgate refusal keeps its JSON DETAIL
/// (it never holds a value).
pub const WITHHELD_DETAIL: &str =
    "secretgate: Postgres' DETAIL is withheld, as it can show the row being written, ciphertext included";

thread_local! {
    /// The SQLSTATE of the last error Postgres reported while [`run`]'s work ran.
    static LAST_CODE: Cell<c_int> = const { Cell::new(0) };
}

/// Error-context callback: Postgres calls it while it builds every report
/// (before the longjmp), so the code is known before pgrx flattens it.
unsafe extern "C-unwind" fn note_code(_arg: *mut std::ffi::c_void) {
    // SAFETY: called by errfinish with an error report on Postgres' error
    // stack, which is what geterrcode() reads; it neither allocates nor raises.
    LAST_CODE.set(unsafe { pg_sys::geterrcode() });
}

/// Puts the error-context callback back where it was, also when unwinding.
struct ContextGuard(*mut pg_sys::ErrorContextCallback);

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer is the callback pushed by `run`, still alive
        // on its stack frame (the guard is dropped first).
        unsafe { pg_sys::error_context_stack = (*self.0).previous };
    }
}

/// Runs one SQL entry point's work and raises its failure, if any. An ERROR
/// Postgres raises inside it comes back with its own SQLSTATE, message and
/// HINT; a secretgate refusal also keeps its JSON DETAIL, any other error's
/// DETAIL is withheld ([`WITHHELD_DETAIL`]).
pub fn run<T>(work: impl FnOnce() -> Result<T>) -> T {
    require_preload();
    let mut callback = pg_sys::ErrorContextCallback {
        // SAFETY: reading Postgres' global error-context stack pointer.
        previous: unsafe { pg_sys::error_context_stack },
        callback: Some(note_code),
        arg: std::ptr::null_mut(),
    };
    // SAFETY: `callback` outlives the guard, which pops it on every path.
    unsafe { pg_sys::error_context_stack = &mut callback };
    let guard = ContextGuard(&mut callback);
    LAST_CODE.set(0);
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(work))
        .catch_others(|caught| match caught {
            CaughtError::PostgresError(report) if matches!(report.level(), PgLogLevel::ERROR) => {
                let code = match report.sql_error_code() {
                    // pgrx's name for "a code it does not know": the noted one is the real code.
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR if LAST_CODE.get() != 0 => LAST_CODE.get(),
                    known => known as c_int,
                };
                let sqlstate = policy::unpack_sqlstate(code);
                let ours = Code::from_sqlstate(&sqlstate).is_some();
                let detail = match report.detail() {
                    Some(detail) if ours => Some(detail.to_string()),
                    Some(_) => Some(WITHHELD_DETAIL.to_string()),
                    None => None,
                };
                Err(Failure(Box::new(Report {
                    sqlstate: sqlstate.into(),
                    message: report.message().to_string(),
                    detail,
                    hint: report.hint().map(str::to_string),
                    audit: None,
                    location: Location::caller(),
                })))
            }
            other => other.rethrow(),
        })
        .execute();
    drop(guard);
    result.unwrap_or_else(|f| f.raise())
}

/// [`run`] for work that runs no SQL (nothing inside can raise a Postgres
/// error to catch): `Ok(v)` → `v`; `Err(f)` → raise `f`.
pub fn raise_on<T>(work: impl FnOnce() -> Result<T>) -> T {
    require_preload();
    work().unwrap_or_else(|f| f.raise())
}

/// What every entry point checks first: the audit queue lives in shared
/// memory, which only a preloaded library has. Without it nothing runs (55000).
pub fn require_preload() {
    if !audit_shmem::preloaded() {
        Failure::sql(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, NOT_PRELOADED)
            .hint("add the line shared_preload_libraries = 'secretgate' to postgresql.conf (keep any other libraries already listed there, comma-separated), then restart PostgreSQL")
            .raise()
    }
}

/// The 55000 message of a server that did not preload secretgate.
pub const NOT_PRELOADED: &str = "secretgate is not in shared_preload_libraries: add shared_preload_libraries = 'secretgate' to postgresql.conf, then restart the server";

/// Writes `secretgate audit: {json}` to the server log only (never to the
/// client), without the statement text next to it, and puts the same record
/// into the audit queue for `secretgate.audit_events`. Both survive a
/// rollback; the log line is written first and synchronously, so the log
/// stays complete even if the server stops before the record is written.
pub fn log_line(json: &str) {
    write_log_line(json);
    audit_queue::enqueue(json);
}

fn write_log_line(json: &str) {
    let line = c_string(format!("secretgate audit: {json}"));
    // SAFETY: the ereport() sequence at LOG_SERVER_ONLY, which returns;
    // `line` outlives it.
    unsafe {
        if errstart(PgLogLevel::LOG_SERVER_ONLY as c_int, std::ptr::null()) {
            errmsg_internal(c"%s".as_ptr(), line.as_ptr());
            errhidestmt(true);
            errfinish(std::ptr::null(), 0, std::ptr::null());
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

#[cfg(test)]
mod tests {
    use secretgate_core::policy::{pack_sqlstate, unpack_sqlstate};

    #[test]
    fn sqlstate_packing_matches_pgrx() {
        assert_eq!(pack_sqlstate("XX000"), Some(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32));
        assert_eq!(pack_sqlstate("42703"), Some(pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN as i32));
        assert_eq!(unpack_sqlstate(pgrx::PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION as i32), "09000");
    }
}
