//! The product's rules as decisions over facts: given who is writing, what
//! they write and what the database holds, allow or return the [`Refusal`].
//! No Postgres in here: the extension gathers the facts, asks, and raises.

use crate::{Code, Error, Scope, Verdict};
use serde_json::{Map, Value};

/// The key that names a workspace's model.
pub const MODEL: &str = "MODEL";
/// The concierge's provider pin.
pub const LLM_PROVIDER: &str = "LLM_PROVIDER";
/// The `kind` of the concierge's workspace, and the name of the platform provider.
pub const PLATFORM: &str = "platform";
/// The `kind` of an external agent (exempt from BYOK).
pub const EXTERNAL: &str = "external";

// ---------------------------------------------------------------------------
// Refusals

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

// ---------------------------------------------------------------------------
// SQLSTATE packing (Postgres' MAKE_SQLSTATE: six bits per character)

/// Packs a five-character SQLSTATE as Postgres does; `None` if it is not one.
pub fn pack_sqlstate(sqlstate: &str) -> Option<i32> {
    let bytes = sqlstate.as_bytes();
    let valid = bytes.len() == 5 && bytes.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    valid
        .then(|| bytes.iter().enumerate().fold(0, |acc, (i, &ch)| acc | (((ch as i32 - '0' as i32) & 0x3F) << (6 * i))))
}

/// The five characters of a packed SQLSTATE.
pub fn unpack_sqlstate(code: i32) -> String {
    (0..5).map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}

// ---------------------------------------------------------------------------
// Secret writes

/// What a write does to a secret row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Insert,
    Update,
    Delete,
}

impl Write {
    pub fn event(self) -> &'static str {
        match self {
            Write::Insert | Write::Update => "secret.set.refused",
            Write::Delete => "secret.delete.refused",
        }
    }
}

/// Whether the self-write rule needs the target workspace's kind: only an
/// agent's write to a workspace scope does (the read is the gate's one cost).
pub fn needs_kind(agent: bool, scope: Scope) -> bool {
    agent && matches!(scope, Scope::Workspace(_))
}

/// Self-write: an agent may not write a secret of a platform (concierge)
/// workspace (SG101); a workspace that cannot be found refuses (SG106),
/// except a delete (its workspace is gone: a cascade, nothing to protect).
/// `kind` is `None` when there is no such workspace row.
pub fn self_write(agent: bool, op: Write, scope: Scope, key: &str, kind: Option<&str>) -> Result<(), Refusal> {
    if !needs_kind(agent, scope) {
        return Ok(());
    }
    let (code, reason) = match kind {
        None if op == Write::Delete => return Ok(()),
        None => (
            Code::WorkspaceKindUnknown,
            "the target workspace does not exist or cannot be read, so an agent's write is refused",
        ),
        Some(PLATFORM) => (
            Code::ConciergeSelfWriteBlocked,
            "an agent caller may not write the secrets of a platform (concierge) workspace",
        ),
        Some(_) => return Ok(()),
    };
    Err(Refusal::new(code, reason).scoped(scope).with("key", key).audited(op.event()))
}

/// Forbidden key names: inserting or updating one is refused (SG105);
/// deleting is allowed. `forbidden` is the registry's reason when listed.
pub fn forbidden_key(op: Write, scope: Scope, key: &str, forbidden: Option<&str>) -> Result<(), Refusal> {
    match forbidden {
        Some(reason) if op != Write::Delete => {
            Err(Refusal::new(Code::ForbiddenSecretKey, format!("the key name {key} may not be written: {reason}"))
                .scoped(scope)
                .with("key", key)
                .audited(op.event()))
        }
        _ => Ok(()),
    }
}

/// Whether the MODEL value check applies: a MODEL written with a known value.
pub fn checks_model_value(op: Write, key: &str) -> bool {
    op != Write::Delete && key == MODEL
}

/// A MODEL value that is a registered provider's name is a slug, not a
/// model id (SG107). The value is a provider name, so it may be named.
pub fn model_value(op: Write, scope: Scope, value: &str, is_provider: bool) -> Result<(), Refusal> {
    if !is_provider {
        return Ok(());
    }
    Err(Refusal::new(
        Code::InvalidModelId,
        "MODEL must be a model id (such as anthropic:claude-opus-4-7), not a provider name",
    )
    .scoped(scope)
    .with("key", MODEL)
    .with("provider", value)
    .audited(op.event()))
}

