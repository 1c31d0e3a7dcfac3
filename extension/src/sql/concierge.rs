//! Registration and the concierge helpers: the SQL functions.

use crate::gates::concierge;
use crate::pg::args::{required, workspace_scope};
use crate::pg::error;
use pgrx::prelude::*;

#[pg_extern(volatile)]
fn has_model_secret(workspace_id: Option<pgrx::Uuid>) -> bool {
    error::run(|| concierge::has_model(workspace_scope(workspace_id)?))
}

/// Sets the workspace online when the gates pass; reports (does not raise)
/// a failed registration, so the failure commits.
#[pg_extern(volatile)]
fn register_workspace(
    workspace_id: Option<pgrx::Uuid>,
) -> TableIterator<'static, (name!(status, String), name!(code, Option<String>))> {
    TableIterator::once(error::run(|| concierge::register(workspace_scope(workspace_id)?)))
}

#[pg_extern(volatile)]
fn ensure_concierge_provider(workspace_id: Option<pgrx::Uuid>) -> String {
    error::run(|| concierge::ensure_provider(workspace_scope(workspace_id)?))
}

#[pg_extern(volatile)]
fn ensure_concierge_model(workspace_id: Option<pgrx::Uuid>, default_model: Option<&str>) -> String {
    error::run(|| concierge::ensure_model(workspace_scope(workspace_id)?, required(default_model, "default_model")?))
}
