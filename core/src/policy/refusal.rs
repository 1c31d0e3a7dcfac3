//! The refusal every rule returns, on its way to the client: the SQLSTATE's
//! code word and reason as the message, the JSON DETAIL, a HINT, and the
//! audit record it becomes; and a refusal recognised again from its message
//! and DETAIL once Postgres has wrapped it.

use crate::{Code, Error, Scope};
use serde_json::{Map, Value};

/// A refusal on its way to the client: the code, the reason, the JSON DETAIL
/// fields, an optional HINT and the audit event it is logged under. Never a
/// secret value in any field.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    code: Code,
    reason: String,
    detail: Map<String, Value>,
    hint: Option<String>,
    event: Option<&'static str>,
}

impl Refusal {
    pub fn new(code: Code, reason: impl Into<String>) -> Refusal {
        let reason = reason.into();
        let mut detail = Map::new();
        detail.insert("code".into(), code.word().into());
        detail.insert("sqlstate".into(), code.sqlstate().into());
        detail.insert("reason".into(), reason.clone().into());
        Refusal { code, reason, detail, hint: None, event: None }
    }

    /// A crypto or keyring error as a refusal naming the row it concerns.
    pub fn from_core(e: &Error, scope: Option<Scope>, key: Option<&str>) -> Refusal {
        let mut r = Refusal::new(e.code(), e.to_string());
        if let Some(scope) = scope {
            r = r.scoped(scope);
        }
        if let Some(key) = key {
            r = r.with("key", key);
        }
        match e {
            Error::KeyringUnavailable { .. } => r = r.hint(KEYRING_HINT),
            Error::KeyMismatch { version } => r = r.with("version", *version).hint(KEY_MISMATCH_HINT),
            _ => {}
        }
        r
    }

    /// Adds a DETAIL field (`key`, `provider`, …). Never a secret value.
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Refusal {
        self.detail.insert(field.into(), value.into());
        self
    }

    /// Names the scope: `workspace_id` for a workspace, `"scope": "global"` otherwise.
    pub fn scoped(self, scope: Scope) -> Refusal {
        match scope {
            Scope::Workspace(id) => self.with("workspace_id", id.hyphenated().to_string()),
            Scope::Global => self.with("scope", "global"),
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Refusal {
        self.hint = Some(hint.into());
        self
    }

    /// Logged as an audit line under `event` when raised.
    pub fn audited(mut self, event: &'static str) -> Refusal {
        self.event = Some(event);
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    pub fn event(&self) -> Option<&'static str> {
        self.event
    }

    /// The error message: `WORD: reason`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.code.word(), self.reason)
    }

    /// The JSON DETAIL.
    pub fn detail_json(&self) -> String {
        Value::Object(self.detail.clone()).to_string()
    }

    /// The audit record: the DETAIL's fields plus `event` and `caller`.
    pub fn audit_json(&self, caller: Value) -> Option<String> {
        let event = self.event?;
        let mut line = self.detail.clone();
        line.insert("event".into(), event.into());
        line.insert("caller".into(), caller);
        Some(Value::Object(line).to_string())
    }
}

const KEYRING_HINT: &str = "point secretgate.keyring_file (postgresql.conf) at a 0600 JSON keyring owned by the server's user, or set secretgate.keyring_command to a command that prints one, then SELECT pg_reload_conf()";

const KEY_MISMATCH_HINT: &str = "the server's keyring holds another key under this version than the one this database first used it with: point the server at the right keyring (secretgate keyring check compares them without decrypting any row)";

/// The code of a secretgate refusal recognised by its shape: a message
/// starting with the code word and a JSON DETAIL naming the same SQLSTATE.
/// (A refusal raised inside SPI reaches pgrx as XX000; this recovers it.)
pub fn recognise_refusal(message: &str, detail: Option<&str>) -> Option<Code> {
    let detail: Value = serde_json::from_str(detail?).ok()?;
    let code = Code::from_sqlstate(detail.get("sqlstate")?.as_str()?)?;
    let word_matches = detail.get("code").and_then(Value::as_str) == Some(code.word())
        && message.strip_prefix(code.word()).is_some_and(|rest| rest.starts_with(": "));
    word_matches.then_some(code)
}
