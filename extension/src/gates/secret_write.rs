//! The checks on a write to a secret or a workspace row, made before
//! anything is written: self-write (SG101/SG106), forbidden key names
//! (SG105), MODEL values (SG107), kind changes (SG101). The triggers and the
//! SQL functions that write secrets both call them, so a refusal raised for
//! `set_secret` is the same refusal a direct INSERT meets in the trigger.

use crate::gates::caller::Caller;
use crate::pg::error::{Failure, Result};
use crate::store::attached::Attached;
use crate::store::{registry, workspaces};
use secretgate_core::policy::{self, Write};
use secretgate_core::Scope;

/// Everything a secret write must pass. `value` is the plaintext being
/// written, when known. Facts are read only when a rule needs them.
pub fn check_secret_write(
    attached: &Attached,
    op: Write,
    scope: Scope,
    key: &str,
    value: Option<&str>,
    caller: &Caller,
) -> Result<()> {
    let refused = |r| Failure::refused(r, caller.to_json());
    if policy::needs_kind(caller.agent, scope) {
        let kind = workspaces::kind(attached, scope)?;
        policy::self_write(caller.agent, op, scope, key, kind.as_deref()).map_err(refused)?;
    }
    if op == Write::Delete {
        return Ok(());
    }
    let forbidden = registry::forbidden_reason(key)?;
    policy::forbidden_key(op, scope, key, forbidden.as_deref()).map_err(refused)?;
    if let (true, Some(value)) = (policy::checks_model_value(op, key), value) {
        policy::model_value(op, scope, value, registry::is_provider(value)?).map_err(refused)?;
    }
    Ok(())
}

/// A workspace row updated (`new_kind` given) or deleted.
pub fn check_workspace_write(
    id: Scope,
    old_kind: Option<&str>,
    new_kind: Option<Option<&str>>,
    caller: &Caller,
) -> Result<()> {
    policy::workspace_write(caller.agent, id, old_kind, new_kind).map_err(|r| Failure::refused(r, caller.to_json()))
}
