//! What a secret row may be called and, for MODEL, hold: a forbidden key
//! name is refused (SG105), a MODEL naming a provider rather than a model
//! is refused (SG107).

use super::{Refusal, Write, MODEL};
use crate::{Code, Scope};

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
