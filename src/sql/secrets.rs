//! Reading and writing secrets: the SQL functions of CONTRACT §5 that need
//! no gate. Each `#[pg_extern]` is a thin wrapper: the work happens in a
//! function returning `Result`, and the wrapper raises any failure.

use crate::gates;
use crate::keyring;
use crate::plans;
use crate::report::{self, Failure, Refusal, Result};
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

/// A workspace argument that must not be NULL.
pub fn workspace_scope(id: Option<pgrx::Uuid>) -> Result<Scope> {
    Ok(Scope::Workspace(CoreUuid::from_bytes(*required(id, "workspace_id")?)))
}

/// A scope as the SQL `uuid` parameter that names it (NULL = global).
pub fn sql_uuid(scope: Scope) -> Option<pgrx::Uuid> {
    scope.workspace_id().map(|id| pgrx::Uuid::from_bytes(*id.as_bytes()))
}

pub fn scope_of(id: Option<pgrx::Uuid>) -> Scope {
    Scope::from_workspace(id.map(|id| CoreUuid::from_bytes(*id)))
}

/// A NULL argument is an error (22004), never "unset".
pub fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| Failure::sql("22004", format!("secretgate: {name} must not be NULL")))
}

/// A stored row: `None` when there is none. NULL columns inside a row are
/// kept as such and fail decryption: a row is never "unset".
type StoredRow = Option<(Option<Vec<u8>>, Option<i32>)>;

pub fn fetch(client: &SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<StoredRow> {
    let (sql, args) = row_query(attached, scope, key, "");
    stored_row(plans::select(client, &sql, Some(1), &args)?)
}

/// [`fetch`], locking the row FOR SHARE when `lock` is set.
pub fn fetch_locked(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    key: &str,
    lock: bool,
) -> Result<StoredRow> {
    if !lock {
        return fetch(client, attached, scope, key);
    }
    let (sql, args) = row_query(attached, scope, key, " FOR SHARE");
    stored_row(plans::update(client, &sql, Some(1), &args)?)
}

fn row_query<'a>(
    attached: &Attached,
    scope: Scope,
    key: &'a str,
    suffix: &str,
) -> (String, Vec<pgrx::datum::DatumWithOid<'a>>) {
    match scope {
        Scope::Workspace(_) => (
            format!(
                "SELECT encrypted_value, encryption_version FROM {} \
                 WHERE workspace_id OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2{suffix}",
                attached.secrets
            ),
            vec![sql_uuid(scope).into(), key.into()],
        ),
        Scope::Global => (
            format!(
                "SELECT encrypted_value, encryption_version FROM {} WHERE key OPERATOR(pg_catalog.=) $1{suffix}",
                attached.global_secrets
            ),
            vec![key.into()],
        ),
    }
}

fn stored_row(table: pgrx::spi::SpiTupleTable<'_>) -> Result<StoredRow> {
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
        return Err(CoreError::DecryptFailed {
            reason: "the stored row has a NULL encrypted_value or encryption_version",
        });
    };
    keyring.decrypt(&blob, version, scope, key)
}

/// The three states of a read. Infrastructure failures (no attached tables,
/// an SPI error) are the outer `Err`; crypto and keyring errors the inner.
pub fn read(scope: Scope, key: &str) -> Result<std::result::Result<Option<String>, CoreError>> {
    Spi::connect(|client| {
        let attached = tables::attached()?;
        Ok(match fetch(client, &attached, scope, key)? {
            None => Ok(None),
            Some(row) => keyring::current().and_then(|k| open(&k, row, scope, key)).map(Some),
        })
    })
}

/// How a concierge helper seeds a value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// Only when no row exists (a row written meanwhile stands).
    IfAbsent,
    /// Replace an existing (unusable) row.
    ReplaceEmpty,
}

/// Upserts a secret.
pub fn write(scope: Scope, key: &str, value: &str) -> Result<()> {
    store(scope, key, value, true).map(|_| ())
}

