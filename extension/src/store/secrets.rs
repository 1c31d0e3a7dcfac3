//! Rows of the attached secrets tables (workspace and global): every read
//! and write of one.

use crate::pg::args::{scope_of, sql_uuid};
use crate::pg::error::Result;
use crate::pg::keyring::StoredValue;
use crate::pg::{secret_read, spi};
use crate::store::attached::Attached;
use pgrx::datum::DatumWithOid;
use pgrx::spi::{Spi, SpiClient, SpiTupleTable};
use secretgate_core::Scope;

/// A stored row's value columns, or `None` when there is no row.
pub type StoredRow = Option<StoredValue>;

/// The row of `key` in `scope`.
pub fn fetch(client: &SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<StoredRow> {
    if let Some(row) = fetch_direct(attached, scope, key) {
        return Ok(row);
    }
    let (sql, args) = row_query(attached, scope, key, "");
    stored_row(spi::select(client, &sql, Some(1), &args)?)
}

/// [`fetch`] without an open SPI connection: one is made only when the
/// direct index read cannot answer.
pub fn fetch_alone(attached: &Attached, scope: Scope, key: &str) -> Result<StoredRow> {
    match fetch_direct(attached, scope, key) {
        Some(row) => Ok(row),
        None => Spi::connect(|client| fetch(client, attached, scope, key)),
    }
}

/// The row read straight through the table's unique index, `None` when
/// that read is not possible ([`secret_read`]).
fn fetch_direct(attached: &Attached, scope: Scope, key: &str) -> Option<StoredRow> {
    let [secrets, global_secrets] = attached.secret_table_oids();
    match scope {
        Scope::Workspace(id) => secret_read::secret_row(secrets, Some(id.as_bytes()), key),
        Scope::Global => secret_read::secret_row(global_secrets, None, key),
    }
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
    stored_row(spi::update(client, &sql, Some(1), &args)?)
}

fn row_query<'a>(attached: &Attached, scope: Scope, key: &'a str, suffix: &str) -> (String, Vec<DatumWithOid<'a>>) {
    let (table, where_row, args) = locate(attached, scope, key, 1);
    (format!("SELECT encrypted_value, encryption_version FROM {table} WHERE {where_row}{suffix}"), args)
}

fn stored_row(table: SpiTupleTable<'_>) -> Result<StoredRow> {
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    Ok(Some((row.get::<Vec<u8>>(1)?, row.get::<i32>(2)?)))
}

/// The table holding `scope`'s rows, the condition naming one row (its
/// parameters starting at `$first`), and their values.
pub fn locate<'a>(
    attached: &Attached,
    scope: Scope,
    key: &'a str,
    first: usize,
) -> (String, String, Vec<DatumWithOid<'a>>) {
    match scope {
        Scope::Workspace(_) => (
            attached.secrets.clone(),
            format!("workspace_id OPERATOR(pg_catalog.=) ${first} AND key OPERATOR(pg_catalog.=) ${}", first + 1),
            vec![sql_uuid(scope).into(), key.into()],
        ),
        Scope::Global => {
            (attached.global_secrets.clone(), format!("key OPERATOR(pg_catalog.=) ${first}"), vec![key.into()])
        }
    }
}

/// What to do when the row already exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    Replace,
    Keep,
}

/// Inserts (or upserts) a ciphertext; whether a row was written.
pub fn put(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    key: &str,
    (version, blob): (i32, &[u8]),
    on_conflict: OnConflict,
) -> Result<bool> {
    let action = match on_conflict {
        OnConflict::Replace => {
            "DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version"
        }
        OnConflict::Keep => "DO NOTHING",
    };
    let written = match scope {
        Scope::Workspace(_) => spi::update(
            client,
            &format!(
                "INSERT INTO {} AS s (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (workspace_id, key) {action}",
                attached.secrets
            ),
            None,
            &[sql_uuid(scope).into(), key.into(), blob.into(), version.into()],
        )?,
        Scope::Global => spi::update(
            client,
            &format!(
                "INSERT INTO {} AS s (key, encrypted_value, encryption_version) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) {action}",
                attached.global_secrets
            ),
            None,
            &[key.into(), blob.into(), version.into()],
        )?,
    };
    Ok(!written.is_empty())
}

