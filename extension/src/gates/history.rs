//! Every secret's history: the ciphertext an overwrite or a delete replaced
//! is kept (`secretgate.secret_history`, the extension's own table), up to
//! `secretgate.history_keep` versions per secret, pruned by age by the audit
//! writers. Versions are listed without values, restored through every gate
//! a write meets, and purged on demand. Why a version was kept is the write's
//! own reason: `set` and `delete` for any write, `rename` and `restore` when
//! secretgate itself made them; a re-encryption keeps nothing (the value did
//! not change).

use crate::gates::admin_audit;
use crate::gates::caller::Caller;
use crate::gates::secrets as secret_gate;
use crate::pg::error::{Failure, Result};
use crate::pg::gucs::HISTORY_KEEP;
use crate::pg::history_rows::{self, KeptRow};
use crate::pg::keyring;
use crate::pg::spi;
use crate::store::history::{self, Replaced};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use secretgate_core::{Error as CoreError, Format, Keyring, Scope};
use std::cell::Cell;

/// Why the writes under way replace what they replace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// Whatever the write is: `set` for an update, `delete` for a delete.
    Write,
    Rename,
    Restore,
    /// A re-encryption: the value is the same, nothing is kept.
    Reencrypt,
}

thread_local! {
    static REASON: Cell<Reason> = const { Cell::new(Reason::Write) };
}

/// Runs `f` with the writes it makes kept for `reason` (restored afterwards,
/// also when `f` fails).
pub fn with_reason<T>(reason: Reason, f: impl FnOnce() -> T) -> T {
    struct Restore(Reason);
    impl Drop for Restore {
        fn drop(&mut self) {
            REASON.set(self.0);
        }
    }
    let _restore = Restore(REASON.replace(reason));
    f()
}

/// The operation that replaced a row.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    Update,
    Delete,
}

/// Keeps a replaced ciphertext (from the attached tables' history triggers).
pub fn keep(scope: Scope, key: &str, blob: Option<&[u8]>, version: Option<i32>, how: Replacement) -> Result<()> {
    let keep = HISTORY_KEEP.get();
    let reason = match (REASON.get(), how) {
        (Reason::Reencrypt, _) => return Ok(()),
        _ if keep <= 0 => return Ok(()),
        (Reason::Rename, _) => "rename",
        (Reason::Restore, _) => "restore",
        (Reason::Write, Replacement::Update) => "set",
        (Reason::Write, Replacement::Delete) => "delete",
    };
    let workspace_id = scope.workspace_id().map(|id| *id.as_bytes());
    let row = KeptRow {
        workspace_id: workspace_id.as_ref(),
        key,
        blob,
        encryption_version: version,
        replaced_by: replaced_by(),
        reason,
    };
    match history_rows::insert(&row) {
        // Written directly; versions past `keep` go through SQL (rarely more than one).
        Some(number) if number > keep => {
            spi::as_owner_mut_indexed(|client| history::prune(client, scope, key, number - keep))
        }
        Some(_) => Ok(()),
        // No table yet: the extension's SQL predates history (before its update).
        None if !history_rows::present() => Ok(()),
        // A table of another shape: through SQL, as its owner.
        None => {
            let replaced = Replaced { scope, key, blob, version, replaced_by: row.replaced_by.to_string(), reason };
            spi::as_owner_mut_indexed(|client| history::add(client, &replaced, keep))
        }
    }
}

/// Who replaced a value: role, `secretgate.caller`, whether an agent, and
/// `application_name`.
fn replaced_by() -> serde_json::Value {
    let caller = Caller::current().to_json();
    // SAFETY: application_name is NULL or a C string owned by the GUC machinery.
    let application_name = unsafe {
        let app = pg_sys::application_name;
        if app.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(app).to_string_lossy().into_owned()
        }
    };
    serde_json::json!({
        "role": caller["role"],
        "caller": caller["setting"],
        "agent": caller["agent"],
        "application_name": application_name,
    })
}

/// One kept version as `secret_versions` lists it.
pub struct Listed {
    pub version: i32,
    pub replaced_at: Option<pgrx::datum::TimestampWithTimeZone>,
    pub replaced_by: Option<pgrx::JsonB>,
    pub reason: String,
    pub state: &'static str,
}

