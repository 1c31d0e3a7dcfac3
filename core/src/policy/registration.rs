//! Registration: whether a workspace may go online (the identity rule, then
//! BYOK), and the notification and audit record of one that may not.

use super::{Byok, ModelState, MODEL};
use crate::{Code, Scope};
use serde_json::Value;

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
