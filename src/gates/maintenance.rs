//! What a DBA and a deploy pipeline run: renaming a key (re-encrypting under
//! the new name, since the associated data names the key) and moving rows to
//! the current key version. Neither may lose or silently alter a secret.

use crate::gates::{self, Caller, Write};
use crate::keyring;
use crate::plans;
use crate::report::{self, Failure, Result};
use crate::secrets;
use crate::tables::{self, Attached};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use secretgate_core::{ciphertext_digest, uuid::Uuid as CoreUuid, Keyring, Scope};

/// How maintenance reads rows: waiting for concurrent writers, or skipping
/// the rows they hold (a later batch takes them).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    Wait,
    SkipLocked,
}

/// One stored row, as read for maintenance.
struct Row {
    scope: Scope,
    key: String,
    blob: Option<Vec<u8>>,
    version: Option<i32>,
}

/// The rows of both tables matching `filter` on `key` / `encryption_version`
/// with `$1` bound to `arg`, workspace rows first, locked FOR UPDATE.
fn rows(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    filter: &str,
    arg: pgrx::datum::DatumWithOid<'_>,
    limit: Option<i64>,
    lock: Lock,
) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for (table, id_col) in [(&attached.secrets, "workspace_id"), (&attached.global_secrets, "NULL::pg_catalog.uuid")] {
        let remaining = limit.map(|n| n - out.len() as i64);
        if remaining == Some(0) {
            break;
        }
        let mut sql = format!("SELECT {id_col}, key, encrypted_value, encryption_version FROM {table} WHERE {filter}");
        if let Some(n) = remaining {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        sql.push_str(if lock == Lock::SkipLocked { " FOR UPDATE SKIP LOCKED" } else { " FOR UPDATE" });
        for row in plans::update(client, &sql, None, std::slice::from_ref(&arg))? {
            let id = row.get::<pgrx::Uuid>(1)?;
            out.push(Row {
                scope: Scope::from_workspace(id.map(|id| CoreUuid::from_bytes(*id))),
                key: row.get::<String>(2)?.unwrap_or_default(),
                blob: row.get::<Vec<u8>>(3)?,
                version: row.get::<i32>(4)?,
            });
        }
    }
    Ok(out)
}

fn open(keyring: &Keyring, row: &Row) -> Result<String> {
    secrets::open(keyring, (row.blob.clone(), row.version), row.scope, &row.key)
        .map_err(|e| gates::refusal_for_core(e, row.scope, &row.key))
}

/// SQL naming one row, its parameters starting at `$first`, and their values.
fn locate<'a>(
    attached: &Attached,
    scope: Scope,
    key: &'a str,
    first: usize,
) -> (String, String, Vec<pgrx::datum::DatumWithOid<'a>>) {
    match scope {
        Scope::Workspace(_) => (
            attached.secrets.clone(),
            format!("workspace_id OPERATOR(pg_catalog.=) ${first} AND key OPERATOR(pg_catalog.=) ${}", first + 1),
            vec![secrets::sql_uuid(scope).into(), key.into()],
        ),
        Scope::Global => {
            (attached.global_secrets.clone(), format!("key OPERATOR(pg_catalog.=) ${first}"), vec![key.into()])
        }
    }
}

