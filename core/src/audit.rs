//! The audit record: what one refusal or administrative event becomes in the
//! shared-memory queue and then in a row of `secretgate.audit_events`.
//!
//! A record is the audit line's JSON (see [`crate::policy::Refusal::audit_json`])
//! plus where and when it happened, serialised into at most [`RECORD_BYTES`]
//! bytes: the queue's slots have a fixed size, so an oversized record is cut
//! down field by field ([`record`]) rather than lost. Never a value, a key or a
//! ciphertext: the line it starts from holds none.

use serde_json::{Map, Value};

/// The payload size of one queue slot.
pub const RECORD_BYTES: usize = 1024;

/// Microseconds between the Unix epoch and Postgres' (2000-01-01).
pub const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// Where and when an audit record was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Microseconds since the Unix epoch.
    pub at_unix_us: i64,
    pub backend_pid: i32,
    /// The top-level full transaction id, when one was assigned.
    pub transaction_id: Option<u64>,
    pub application_name: String,
}

/// The fields a record carries, in the order the worker maps them to columns.
pub const COLUMNS: [&str; 12] = [
    "at_unix_us",
    "event",
    "code",
    "sqlstate",
    "reason",
    "workspace_id",
    "key",
    "provider",
    "caller",
    "backend_pid",
    "transaction_id",
    "application_name",
];

/// The queue record for the audit line `line` (a JSON object) made in `ctx`:
/// UTF-8 JSON of at most `max` bytes. The common case is the line with the
/// context spliced in front, no parsing (it runs in every refusal; fields
/// the table has no column for are ignored by the writer). A line that is
/// not an object, or a record that would not fit, is rebuilt: fields without
/// a column are left out, long text is shortened (reason, then the names)
/// until it fits; as a last resort only the event, code, SQLSTATE and context
/// remain.
pub fn record(line: &str, ctx: &Context, max: usize) -> Vec<u8> {
    if let Some(rest) = line.strip_prefix('{').filter(|r| r.trim_start().starts_with('"')) {
        let mut out = String::with_capacity(line.len() + 128);
        out.push_str("{\"at_unix_us\":");
        out.push_str(&ctx.at_unix_us.to_string());
        out.push_str(",\"backend_pid\":");
        out.push_str(&ctx.backend_pid.to_string());
        if let Some(xid) = ctx.transaction_id {
            out.push_str(",\"transaction_id\":\"");
            out.push_str(&xid.to_string());
            out.push('"');
        }
        if !ctx.application_name.is_empty() {
            out.push_str(",\"application_name\":");
            out.push_str(&Value::from(ctx.application_name.as_str()).to_string());
        }
        out.push(',');
        out.push_str(rest);
        if out.len() <= max {
            return out.into_bytes();
        }
    }
    rebuilt(line, ctx, max)
}

fn rebuilt(line: &str, ctx: &Context, max: usize) -> Vec<u8> {
    let parsed: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut rec = Map::new();
    for field in ["event", "code", "sqlstate", "reason", "workspace_id", "key", "provider", "caller"] {
        if let Some(v) = parsed.get(field).filter(|v| !v.is_null()) {
            rec.insert(field.into(), v.clone());
        }
    }
    if !rec.contains_key("event") {
        rec.insert("event".into(), "unknown".into());
    }
    rec.insert("at_unix_us".into(), ctx.at_unix_us.into());
    rec.insert("backend_pid".into(), ctx.backend_pid.into());
    if let Some(xid) = ctx.transaction_id {
        rec.insert("transaction_id".into(), xid.to_string().into());
    }
    if !ctx.application_name.is_empty() {
        rec.insert("application_name".into(), ctx.application_name.clone().into());
    }

    let fits = |rec: &Map<String, Value>| {
        let bytes = Value::Object(rec.clone()).to_string().into_bytes();
        (bytes.len() <= max).then_some(bytes)
    };
    if let Some(bytes) = fits(&rec) {
        return bytes;
    }
    for (field, chars) in [
        ("reason", 256),
        ("application_name", 64),
        ("key", 128),
        ("provider", 128),
        ("reason", 64),
        ("key", 32),
        ("provider", 32),
        ("application_name", 16),
    ] {
        if let Some(Value::String(s)) = rec.get_mut(field) {
            shorten(s, chars);
        }
        if let Some(bytes) = fits(&rec) {
            return bytes;
        }
    }
    rec.remove("caller");
    if let Some(bytes) = fits(&rec) {
        return bytes;
    }
    let mut bare = Map::new();
    for field in ["event", "code", "sqlstate", "at_unix_us", "backend_pid", "transaction_id"] {
        if let Some(v) = rec.get(field) {
            let v = match v {
                Value::String(s) => {
                    let mut s = s.clone();
                    shorten(&mut s, 32);
                    Value::String(s)
                }
                other => other.clone(),
            };
            bare.insert(field.into(), v);
        }
    }
    bare.insert("reason".into(), "(shortened)".into());
    fits(&bare).unwrap_or_else(|| b"{}".to_vec())
}

