//! Every secret's history: listing the kept versions (never a value),
//! restoring one through the gates, purging them.

use crate::gates::history;
use crate::pg::args::{required, scope_of, workspace_scope};
use crate::pg::error;
use pgrx::prelude::*;
use secretgate_core::Scope;

type Listed = (i32, Option<pgrx::datum::TimestampWithTimeZone>, Option<pgrx::JsonB>, String, String);

fn listed(scope: Scope, key: &str) -> Vec<Listed> {
    error::run(|| history::versions(scope, key))
        .into_iter()
        .map(|v| (v.version, v.replaced_at, v.replaced_by, v.reason, v.state.to_string()))
        .collect()
}

/// The kept versions of a workspace secret, newest first.
#[allow(clippy::type_complexity)] // pgrx spells a returned table as this tuple
#[pg_extern(stable)]
fn secret_versions(
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(replaced_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(replaced_by, Option<pgrx::JsonB>),
        name!(reason, String),
        name!(state, String),
    ),
> {
    let (scope, key) = error::run(|| Ok((workspace_scope(workspace_id)?, required(key, "key")?.to_string())));
    TableIterator::new(listed(scope, &key))
}

/// The kept versions of a global secret, newest first.
#[allow(clippy::type_complexity)] // pgrx spells a returned table as this tuple
#[pg_extern(stable)]
fn global_secret_versions(
    key: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(replaced_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(replaced_by, Option<pgrx::JsonB>),
        name!(reason, String),
        name!(state, String),
    ),
> {
    let key = error::run(|| Ok(required(key, "key")?.to_string()));
    TableIterator::new(listed(Scope::Global, &key))
}

#[pg_extern(volatile)]
fn restore_secret(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, version: Option<i32>) {
    error::run(|| {
        history::restore(workspace_scope(workspace_id)?, required(key, "key")?, required(version, "version")?)
    })
}

#[pg_extern(volatile)]
fn restore_global_secret(key: Option<&str>, version: Option<i32>) {
    error::run(|| history::restore(Scope::Global, required(key, "key")?, required(version, "version")?))
}

/// Removes the kept versions of a workspace's secrets (NULL: the global
/// scope's), every key or one; the number removed.
#[pg_extern(volatile)]
fn purge_history(workspace_id: Option<pgrx::Uuid>, key: default!(Option<&str>, "NULL")) -> i64 {
    error::run(|| history::purge(scope_of(workspace_id), key))
}
