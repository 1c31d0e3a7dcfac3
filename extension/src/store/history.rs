//! Rows of `secretgate.secret_history`: the ciphertexts an overwrite or a
//! delete replaced, each under its secret's workspace and key (the binding
//! is the ciphertext's own: it decrypts only for them). Every statement here
//! runs as the extension's owner (the table is the extension's; no platform
//! role may read or write it), with every operator qualified.

use crate::pg::args::{scope_of, sql_uuid};
use crate::pg::error::Result;
use crate::pg::spi;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::spi::SpiClient;
use secretgate_core::Scope;

/// The rows of one secret of `scope`: `h.workspace_id` and `h.key` against
/// `$1` and `$2` (spelled per scope, so the unique index answers).
fn one_secret(scope: Scope) -> &'static str {
    match scope {
        Scope::Workspace(_) => "h.workspace_id OPERATOR(pg_catalog.=) $1 AND h.key OPERATOR(pg_catalog.=) $2",
        Scope::Global => "h.workspace_id IS NULL AND $1 IS NULL AND h.key OPERATOR(pg_catalog.=) $2",
    }
}

/// A replaced ciphertext to keep.
pub struct Replaced<'a> {
    pub scope: Scope,
    pub key: &'a str,
    pub blob: Option<&'a [u8]>,
    pub version: Option<i32>,
    pub replaced_by: String,
    pub reason: &'a str,
}

/// Keeps `replaced` as the secret's next history version and drops the
/// versions past the newest `keep`.
pub fn add(client: &mut SpiClient<'_>, replaced: &Replaced<'_>, keep: i32) -> Result<()> {
    let one_secret = one_secret(replaced.scope);
    let sql = format!(
        "WITH added AS (\
           INSERT INTO secretgate.secret_history \
             (workspace_id, key, version, encrypted_value, encryption_version, replaced_by, reason) \
           SELECT $1, $2, COALESCE((SELECT pg_catalog.max(h.version) FROM secretgate.secret_history h \
                                     WHERE {one_secret}), 0) OPERATOR(pg_catalog.+) 1, \
                  $3, $4, $5::pg_catalog.jsonb, $6 \
           RETURNING version) \
         DELETE FROM secretgate.secret_history h USING added \
          WHERE {one_secret} AND h.version OPERATOR(pg_catalog.<=) (added.version OPERATOR(pg_catalog.-) $7)"
    );
    let args: Vec<DatumWithOid<'_>> = vec![
        sql_uuid(replaced.scope).into(),
        replaced.key.into(),
        replaced.blob.into(),
        replaced.version.into(),
        replaced.replaced_by.as_str().into(),
        replaced.reason.into(),
        keep.into(),
    ];
    spi::update(client, &sql, None, &args)?;
    Ok(())
}

/// Drops the versions of one secret numbered `below` and lower (past
/// `history_keep`).
pub fn prune(client: &mut SpiClient<'_>, scope: Scope, key: &str, below: i32) -> Result<()> {
    let sql = format!(
        "DELETE FROM secretgate.secret_history h WHERE {} AND h.version OPERATOR(pg_catalog.<=) $3",
        one_secret(scope)
    );
    spi::update(client, &sql, None, &[sql_uuid(scope).into(), key.into(), below.into()])?;
    Ok(())
}

/// One kept version, as listed (never a value).
pub struct Version {
    pub number: i32,
    pub replaced_at: Option<TimestampWithTimeZone>,
    pub replaced_by: Option<pgrx::JsonB>,
    pub reason: String,
    pub blob: Option<Vec<u8>>,
    pub encryption_version: Option<i32>,
}

/// The kept versions of one secret, newest first.
pub fn versions(client: &SpiClient<'_>, scope: Scope, key: &str) -> Result<Vec<Version>> {
    let sql = format!(
        "SELECT h.version, h.replaced_at, h.replaced_by, h.reason, h.encrypted_value, h.encryption_version \
           FROM secretgate.secret_history h WHERE {} ORDER BY h.version DESC",
        one_secret(scope)
    );
    let mut out = Vec::new();
    for row in spi::select(client, &sql, None, &[sql_uuid(scope).into(), key.into()])? {
        out.push(Version {
            number: row.get::<i32>(1)?.unwrap_or_default(),
            replaced_at: row.get(2)?,
            replaced_by: row.get(3)?,
            reason: row.get::<String>(4)?.unwrap_or_default(),
            blob: row.get(5)?,
            encryption_version: row.get(6)?,
        });
    }
    Ok(out)
}

