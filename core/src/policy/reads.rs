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

/// Which reads become audit rows (`secretgate.audit_reads`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadAudit {
    Off,
    Errors,
    All,
}

/// Whether a read that answered `read` is audited under `mode`: every read
/// with `All`, a read that answered an error (a tampered, misbound or
/// wrong-key row is a security event) with `Errors`, none with `Off`.
pub fn audits_read<T>(mode: ReadAudit, read: &Result<Option<T>, Error>) -> bool {
    match mode {
        ReadAudit::Off => false,
        ReadAudit::Errors => read.is_err(),
        ReadAudit::All => true,
    }
}

/// The audit line of a read: event `secret.read`, the state (`value`,
/// `unset`, `error`) as its reason, the error's code word and SQLSTATE,
/// workspace and key, and the caller (with the client's address). Never
/// the value.
pub fn read_audit_line<T>(
    read: &Result<Option<T>, Error>,
    workspace_id: Option<String>,
    key: &str,
    mut caller: serde_json::Value,
    client_addr: Option<String>,
) -> String {
    let (state, code) = match read {
        Ok(Some(_)) => ("value", None),
        Ok(None) => ("unset", None),
        Err(e) => ("error", Some(e.code())),
    };
    if let (Some(addr), Some(map)) = (client_addr, caller.as_object_mut()) {
        map.insert("client_addr".into(), addr.into());
    }
    let mut line = serde_json::Map::new();
    line.insert("event".into(), "secret.read".into());
    line.insert("reason".into(), state.into());
    if let Some(code) = code {
        line.insert("code".into(), code.word().into());
        line.insert("sqlstate".into(), code.sqlstate().into());
    }
    if let Some(id) = workspace_id {
        line.insert("workspace_id".into(), id.into());
    }
    line.insert("key".into(), key.into());
    line.insert("caller".into(), caller);
    serde_json::Value::Object(line).to_string()
}

#[cfg(test)]
mod read_audit_tests {
    use super::*;

    #[test]
    fn errors_mode_audits_only_errors_and_all_mode_every_read() {
        let value: Result<Option<String>, Error> = Ok(Some("v".into()));
        let unset: Result<Option<String>, Error> = Ok(None);
        let error: Result<Option<String>, Error> = Err(Error::DecryptFailed { reason: "x" });
        assert!(!audits_read(ReadAudit::Errors, &value));
        assert!(!audits_read(ReadAudit::Errors, &unset));
        assert!(audits_read(ReadAudit::Errors, &error));
        assert!([&value, &unset, &error].iter().all(|r| audits_read(ReadAudit::All, r)));
        assert!([&value, &unset, &error].iter().all(|r| !audits_read(ReadAudit::Off, r)));
    }

    #[test]
    fn the_read_line_names_state_code_and_caller_and_never_the_value() {
        let value: Result<Option<String>, Error> = Ok(Some("sk-very-secret".into()));
        let line =
            read_audit_line(&value, Some("w".into()), "K", serde_json::json!({"role": "r"}), Some("10.0.0.1".into()));
        assert!(!line.contains("sk-very-secret"));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["event"], "secret.read");
        assert_eq!(parsed["reason"], "value");
        assert_eq!(parsed["caller"]["client_addr"], "10.0.0.1");
        let error: Result<Option<String>, Error> = Err(Error::KeyMismatch { version: 2 });
        let parsed: serde_json::Value =
            serde_json::from_str(&read_audit_line(&error, None, "K", serde_json::json!({}), None)).unwrap();
        assert_eq!((parsed["reason"].as_str(), parsed["sqlstate"].as_str()), (Some("error"), Some("SG004")));
        assert!(parsed.get("workspace_id").is_none());
    }
}
