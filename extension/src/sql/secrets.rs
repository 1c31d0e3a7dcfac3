//! Encryption, reading and writing secrets, verification, and attaching the
//! gates: the SQL functions Postgres calls. Each checks its arguments and
//! makes one call down.

use crate::gates::admin_audit;
use crate::gates::read_audit;
use crate::gates::secrets as gate;
use crate::pg::args::{required, scope_of, sql_uuid, workspace_scope};
use crate::pg::error::{self, Failure, Result};
use crate::pg::keyring;
use crate::store::attached;
use pgrx::prelude::*;
use pgrx::PgRelation;
use secretgate_core::policy;
use secretgate_core::{Code, Scope};

#[pg_extern(volatile, parallel_safe)]
fn encrypt(plaintext: Option<&str>, workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<Vec<u8>> {
    error::raise_on(|| {
        let key = required(key, "key")?;
        let Some(plaintext) = plaintext else {
            return Ok(None);
        };
        let scope = scope_of(workspace_id);
        let (_, blob) = keyring::seal(plaintext, scope, key).map_err(|e| Failure::core(&e, Some(scope), Some(key)))?;
        Ok(Some(blob))
    })
}

#[pg_extern(stable, parallel_safe)]
fn decrypt(
    encrypted_value: Option<&[u8]>,
    encryption_version: Option<i32>,
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
) -> Option<String> {
    error::raise_on(|| -> Result<Option<String>> {
        let key = required(key, "key")?;
        let Some(blob) = encrypted_value else {
            return Ok(None);
        };
        let version = required(encryption_version, "encryption_version")?;
        let scope = scope_of(workspace_id);
        let read = keyring::current().and_then(|k| keyring::decrypt_with(&k, blob, version, scope, key)).map(Some);
        read_audit::record(scope, key, &read);
        read.map_err(|e| Failure::core(&e, Some(scope), Some(key)))
    })
}

#[pg_extern(stable, parallel_safe)]
fn current_key_version() -> i32 {
    error::raise_on(|| keyring::current().map(|k| k.current_version()).map_err(|e| Failure::core(&e, None, None)))
}

#[pg_extern(volatile)]
fn set_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, value: Option<&str>) {
    error::run(|| gate::write(workspace_scope(workspace_id)?, required(key, "key")?, required(value, "value")?))
}

#[pg_extern(volatile)]
fn set_global_secret(key: Option<&str>, value: Option<&str>) {
    error::run(|| gate::write(Scope::Global, required(key, "key")?, required(value, "value")?))
}

#[pg_extern(stable)]
fn read_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<String> {
    error::run(|| gate::read_or_fail(workspace_scope(workspace_id)?, required(key, "key")?))
}

#[pg_extern(stable)]
fn read_global_secret(key: Option<&str>) -> Option<String> {
    error::run(|| gate::read_or_fail(Scope::Global, required(key, "key")?))
}

#[pg_extern(stable)]
fn try_read_secret(
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
) -> TableIterator<'static, (name!(state, String), name!(value, Option<String>), name!(error_code, Option<String>))> {
    let (state, value, code) = error::run(|| {
        let read = gate::read(workspace_scope(workspace_id)?, required(key, "key")?)?;
        Ok(policy::three_state(read))
    });
    TableIterator::once((state.to_string(), value, code.map(str::to_string)))
}

type VerifyRow = (Option<pgrx::Uuid>, Option<String>, String, Option<String>);

/// Every row and whether it decrypts; a key version whose key does not match
/// this database's key check value is one line (NULL workspace and key,
/// SG004) instead of one per row: `key_check_status()` names the version.
#[allow(clippy::type_complexity)] // pgrx spells a returned table as this tuple
#[pg_extern(stable)]
fn verify_secrets() -> TableIterator<
    'static,
    (
        name!(workspace_id, Option<pgrx::Uuid>),
        name!(key, Option<String>),
        name!(state, String),
        name!(error_code, Option<String>),
    ),
