//! Provider-aware BYOK presence (CONTRACT §5–§6, DOMAIN incident 4): a
//! bring-your-own-key workspace needs a usable credential that *its*
//! resolved provider accepts; a usable key for another provider never counts.

use crate::gates::{self, Caller};
use crate::keyring;
use crate::plans;
use crate::report::{Failure, Result};
use crate::secrets;
use crate::tables::{self, Attached};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use secretgate_core::{ciphertext_digest, uuid::Uuid as CoreUuid, Code, Error as CoreError, Scope, Verdict};

/// A usable credential: a row that decrypts to a non-empty value.
pub struct Credential {
    pub scope: Scope,
    pub key: String,
    digest: Vec<u8>,
}

/// What the BYOK rule says about one workspace.
pub enum Byok {
    /// External, platform-managed, or a model whose provider cannot be derived.
    Exempt,
    /// At least one usable credential not known dead; `transient` names those
    /// whose last probe got no answer.
    Satisfied {
        transient: Vec<String>,
    },
    Missing {
        provider: String,
    },
    Dead {
        provider: String,
    },
}

pub struct Provider {
    pub name: String,
    pub is_platform: bool,
    pub auth_env: Vec<String>,
}

/// `secretgate.resolve_provider($1 runtime, $2 model)` as a subquery: the same
/// rule as the SQL function (sql/bootstrap.sql), spelled out so that it is part
/// of the caller's kept plan. A SQL function that cannot be inlined is planned
/// again on every call, which cost more than the rest of a registration.
pub const ROUTED_PROVIDER: &str = "(SELECT r.provider FROM secretgate.model_routes r \
     WHERE pg_catalog.starts_with($2, r.pattern) AND (r.runtime IS NULL OR r.runtime OPERATOR(pg_catalog.=) $1) \
     ORDER BY (r.runtime IS NOT NULL) DESC, pg_catalog.length(r.pattern) DESC LIMIT 1)";

/// The provider a workspace's runtime and model route to; `None` when underivable.
pub fn resolve(client: &SpiClient<'_>, runtime: Option<&str>, model: Option<&str>) -> Result<Option<Provider>> {
    let row = plans::select(
        client,
        &format!(
            "SELECT p.name, p.is_platform, p.auth_env FROM secretgate.providers p \
             WHERE p.name OPERATOR(pg_catalog.=) {ROUTED_PROVIDER}"
        ),
        Some(1),
        &[runtime.into(), model.into()],
    )?;
    provider_row(row)
}

fn provider_named(client: &SpiClient<'_>, name: &str) -> Result<Option<Provider>> {
    let row = plans::select(
        client,
        "SELECT p.name, p.is_platform, p.auth_env FROM secretgate.providers p WHERE p.name OPERATOR(pg_catalog.=) $1",
        Some(1),
        &[name.into()],
    )?;
    provider_row(row)
}

fn provider_row(row: pgrx::spi::SpiTupleTable<'_>) -> Result<Option<Provider>> {
    if row.is_empty() {
        return Ok(None);
    }
    let row = row.first();
    Ok(Some(Provider {
        name: row.get::<String>(1)?.unwrap_or_default(),
        is_platform: row.get::<bool>(2)?.unwrap_or(false),
        auth_env: row.get::<Vec<Option<String>>>(3)?.unwrap_or_default().into_iter().flatten().collect(),
    }))
}

/// Usable credentials among the provider's `auth_env` names: the workspace's
/// own row, else the global one (a workspace value overrides the global).
/// A row that cannot be decrypted is an error, never "absent" or "present".
pub fn usable_credentials(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
    provider: &Provider,
) -> Result<std::result::Result<Vec<Credential>, (CoreError, Scope, String)>> {
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
        match keyring::current().and_then(|k| secrets::open(&k, row, scope, key)) {
            Ok(value) if value.is_empty() => {}
            Ok(_) => usable.push(Credential { scope, key: key.clone(), digest }),
            Err(e) => return Ok(Err((e, scope, key.clone()))),
        }
    }
    Ok(Ok(usable))
}

fn verdict_of(client: &SpiClient<'_>, credential: &Credential) -> Result<Option<String>> {
    let row = plans::select(
        client,
        // Not IS NOT DISTINCT FROM: it looks `=` up on the caller's search_path.
        "SELECT verdict FROM secretgate.liveness \
         WHERE (workspace_id OPERATOR(pg_catalog.=) $1 OR (workspace_id IS NULL AND $1 IS NULL)) \
         AND key OPERATOR(pg_catalog.=) $2 AND ciphertext_sha256 OPERATOR(pg_catalog.=) $3",
        Some(1),
        &[
            secrets::sql_uuid(credential.scope).into(),
            credential.key.as_str().into(),
            credential.digest.as_slice().into(),
        ],
    )?;
    Ok(if row.is_empty() { None } else { row.first().get_one::<String>()? })
}

/// The BYOK rule for one workspace row. `Err(Failure)` when a candidate
/// credential cannot be decrypted (fail closed).
pub fn evaluate(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
    kind: Option<&str>,
    runtime: Option<&str>,
    model: Option<&str>,
) -> Result<Byok> {
    if kind == Some("external") {
        return Ok(Byok::Exempt);
    }
    let Some(provider) = resolve(client, runtime, model)? else {
        if let Some(model) = model {
            pgrx::notice!(
                "secretgate: no provider route matches model {model:?}; treating the workspace as platform-managed"
            );
        }
        return Ok(Byok::Exempt);
    };
    if provider.is_platform {
        return Ok(Byok::Exempt);
    }
    let usable = usable_credentials(client, attached, workspace, &provider)?
        .map_err(|(e, scope, key)| gates::refusal_for_core(e, scope, &key))?;
    if usable.is_empty() {
        return Ok(Byok::Missing { provider: provider.name });
    }
    let mut transient = Vec::new();
    let mut dead = 0;
    for credential in &usable {
        match verdict_of(client, credential)?.as_deref() {
            Some("dead") => dead += 1,
            Some("transient") => transient.push(credential.key.clone()),
            _ => {}
        }
    }
    if dead == usable.len() {
        return Ok(Byok::Dead { provider: provider.name });
    }
    Ok(Byok::Satisfied { transient })
}

