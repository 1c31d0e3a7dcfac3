//! Reading and writing secrets through the gates: a write is checked
//! before anything is written, so a refusal is raised with its own SQLSTATE
//! rather than from the trigger inside SPI; the trigger stays the backstop
//! for direct writes.

use crate::gates::caller::Caller;
use crate::gates::read_audit;
use crate::gates::secret_write;
use crate::pg::error::{Failure, Result};
use crate::pg::history_rows;
use crate::pg::keyring;
use crate::pg::keyring_checks;
use crate::pg::spi;
use crate::store::attached::{self, Attached};
use crate::store::history;
use crate::store::secrets::{self, OnConflict, Row};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use secretgate_core::policy::{Seed, Write};
use secretgate_core::{key_status as key_status_of, Error as CoreError, Format, KeyStatus, Scope};
use std::collections::BTreeSet;

/// A read's three states: a value, unset (`None`), or the error.
pub type Read = std::result::Result<Option<String>, CoreError>;

/// Reads a secret on an open connection.
pub fn read_with(client: &SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<Read> {
    Ok(match secrets::fetch(client, attached, scope, key)? {
        None => Ok(None),
        Some(row) => keyring::open(row, scope, key).map(Some),
    })
}

/// Reads a secret. Infrastructure failures (no attached tables, an SPI
/// error) are the outer `Err`; crypto and keyring errors the inner.
pub fn read(scope: Scope, key: &str) -> Result<Read> {
    let read = match secrets::fetch_alone(&*attached::attached()?, scope, key)? {
        None => Ok(None),
        Some(row) => keyring::open(row, scope, key).map(Some),
    };
    read_audit::record(scope, key, &read);
    Ok(read)
}

/// Reads a secret, raising a crypto or keyring error.
pub fn read_or_fail(scope: Scope, key: &str) -> Result<Option<String>> {
    read(scope, key)?.map_err(|e| Failure::core(&e, Some(scope), Some(key)))
}

/// Upserts a secret.
pub fn write(scope: Scope, key: &str, value: &str) -> Result<()> {
    store(scope, key, value, OnConflict::Replace).map(|_| ())
}

/// Seeds a value; false when a row already existed and was kept.
pub fn seed(scope: Scope, key: &str, value: &str, how: Seed) -> Result<bool> {
    let on_conflict = match how {
        Seed::IfAbsent => OnConflict::Keep,
        Seed::ReplaceEmpty => OnConflict::Replace,
    };
    store(scope, key, value, on_conflict)
}

fn store(scope: Scope, key: &str, value: &str, on_conflict: OnConflict) -> Result<bool> {
    Spi::connect_mut(|client| {
        let attached = attached::attached()?;
        let caller = Caller::current();
        secret_write::check_secret_write(&attached, Write::Insert, scope, key, Some(value), &caller)?;
        let (version, blob) =
            keyring::seal(value, scope, key).map_err(|e| Failure::core(&e, Some(scope), Some(key)))?;
        secrets::put(client, &attached, scope, key, (version, &blob), on_conflict)
    })
}

/// One line of a verification: a row and whether it decrypts (`Ok(true)`
/// when it does and is stored encrypted, `Ok(false)` when it reads but is
/// stored unencrypted (a plaintext key version), or the error), or a key
/// version whose key does not match this database's key check value,
/// reported once for all its rows.
pub enum Verified {
    Row(Row, std::result::Result<bool, CoreError>),
    KeyMismatch,
}

/// Every stored secret with whether it decrypts; the rows of a version whose
/// key does not match (SG004) become one line for the version.
pub fn verify() -> Result<Vec<Verified>> {
    const BATCH: i64 = 1000;
    Spi::connect(|client| {
        let attached = attached::attached()?;
        let keyring = keyring::current();
        let mut out = Vec::new();
        let mut mismatched = BTreeSet::new();
        let mut check = |row: Row, shown_key: Option<String>| {
            let result = match &keyring {
                Err(e) => Err(e.clone()),
                Ok(k) => keyring::open_with(k, row.blob.as_deref(), row.version, row.scope, &row.key)
                    .map(|_| row.version.and_then(|v| k.format(v)) != Some(Format::Plaintext)),
            };
            match result {
                Err(CoreError::KeyMismatch { version }) => {
                    if mismatched.insert(version) {
                        out.push(Verified::KeyMismatch);
                    }
                }
                result => out.push(Verified::Row(Row { key: shown_key.unwrap_or(row.key.clone()), ..row }, result)),
            }
        };
        secrets::each_row(client, &attached, BATCH, |row| check(row, None))?;
        // Kept versions too, named `KEY (kept version N)`: rotation must reach them.
        if history_rows::present() {
            spi::as_owner(|owner| {
                history::each(owner, BATCH, |kept| {
                    let shown = format!("{} (kept version {})", kept.key, kept.number);
                    check(Row { scope: kept.scope, key: kept.key, blob: kept.blob, version: kept.version }, Some(shown))
                })
            })?;
        }
        Ok(out)
    })
}

/// One key version as `key_check_status()` reports it.
pub struct VersionStatus {
    pub version: i32,
    pub status: KeyStatus,
    pub secrets: i64,
    pub current: bool,
    pub first_used: Option<pgrx::datum::TimestampWithTimeZone>,
}

/// Every key version the keyring, the key check values or the rows name:
/// how the server's key compares with the database's check value, without
/// decrypting any row.
pub fn key_status() -> Result<Vec<VersionStatus>> {
    let keyring = keyring::current().map_err(|e| Failure::core(&e, None, None))?;
    let mut counts = Spi::connect(|client| secrets::version_counts(client, &*attached::attached()?))?;
    if history_rows::present() {
        counts.extend(spi::as_owner(history::version_counts)?);
    }
    let recorded = keyring_checks::all();
    let mut versions: BTreeSet<i32> = keyring.versions().collect();
    versions.extend(recorded.iter().map(|r| r.0));
    versions.extend(counts.iter().filter_map(|c| c.0));
    Ok(versions
        .into_iter()
        .map(|version| {
            let rows = counts.iter().filter(|c| c.0 == Some(version)).map(|c| c.1).sum();
            let check = recorded.iter().find(|r| r.0 == version);
            VersionStatus {
                version,
                status: key_status_of(
                    keyring.check_value(version).map(|c| c.as_slice()),
                    check.map(|r| r.1.as_slice()),
                    rows,
                ),
                secrets: rows,
                current: version == keyring.current_version(),
                first_used: check.and_then(|r| r.2),
            }
        })
        .collect())
}

/// One key version's rows: version, format, rows, unreadable rows.
pub type VersionCount = (Option<i32>, String, i64, i64);

/// Rows per key version in two secrets tables (attached or not): the
/// version, its format in the current keyring (`unknown` when the keyring
/// has no such version), how many rows, and how many of them cannot be read
/// with the current keyring. Nothing is written, no value leaves.
pub fn census(secrets_table: pg_sys::Oid, global_table: pg_sys::Oid) -> Result<Vec<VersionCount>> {
    const BATCH: i64 = 1000;
    Spi::connect(|client| {
        let secrets_name = attached::qualified_name(client, secrets_table)?;
        let global_name = attached::qualified_name(client, global_table)?;
        let keyring = keyring::current().map_err(|e| Failure::core(&e, None, None))?;
        let mut counts: std::collections::BTreeMap<Option<i32>, (i64, i64)> = Default::default();
        secrets::each_row_in(client, &secrets_name, &global_name, BATCH, |row| {
            let readable = keyring::open_with(&keyring, row.blob.as_deref(), row.version, row.scope, &row.key).is_ok();
            let entry = counts.entry(row.version).or_default();
            entry.0 += 1;
            entry.1 += i64::from(!readable);
        })?;
        Ok(counts
            .into_iter()
            .map(|(version, (rows, unreadable))| {
                let format = version.and_then(|v| keyring.format(v)).map_or("unknown", Format::as_str);
                (version, format.to_string(), rows, unreadable)
            })
            .collect())
    })
}

/// Every version of the current keyring: its format and whether it is current.
pub fn key_formats() -> Result<Vec<(i32, String, bool)>> {
    let keyring = keyring::current().map_err(|e| Failure::core(&e, None, None))?;
    Ok(keyring
        .versions()
        .map(|v| (v, keyring.format(v).map_or("unknown", Format::as_str).to_string(), v == keyring.current_version()))
        .collect())
}
