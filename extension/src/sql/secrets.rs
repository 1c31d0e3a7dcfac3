//! Encryption, reading and writing secrets, verification, and attaching the
//! gates: the SQL functions Postgres calls. Each checks its arguments and
//! makes one call down.

use crate::gates::admin_audit;
use crate::gates::secrets as gate;
use crate::pg::args::{required, scope_of, sql_uuid, workspace_scope};
use crate::pg::error::{self, Failure, Result};
use crate::pg::keyring;
use crate::store::attached;
use pgrx::prelude::*;
use pgrx::PgRelation;
use secretgate_core::policy;
use secretgate_core::Scope;

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
        let plaintext = keyring::current()
            .and_then(|k| k.decrypt(blob, version, scope, key))
            .map_err(|e| Failure::core(&e, Some(scope), Some(key)))?;
        Ok(Some(plaintext))
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

type VerifyRow = (Option<pgrx::Uuid>, String, String, Option<String>);

#[pg_extern(stable)]
fn verify_secrets() -> TableIterator<
    'static,
    (
        name!(workspace_id, Option<pgrx::Uuid>),
        name!(key, String),
        name!(state, String),
        name!(error_code, Option<String>),
    ),
> {
    let rows = error::run(gate::verify);
    TableIterator::new(rows.into_iter().map(|(row, error)| -> VerifyRow {
        let (state, code) = match error {
            None => ("ok".to_string(), None),
            Some(e) => ("error".to_string(), Some(e.code().sqlstate().to_string())),
        };
        (sql_uuid(row.scope), row.key, state, code)
    }))
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

#[pg_extern(volatile)]
fn detach_gates() {
    error::run(|| {
        Spi::connect_mut(attached::detach)?;
        admin_audit::record("gates.detached", "the gates were detached", None, None, None);
        Ok(())
    })
}