/// The refusal for a BYOK outcome, `None` when it passes. A transient
/// verdict passes with a WARNING.
pub fn refusal(outcome: &Byok, workspace: Scope) -> Option<(Code, String, String)> {
    match outcome {
        Byok::Exempt => None,
        Byok::Satisfied { transient } => {
            if !transient.is_empty() {
                pgrx::warning!(
                    "secretgate: BYOK credential(s) {} of workspace {workspace} got no answer at the last probe (transient); allowed",
                    transient.join(", ")
                );
            }
            None
        }
        Byok::Missing { provider } => Some((
            Code::MissingByokCredential,
            provider.clone(),
            format!("no usable credential that provider {provider} accepts, at workspace or global scope"),
        )),
        Byok::Dead { provider } => Some((
            Code::ByokCredentialInvalid,
            provider.clone(),
            format!("every usable credential for provider {provider} was refused by it (401/403) at the last probe"),
        )),
    }
}

/// The deferred gate: a workspace row inserted, set online, or given another
/// model or runtime, re-read at commit.
pub fn check_at_commit(client: &SpiClient<'_>, attached: &Attached, workspace: Scope, caller: &Caller) -> Result<()> {
    let Some((kind, runtime, model)) = workspace_row(client, attached, workspace)? else {
        return Ok(());
    };
    let outcome = evaluate(client, attached, workspace, kind.as_deref(), runtime.as_deref(), model.as_deref())?;
    match refusal(&outcome, workspace) {
        None => Ok(()),
        Some((code, provider, reason)) => {
            let id = workspace.workspace_id().map(|id| id.hyphenated().to_string());
            let r = Failure::refusal(code, reason).with("workspace_id", id).with("provider", provider);
            Err(gates::audited(r, "workspace.byok.refused", caller))
        }
    }
}

pub fn workspace_row(
    client: &SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
) -> Result<Option<(Option<String>, Option<String>, Option<String>)>> {
    let row = plans::select(
        client,
        &format!("SELECT kind, runtime, model FROM {} WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
        Some(1),
        &[secrets::sql_uuid(workspace).into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    Ok(Some(row.first().get_three::<String, String, String>()?))
}

#[pg_extern(stable)]
fn byok_credential_present(workspace_id: Option<pgrx::Uuid>, provider: Option<&str>) -> bool {
    let run = || -> Result<bool> {
        let workspace = secrets::workspace_scope(workspace_id)?;
        let name = secrets::required(provider, "provider")?;
        Spi::connect(|client| {
            let attached = tables::attached()?;
            let provider = provider_named(client, name)?
                .ok_or_else(|| Failure::sql("22023", format!("secretgate: unknown provider {name:?}")))?;
            let usable = usable_credentials(client, &attached, workspace, &provider)?
                .map_err(|(e, scope, key)| gates::refusal_for_core(e, scope, &key))?;
            Ok(!usable.is_empty())
        })
    };
    Failure::unwrap_or_raise(run())
}

#[pg_extern(stable)]
fn check_byok(workspace_id: Option<pgrx::Uuid>) {
    let run = || -> Result<()> {
        let workspace = secrets::workspace_scope(workspace_id)?;
        let caller = Caller::current();
        Spi::connect(|client| {
            let attached = tables::attached()?;
            if workspace_row(client, &attached, workspace)?.is_none() {
                let id = workspace.workspace_id().map(|id| id.hyphenated().to_string());
                return Err(Failure::refusal(Code::WorkspaceKindUnknown, "no workspace with this id")
                    .with("workspace_id", id)
                    .into());
            }
            check_at_commit(client, &attached, workspace, &caller)
        })
    };
    Failure::unwrap_or_raise(run())
}

/// Classifies a probe's answer and stores the verdict against the
/// credential's current ciphertext.
#[pg_extern(volatile)]
fn record_liveness(workspace_id: Option<pgrx::Uuid>, key: Option<&str>, http_status: Option<i32>) -> String {
    let run = || -> Result<String> {
        let scope = Scope::from_workspace(workspace_id.map(|id| CoreUuid::from_bytes(*id)));
        let key = secrets::required(key, "key")?;
        let status = secrets::required(http_status, "http_status")?;
        let verdict = Verdict::classify(status);
        Spi::connect_mut(|client| {
            let attached = tables::attached()?;
            let Some((Some(blob), _)) = secrets::fetch(client, &attached, scope, key)? else {
                return Err(Failure::sql("P0002", format!("secretgate: no stored credential {key} in scope {scope}")));
            };
            plans::update(
                client,
                "INSERT INTO secretgate.liveness (workspace_id, key, ciphertext_sha256, verdict, http_status) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (workspace_id, key) DO UPDATE SET ciphertext_sha256 = EXCLUDED.ciphertext_sha256, \
                   verdict = EXCLUDED.verdict, http_status = EXCLUDED.http_status, checked_at = pg_catalog.now()",
                None,
                &[
                    secrets::sql_uuid(scope).into(),
                    key.into(),
                    ciphertext_digest(&blob).as_slice().into(),
                    verdict.as_str().into(),
                    status.into(),
                ],
            )?;
            Ok(verdict.as_str().to_string())
        })
    };
    Failure::unwrap_or_raise(run())
}