/// Inserts a new row (fails on a duplicate, as any INSERT).
pub fn insert(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    key: &str,
    (version, blob): (i32, &[u8]),
) -> Result<()> {
    let mut args: Vec<DatumWithOid<'_>> = vec![blob.into(), version.into()];
    let sql = match scope {
        Scope::Workspace(_) => {
            args.extend([sql_uuid(scope).into(), key.into()]);
            format!(
                "INSERT INTO {} (encrypted_value, encryption_version, workspace_id, key) VALUES ($1, $2, $3, $4)",
                attached.secrets
            )
        }
        Scope::Global => {
            args.push(key.into());
            format!(
                "INSERT INTO {} (encrypted_value, encryption_version, key) VALUES ($1, $2, $3)",
                attached.global_secrets
            )
        }
    };
    spi::update(client, &sql, None, &args)?;
    Ok(())
}

/// Replaces a row's ciphertext.
pub fn replace(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    key: &str,
    (version, blob): (i32, &[u8]),
) -> Result<()> {
    let (table, where_row, located) = locate(attached, scope, key, 3);
    let mut args: Vec<DatumWithOid<'_>> = vec![blob.into(), version.into()];
    args.extend(located);
    spi::update(
        client,
        &format!("UPDATE {table} SET encrypted_value = $1, encryption_version = $2 WHERE {where_row}"),
        None,
        &args,
    )?;
    Ok(())
}

/// Deletes a row.
pub fn delete(client: &mut SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<()> {
    let (table, where_row, args) = locate(attached, scope, key, 1);
    spi::update(client, &format!("DELETE FROM {table} WHERE {where_row}"), None, &args)?;
    Ok(())
}

/// One stored row, as maintenance and verification read it.
pub struct Row {
    pub scope: Scope,
    pub key: String,
    pub blob: Option<Vec<u8>>,
    pub version: Option<i32>,
}

/// How maintenance reads rows: waiting for concurrent writers, or skipping
/// the rows they hold (a later batch takes them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Wait,
    SkipLocked,
}

/// The rows of both tables matching `filter` on `key` / `encryption_version`
/// with `$1` bound to `arg`, workspace rows first, locked FOR UPDATE.
pub fn rows_for_update(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    filter: &str,
    arg: DatumWithOid<'_>,
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
        for row in spi::update(client, &sql, None, std::slice::from_ref(&arg))? {
            out.push(Row {
                scope: scope_of(row.get::<pgrx::Uuid>(1)?),
                key: row.get::<String>(2)?.unwrap_or_default(),
                blob: row.get::<Vec<u8>>(3)?,
                version: row.get::<i32>(4)?,
            });
        }
    }
    Ok(out)
}

/// Every stored row, workspace rows then global ones, in batches of
/// `batch` through a cursor, handed to `each`.
pub fn each_row(client: &SpiClient<'_>, attached: &Attached, batch: i64, each: impl FnMut(Row)) -> Result<()> {
    each_row_in(client, &attached.secrets, &attached.global_secrets, batch, each)
}

/// [`each_row`] over two tables named by their qualified, quoted names
/// (attached or not: `secretgate adopt` looks before attaching).
pub fn each_row_in(
    client: &SpiClient<'_>,
    secrets: &str,
    global_secrets: &str,
    batch: i64,
    mut each: impl FnMut(Row),
) -> Result<()> {
    let queries = [
        format!(
            "SELECT workspace_id, key, encrypted_value, encryption_version FROM {secrets} ORDER BY workspace_id, key"
        ),
        format!(
            "SELECT NULL::pg_catalog.uuid, key, encrypted_value, encryption_version FROM {global_secrets} ORDER BY key"
        ),
    ];
    for query in &queries {
        let mut cursor = client.try_open_cursor(query.as_str(), &[])?;
        loop {
            let rows = cursor.fetch(batch)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                each(Row {
                    scope: scope_of(row.get::<pgrx::Uuid>(1)?),
                    key: row.get::<String>(2)?.unwrap_or_default(),
                    blob: row.get::<Vec<u8>>(3)?,
                    version: row.get::<i32>(4)?,
                });
            }
        }
    }
    Ok(())
}

