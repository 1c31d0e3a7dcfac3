//! Platform identity: an online platform (concierge) workspace has a usable
//! MODEL, checked at commit (SG102), and TRUNCATE of the secrets cannot take
//! every MODEL away at once.

use super::{Refusal, MODEL, PLATFORM};
use crate::{Code, Error, Scope};

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