/// An agent may not delete a platform workspace (which deletes the concierge
/// and, by cascade, its secrets), nor turn a workspace into or out of a
/// platform one (demote, write its secrets, promote back): SG101.
/// `new_kind` is `None` for a delete.
pub fn workspace_write(
    agent: bool,
    id: Scope,
    old_kind: Option<&str>,
    new_kind: Option<Option<&str>>,
) -> Result<(), Refusal> {
    if !agent {
        return Ok(());
    }
    let (event, reason) = match new_kind {
        None if old_kind == Some(PLATFORM) => (
            "workspace.delete.refused",
            "an agent caller may not delete a platform (concierge) workspace or its secrets",
        ),
        Some(new_kind) if new_kind != old_kind && (old_kind == Some(PLATFORM) || new_kind == Some(PLATFORM)) => (
            "workspace.kind.refused",
            "an agent caller may not change whether a workspace is a platform (concierge) workspace",
        ),
        _ => return Ok(()),
    };
    Err(Refusal::new(Code::ConciergeSelfWriteBlocked, reason).scoped(id).audited(event))
}

// ---------------------------------------------------------------------------
// Platform identity

/// What is known of a workspace's MODEL: usable (a row that decrypts to a
/// non-empty value), not usable, or unreadable.
pub type ModelState = Result<bool, Error>;

/// At commit: a platform workspace that is online needs a usable MODEL (SG102).
pub fn platform_identity(
    scope: Scope,
    kind: Option<&str>,
    online: bool,
    model: impl FnOnce() -> ModelState,
) -> Result<(), Refusal> {
    if kind != Some(PLATFORM) || !online {
        return Ok(());
    }
    let reason = match model() {
        Ok(true) => return Ok(()),
        Ok(false) => "a platform workspace may not be online without a usable MODEL (missing or empty)".to_string(),
        Err(e) => format!(
            "a platform workspace may not be online without a usable MODEL; its MODEL cannot be read ({} {})",
            e.code().sqlstate(),
            e.code().word()
        ),
    };
    Err(Refusal::new(Code::PlatformAgentIdentityGate, reason)
        .scoped(scope)
        .with("key", MODEL)
        .audited("workspace.online.refused"))
}

/// TRUNCATE of the secrets table removes every MODEL at once: refused while
/// any platform workspace is online.
pub fn truncate_secrets(platform_online: bool) -> Result<(), Refusal> {
    if !platform_online {
        return Ok(());
    }
    Err(Refusal::new(
        Code::PlatformAgentIdentityGate,
        "TRUNCATE would leave online platform workspaces without a MODEL",
    )
    .audited("secret.truncate.refused"))
}

// ---------------------------------------------------------------------------
// Provider routing

/// One row of `secretgate.model_routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pattern: String,
    pub provider: String,
    /// `None`: any runtime.
    pub runtime: Option<String>,
}

/// The provider a model id routes to: among the routes whose pattern is a
/// prefix of the model and whose runtime is the workspace's (or any), one
/// naming the runtime beats one that does not, then the longest pattern
/// (in characters) wins, then the smallest provider name (so ties are
/// decided the same way everywhere). `None` when nothing matches.
pub fn route<'a>(routes: &'a [Route], runtime: Option<&str>, model: &str) -> Option<&'a str> {
    routes
        .iter()
        .filter(|r| model.starts_with(r.pattern.as_str()))
        .filter(|r| r.runtime.is_none() || r.runtime.as_deref() == runtime)
        .min_by(|a, b| {
            let rank =
                |r: &Route| (std::cmp::Reverse(r.runtime.is_some()), std::cmp::Reverse(r.pattern.chars().count()));
            rank(a).cmp(&rank(b)).then_with(|| a.provider.cmp(&b.provider))
        })
        .map(|r| r.provider.as_str())
}

// ---------------------------------------------------------------------------
// BYOK

/// One row of `secretgate.providers`, as the BYOK rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub is_platform: bool,
    pub auth_env: Vec<String>,
}