/// Seeds a value; false when a row already existed and was kept.
pub fn seed(scope: Scope, key: &str, value: &str, how: Seed) -> Result<bool> {
    store(scope, key, value, how == Seed::ReplaceEmpty)
}

/// Encrypts and stores a value, returning whether a row was written. The
/// gates are checked here first, so a refusal is raised with its own
/// SQLSTATE rather than from the trigger inside SPI (where pgrx would turn
/// it into XX000); the trigger stays the backstop for direct writes.
fn store(scope: Scope, key: &str, value: &str, replace: bool) -> Result<bool> {
    Spi::connect_mut(|client| {
        let attached = tables::attached()?;
        let caller = gates::Caller::current();
        gates::check_secret_write(&attached, gates::Write::Insert, scope, key, Some(value), &caller)?;
        let (version, blob) = keyring::current()
            .and_then(|k| k.encrypt(value.as_bytes(), scope, key))
            .map_err(|e| core_failure(e, scope, key))?;
        let on_conflict = if replace {
            "DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version"
        } else {
            "DO NOTHING"
        };
        let written = match scope {
            Scope::Workspace(_) => plans::update(
                client,
                &format!(
                    "INSERT INTO {} AS s (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace_id, key) {on_conflict}",
                    attached.secrets
                ),
                None,
                &[sql_uuid(scope).into(), key.into(), blob.as_slice().into(), version.into()],
            )?,
            Scope::Global => plans::update(
                client,
                &format!(
                    "INSERT INTO {} AS s (key, encrypted_value, encryption_version) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) {on_conflict}",
                    attached.global_secrets
                ),
                None,
                &[key.into(), blob.as_slice().into(), version.into()],
            )?,
        };
        Ok(written.len() > 0)
    })
}

fn read_or_raise(scope: Scope, key: &str) -> Result<Option<String>> {
    read(scope, key)?.map_err(|e| core_failure(e, scope, key))
}

#[pg_extern(volatile, parallel_safe)]
fn encrypt(plaintext: Option<&str>, workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<Vec<u8>> {
    let run = || -> Result<Option<Vec<u8>>> {
        let key = required(key, "key")?;
        let Some(plaintext) = plaintext else {
            return Ok(None);
        };
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
        let Some(blob) = encrypted_value else {
            return Ok(None);
        };
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
    let version =
        keyring::current().map(|k| k.current_version()).map_err(|e| Failure::from(core_refusal(e, None, None)));
    Failure::unwrap_or_raise(version)
}

#[pg_extern(volatile)]
fn set_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, value: Option<&str>) {
    let run = || -> Result<()> {
        let scope = workspace_scope(workspace_id)?;
        write(scope, required(key, "key")?, required(value, "value")?)
    };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}

#[pg_extern(volatile)]
fn set_global_secret(key: Option<&str>, value: Option<&str>) {
    let run = || -> Result<()> { write(Scope::Global, required(key, "key")?, required(value, "value")?) };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}

#[pg_extern(stable)]
fn read_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>) -> Option<String> {
    let run = || -> Result<Option<String>> {
        let scope = workspace_scope(workspace_id)?;
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
        let scope = workspace_scope(workspace_id)?;
        Ok(three_state(read(scope, required(key, "key")?)?))
    };
    TableIterator::once(Failure::unwrap_or_raise(run()))
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
    TableIterator::new(Failure::unwrap_or_raise(verify_all()))
}

/// Every stored secret, workspace rows then global ones, with whether it decrypts.
fn verify_all() -> Result<Vec<VerifyRow>> {
    const BATCH: i64 = 1000;
    Spi::connect(|client| {
        let attached = tables::attached()?;
        let keyring = keyring::current();
        let queries = [
            format!(
                "SELECT workspace_id, key, encrypted_value, encryption_version FROM {} ORDER BY workspace_id, key",
                attached.secrets
            ),
            format!(
                "SELECT NULL::pg_catalog.uuid, key, encrypted_value, encryption_version FROM {} ORDER BY key",
                attached.global_secrets
            ),
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
