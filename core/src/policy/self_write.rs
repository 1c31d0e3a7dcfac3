//! The self-write rule: an agent may not write its concierge's secrets, nor
//! delete a platform workspace or change whether a workspace is one.

use super::{Refusal, Write, PLATFORM};
use crate::{Code, Scope};

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