/// Cuts `s` to at most `chars` characters, marking the cut.
fn shorten(s: &mut String, chars: usize) {
    if s.chars().count() > chars {
        *s = s.chars().take(chars.saturating_sub(1)).collect::<String>() + "…";
    }
}

/// A batch of queue records as the columns of `secretgate.audit_events`, a
/// vector per column, for one multi-row insert (`unnest` of arrays). Parsing
/// here rather than in SQL costs the writer a fraction of `jsonb` parsing,
/// and the writer must keep up with every refusing session at once.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Columns {
    pub at_unix_us: Vec<Option<i64>>,
    pub event: Vec<Option<String>>,
    pub code: Vec<Option<String>>,
    pub sqlstate: Vec<Option<String>>,
    pub reason: Vec<Option<String>>,
    /// Text of a uuid (the insert casts it).
    pub workspace_id: Vec<Option<String>>,
    pub key: Vec<Option<String>>,
    pub provider: Vec<Option<String>>,
    /// JSON text of the caller object.
    pub caller: Vec<Option<String>>,
    pub backend_pid: Vec<Option<i32>>,
    /// Text of a full transaction id (the insert casts it to `xid8`).
    pub transaction_id: Vec<Option<String>>,
    pub application_name: Vec<Option<String>>,
}

impl Columns {
    /// Adds one record as a row; `false` (and nothing added) when it is not
    /// a JSON object.
    pub fn push(&mut self, record: &[u8]) -> bool {
        let Ok(Value::Object(rec)) = serde_json::from_slice::<Value>(record) else {
            return false;
        };
        // As `->>` reads a field: a string as it is, null or absent as NULL,
        // anything else as its JSON text.
        let text = |field: &str| match rec.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        self.at_unix_us.push(rec.get("at_unix_us").and_then(Value::as_i64));
        self.event.push(text("event"));
        self.code.push(text("code"));
        self.sqlstate.push(text("sqlstate"));
        self.reason.push(text("reason"));
        self.workspace_id.push(text("workspace_id"));
        self.key.push(text("key"));
        self.provider.push(text("provider"));
        self.caller.push(rec.get("caller").filter(|v| !v.is_null()).map(Value::to_string));
        self.backend_pid.push(rec.get("backend_pid").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()));
        self.transaction_id.push(text("transaction_id"));
        self.application_name.push(text("application_name"));
        true
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.event.len()
    }

    pub fn is_empty(&self) -> bool {
        self.event.is_empty()
    }
}