/// How many rows of both tables use each `encryption_version` (NULL included).
pub fn version_counts(client: &SpiClient<'_>, attached: &Attached) -> Result<Vec<(Option<i32>, i64)>> {
    let sql = format!(
        "SELECT encryption_version, pg_catalog.count(*) FROM \
           (SELECT encryption_version FROM {} UNION ALL SELECT encryption_version FROM {}) v GROUP BY 1",
        attached.secrets, attached.global_secrets
    );
    let mut out = Vec::new();
    for row in spi::select(client, &sql, None, &[])? {
        out.push((row.get::<i32>(1)?, row.get::<i64>(2)?.unwrap_or(0)));
    }
    Ok(out)
}

/// Rows a re-encryption leaves where they are: whole key versions (a key
/// that does not match), and single rows, as `workspace_id/key` for
/// workspace rows and `key` for global ones.
#[derive(Default)]
pub struct Skip {
    pub versions: Vec<i32>,
    pub workspace_rows: Vec<String>,
    pub global_rows: Vec<String>,
}

impl Skip {
    pub fn row(&mut self, row: &Row) {
        match row.scope {
            Scope::Workspace(id) => self.workspace_rows.push(format!("{}/{}", id.hyphenated(), row.key)),
            Scope::Global => self.global_rows.push(row.key.clone()),
        }
    }
}

/// Up to `limit` rows not on key version `current` and not in `skip`,
/// workspace rows first, locked FOR UPDATE SKIP LOCKED.
pub fn stale_rows(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    current: i32,
    skip: &Skip,
    limit: i64,
) -> Result<Vec<Row>> {
    // Not IS DISTINCT FROM: it looks `=` up on the caller's search_path.
    let stale = "(encryption_version IS NULL OR (encryption_version OPERATOR(pg_catalog.<>) $1 \
                  AND encryption_version OPERATOR(pg_catalog.<>) ALL ($2)))";
    let mut out = Vec::new();
    for (table, id_col, row_name, names) in [
        (
            &attached.secrets,
            "workspace_id",
            "(workspace_id::pg_catalog.text OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) key)",
            &skip.workspace_rows,
        ),
        (&attached.global_secrets, "NULL::pg_catalog.uuid", "key", &skip.global_rows),
    ] {
        let remaining = limit - out.len() as i64;
        if remaining <= 0 {
            break;
        }
        let sql = format!(
            "SELECT {id_col}, key, encrypted_value, encryption_version FROM {table} \
             WHERE {stale} AND {row_name} OPERATOR(pg_catalog.<>) ALL ($3) LIMIT {remaining} FOR UPDATE SKIP LOCKED"
        );
        let args = [current.into(), skip.versions.clone().into(), names.clone().into()];
        for row in spi::update(client, &sql, None, &args)? {
            out.push(Row {
                scope: scope_of(row.get::<pgrx::Uuid>(1)?),
                key: row.get::<String>(2)?.unwrap_or_default(),
                blob: row.get::<Vec<u8>>(3)?,
                version: row.get::<i32>(4)?,
            });
        }
    }
    Ok(out)
}

/// How many rows of both tables are on key version `version`.
pub fn count_version(client: &SpiClient<'_>, attached: &Attached, version: i32) -> Result<i64> {
    let sql = format!(
        "SELECT (SELECT pg_catalog.count(*) FROM {} WHERE encryption_version OPERATOR(pg_catalog.=) $1) \
              OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM {} WHERE encryption_version OPERATOR(pg_catalog.=) $1)",
        attached.secrets, attached.global_secrets
    );
    let table = spi::select(client, &sql, Some(1), &[version.into()])?;
    Ok(table.first().get::<i64>(1)?.unwrap_or(0))
}
