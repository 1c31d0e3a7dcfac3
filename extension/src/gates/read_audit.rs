//! Read audit (`secretgate.audit_reads`): a read through `read_secret`,
//! `try_read_secret`, `read_global_secret` or `decrypt` becomes an audit row
//! (event `secret.read`) when the setting says so: by default only a read
//! that answers an error. Queued at once, like a refusal, so the row
//! survives the reader's rollback; a full queue drops and counts it.

use crate::gates::caller::Caller;
use crate::pg::audit_queue;
use crate::pg::gucs::{AuditReads, AUDIT_READS};
use pgrx::pg_sys;
use secretgate_core::policy::{self, ReadAudit};
use secretgate_core::{Error as CoreError, Scope};

fn mode() -> ReadAudit {
    match AUDIT_READS.get() {
        AuditReads::Off => ReadAudit::Off,
        AuditReads::Errors => ReadAudit::Errors,
        AuditReads::All => ReadAudit::All,
    }
}

/// Records the read of `key` in `scope` that answered `read`, if audited.
pub fn record<T>(scope: Scope, key: &str, read: &Result<Option<T>, CoreError>) {
    if !policy::audits_read(mode(), read) {
        return;
    }
    let workspace_id = scope.workspace_id().map(|id| id.hyphenated().to_string());
    let line = policy::read_audit_line(read, workspace_id, key, Caller::current().to_json(), client_addr());
    audit_queue::enqueue(&line);
}

/// The client's address, as `inet_client_addr()` gives it (none for a Unix
/// socket or a background process).
fn client_addr() -> Option<String> {
    // SAFETY: inet_client_addr takes no argument and returns NULL or an inet.
    unsafe { pgrx::direct_function_call::<pgrx::Inet>(pg_sys::inet_client_addr, &[]) }.map(|inet| inet.0)
}