/// The audit line of an administrative event (not a refusal): `event`, a
/// `reason` saying what was done, optional workspace, key and provider, and
/// the caller. Never a value.
pub fn admin_event(
    event: &str,
    reason: &str,
    workspace_id: Option<String>,
    key: Option<&str>,
    provider: Option<&str>,
    caller: Value,
) -> String {
    let mut line = Map::new();
    line.insert("event".into(), event.into());
    line.insert("reason".into(), reason.into());
    if let Some(id) = workspace_id {
        line.insert("workspace_id".into(), id.into());
    }
    if let Some(key) = key {
        line.insert("key".into(), key.into());
    }
    if let Some(provider) = provider {
        line.insert("provider".into(), provider.into());
    }
    line.insert("caller".into(), caller);
    Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            at_unix_us: PG_EPOCH_UNIX_US + 1,
            backend_pid: 4242,
            transaction_id: Some(771),
            application_name: "svc".into(),
        }
    }

    #[test]
    fn a_record_keeps_the_lines_fields_and_adds_the_context() {
        let line = r#"{"event":"secret.set.refused","code":"FORBIDDEN_SECRET_KEY","sqlstate":"SG105","reason":"r","key":"MODEL_PROVIDER","workspace_id":"00000000-0000-0000-0000-000000000001","caller":{"agent":true},"scope":"x"}"#;
        let rec: Value = serde_json::from_slice(&record(line, &ctx(), RECORD_BYTES)).unwrap();
        assert_eq!(rec["event"], "secret.set.refused");
        assert_eq!(rec["sqlstate"], "SG105");
        assert_eq!(rec["key"], "MODEL_PROVIDER");
        assert_eq!(rec["caller"]["agent"], true);
        assert_eq!(rec["backend_pid"], 4242);
        assert_eq!(rec["transaction_id"], "771");
        assert_eq!(rec["application_name"], "svc");
        assert_eq!(rec["scope"], "x", "kept as it is: the writer ignores it");
    }

    #[test]
    fn records_become_columns_as_the_table_has_them() {
        let line = r#"{"event":"secret.set.refused","code":"FORBIDDEN_SECRET_KEY","sqlstate":"SG105","reason":"r","key":"MODEL_PROVIDER","workspace_id":"00000000-0000-0000-0000-000000000001","caller":{"agent":true},"provider":null,"scope":"x"}"#;
        let mut cols = Columns::default();
        assert!(cols.push(&record(line, &ctx(), RECORD_BYTES)));
        let admin = admin_event("gates.attached", "attached", None, None, Some("openai"), serde_json::json!({}));
        let bare = Context { transaction_id: None, application_name: String::new(), ..ctx() };
        assert!(cols.push(&record(&admin, &bare, RECORD_BYTES)));
        assert!(!cols.push(b"[1,2]"), "not an object");
        assert!(!cols.push(b"{\"event\":"), "not JSON");
        assert_eq!(cols.len(), 2);
        assert_eq!(cols.at_unix_us, [Some(PG_EPOCH_UNIX_US + 1); 2]);
        assert_eq!(cols.event[0].as_deref(), Some("secret.set.refused"));
        assert_eq!(cols.sqlstate[0].as_deref(), Some("SG105"));
        assert_eq!(cols.workspace_id[0].as_deref(), Some("00000000-0000-0000-0000-000000000001"));
        assert_eq!(cols.provider, [None, Some("openai".to_string())]);
        assert_eq!(cols.caller[0].as_deref(), Some(r#"{"agent":true}"#));
        assert_eq!(cols.backend_pid, [Some(4242); 2]);
        assert_eq!(cols.transaction_id, [Some("771".to_string()), None]);
        assert_eq!(cols.application_name, [Some("svc".to_string()), None]);
        assert_eq!((cols.code[1].as_deref(), cols.key[1].as_deref()), (None, None));
    }

    #[test]
    fn a_rebuilt_record_has_only_columns() {
        let long = "r".repeat(2000);
        let line = serde_json::json!({"event":"secret.set.refused","reason": long, "scope": "global"}).to_string();
        let rec: Value = serde_json::from_slice(&record(&line, &ctx(), RECORD_BYTES)).unwrap();
        assert!(rec.get("scope").is_none());
        for k in rec.as_object().unwrap().keys() {
            assert!(COLUMNS.contains(&k.as_str()), "{k} has no column");
        }
    }

    #[test]
    fn the_spliced_record_is_valid_json_with_an_escaped_application_name() {
        let c = Context { application_name: "a \"quoted\"\\ name\n".into(), ..ctx() };
        let rec: Value = serde_json::from_slice(&record(r#"{"event":"e","code":"C"}"#, &c, RECORD_BYTES)).unwrap();
        assert_eq!(rec["application_name"], "a \"quoted\"\\ name\n");
        assert_eq!(rec["event"], "e");
        assert_eq!(rec["transaction_id"], "771");
    }

    #[test]
    fn no_transaction_no_transaction_id() {
        let c = Context { transaction_id: None, ..ctx() };
        let rec: Value = serde_json::from_slice(&record(r#"{"event":"e"}"#, &c, RECORD_BYTES)).unwrap();
        assert!(rec.get("transaction_id").is_none());
    }

    #[test]
    fn an_oversized_record_is_shortened_never_dropped() {
        let long = "k".repeat(5000);
        let line = serde_json::json!({"event":"secret.set.refused","code":"FORBIDDEN_SECRET_KEY","sqlstate":"SG105",
            "reason": long, "key": long, "provider": long, "caller": {"role": long}})
        .to_string();
        let c = Context { application_name: long.clone(), ..ctx() };
        for max in [RECORD_BYTES, 400, 250] {
            let bytes = record(&line, &c, max);
            assert!(bytes.len() <= max, "{} > {max}", bytes.len());
            let rec: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(rec["sqlstate"], "SG105");
            assert_eq!(rec["backend_pid"], 4242);
        }
    }

    #[test]
    fn garbage_in_still_gives_a_record() {
        let rec: Value = serde_json::from_slice(&record("not json", &ctx(), RECORD_BYTES)).unwrap();
        assert_eq!(rec["event"], "unknown");
    }

    #[test]
    fn admin_events_name_what_was_done() {
        let line = admin_event("gates.attached", "attached", None, None, None, serde_json::json!({"role":"dba"}));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["event"].as_str(), v["caller"]["role"].as_str()), (Some("gates.attached"), Some("dba")));
        assert!(v.get("code").is_none());
    }
}
