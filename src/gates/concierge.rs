//! The service-facing functions around the concierge (the `kind='platform'`
//! workspace): registration, and the fail-closed seeding of its pins.

use crate::byok;
use crate::gates::{self, Caller, MODEL};
use crate::plans;
use crate::report::{self, Failure, Result};
use crate::secrets::{self, Seed};
use crate::tables;
use pgrx::prelude::*;
use secretgate_core::{Code, Scope};
use serde_json::json;

const LLM_PROVIDER: &str = "LLM_PROVIDER";
const PLATFORM: &str = "platform";

fn unknown_workspace(scope: Scope) -> Failure {
    let id = scope.workspace_id().map(|id| id.hyphenated().to_string());
    Failure::refusal(Code::WorkspaceKindUnknown, "no workspace with this id").with("workspace_id", id).into()
}

#[pg_extern(volatile)]
fn has_model_secret(workspace_id: Option<pgrx::Uuid>) -> bool {
    let run = || -> Result<bool> {
        let scope = secrets::workspace_scope(workspace_id)?;
        let usable = Spi::connect_mut(|client| {
            let attached = tables::attached()?;
            gates::model_usable(client, &attached, scope)
        })?;
        usable.map_err(|e| gates::refusal_for_core(e, scope, MODEL))
    };
    Failure::unwrap_or_raise(run())
}

/// Sets the workspace online when the gates pass. A platform workspace
/// without a usable MODEL is marked `failed` instead, announced on
/// `secretgate_events`, and reported, not raised, so the failure commits.
#[pg_extern(volatile)]
fn register_workspace(
    workspace_id: Option<pgrx::Uuid>,
) -> TableIterator<'static, (name!(status, String), name!(code, Option<String>))> {
    TableIterator::once(Failure::unwrap_or_raise(register(workspace_id)))
}

