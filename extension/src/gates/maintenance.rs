//! What a DBA and a deploy pipeline run: renaming a key (re-encrypting under
//! the new name, since the associated data names the key) and moving rows to
//! the current key version. Neither may lose or silently alter a secret.
//!
//! Both rewrite the platform's tables on a caller with more rights than the
//! tables' owner (a superuser, as a rule). Like PostgreSQL's own VACUUM and
//! CREATE INDEX, they check the caller's privileges, then read and write as
//! the tables' owner in a security-restricted operation: a trigger, rule,
//! default or index expression the owner put on its tables runs with the
//! owner's rights, never the caller's.

use crate::gates::admin_audit;
use crate::gates::caller::Caller;
use crate::gates::history::{self, Reason};
use crate::gates::secret_write;
use crate::pg::error::{Failure, Result};
use crate::pg::keyring;
use crate::pg::spi;
use crate::store::attached::{self, Attached};
use crate::store::liveness;
use crate::store::secrets::{self, Lock, Row, Skip};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use secretgate_core::policy::Write;
use secretgate_core::{ciphertext_digest, Error as CoreError, Keyring};

fn open(keyring: &Keyring, row: &Row) -> Result<String> {
    keyring::open_with(keyring, row.blob.as_deref(), row.version, row.scope, &row.key)
        .map_err(|e| Failure::core(&e, Some(row.scope), Some(&row.key)))
}

fn current_keyring() -> Result<std::rc::Rc<Keyring>> {
    keyring::current().map_err(|e| Failure::core(&e, None, None))
}

/// Runs `work` as the owner of the secret tables, once the caller is known
/// to hold `privileges` (`ACL_*` bits) on both (42501 otherwise). Both tables
/// must have one owner (55000 otherwise): maintenance acts as exactly one role.
fn as_tables_owner<T>(attached: &Attached, privileges: pg_sys::AclMode, work: impl FnOnce() -> Result<T>) -> Result<T> {
    // Maintenance writes: a read-only transaction (a standby's) gets Postgres' 25006 first.
    spi::prevent_if_read_only("UPDATE");
    let tables = attached.secret_table_oids();
    for table in tables {
        // SAFETY: a privilege check of the current user on a relation by oid;
        // a missing relation is reported by the caller's own reads below.
        let granted = unsafe { pg_sys::pg_class_aclcheck(table, pg_sys::GetUserId(), privileges) };
        if granted != pg_sys::AclResult::ACLCHECK_OK {
            return Err(Failure::sql(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "secretgate: permission denied for table {}",
                    if table == tables[0] { &attached.secrets } else { &attached.global_secrets }
                ),
            ));
        }
    }
    let owners = tables.map(spi::table_owner);
    let Some(owner) = owners[0].filter(|_| owners[0] == owners[1]) else {
        return Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "secretgate: the secrets table and the global secrets table have different owners",
        )
        .hint("maintenance writes them as their owner: give both tables one owner (ALTER TABLE ... OWNER TO)"));
    };
    // Deferred checks on the rows rewritten (the gates' and the owner's own)
    // run at the end of each statement, as the owner, instead of at commit
    // as whoever commits; then they are deferred again. Postgres refuses to
    // queue a deferred trigger event inside a security-restricted operation.
    let deferred = Spi::connect(|client| attached::deferred_constraints(client, &tables))?;
    let set_constraints = |mode: &str| -> Result<()> {
        if let Some(list) = &deferred {
            Spi::connect_mut(|client| client.update(&format!("SET CONSTRAINTS {list} {mode}"), None, &[]).map(drop))?;
        }
        Ok(())
    };
    set_constraints("IMMEDIATE")?;
    let result = spi::elevated(owner, work)?;
    set_constraints("DEFERRED")?;
    Ok(result)
}

const SELECT_UPDATE: pg_sys::AclMode = (pg_sys::ACL_SELECT | pg_sys::ACL_UPDATE) as pg_sys::AclMode;
const SELECT_INSERT_DELETE: pg_sys::AclMode =
    (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT | pg_sys::ACL_DELETE) as pg_sys::AclMode;

/// Renames `old_key` to `new_key` in every scope: re-encrypts under the new
/// name unless a `new_key` row exists (the existing one wins); removes the
/// `old_key` row either way. Every row is decrypted and checked before
/// anything is written, so one bad row aborts the call with nothing changed.
pub fn rename(old_key: &str, new_key: &str) -> Result<i64> {
    if old_key == new_key {
        return Ok(0);
    }
    let caller = Caller::current();
    let attached = attached::attached()?;
    as_tables_owner(&attached, SELECT_INSERT_DELETE, || {
        Spi::connect_mut(|client| {
            let keyring = current_keyring()?;
            let old_rows = secrets::rows_for_update(
                client,
                &attached,
                "key OPERATOR(pg_catalog.=) $1",
                old_key.into(),
                None,
                Lock::Wait,
            )?;

            // Check everything first: decrypt, and run the gates the new rows will meet.
            let mut plan = Vec::new();
            for row in &old_rows {
                let value = open(&keyring, row)?;
                let exists = secrets::fetch(client, &attached, row.scope, new_key)?.is_some();
                if !exists {
                    secret_write::check_secret_write(
                        &attached,
                        Write::Insert,
                        row.scope,
                        new_key,
                        Some(&value),
                        &caller,
                    )?;
                }
                secret_write::check_secret_write(&attached, Write::Delete, row.scope, old_key, None, &caller)?;
                plan.push((row.scope, if exists { None } else { Some(value) }));
            }

            let mut renamed = 0;
            history::with_reason(Reason::Rename, || -> Result<()> {
                for (scope, value) in plan {
                    if let Some(value) = value {
                        let (version, blob) = keyring::seal_with(&keyring, &value, scope, new_key)
                            .map_err(|e| Failure::core(&e, Some(scope), Some(new_key)))?;
                        secrets::insert(client, &attached, scope, new_key, (version, &blob))?;
                        renamed += 1;
                    }
                    secrets::delete(client, &attached, scope, old_key)?;
                }
                Ok(())
            })?;
            if !old_rows.is_empty() {
                admin_audit::record(
                    "secret.renamed",
                    &format!(
                        "{old_key} renamed to {new_key}: {renamed} rows re-encrypted, {} old rows removed",
                        old_rows.len()
                    ),
                    None,
                    Some(new_key),
                    None,
                );
            }
            Ok(renamed)
        })
    })
}

