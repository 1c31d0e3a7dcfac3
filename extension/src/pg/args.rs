//! SQL arguments as the layers above want them.

use crate::pg::error::{Failure, Result};
use pgrx::PgSqlErrorCode;
use secretgate_core::{uuid::Uuid as CoreUuid, Scope};

/// A NULL argument is an error (22004), never "unset".
#[track_caller]
pub fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| {
        Failure::sql(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("secretgate: {name} must not be NULL"))
    })
}

/// A workspace argument that must not be NULL.
pub fn workspace_scope(id: Option<pgrx::Uuid>) -> Result<Scope> {
    Ok(Scope::Workspace(CoreUuid::from_bytes(*required(id, "workspace_id")?)))
}

/// A workspace argument where NULL means the global scope.
pub fn scope_of(id: Option<pgrx::Uuid>) -> Scope {
    Scope::from_workspace(id.map(|id| CoreUuid::from_bytes(*id)))
}

/// A scope as the SQL `uuid` parameter that names it (NULL = global).
pub fn sql_uuid(scope: Scope) -> Option<pgrx::Uuid> {
    scope.workspace_id().map(|id| pgrx::Uuid::from_bytes(*id.as_bytes()))
}