fn register(workspace_id: Option<pgrx::Uuid>) -> Result<(String, Option<String>)> {
    let scope = secrets::workspace_scope(workspace_id)?;
    let id = secrets::sql_uuid(scope);
    let caller = Caller::current();
    Spi::connect_mut(|client| {
        let attached = tables::attached()?;
        let row = plans::update(
            client,
            &format!("SELECT kind FROM {} WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE", attached.workspaces),
            Some(1),
            &[id.into()],
        )?;
        if row.is_empty() {
            return Err(unknown_workspace(scope));
        }
        let kind = row.first().get_one::<String>()?;
        let mut refusal = if kind.as_deref() == Some(PLATFORM) {
            match gates::model_usable(client, &attached, scope)? {
                Ok(true) => None,
                Ok(false) => Some((
                    Code::PlatformAgentIdentityGate,
                    "a platform workspace cannot register without a usable MODEL (missing or empty)".to_string(),
                )),
                Err(e) => Some((
                    Code::PlatformAgentIdentityGate,
                    format!(
                        "a platform workspace cannot register: its MODEL cannot be read ({} {})",
                        e.code().sqlstate(),
                        e.code().word()
                    ),
                )),
            }
        } else {
            None
        };
        if refusal.is_none() {
            refusal = byok_refusal(client, &attached, scope)?;
        }
        let Some((code, reason)) = refusal else {
            plans::update(
                client,
                &format!("UPDATE {} SET status = 'online' WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
                None,
                &[id.into()],
            )?;
            return Ok(("online".to_string(), None));
        };
        let workspace_id = scope.workspace_id().map(|id| id.hyphenated().to_string());
        plans::update(
            client,
            &format!("UPDATE {} SET status = 'failed' WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
            None,
            &[id.into()],
        )?;
        let event = json!({ "event": "WORKSPACE_PROVISION_FAILED", "code": code.word(), "workspace_id": workspace_id });
        plans::update(
            client,
            "SELECT pg_catalog.pg_notify('secretgate_events', $1)",
            None,
            &[event.to_string().into()],
        )?;
        let mut audit = json!({
            "event": "workspace.register.refused",
            "code": code.word(),
            "sqlstate": code.sqlstate(),
            "reason": reason,
            "workspace_id": workspace_id,
            "caller": caller.to_json(),
        });
        if code == Code::PlatformAgentIdentityGate {
            audit["key"] = MODEL.into();
        }
        report::log_line(&audit.to_string());
        Ok(("failed".to_string(), Some(code.word().to_string())))
    })
}

/// The BYOK rule at registration, reported rather than raised. A credential
/// that cannot be decrypted is not usable: MISSING_BYOK_CREDENTIAL.
fn byok_refusal(
    client: &pgrx::spi::SpiClient<'_>,
    attached: &tables::Attached,
    scope: Scope,
) -> Result<Option<(Code, String)>> {
    let Some((kind, runtime, model)) = byok::workspace_row(client, attached, scope)? else {
        return Ok(None);
    };
    let outcome = match byok::evaluate(client, attached, scope, kind.as_deref(), runtime.as_deref(), model.as_deref()) {
        Ok(outcome) => outcome,
        Err(_) => {
            return Ok(Some((
                Code::MissingByokCredential,
                "a candidate BYOK credential cannot be decrypted".to_string(),
            )))
        }
    };
    Ok(byok::refusal(&outcome, scope).map(|(code, _provider, reason)| (code, reason)))
}

/// What the concierge helpers found, before anything is written.
enum Plan {
    NotPlatform,
    Respected,
    FailClosed(String),
    Seed(Seed, String),
    SkippedByok,
}

fn outcome(scope: Scope, key: &str, plan: Plan) -> Result<String> {
    Ok(match plan {
        Plan::NotPlatform => "not_platform".into(),
        Plan::Respected => "respected".into(),
        Plan::SkippedByok => "skipped_byok".into(),
        Plan::FailClosed(why) => {
            // Never "unset": nothing is written, the caller retries later.
            pgrx::warning!("secretgate: {key} of workspace {scope} not seeded (fail closed): {why}");
            "fail_closed".into()
        }
        Plan::Seed(how, value) => {
            if secrets::seed(scope, key, &value, how)? {
                "seeded".into()
            } else {
                // Someone else wrote it meanwhile: theirs stands.
                "respected".into()
            }
        }
    })
}

fn describe(e: &secretgate_core::Error) -> String {
    format!("{} {}: {e}", e.code().sqlstate(), e.code().word())
}

#[pg_extern(volatile)]
fn ensure_concierge_provider(workspace_id: Option<pgrx::Uuid>) -> String {
    let run = || -> Result<String> {
        let scope = secrets::workspace_scope(workspace_id)?;
        let plan = Spi::connect(|client| -> Result<Plan> {
            let attached = tables::attached()?;
            let Some((kind, runtime)) = kind_and_runtime(client, &attached, scope)? else {
                return Err(unknown_workspace(scope));
            };
            if kind.as_deref() != Some(PLATFORM) {
                return Ok(Plan::NotPlatform);
            }
            match gates::read_state(client, &attached, scope, LLM_PROVIDER)? {
                Err(e) => return Ok(Plan::FailClosed(describe(&e))),
                Ok(Some(_)) => return Ok(Plan::Respected),
                Ok(None) => {}
            }
            let model = match gates::read_state(client, &attached, scope, MODEL)? {
                Err(e) => return Ok(Plan::FailClosed(format!("MODEL cannot be read: {}", describe(&e)))),
                Ok(model) => model.unwrap_or_default(),
            };
            if model.is_empty() || routes_to_platform(client, runtime.as_deref(), &model)? {
                Ok(Plan::Seed(Seed::IfAbsent, PLATFORM.into()))
            } else {
                Ok(Plan::SkippedByok)
            }
        })?;
        outcome(scope, LLM_PROVIDER, plan)
    };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}

#[pg_extern(volatile)]
fn ensure_concierge_model(workspace_id: Option<pgrx::Uuid>, default_model: Option<&str>) -> String {
    let run = || -> Result<String> {
        let scope = secrets::workspace_scope(workspace_id)?;
        let default_model = secrets::required(default_model, "default_model")?;
        let plan = Spi::connect(|client| -> Result<Plan> {
            let attached = tables::attached()?;
            let Some((kind, _)) = kind_and_runtime(client, &attached, scope)? else {
                return Err(unknown_workspace(scope));
            };
            if kind.as_deref() != Some(PLATFORM) {
                return Ok(Plan::NotPlatform);
            }
            Ok(match gates::read_state(client, &attached, scope, MODEL)? {
                Err(e) => Plan::FailClosed(describe(&e)),
                Ok(Some(model)) if !model.is_empty() => Plan::Respected,
                // An empty MODEL is not usable: replace it.
                Ok(Some(_)) => Plan::Seed(Seed::ReplaceEmpty, default_model.into()),
                Ok(None) => Plan::Seed(Seed::IfAbsent, default_model.into()),
            })
        })?;
        outcome(scope, MODEL, plan)
    };
    Failure::unwrap_or_raise(report::withholding_row_detail(run))
}

fn kind_and_runtime(
    client: &pgrx::spi::SpiClient<'_>,
    attached: &tables::Attached,
    scope: Scope,
) -> Result<Option<(Option<String>, Option<String>)>> {
    let id = secrets::sql_uuid(scope);
    let row = plans::select(
        client,
        &format!("SELECT kind, runtime FROM {} WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
        Some(1),
        &[id.into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    Ok(Some(row.first().get_two::<String, String>()?))
}

/// A model whose provider cannot be derived is platform-managed.
fn routes_to_platform(client: &pgrx::spi::SpiClient<'_>, runtime: Option<&str>, model: &str) -> Result<bool> {
    let row = plans::select(
        client,
        &format!(
            "SELECT p.is_platform FROM (SELECT {} AS name) r \
             LEFT JOIN secretgate.providers p ON p.name OPERATOR(pg_catalog.=) r.name",
            crate::byok::ROUTED_PROVIDER
        ),
        Some(1),
        &[runtime.into(), model.into()],
    )?;
    Ok(row.first().get_one::<bool>()?.unwrap_or(true))
}
