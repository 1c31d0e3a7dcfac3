//! BYOK presence, the liveness verdicts and the credential list a probe
//! checks: the SQL functions.

use crate::gates::byok;
use crate::gates::caller::Caller;
use crate::gates::concierge::unknown_workspace;
use crate::pg::args::{required, scope_of, sql_uuid, workspace_scope};
use crate::pg::error::{self, Failure};
use crate::store::{attached, registry, workspaces};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// The provider a runtime and model id route to (the routes naming the
/// runtime first, then the longest matching prefix); NULL when none matches.
#[pg_extern(stable)]
fn resolve_provider(runtime: Option<&str>, model: Option<&str>) -> Option<String> {
    error::run(|| Spi::connect(|client| registry::routed_provider_name(client, runtime, model)))
}

#[pg_extern(stable)]
fn byok_credential_present(workspace_id: Option<pgrx::Uuid>, provider: Option<&str>) -> bool {
    error::run(|| {
        let workspace = workspace_scope(workspace_id)?;
        let name = required(provider, "provider")?;
        Spi::connect(|client| {
            let attached = attached::attached()?;
            let provider = registry::provider_named(client, name)?.ok_or_else(|| {
                Failure::sql(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("secretgate: unknown provider {name:?}"),
                )
            })?;
            byok::credential_present(client, &attached, workspace, &provider)
        })
    })
}

#[pg_extern(stable)]
fn check_byok(workspace_id: Option<pgrx::Uuid>) {
    error::run(|| {
        let workspace = workspace_scope(workspace_id)?;
        let caller = Caller::current();
        Spi::connect(|client| {
            let attached = attached::attached()?;
            if workspaces::routing(client, &attached, workspace)?.is_none() {
                return Err(unknown_workspace(workspace));
            }
            byok::check_at_commit(client, &attached, workspace, &caller)
        })
    })
}

#[pg_extern(volatile, name = "record_liveness")]
fn record_liveness_by_provider(
    workspace_id: Option<pgrx::Uuid>,
    key: Option<&str>,
    http_status: Option<i32>,
    provider: default!(Option<&str>, "NULL"),
) -> String {
    error::run(|| {
        let scope = scope_of(workspace_id);
        // SECURITY DEFINER: restricted, as the gates that run so.
        crate::pg::spi::restricted(|| {
            byok::record_liveness(scope, required(key, "key")?, required(http_status, "http_status")?, provider)
        })
    })
}

/// The three-argument entry point that extension scripts before 0.4.0 name
/// (`record_liveness_wrapper`): a database still on that SQL keeps working
/// with this library until `ALTER EXTENSION secretgate UPDATE`.
#[pg_extern(volatile, sql = false)]
fn record_liveness(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, http_status: Option<i32>) -> String {
    record_liveness_by_provider(workspace_id, key, http_status, None)
}

/// What `secretgate probe` checks: every BYOK credential of the attached
/// tables, never a value. Read with the caller's privileges.
#[pg_extern(stable)]
fn byok_credentials() -> TableIterator<
    'static,
    (name!(workspace_id, Option<pgrx::Uuid>), name!(provider, String), name!(key, String), name!(scope, String)),
> {
    let rows = error::run(|| {
        Spi::connect(|client| {
            let attached = attached::attached()?;
            registry::byok_credentials(client, &attached)
        })
    });
    TableIterator::new(rows.into_iter().map(|c| (sql_uuid(c.workspace), c.provider, c.key, c.scope.to_string())))
}