/// Removes a deleted workspace's history (from its row's trigger).
pub fn forget_workspace(scope: Scope) -> Result<()> {
    spi::as_owner_mut_indexed(|client| history::purge(client, scope, None)).map(drop)
}

/// Whether a kept ciphertext reads under the current keyring, as
/// `verify_secrets` says it of a row.
fn state_of(
    keyring: &std::result::Result<std::rc::Rc<Keyring>, CoreError>,
    v: &history::Version,
    scope: Scope,
    key: &str,
) -> &'static str {
    match keyring {
        Ok(k) => match keyring::open_with(k, v.blob.as_deref(), v.encryption_version, scope, key) {
            Ok(_) if v.encryption_version.and_then(|e| k.format(e)) == Some(Format::Plaintext) => "unencrypted",
            Ok(_) => "ok",
            Err(_) => "error",
        },
        Err(_) => "error",
    }
}

/// The kept versions of a secret, newest first; never a value.
pub fn versions(scope: Scope, key: &str) -> Result<Vec<Listed>> {
    let keyring = keyring::current();
    let kept = spi::as_owner_mut_indexed(|client| history::versions(client, scope, key))?;
    Ok(kept
        .iter()
        .map(|v| Listed {
            version: v.number,
            replaced_at: v.replaced_at,
            replaced_by: v.replaced_by.as_ref().map(|j| pgrx::JsonB(j.0.clone())),
            reason: v.reason.clone(),
            state: state_of(&keyring, v, scope, key),
        })
        .collect())
}

/// Writes kept version `version` back through every gate a write meets
/// (`set_secret`'s path): the value it replaces is kept in turn, as a
/// `restore`. P0002 when no such version is kept.
pub fn restore(scope: Scope, key: &str, version: i32) -> Result<()> {
    let kept = spi::as_owner_mut_indexed(|client| history::versions(client, scope, key))?;
    let Some(v) = kept.into_iter().find(|v| v.number == version) else {
        return Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("secretgate: no version {version} of this secret is kept"),
        )
        .hint("secretgate.secret_versions() lists the versions kept"));
    };
    let value = keyring::open((v.blob, v.encryption_version), scope, key)
        .map_err(|e| Failure::core(&e, Some(scope), Some(key)))?;
    with_reason(Reason::Restore, || secret_gate::write(scope, key, &value))?;
    admin_audit::record(
        "secret.restored",
        &format!("version {version} was written back"),
        Some(scope),
        Some(key),
        None,
    );
    Ok(())
}

/// Removes the history of a workspace (or the global scope), every key or
/// one; the number of versions removed.
pub fn purge(scope: Scope, key: Option<&str>) -> Result<i64> {
    spi::prevent_if_read_only("DELETE");
    let removed = spi::as_owner_mut_indexed(|client| history::purge(client, scope, key))?;
    admin_audit::record("history.purged", &format!("{removed} kept version(s) removed"), Some(scope), key, None);
    Ok(removed)
}

/// Moves up to `limit` kept versions to the current key version, as the
/// extension's owner. A version that does not decrypt is left where it is
/// (`verify_secrets` names it). The numbers moved and left.
pub fn reencrypt(keyring: &Keyring, limit: i64) -> Result<(i64, i64)> {
    if limit <= 0 || !history_rows::present() {
        return Ok((0, 0));
    }
    let current = keyring.current_version();
    let mut skip = Vec::new();
    let mut moved = 0;
    spi::as_owner_mut(|client| {
        while moved < limit {
            let rows = history::stale(client, current, &skip, limit - moved)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let sealed = keyring::open_with(keyring, row.blob.as_deref(), row.version, row.scope, &row.key)
                    .and_then(|value| keyring::seal_with(keyring, &value, row.scope, &row.key));
                match sealed {
                    Ok((version, blob)) => {
                        history::replace(client, row.at, (version, &blob))?;
                        moved += 1;
                    }
                    Err(_) => skip.push(history::skip_name(row.scope, &row.key, row.number)),
                }
            }
        }
        Ok((moved, skip.len() as i64))
    })
}
