//! How a database error is told: its SQLSTATE and the server's message, on
//! one line. Every command words a failed query through here, so an error
//! reads `SQLSTATE 42501: permission denied for table …` whichever command
//! met it, and a command can branch on the SQLSTATE without parsing text.
//!
//! secretgate's own refusals carry their code word in the message already
//! (`SG001` with `DECRYPT_FAILED: …`), so nothing is added to it here; and
//! they never carry a value, so the message is safe to print.

use crate::failure::one_line;

/// The error's SQLSTATE, or None when the server never answered (a lost
/// connection, an I/O or TLS error, a protocol error).
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// The server's message on one line, or the driver's when the server never answered.
pub fn message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => one_line(d.message()),
        None => one_line(&e.to_string()),
    }
}

/// `SQLSTATE 42501: permission denied for table t`, or the message alone when
/// there is no SQLSTATE.
pub fn describe(e: &sqlx::Error) -> String {
    match sqlstate(e) {
        Some(code) => format!("SQLSTATE {code}: {}", message(e)),
        None => message(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_without_a_server_answer_has_no_sqlstate() {
        let e = sqlx::Error::Protocol("unexpected\nmessage".into());
        assert_eq!(sqlstate(&e), None);
        assert_eq!(describe(&e), message(&e));
        assert!(!describe(&e).contains('\n'), "{}", describe(&e));
    }
}
