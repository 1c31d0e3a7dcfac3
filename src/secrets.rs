//! Reading and writing secrets: the SQL functions of CONTRACT §5 that need
//! no gate. Each `#[pg_extern]` is a thin wrapper: the work happens in a
//! function returning `Result`, and the wrapper raises any failure.

use crate::keyring;
use crate::report::{Failure, Refusal, Result};
use crate::tables::{self, Attached};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgRelation;
use secretgate_core::{uuid::Uuid as CoreUuid, Error as CoreError, Keyring, Scope};

/// A crypto or keyring error as a refusal naming the row it concerns.
pub fn core_refusal(e: CoreError, scope: Option<Scope>, key: Option<&str>) -> Refusal {
    let mut r = Failure::refusal(e.code(), e.to_string());
    match scope {
        Some(Scope::Workspace(id)) => r = r.with("workspace_id", id.hyphenated().to_string()),
        Some(Scope::Global) => r = r.with("scope", "global"),
        None => {}
    }
    if let Some(key) = key {
        r = r.with("key", key);
    }
    if let CoreError::KeyringUnavailable { .. } = e {
        r = r.hint("point secretgate.keyring_file (postgresql.conf) at a 0600 JSON keyring owned by the server's user, then SELECT pg_reload_conf()");
    }
    r
}

fn core_failure(e: CoreError, scope: Scope, key: &str) -> Failure {
    core_refusal(e, Some(scope), Some(key)).into()
}

pub fn scope_of(id: Option<pgrx::Uuid>) -> Scope {
    Scope::from_workspace(id.map(|id| CoreUuid::from_bytes(*id)))
}

fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| Failure::sql("22004", format!("secretgate: {name} must not be NULL")))
}

/// A stored row: `None` when there is none. NULL columns inside a row are
/// kept as such and fail decryption: a row is never "unset".
type StoredRow = Option<(Option<Vec<u8>>, Option<i32>)>;

pub fn fetch(client: &SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<StoredRow> {
    let table = match scope {
        Scope::Workspace(id) => client.select(
            &format!(
                "SELECT encrypted_value, encryption_version FROM {} \
                 WHERE workspace_id OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2",
                attached.secrets
            ),
            Some(1),
            &[pgrx::Uuid::from_bytes(*id.as_bytes()).into(), key.into()],
        )?,
        Scope::Global => client.select(
            &format!(
                "SELECT encrypted_value, encryption_version FROM {} WHERE key OPERATOR(pg_catalog.=) $1",
                attached.global_secrets
            ),
            Some(1),
            &[key.into()],
        )?,
    };
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    Ok(Some((row.get::<Vec<u8>>(1)?, row.get::<i32>(2)?)))
}

/// Decrypts a stored row: the plaintext, or the reason it cannot be had.
pub fn open(
    keyring: &Keyring,
    row: (Option<Vec<u8>>, Option<i32>),
    scope: Scope,
    key: &str,
) -> std::result::Result<String, CoreError> {
    let (Some(blob), Some(version)) = row else {
        return Err(CoreError::DecryptFailed { reason: "the stored row has a NULL encrypted_value or encryption_version" });
    };
    keyring.decrypt(&blob, version, scope, key)
}

/// The three states of a read. Infrastructure failures (no attached tables,
/// an SPI error) are the outer `Err`; crypto and keyring errors the inner.
pub fn read(scope: Scope, key: &str) -> Result<std::result::Result<Option<String>, CoreError>> {
    Spi::connect(|client| {
        let attached = tables::attached(client)?;
        Ok(match fetch(client, &attached, scope, key)? {
            None => Ok(None),
            Some(row) => keyring::current().and_then(|k| open(&k, row, scope, key)).map(Some),
        })
    })
}

pub fn write(scope: Scope, key: &str, value: &str) -> Result<()> {
    let (version, blob) = keyring::current()
        .and_then(|k| k.encrypt(value.as_bytes(), scope, key))
        .map_err(|e| core_failure(e, scope, key))?;
    Spi::connect_mut(|client| {
        let attached = tables::attached(client)?;
        match scope {
            Scope::Workspace(id) => client.update(
                &format!(
                    "INSERT INTO {} AS s (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, key) DO UPDATE \
                     SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version",
                    attached.secrets
                ),
                None,
                &[pgrx::Uuid::from_bytes(*id.as_bytes()).into(), key.into(), blob.as_slice().into(), version.into()],
            )?,
            Scope::Global => client.update(
                &format!(
                    "INSERT INTO {} AS s (key, encrypted_value, encryption_version) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE \
                     SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version",
                    attached.global_secrets
                ),
                None,
                &[key.into(), blob.as_slice().into(), version.into()],
            )?,
        };
        Ok(())
    })
}

fn read_or_raise(scope: Scope, key: &str) -> Result<Option<String>> {
    read(scope, key)?.map_err(|e| core_failure(e, scope, key))
}

#[pg_extern(volatile, parallel_safe)]
fn encrypt(plaintext: Option<&str>, workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<Vec<u8>> {
    let run = || -> Result<Option<Vec<u8>>> {
        let key = required(key, "key")?;
        let Some(plaintext) = plaintext else { return Ok(None) };
        let scope = scope_of(workspace_id);
        let (_, blob) = keyring::current()
            .and_then(|k| k.encrypt(plaintext.as_bytes(), scope, key))
            .map_err(|e| core_failure(e, scope, key))?;
        Ok(Some(blob))
    };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(stable, parallel_safe)]
fn decrypt(
    encrypted_value: Option<&[u8]>,
    encryption_version: Option<i32>,
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
) -> Option<String> {
    let run = || -> Result<Option<String>> {
        let key = required(key, "key")?;
        let Some(blob) = encrypted_value else { return Ok(None) };
        let version = required(encryption_version, "encryption_version")?;
        let scope = scope_of(workspace_id);
        let plaintext = keyring::current()
            .and_then(|k| k.decrypt(blob, version, scope, key))
            .map_err(|e| core_failure(e, scope, key))?;
        Ok(Some(plaintext))
    };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(stable, parallel_safe)]
fn current_key_version() -> i32 {
    let version = keyring::current()
        .map(|k| k.current_version())
        .map_err(|e| Failure::from(core_refusal(e, None, None)));
    Failure::unwrap_or_raise(version)
}

#[pg_extern(volatile)]
fn set_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, value: Option<&str>) {
    let run = || -> Result<()> {
        let scope = Scope::Workspace(CoreUuid::from_bytes(*required(workspace_id, "workspace_id")?));
        write(scope, required(key, "key")?, required(value, "value")?)
    };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(volatile)]
fn set_global_secret(key: Option<&str>, value: Option<&str>) {
    let run = || -> Result<()> { write(Scope::Global, required(key, "key")?, required(value, "value")?) };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(stable)]
fn read_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<String> {
    let run = || -> Result<Option<String>> {
        let scope = Scope::Workspace(CoreUuid::from_bytes(*required(workspace_id, "workspace_id")?));
        read_or_raise(scope, required(key, "key")?)
    };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(stable)]
fn read_global_secret(key: Option<&str>) -> Option<String> {
    let run = || -> Result<Option<String>> { read_or_raise(Scope::Global, required(key, "key")?) };
    Failure::unwrap_or_raise(run())
}

/// `(state, value, error_code)`: `value` | `unset` | `error` with the SQLSTATE.
fn three_state(read: std::result::Result<Option<String>, CoreError>) -> (String, Option<String>, Option<String>) {
    match read {
        Ok(Some(value)) => ("value".into(), Some(value), None),
        Ok(None) => ("unset".into(), None, None),
        Err(e) => ("error".into(), None, Some(e.code().sqlstate().into())),
    }
}

#[pg_extern(stable)]
fn try_read_secret(
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
) -> TableIterator<'static, (name!(state, String), name!(value, Option<String>), name!(error_code, Option<String>))> {
    let run = || -> Result<_> {
        let scope = Scope::Workspace(CoreUuid::from_bytes(*required(workspace_id, "workspace_id")?));
        Ok(three_state(read(scope, required(key, "key")?)?))
    };
    TableIterator::once(Failure::unwrap_or_raise(run()))
}

