//! The service-facing work around the concierge (the `kind='platform'`
//! workspace): registration, and the fail-closed seeding of its pins.

use crate::gates::caller::Caller;
use crate::gates::{byok, identity, secrets as secret_gates};
use crate::pg::error::{self, Failure, Result};
use crate::pg::spi;
use crate::store::attached::{self, Attached};
use crate::store::registry;
use crate::store::workspaces::{self, Status};
use pgrx::prelude::*;
use secretgate_core::policy::{self, Byok, Plan, Refusal, LLM_PROVIDER, MODEL, PLATFORM};
use secretgate_core::{Code, Scope};

/// SG106 for a workspace id that names no row.
pub fn unknown_workspace(scope: Scope) -> Failure {
    let id = scope.workspace_id().map(|id| id.hyphenated().to_string());
    Failure::from(Refusal::new(Code::WorkspaceKindUnknown, "no workspace with this id").with("workspace_id", id))
}

/// Sets the workspace online when the gates pass. A platform workspace
/// without a usable MODEL (or a BYOK workspace without its credential) is
/// marked `failed` instead, announced on `secretgate_events`, and reported,
/// not raised, so the failure commits.
pub fn register(scope: Scope) -> Result<(String, Option<String>)> {
    let caller = Caller::current();
    Spi::connect_mut(|client| {
        let attached = attached::attached()?;
        let Some(kind) = workspaces::kind_for_update(client, &attached, scope)? else {
            return Err(unknown_workspace(scope));
        };
        let mut failure = None;
        let verdict = policy::registration(
            kind.as_deref() == Some(PLATFORM),
            || match identity::model_usable(client, &attached, scope) {
                Ok(state) => state,
                Err(f) => {
                    failure = Some(f);
                    Ok(true)
                }
            },
            || Ok(Byok::Exempt),
        );
        if let Some(f) = failure {
            return Err(f);
        }
        let verdict = match verdict {
            Some(refusal) => Some(refusal),
            None => byok_at_registration(client, &attached, scope)?,
        };
        let Some((code, reason)) = verdict else {
            workspaces::set_status(client, &attached, scope, Status::Online)?;
            return Ok(("online".to_string(), None));
        };
        workspaces::set_status(client, &attached, scope, Status::Failed)?;
        let (event, audit) = policy::registration_failed(scope, code, &reason, caller.to_json());
        spi::update(client, "SELECT pg_catalog.pg_notify('secretgate_events', $1)", None, &[event.into()])?;
        error::log_line(&audit);
        Ok(("failed".to_string(), Some(code.word().to_string())))
    })
}

/// The BYOK rule at registration, reported rather than raised.
fn byok_at_registration(
    client: &pgrx::spi::SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
) -> Result<Option<(Code, String)>> {
    let Some(routing) = byok::routing(client, attached, scope)? else {
        return Ok(None);
    };
    let outcome = byok::evaluate(client, attached, scope, &routing)?.map_err(|_| ());
    Ok(policy::registration(false, || Ok(true), || outcome))
}

/// Carries out a concierge helper's plan: the function's answer.
fn carry_out(scope: Scope, key: &str, plan: Plan) -> Result<String> {
    let seeded = match &plan {
        Plan::FailClosed(why) => {
            // Never "unset": nothing is written, the caller retries later.
            pgrx::warning!("secretgate: {key} of workspace {scope} not seeded (fail closed): {why}");
            false
        }
        Plan::Seed(how, value) => secret_gates::seed(scope, key, value, *how)?,
        _ => false,
    };
    Ok(plan.answer(seeded).to_string())
}

/// `ensure_concierge_provider`.
pub fn ensure_provider(scope: Scope) -> Result<String> {
    let plan = Spi::connect(|client| -> Result<Plan> {
        let attached = attached::attached()?;
        let Some(workspaces::Routing { kind, runtime, .. }) = workspaces::routing(client, &attached, scope)? else {
            return Err(unknown_workspace(scope));
        };
        let provider = secret_gates::read_with(client, &attached, scope, LLM_PROVIDER)?;
        let mut model_failure = None;
        let plan = policy::concierge_provider_plan(
            kind.as_deref() == Some(PLATFORM),
            provider,
            || match secret_gates::read_with(client, &attached, scope, MODEL) {
                Ok(read) => read,
                Err(f) => {
                    model_failure = Some(f);
                    Ok(None)
                }
            },
            |model| registry::routes_to_platform(client, runtime.as_deref(), model),
        );
        if let Some(f) = model_failure {
            return Err(f);
        }
        plan
    })?;
    carry_out(scope, LLM_PROVIDER, plan)
}

/// `ensure_concierge_model`.
pub fn ensure_model(scope: Scope, default_model: &str) -> Result<String> {
    let plan = Spi::connect(|client| -> Result<Plan> {
        let attached = attached::attached()?;
        let Some(workspaces::Routing { kind, .. }) = workspaces::routing(client, &attached, scope)? else {
            return Err(unknown_workspace(scope));
        };
        let model = secret_gates::read_with(client, &attached, scope, MODEL)?;
        Ok(policy::concierge_model_plan(kind.as_deref() == Some(PLATFORM), model, default_model))
    })?;
    carry_out(scope, MODEL, plan)
}

/// `has_model_secret`: a usable MODEL, or the read error raised.
pub fn has_model(scope: Scope) -> Result<bool> {
    let usable = Spi::connect_mut(|client| {
        let attached = attached::attached()?;
        identity::model_usable(client, &attached, scope)
    })?;
    usable.map_err(|e| Failure::core(&e, Some(scope), Some(MODEL)))
}
