//! Provider-aware BYOK presence: a bring-your-own-key workspace needs a
//! usable credential that *its* resolved provider accepts; a usable key for
//! another provider never counts (SG103), nor does one every probe of which
//! that provider refused (SG104).

use crate::gates::caller::Caller;
use crate::pg::error::{Failure, Result};
use crate::pg::keyring;
use crate::store::attached::Attached;
use crate::store::{liveness, registry, secrets, workspaces};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;
use secretgate_core::policy::{self, Byok, Credential, Provider, MODEL};
use secretgate_core::{ciphertext_digest, Error as CoreError, Scope};

/// A credential that cannot be decrypted: the error, and the row it concerns.
pub type Unreadable = (CoreError, Scope, String);

/// Usable credentials among the provider's `auth_env` names, with their
/// verdicts for that provider: the workspace's own row, else the global one
/// (a workspace value overrides the global). A row that cannot be decrypted
/// is an error, never "absent" or "present".
pub fn usable_credentials(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
    provider: &Provider,
) -> Result<std::result::Result<Vec<Credential>, Unreadable>> {
    let mut usable = Vec::new();
    for key in &provider.auth_env {
        let (scope, row) = match secrets::fetch(client, attached, workspace, key)? {
            Some(row) => (workspace, row),
            None => match secrets::fetch(client, attached, Scope::Global, key)? {
                Some(row) => (Scope::Global, row),
                None => continue,
            },
        };
        let digest = ciphertext_digest(row.0.as_deref().unwrap_or_default());
        match keyring::open(row, scope, key) {
            Ok(value) if value.is_empty() => {}
            Ok(_) => {
                let verdict = liveness::verdict(client, scope, key, &provider.name, &digest)?;
                usable.push(Credential { scope, key: key.clone(), verdict });
            }
            Err(e) => return Ok(Err((e, scope, key.clone()))),
        }
    }
    Ok(Ok(usable))
}

fn unreadable((e, scope, key): Unreadable) -> Failure {
    Failure::core(&e, Some(scope), Some(&key))
}

/// Kind, runtime and model of a workspace, as the BYOK rule routes it: the
/// model is the table's column or, when it has none, the workspace's MODEL
/// secret, decrypted (a MODEL that cannot be read fails closed, never "no model").
pub fn routing(client: &SpiClient<'_>, attached: &Attached, workspace: Scope) -> Result<Option<workspaces::Routing>> {
    let Some(mut routing) = workspaces::routing(client, attached, workspace)? else {
        return Ok(None);
    };
    if !attached.has_model {
        routing.model = match secrets::fetch(client, attached, workspace, MODEL)? {
            None => None,
            Some(row) => {
                let model = keyring::open(row, workspace, MODEL)
                    .map_err(|e| Failure::core(&e, Some(workspace), Some(MODEL)))?;
                Some(model).filter(|m| !m.is_empty())
            }
        };
    }
    Ok(Some(routing))
}

/// The BYOK rule for one workspace. `Ok(Err(_))` when a candidate
/// credential cannot be decrypted (fail closed).
pub fn evaluate(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
    routing: &workspaces::Routing,
) -> Result<std::result::Result<Byok, Unreadable>> {
    let (kind, runtime, model) = (&routing.kind, &routing.runtime, &routing.model);
    if policy::is_external(kind.as_deref(), routing.external_runtime) {
        return Ok(Ok(Byok::Exempt));
    }
    let provider = registry::routed_provider(client, runtime.as_deref(), model.as_deref())?;
    if provider.is_none() {
        if let Some(model) = model {
            pgrx::notice!(
                "secretgate: no provider route matches model {model:?}; treating the workspace as platform-managed"
            );
        }
    }
    let Some(provider) = provider.filter(|p| !policy::byok_exempt(kind.as_deref(), Some(p))) else {
        return Ok(Ok(Byok::Exempt));
    };
    Ok(usable_credentials(client, attached, workspace, &provider)?
        .map(|usable| policy::evaluate_byok(&provider, &usable)))
}

/// The deferred gate: a workspace row inserted, set online, or given another
/// model or runtime, re-read at commit. A transient verdict passes with a WARNING.
pub fn check_at_commit(client: &SpiClient<'_>, attached: &Attached, workspace: Scope, caller: &Caller) -> Result<()> {
    let Some(routing) = routing(client, attached, workspace)? else {
        return Ok(());
    };
    let outcome = evaluate(client, attached, workspace, &routing)?.map_err(unreadable)?;
    if !outcome.transient().is_empty() {
        pgrx::warning!(
            "secretgate: BYOK credential(s) {} of workspace {workspace} got no answer at the last probe (transient); allowed",
            outcome.transient().join(", ")
        );
    }
    match outcome.refusal(workspace) {
        None => Ok(()),
        Some(refusal) => Err(Failure::refused(refusal, caller.to_json())),
    }
}

/// Whether the workspace (or the global scope) holds a usable credential the named provider accepts.
pub fn credential_present(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
    provider: &Provider,
) -> Result<bool> {
    let usable = usable_credentials(client, attached, workspace, provider)?.map_err(unreadable)?;
    Ok(!usable.is_empty())
}

/// Classifies a probe's answer and stores the verdict against the
/// credential's current ciphertext, for `provider` (by default the one the
/// workspace's route resolves to, or the one provider accepting the key name).
pub fn record_liveness(scope: Scope, key: &str, http_status: i32, provider: Option<&str>) -> Result<String> {
    let verdict = secretgate_core::Verdict::classify(http_status);
    Spi::connect_mut(|client| {
        let attached = crate::store::attached::attached()?;
        let Some((Some(blob), _)) = secrets::fetch(client, &attached, scope, key)? else {
            return Err(Failure::sql(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("secretgate: no stored credential {key} in scope {scope}"),
            ));
        };
        let provider = match provider {
            Some(name) => Some(registry::provider_named(client, name)?.map(|p| p.name).ok_or_else(|| {
                Failure::sql(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("secretgate: unknown provider {name:?}"),
                )
            })?),
            None => default_provider(client, &attached, scope, key)?,
        };
        liveness::record(client, scope, key, provider.as_deref(), &ciphertext_digest(&blob), verdict, http_status)?;
        if verdict == secretgate_core::Verdict::Dead {
            crate::gates::admin_audit::record(
                "credential.dead",
                &format!("the provider refused the credential (HTTP {http_status})"),
                Some(scope),
                Some(key),
                provider.as_deref(),
            );
        }
        Ok(verdict.as_str().to_string())
    })
}

/// The provider a verdict given without one is for: the workspace's routed
/// provider when it accepts the key name, else the one provider that does;
/// `None` when none does (such a verdict never bears on a gate).
fn default_provider(client: &SpiClient<'_>, attached: &Attached, scope: Scope, key: &str) -> Result<Option<String>> {
    if let Some(routing) = routing(client, attached, scope)? {
        if let Some(p) = registry::routed_provider(client, routing.runtime.as_deref(), routing.model.as_deref())? {
            if p.auth_env.iter().any(|k| k == key) {
                return Ok(Some(p.name));
            }
        }
    }
    let mut accepting = registry::providers_accepting(client, key)?;
    if accepting.len() <= 1 {
        return Ok(accepting.pop());
    }
    Err(Failure::sql(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!(
            "secretgate: say which provider this verdict on {key} is for ({} providers accept that key name)",
            accepting.len()
        ),
    )
    .hint("pass the provider as record_liveness's fourth argument"))
}