type VerifyRow = (Option<pgrx::Uuid>, String, String, Option<String>);

#[pg_extern(stable)]
fn verify_secrets() -> TableIterator<
    'static,
    (name!(workspace_id, Option<pgrx::Uuid>), name!(key, String), name!(state, String), name!(error_code, Option<String>)),
> {
    TableIterator::new(Failure::unwrap_or_raise(verify_all()))
}

/// Every stored secret, workspace rows then global ones, with whether it decrypts.
fn verify_all() -> Result<Vec<VerifyRow>> {
    const BATCH: i64 = 1000;
    Spi::connect(|client| {
        let attached = tables::attached(client)?;
        let keyring = keyring::current();
        let queries = [
            format!("SELECT workspace_id, key, encrypted_value, encryption_version FROM {} ORDER BY workspace_id, key", attached.secrets),
            format!("SELECT NULL::pg_catalog.uuid, key, encrypted_value, encryption_version FROM {} ORDER BY key", attached.global_secrets),
        ];
        let mut out = Vec::new();
        for query in &queries {
            let mut cursor = client.try_open_cursor(query.as_str(), &[])?;
            loop {
                let batch = cursor.fetch(BATCH)?;
                if batch.is_empty() {
                    break;
                }
                for row in batch {
                    let id = row.get::<pgrx::Uuid>(1)?;
                    let key = row.get::<String>(2)?.unwrap_or_default();
                    let scope = scope_of(id);
                    let stored = (row.get::<Vec<u8>>(3)?, row.get::<i32>(4)?);
                    let result = match &keyring {
                        Ok(k) => open(k, stored, scope, &key).map(|_| ()),
                        Err(e) => Err(e.clone()),
                    };
                    let (state, code) = match result {
                        Ok(()) => ("ok".to_string(), None),
                        Err(e) => ("error".to_string(), Some(e.code().sqlstate().to_string())),
                    };
                    out.push((id, key, state, code));
                }
            }
        }
        Ok(out)
    })
}

#[pg_extern(volatile)]
fn attach_gates(workspaces: PgRelation, secrets: PgRelation, global_secrets: PgRelation) {
    let oids = (workspaces.oid(), secrets.oid(), global_secrets.oid());
    drop((workspaces, secrets, global_secrets));
    Failure::unwrap_or_raise(Spi::connect_mut(|client| tables::attach(client, oids.0, oids.1, oids.2)));
}

#[pg_extern(volatile)]
fn detach_gates() {
    Failure::unwrap_or_raise(Spi::connect_mut(tables::detach));
}