> {
    let rows = error::run(gate::verify);
    TableIterator::new(rows.into_iter().map(|line| -> VerifyRow {
        match line {
            gate::Verified::Row(row, result) => {
                let (state, code) = match result {
                    Ok(true) => ("ok".to_string(), None),
                    Ok(false) => ("unencrypted".to_string(), None),
                    Err(e) => ("error".to_string(), Some(e.code().sqlstate().to_string())),
                };
                (sql_uuid(row.scope), Some(row.key), state, code)
            }
            gate::Verified::KeyMismatch => {
                (None, None, "error".to_string(), Some(Code::KeyMismatch.sqlstate().to_string()))
            }
        }
    }))
}

/// Each key version the server's keyring, the database's key check values or
/// the stored rows name: `ok`, `mismatch`, `missing from keyring`, `unused`
/// or `unchecked`, with the rows using it. No row is decrypted.
#[pg_extern(stable)]
fn key_check_status() -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(status, String),
        name!(secrets, i64),
        name!(is_current, bool),
        name!(first_used, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let rows = error::run(gate::key_status);
    TableIterator::new(
        rows.into_iter().map(|v| (v.version, v.status.as_str().to_string(), v.secrets, v.current, v.first_used)),
    )
}

#[pg_extern(volatile)]
fn attach_gates(workspaces: PgRelation, secrets: PgRelation, global_secrets: PgRelation) {
    let oids = (workspaces.oid(), secrets.oid(), global_secrets.oid());
    drop((workspaces, secrets, global_secrets));
    error::run(|| {
        Spi::connect_mut(|client| attached::attach(client, oids.0, oids.1, oids.2))?;
        admin_audit::record("gates.attached", "the gates were attached (or already were)", None, None, None);
        Ok(())
    })
}

/// What keeps these tables from being attached by the current role, one
/// row per problem, without raising or changing anything: no rows when
/// `attach_gates` would succeed.
#[pg_extern(stable)]
fn attach_check(
    workspaces: PgRelation,
    secrets: PgRelation,
    global_secrets: PgRelation,
) -> TableIterator<'static, (name!(relation, String), name!(sqlstate, String), name!(problem, String))> {
    let oids = (workspaces.oid(), secrets.oid(), global_secrets.oid());
    drop((workspaces, secrets, global_secrets));
    let problems = error::run(|| Spi::connect(|client| attached::check(client, oids.0, oids.1, oids.2)));
    TableIterator::new(problems.into_iter().map(|p| {
        let sqlstate = p.sqlstate();
        let message = match p.hint {
            Some(hint) => format!("{} (hint: {hint})", p.message),
            None => p.message,
        };
        (p.table, sqlstate, message)
    }))
}

/// Rows per key version of two secrets tables, attached or not (for
/// `secretgate adopt`): the version's format in the current keyring, the
/// number of rows and of rows the current keyring cannot read. Read with
/// the caller's privileges; never a value.
#[pg_extern(stable)]
fn adoption_rows(
    secrets: PgRelation,
    global_secrets: PgRelation,
) -> TableIterator<
    'static,
    (name!(encryption_version, Option<i32>), name!(format, String), name!(rows, i64), name!(unreadable, i64)),
> {
    let oids = (secrets.oid(), global_secrets.oid());
    drop((secrets, global_secrets));
    TableIterator::new(error::run(|| gate::census(oids.0, oids.1)))
}

/// The current keyring's versions: format (`bound`, `unbound`,
/// `plaintext`) and whether each is current. Never a key.
#[pg_extern(stable)]
fn key_formats() -> TableIterator<'static, (name!(version, i32), name!(format, String), name!(is_current, bool))> {
    TableIterator::new(error::run(gate::key_formats))
}

#[pg_extern(volatile)]
fn detach_gates() {
    error::run(|| {
        Spi::connect_mut(attached::detach)?;
        admin_audit::record("gates.detached", "the gates were detached", None, None, None);
        Ok(())
    })
}