/// Renames `old_key` to `new_key` in every scope: re-encrypts under the new
/// name unless a `new_key` row exists (the existing one wins); removes the
/// `old_key` row either way. Every row is decrypted and checked before
/// anything is written, so one bad row aborts the call with nothing changed.
#[pg_extern(volatile)]
fn rename_secret_key(old_key: Option<&str>, new_key: Option<&str>) -> i64 {
    let run = || -> Result<i64> {
        let old_key = secrets::required(old_key, "old_key")?;
        let new_key = secrets::required(new_key, "new_key")?;
        if old_key == new_key {
            return Ok(0);
        }
        let caller = Caller::current();
        Spi::connect_mut(|client| {
            let attached = tables::attached()?;
            let keyring = keyring::current().map_err(|e| Failure::from(secrets::core_refusal(e, None, None)))?;
            let old_rows = rows(client, &attached, "key OPERATOR(pg_catalog.=) $1", old_key.into(), None, Lock::Wait)?;

            // Check everything first: decrypt, and run the gates the new rows will meet.
            let mut plan = Vec::new();
            for row in &old_rows {
                let value = open(&keyring, row)?;
                let exists = secrets::fetch(client, &attached, row.scope, new_key)?.is_some();
                if !exists {
                    gates::check_secret_write(&attached, Write::Insert, row.scope, new_key, Some(&value), &caller)?;
                }
                gates::check_secret_write(&attached, Write::Delete, row.scope, old_key, None, &caller)?;
                plan.push((row.scope, if exists { None } else { Some(value) }));
            }

            let mut renamed = 0;
            for (scope, value) in plan {
                if let Some(value) = value {
                    let (version, blob) = keyring
                        .encrypt(value.as_bytes(), scope, new_key)
                        .map_err(|e| gates::refusal_for_core(e, scope, new_key))?;
                    let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = vec![blob.as_slice().into(), version.into()];
                    let sql = match scope {
                        Scope::Workspace(_) => {
                            args.extend([secrets::sql_uuid(scope).into(), new_key.into()]);
                            format!(
                                "INSERT INTO {} (encrypted_value, encryption_version, workspace_id, key) VALUES ($1, $2, $3, $4)",
                                attached.secrets
                            )
                        }
                        Scope::Global => {
                            args.push(new_key.into());
                            format!(
                                "INSERT INTO {} (encrypted_value, encryption_version, key) VALUES ($1, $2, $3)",
                                attached.global_secrets
                            )
                        }
                    };
                    plans::update(client, &sql, None, &args)?;
                    renamed += 1;
                }
                let (table, row, args) = locate(&attached, scope, old_key, 1);
                plans::update(client, &format!("DELETE FROM {table} WHERE {row}"), None, &args)?;
            }
            Ok(renamed)
        })
    };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}

/// Moves up to `batch_size` rows from older key versions to the current one,
/// in the caller's transaction. Rows locked by concurrent writers are
/// skipped (a later batch takes them). A liveness verdict follows its
/// credential to the new ciphertext. Returns the number of rows moved.
/// Moves a credential's verdict to its re-encrypted ciphertext.
const CARRY_VERDICT: &str = "UPDATE secretgate.liveness SET ciphertext_sha256 = $4 \
     WHERE (workspace_id OPERATOR(pg_catalog.=) $1 OR (workspace_id IS NULL AND $1 IS NULL)) \
     AND key OPERATOR(pg_catalog.=) $2 AND ciphertext_sha256 OPERATOR(pg_catalog.=) $3";

#[pg_extern(volatile)]
fn reencrypt(batch_size: Option<i32>) -> i64 {
    let run = || -> Result<i64> {
        let batch = batch_size
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::sql("22023", "secretgate: batch_size must be positive"))?;
        let keyring = keyring::current().map_err(|e| Failure::from(secrets::core_refusal(e, None, None)))?;
        let current = keyring.current_version();
        Spi::connect_mut(|client| {
            let attached = tables::attached()?;
            let stale = rows(
                client,
                &attached,
                // Not IS DISTINCT FROM: it looks `=` up on the caller's search_path.
                "(encryption_version IS NULL OR encryption_version OPERATOR(pg_catalog.<>) $1)",
                current.into(),
                Some(batch as i64),
                Lock::SkipLocked,
            )?;
            for row in &stale {
                let value = open(&keyring, row)?;
                let (version, blob) = keyring
                    .encrypt(value.as_bytes(), row.scope, &row.key)
                    .map_err(|e| gates::refusal_for_core(e, row.scope, &row.key))?;
                let (table, where_row, located) = locate(&attached, row.scope, &row.key, 3);
                let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = vec![blob.as_slice().into(), version.into()];
                args.extend(located);
                plans::update(
                    client,
                    &format!("UPDATE {table} SET encrypted_value = $1, encryption_version = $2 WHERE {where_row}"),
                    None,
                    &args,
                )?;
                let old_digest = ciphertext_digest(row.blob.as_deref().unwrap_or_default());
                plans::update(
                    client,
                    CARRY_VERDICT,
                    None,
                    &[
                        secrets::sql_uuid(row.scope).into(),
                        row.key.as_str().into(),
                        old_digest.as_slice().into(),
                        ciphertext_digest(&blob).as_slice().into(),
                    ],
                )?;
            }
            Ok(stale.len() as i64)
        })
    };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}