/// A usable credential (a row that decrypts to a non-empty value) and the
/// last verdict on its current ciphertext for the provider in question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub scope: Scope,
    pub key: String,
    pub verdict: Option<Verdict>,
}

/// What the BYOK rule says about one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Byok {
    /// External, platform-managed, or a model whose provider cannot be derived.
    Exempt,
    /// At least one usable credential not known dead; `transient` names those
    /// whose last probe got no answer.
    Satisfied {
        transient: Vec<String>,
    },
    Missing {
        provider: String,
    },
    Dead {
        provider: String,
    },
}

/// Whether a workspace is an external agent (exempt from BYOK): kind
/// `external`, or a runtime the DBA listed in `secretgate.external_runtimes`.
pub fn is_external(kind: Option<&str>, runtime_listed: bool) -> bool {
    kind == Some(EXTERNAL) || runtime_listed
}

/// Whether a workspace is outside the BYOK rule before any credential is
/// looked at: an external agent, or a provider that is the platform's or
/// cannot be derived.
pub fn byok_exempt(kind: Option<&str>, provider: Option<&Provider>) -> bool {
    kind == Some(EXTERNAL) || provider.is_none_or(|p| p.is_platform)
}

/// The BYOK rule for a workspace that is not exempt, given its usable credentials.
pub fn evaluate_byok(provider: &Provider, usable: &[Credential]) -> Byok {
    if usable.is_empty() {
        return Byok::Missing { provider: provider.name.clone() };
    }
    if usable.iter().all(|c| c.verdict == Some(Verdict::Dead)) {
        return Byok::Dead { provider: provider.name.clone() };
    }
    let transient = usable.iter().filter(|c| c.verdict == Some(Verdict::Transient)).map(|c| c.key.clone()).collect();
    Byok::Satisfied { transient }
}

impl Byok {
    /// The refusal for this outcome (SG103/SG104), `None` when it passes.
    pub fn refusal(&self, workspace: Scope) -> Option<Refusal> {
        let (code, provider, reason) = match self {
            Byok::Exempt | Byok::Satisfied { .. } => return None,
            Byok::Missing { provider } => (
                Code::MissingByokCredential,
                provider,
                format!("no usable credential that provider {provider} accepts, at workspace or global scope"),
            ),
            Byok::Dead { provider } => (
                Code::ByokCredentialInvalid,
                provider,
                format!(
                    "every usable credential for provider {provider} was refused by it (401/403) at the last probe"
                ),
            ),
        };
        let id = workspace.workspace_id().map(|id| id.hyphenated().to_string());
        Some(
            Refusal::new(code, reason)
                .with("workspace_id", id)
                .with("provider", provider.as_str())
                .audited("workspace.byok.refused"),
        )
    }

    /// Credentials allowed with a WARNING (their last probe got no answer).
    pub fn transient(&self) -> &[String] {
        match self {
            Byok::Satisfied { transient } => transient,
            _ => &[],
        }
    }
}

// ---------------------------------------------------------------------------
// Reads and the concierge helpers

/// The three states of a read, as `try_read_secret` returns them:
/// `(state, value, error_code)`.
pub fn three_state(read: Result<Option<String>, Error>) -> (&'static str, Option<String>, Option<&'static str>) {
    match read {
        Ok(Some(value)) => ("value", Some(value), None),
        Ok(None) => ("unset", None, None),
        Err(e) => ("error", None, Some(e.code().sqlstate())),
    }
}

/// How a concierge helper seeds a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// Only when no row exists (a row written meanwhile stands).
    IfAbsent,
    /// Replace an existing (unusable: empty) row.
    ReplaceEmpty,
}

/// What a concierge helper does, decided before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    NotPlatform,
    Respected,
    /// A read failed: nothing is written, the reason is logged as a WARNING.
    FailClosed(String),
    Seed(Seed, String),
    SkippedByok,
}

impl Plan {
    /// The function's answer once the plan is carried out; `seeded` is
    /// whether a seed wrote a row (a row written meanwhile stands: respected).
    pub fn answer(&self, seeded: bool) -> &'static str {
        match self {
            Plan::NotPlatform => "not_platform",
            Plan::Respected => "respected",
            Plan::SkippedByok => "skipped_byok",
            Plan::FailClosed(_) => "fail_closed",
            Plan::Seed(..) if seeded => "seeded",
            Plan::Seed(..) => "respected",
        }
    }
}

