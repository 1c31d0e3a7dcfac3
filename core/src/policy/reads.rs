//! The three states of a read: a value, a genuinely unset key, an error.

use crate::Error;

/// The three states of a read, as `try_read_secret` returns them:
/// `(state, value, error_code)`.
pub fn three_state(read: Result<Option<String>, Error>) -> (&'static str, Option<String>, Option<&'static str>) {
    match read {
        Ok(Some(value)) => ("value", Some(value), None),
        Ok(None) => ("unset", None, None),
        Err(e) => ("error", None, Some(e.code().sqlstate())),
    }
}
