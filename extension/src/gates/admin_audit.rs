//! Administrative events for the audit table: what a DBA, a deploy pipeline
//! or a probe changed (gates attached or detached, keys renamed, re-encryption
//! batches, dead verdicts, registry changes). Queued when the transaction
//! commits, so an action that rolled back leaves no row; never a value.

use crate::gates::caller::Caller;
use crate::pg::audit_at_commit;
use secretgate_core::{audit, Scope};

/// Records `event` (with `reason` saying what was done) at commit.
pub fn record(event: &str, reason: &str, scope: Option<Scope>, key: Option<&str>, provider: Option<&str>) {
    let workspace_id = scope.and_then(|s| s.workspace_id()).map(|id| id.hyphenated().to_string());
    let line = audit::admin_event(event, reason, workspace_id, key, provider, Caller::current().to_json());
    audit_at_commit::enqueue_at_commit(&line, None);
}

/// Records `event` at commit, once per transaction for `once` (the last
/// call's reason stands).
pub fn record_once(event: &str, reason: &str, once: &str) {
    let line = audit::admin_event(event, reason, None, None, None, Caller::current().to_json());
    audit_at_commit::enqueue_at_commit(&line, Some(once));
}