fn describe(e: &Error) -> String {
    format!("{} {}: {e}", e.code().sqlstate(), e.code().word())
}

/// `ensure_concierge_provider`: respect a readable LLM_PROVIDER; seed
/// `platform` when there is none and MODEL is unset, empty or routes to a
/// platform provider (`routes_to_platform`, asked only then); skip for a
/// BYOK model; fail closed on any read error.
pub fn concierge_provider_plan<E>(
    platform: bool,
    provider: Result<Option<String>, Error>,
    model: impl FnOnce() -> Result<Option<String>, Error>,
    routes_to_platform: impl FnOnce(&str) -> Result<bool, E>,
) -> Result<Plan, E> {
    if !platform {
        return Ok(Plan::NotPlatform);
    }
    match provider {
        Err(e) => return Ok(Plan::FailClosed(describe(&e))),
        Ok(Some(_)) => return Ok(Plan::Respected),
        Ok(None) => {}
    }
    let model = match model() {
        Err(e) => return Ok(Plan::FailClosed(format!("MODEL cannot be read: {}", describe(&e)))),
        Ok(model) => model.unwrap_or_default(),
    };
    if model.is_empty() || routes_to_platform(&model)? {
        Ok(Plan::Seed(Seed::IfAbsent, PLATFORM.into()))
    } else {
        Ok(Plan::SkippedByok)
    }
}

/// `ensure_concierge_model`: respect a usable MODEL, replace an empty one,
/// seed the default when there is none, fail closed on a read error.
pub fn concierge_model_plan(platform: bool, model: Result<Option<String>, Error>, default_model: &str) -> Plan {
    if !platform {
        return Plan::NotPlatform;
    }
    match model {
        Err(e) => Plan::FailClosed(describe(&e)),
        Ok(Some(model)) if !model.is_empty() => Plan::Respected,
        Ok(Some(_)) => Plan::Seed(Seed::ReplaceEmpty, default_model.into()),
        Ok(None) => Plan::Seed(Seed::IfAbsent, default_model.into()),
    }
}

/// Registration's verdict before it writes: `None` (go online) or the
/// code and reason it reports as `failed`. The identity rule comes first;
/// `byok` is asked only when it passes.
pub fn registration(
    platform: bool,
    model: impl FnOnce() -> ModelState,
    byok: impl FnOnce() -> Result<Byok, ()>,
) -> Option<(Code, String)> {
    if platform {
        match model() {
            Ok(true) => {}
            Ok(false) => {
                return Some((
                    Code::PlatformAgentIdentityGate,
                    "a platform workspace cannot register without a usable MODEL (missing or empty)".to_string(),
                ))
            }
            Err(e) => {
                return Some((
                    Code::PlatformAgentIdentityGate,
                    format!(
                        "a platform workspace cannot register: its MODEL cannot be read ({} {})",
                        e.code().sqlstate(),
                        e.code().word()
                    ),
                ))
            }
        }
    }
    match byok() {
        // A candidate credential that cannot be decrypted is not usable.
        Err(()) => Some((Code::MissingByokCredential, "a candidate BYOK credential cannot be decrypted".to_string())),
        Ok(outcome) => outcome.refusal(Scope::Global).map(|r| (r.code(), r.reason().to_string())),
    }
}

/// The `NOTIFY secretgate_events` payload and the audit record of a failed registration.
pub fn registration_failed(scope: Scope, code: Code, reason: &str, caller: Value) -> (String, String) {
    let workspace_id = scope.workspace_id().map(|id| id.hyphenated().to_string());
    let event =
        serde_json::json!({ "event": "WORKSPACE_PROVISION_FAILED", "code": code.word(), "workspace_id": workspace_id });
    let mut audit = serde_json::json!({
        "event": "workspace.register.refused",
        "code": code.word(),
        "sqlstate": code.sqlstate(),
        "reason": reason,
        "workspace_id": workspace_id,
        "caller": caller,
    });
    if code == Code::PlatformAgentIdentityGate {
        audit["key"] = MODEL.into();
    }
    (event.to_string(), audit.to_string())
}

#[cfg(test)]
mod tests;
