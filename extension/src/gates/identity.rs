//! The platform-identity invariant, checked at commit: a `kind='platform'`
//! workspace that is `online` has a usable MODEL (SG102).

use crate::gates::caller::Caller;
use crate::pg::error::{Failure, Result};
use crate::pg::keyring;
use crate::store::attached::Attached;
use crate::store::{secrets, workspaces};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use secretgate_core::policy::{self, ModelState, MODEL};
use secretgate_core::Scope;

/// Whether the workspace's MODEL is usable: a row, that decrypts, non-empty;
/// the inner `Err` when it cannot be told. Locks the row under REPEATABLE
/// READ and SERIALIZABLE so a concurrent delete after this transaction's
/// snapshot is a serialization failure, not a stale "present".
pub fn model_usable(client: &mut SpiClient<'_>, attached: &Attached, scope: Scope) -> Result<ModelState> {
    // A read-only transaction (a hot standby) sets nothing online and cannot lock rows: it only reads.
    // SAFETY: reads of two Postgres globals.
    let lock = unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 && !pg_sys::XactReadOnly };
    Ok(match secrets::fetch_locked(client, attached, scope, MODEL, lock)? {
        None => Ok(false),
        Some(row) => keyring::open(row, scope, MODEL).map(|v| !v.is_empty()),
    })
}

/// The invariant for one workspace. The workspace row is locked FOR SHARE,
/// so a concurrent transaction that sets it online waits for this one (or
/// this one for it) and then sees the other's committed state: no
/// interleaving lets both commit.
pub fn check_platform_identity(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    caller: &Caller,
) -> Result<()> {
    if scope == Scope::Global {
        return Ok(());
    }
    let Some((kind, status)) = workspaces::kind_and_status_for_share(client, attached, scope)? else {
        return Ok(());
    };
    let mut model: Result<ModelState> = Ok(Ok(false));
    let online = status.as_deref() == Some("online");
    let decided = policy::platform_identity(scope, kind.as_deref(), online, || {
        model = model_usable(client, attached, scope);
        model.as_ref().map_or(Ok(false), Clone::clone)
    });
    model.map(drop)?;
    decided.map_err(|r| Failure::refused(r, caller.to_json()))
}

/// TRUNCATE of the secrets table while a platform workspace is online.
pub fn check_truncate(client: &SpiClient<'_>, attached: &Attached, caller: &Caller) -> Result<()> {
    policy::truncate_secrets(workspaces::platform_online(client, attached)?)
        .map_err(|r| Failure::refused(r, caller.to_json()))
}
