//! Renaming a key and re-encrypting under the current key version: the SQL functions.

use crate::gates::maintenance;
use crate::pg::args::required;
use crate::pg::error::{self, Failure};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

#[pg_extern(volatile)]
fn rename_secret_key(old_key: Option<&str>, new_key: Option<&str>) -> i64 {
    error::run(|| maintenance::rename(required(old_key, "old_key")?, required(new_key, "new_key")?))
}

/// `reencrypt` that leaves undecryptable rows (SG001, SG002) and the rows of a
/// key version whose key does not match (SG004) where they are, moving every
/// other row: `(moved, skipped)`. What `secretgate rotate` calls.
#[pg_extern(volatile)]
fn reencrypt_skipping(batch_size: Option<i32>) -> TableIterator<'static, (name!(moved, i64), name!(skipped, i64))> {
    let (moved, skipped) = error::run(|| {
        let batch = batch_size.filter(|n| *n > 0).ok_or_else(|| {
            Failure::sql(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "secretgate: batch_size must be positive")
        })?;
        maintenance::reencrypt_skipping(batch)
    });
    TableIterator::once((moved, skipped))
}

#[pg_extern(volatile)]
fn reencrypt(batch_size: Option<i32>) -> i64 {
    error::run(|| {
        let batch = batch_size.filter(|n| *n > 0).ok_or_else(|| {
            Failure::sql(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "secretgate: batch_size must be positive")
        })?;
        maintenance::reencrypt(batch)
    })
}