/// Moves up to `batch` rows from older key versions to the current one,
/// in the caller's transaction. Rows locked by concurrent writers are
/// skipped (a later batch takes them). A liveness verdict follows its
/// credential to the new ciphertext. Returns the number of rows moved.
pub fn reencrypt(batch: i32) -> Result<i64> {
    let keyring = current_keyring()?;
    let current = keyring.current_version();
    let attached = attached::attached()?;
    as_tables_owner(&attached, SELECT_UPDATE, || {
        Spi::connect_mut(|client| {
            let stale = secrets::rows_for_update(
                client,
                &attached,
                // Not IS DISTINCT FROM: it looks `=` up on the caller's search_path.
                "(encryption_version IS NULL OR encryption_version OPERATOR(pg_catalog.<>) $1)",
                current.into(),
                Some(batch as i64),
                Lock::SkipLocked,
            )?;
            history::with_reason(Reason::Reencrypt, || -> Result<()> {
                for row in &stale {
                    let value = open(&keyring, row)?;
                    let (version, blob) = keyring::seal_with(&keyring, &value, row.scope, &row.key)
                        .map_err(|e| Failure::core(&e, Some(row.scope), Some(&row.key)))?;
                    secrets::replace(client, &attached, row.scope, &row.key, (version, &blob))?;
                    let old_digest = ciphertext_digest(row.blob.as_deref().unwrap_or_default());
                    carry_liveness(row, &old_digest, &blob)?;
                }
                Ok(())
            })?;
            // Then the kept versions, with what the batch has left.
            let (kept, _) = history::reencrypt(&keyring, batch as i64 - stale.len() as i64)?;
            if !stale.is_empty() || kept > 0 {
                admin_audit::record(
                    "secret.reencrypt.batch",
                    &format!("{} rows and {kept} kept versions re-encrypted under key version {current}", stale.len()),
                    None,
                    None,
                    None,
                );
            }
            Ok(stale.len() as i64 + kept)
        })
    })
}

/// Like [`reencrypt`], but a row that cannot be decrypted (SG001, SG002) is
/// left where it is instead of rolling the batch back, and so are all the
/// rows of a key version whose key does not match (SG004): up to `batch`
/// rows are moved, every readable one eventually. Returns the rows moved and
/// the rows left behind this call (a version left behind counts all its rows).
pub fn reencrypt_skipping(batch: i32) -> Result<(i64, i64)> {
    let keyring = current_keyring()?;
    let current = keyring.current_version();
    let attached = attached::attached()?;
    as_tables_owner(&attached, SELECT_UPDATE, || {
        Spi::connect_mut(|client| {
            let mut skip = Skip::default();
            let (mut moved, mut skipped) = (0i64, 0i64);
            while moved < batch as i64 {
                let rows = secrets::stale_rows(client, &attached, current, &skip, batch as i64 - moved)?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let value =
                        match keyring::open_with(&keyring, row.blob.as_deref(), row.version, row.scope, &row.key) {
                            Ok(value) => value,
                            Err(CoreError::KeyMismatch { version }) => {
                                if !skip.versions.contains(&version) {
                                    skip.versions.push(version);
                                    skipped += secrets::count_version(client, &attached, version)?;
                                }
                                continue;
                            }
                            Err(CoreError::DecryptFailed { .. } | CoreError::UnknownKeyVersion { .. }) => {
                                skip.row(row);
                                skipped += 1;
                                continue;
                            }
                            Err(e) => return Err(Failure::core(&e, Some(row.scope), Some(&row.key))),
                        };
                    let (version, blob) = keyring::seal_with(&keyring, &value, row.scope, &row.key)
                        .map_err(|e| Failure::core(&e, Some(row.scope), Some(&row.key)))?;
                    history::with_reason(Reason::Reencrypt, || {
                        secrets::replace(client, &attached, row.scope, &row.key, (version, &blob))
                    })?;
                    let old_digest = ciphertext_digest(row.blob.as_deref().unwrap_or_default());
                    carry_liveness(row, &old_digest, &blob)?;
                    moved += 1;
                }
            }
            let (kept, kept_skipped) = history::reencrypt(&keyring, batch as i64 - moved)?;
            Ok((moved + kept, skipped + kept_skipped))
        })
    })
}

/// A verdict follows its credential to the new ciphertext: the verdicts are
/// the extension's, written as its owner (maintenance runs as the tables' owner).
fn carry_liveness(row: &Row, old_digest: &[u8], blob: &[u8]) -> Result<()> {
    spi::as_owner_mut(|owner| liveness::carry(owner, row.scope, &row.key, old_digest, &ciphertext_digest(blob)))
}