/// Deletes the history of a workspace (every key, or one), or of the
/// global scope; the number of rows removed.
pub fn purge(client: &mut SpiClient<'_>, scope: Scope, key: Option<&str>) -> Result<i64> {
    let sql = "WITH gone AS (DELETE FROM secretgate.secret_history h \
                WHERE (CASE WHEN $1 IS NULL THEN h.workspace_id IS NULL \
                            ELSE h.workspace_id OPERATOR(pg_catalog.=) $1 END) \
                  AND ($2 IS NULL OR h.key OPERATOR(pg_catalog.=) $2) RETURNING 1) \
               SELECT pg_catalog.count(*) FROM gone";
    let table = spi::update(client, sql, None, &[sql_uuid(scope).into(), key.into()])?;
    Ok(table.first().get_one::<i64>()?.unwrap_or(0))
}

/// A kept version to re-encrypt: where it is (its row is locked, so the
/// place holds until the transaction ends) and what it holds.
pub struct Stale {
    pub at: pgrx::pg_sys::ItemPointerData,
    pub number: i32,
    pub scope: Scope,
    pub key: String,
    pub blob: Option<Vec<u8>>,
    pub version: Option<i32>,
}

/// A kept version's name in a skip list: `workspace/key/number` (empty
/// workspace for the global scope).
pub fn skip_name(scope: Scope, key: &str, number: i32) -> String {
    let workspace = scope.workspace_id().map(|id| id.hyphenated().to_string()).unwrap_or_default();
    format!("{workspace}/{key}/{number}")
}

/// Up to `limit` history rows not on key version `current` and not named
/// in `skip` ([`skip_name`]), locked FOR UPDATE SKIP LOCKED.
pub fn stale(client: &mut SpiClient<'_>, current: i32, skip: &[String], limit: i64) -> Result<Vec<Stale>> {
    let sql = "SELECT h.ctid, h.version, h.workspace_id, h.key, h.encrypted_value, h.encryption_version \
                 FROM secretgate.secret_history h \
                WHERE (h.encryption_version IS NULL OR h.encryption_version OPERATOR(pg_catalog.<>) $1) \
                  AND (COALESCE(h.workspace_id::pg_catalog.text, '') OPERATOR(pg_catalog.||) '/' \
                       OPERATOR(pg_catalog.||) h.key OPERATOR(pg_catalog.||) '/' \
                       OPERATOR(pg_catalog.||) h.version::pg_catalog.text) OPERATOR(pg_catalog.<>) ALL ($2) \
                LIMIT $3 FOR UPDATE SKIP LOCKED";
    let mut out = Vec::new();
    for row in spi::update(client, sql, None, &[current.into(), skip.to_vec().into(), limit.into()])? {
        out.extend(stale_row(&row)?);
    }
    Ok(out)
}

/// A row of `ctid, version, workspace_id, key, encrypted_value,
/// encryption_version` (the order [`stale`] and [`each`] select).
fn stale_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Option<Stale>> {
    let Some(at) = row.get::<pgrx::pg_sys::ItemPointerData>(1)? else { return Ok(None) };
    Ok(Some(Stale {
        at,
        number: row.get::<i32>(2)?.unwrap_or_default(),
        scope: scope_of(row.get::<pgrx::Uuid>(3)?),
        key: row.get::<String>(4)?.unwrap_or_default(),
        blob: row.get(5)?,
        version: row.get(6)?,
    }))
}

/// Replaces one (locked) history row's ciphertext.
pub fn replace(
    client: &mut SpiClient<'_>,
    at: pgrx::pg_sys::ItemPointerData,
    (version, blob): (i32, &[u8]),
) -> Result<()> {
    spi::update(
        client,
        "UPDATE secretgate.secret_history SET encrypted_value = $1, encryption_version = $2 \
          WHERE ctid OPERATOR(pg_catalog.=) $3",
        None,
        &[blob.into(), version.into(), at.into()],
    )?;
    Ok(())
}

/// Every history row's identity and ciphertext, in batches through a
/// cursor, for verification.
pub fn each(client: &SpiClient<'_>, batch: i64, mut each: impl FnMut(Stale)) -> Result<()> {
    let query = "SELECT h.ctid, h.version, h.workspace_id, h.key, h.encrypted_value, h.encryption_version \
                   FROM secretgate.secret_history h ORDER BY h.workspace_id, h.key, h.version";
    let mut cursor = client.try_open_cursor(query, &[])?;
    loop {
        let rows = cursor.fetch(batch)?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            if let Some(kept) = stale_row(&row)? {
                each(kept);
            }
        }
    }
}

/// Rows of history per key version (for `key_check_status`).
pub fn version_counts(client: &SpiClient<'_>) -> Result<Vec<(Option<i32>, i64)>> {
    let sql = "SELECT encryption_version, pg_catalog.count(*) FROM secretgate.secret_history GROUP BY 1";
    let mut out = Vec::new();
    for row in spi::select(client, sql, None, &[])? {
        out.push((row.get::<i32>(1)?, row.get::<i64>(2)?.unwrap_or(0)));
    }
    Ok(out)
}
