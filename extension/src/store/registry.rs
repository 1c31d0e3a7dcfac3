//! The registry in the extension's schema: providers, model routes,
//! forbidden key names, and the BYOK credentials they imply.

use crate::pg::error::Result;
use crate::pg::spi;
use crate::store::attached::Attached;
use pgrx::pg_sys;
use pgrx::spi::{SpiClient, SpiTupleTable};
use secretgate_core::policy::Provider;
use secretgate_core::Scope;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

/// The routing rule of `policy::route` as a subquery over `$1 runtime, $2
/// model` (a test checks they agree on generated tables): what
/// `secretgate.resolve_provider` runs, and part of the gates' kept plans. A
/// SQL function that cannot be inlined is planned again on every call, which
/// cost more than the rest of a registration.
pub const ROUTED_PROVIDER: &str = "(SELECT r.provider FROM secretgate.model_routes r \
     WHERE pg_catalog.starts_with($2, r.pattern) AND (r.runtime IS NULL OR r.runtime OPERATOR(pg_catalog.=) $1) \
     ORDER BY (r.runtime IS NOT NULL) DESC, pg_catalog.length(r.pattern) DESC, r.provider COLLATE \"C\" LIMIT 1)";

/// The name of the provider `runtime` and `model` route to (what
/// `secretgate.resolve_provider` returns); `None` when no route matches.
pub fn routed_provider_name(
    client: &SpiClient<'_>,
    runtime: Option<&str>,
    model: Option<&str>,
) -> Result<Option<String>> {
    let row = spi::select(client, &format!("SELECT {ROUTED_PROVIDER}"), Some(1), &[runtime.into(), model.into()])?;
    if row.is_empty() {
        return Ok(None);
    }
    Ok(row.first().get::<String>(1)?)
}

/// The provider a workspace's runtime and model route to; `None` when underivable.
pub fn routed_provider(client: &SpiClient<'_>, runtime: Option<&str>, model: Option<&str>) -> Result<Option<Provider>> {
    let row = spi::select(
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

/// The provider registered under `name`.
pub fn provider_named(client: &SpiClient<'_>, name: &str) -> Result<Option<Provider>> {
    let row = spi::select(
        client,
        "SELECT p.name, p.is_platform, p.auth_env FROM secretgate.providers p WHERE p.name OPERATOR(pg_catalog.=) $1",
        Some(1),
        &[name.into()],
    )?;
    provider_row(row)
}

fn provider_row(row: SpiTupleTable<'_>) -> Result<Option<Provider>> {
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

/// The providers whose `auth_env` lists `key`.
pub fn providers_accepting(client: &SpiClient<'_>, key: &str) -> Result<Vec<String>> {
    let rows = spi::select(
        client,
        "SELECT p.name FROM secretgate.providers p WHERE $1 OPERATOR(pg_catalog.=) ANY (p.auth_env) \
         ORDER BY p.name COLLATE \"C\"",
        None,
        &[key.into()],
    )?;
    let mut names = Vec::new();
    for row in rows {
        names.extend(row.get::<String>(1)?);
    }
    Ok(names)
}

/// Whether a model routes to a platform provider; a model whose provider
/// cannot be derived counts as platform-managed.
pub fn routes_to_platform(client: &SpiClient<'_>, runtime: Option<&str>, model: &str) -> Result<bool> {
    Ok(routed_provider(client, runtime, Some(model))?.is_none_or(|p| p.is_platform))
}

/// Whether `name` is a registered provider (a MODEL value that is one is a slug).
pub fn is_provider(name: &str) -> Result<bool> {
    spi::as_owner(|client| {
        spi::select(
            client,
            "SELECT 1 FROM secretgate.providers WHERE name OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[name.into()],
        )
        .map(|rows| !rows.is_empty())
        .map_err(Into::into)
    })
}

/// One BYOK credential a probe checks: the workspace using it, its
/// provider, the key name, and where the row lives.
pub struct ByokCredential {
    pub workspace: Scope,
    pub provider: String,
    pub key: String,
    pub scope: &'static str,
}

/// Every BYOK credential of the attached tables, read with the caller's
/// privileges: for each workspace that is not external and whose model
/// routes to a provider that is not the platform's, each of the provider's
/// key names that has a row, at workspace scope or else global scope.
pub fn byok_credentials(client: &SpiClient<'_>, attached: &Attached) -> Result<Vec<ByokCredential>> {
    // Without a model column the model is the MODEL secret, read through
    // try_read_secret (a MODEL that cannot be read routes nowhere here).
    let model = if attached.has_model {
        attached.model_column("w")
    } else {
        "(SELECT t.value FROM secretgate.try_read_secret(w.id, 'MODEL') t)".to_string()
    };
    let sql = format!(
        "SELECT w.id, p.name, k.key, (s.key IS NOT NULL) \
         FROM {workspaces} w \
         CROSS JOIN LATERAL (SELECT r.provider FROM secretgate.model_routes r \
              WHERE pg_catalog.starts_with({model}, r.pattern) \
                AND (r.runtime IS NULL OR r.runtime OPERATOR(pg_catalog.=) {runtime}) \
              ORDER BY (r.runtime IS NOT NULL) DESC, pg_catalog.length(r.pattern) DESC, r.provider COLLATE \"C\" LIMIT 1) route \
         JOIN secretgate.providers p ON p.name OPERATOR(pg_catalog.=) route.provider AND NOT p.is_platform \
         CROSS JOIN LATERAL pg_catalog.unnest(p.auth_env) AS k(key) \
         LEFT JOIN {secrets} s ON s.workspace_id OPERATOR(pg_catalog.=) w.id AND s.key OPERATOR(pg_catalog.=) k.key \
         LEFT JOIN {global} g ON g.key OPERATOR(pg_catalog.=) k.key \
         WHERE (w.kind IS NULL OR {kind} OPERATOR(pg_catalog.<>) 'external') \
           AND NOT {external} \
           AND (s.key IS NOT NULL OR g.key IS NOT NULL) \
         ORDER BY w.id, p.name COLLATE \"C\", k.key COLLATE \"C\"",
        workspaces = attached.workspaces,
        secrets = attached.secrets,
        global = attached.global_secrets,
        external = crate::store::workspaces::external_runtime_sql(client, "w")?,
        runtime = crate::pg::types::label_sql("w.runtime"),
        kind = crate::pg::types::label_sql("w.kind"),
    );
    let mut out = Vec::new();
    for row in client.select(&sql, None, &[])? {
        let id = row.get::<pgrx::Uuid>(1)?;
        out.push(ByokCredential {
            workspace: crate::pg::args::scope_of(id),
            provider: row.get::<String>(2)?.unwrap_or_default(),
            key: row.get::<String>(3)?.unwrap_or_default(),
            scope: if row.get::<bool>(4)?.unwrap_or(false) { "workspace" } else { "global" },
        });
    }
    Ok(out)
}

/// `secretgate.forbidden_keys` as this backend last read it, and the table's oid.
struct ForbiddenKeys {
    table: pg_sys::Oid,
    reasons: HashMap<String, String>,
}

thread_local! {
    /// Every secret write checks the forbidden key names; reading the table
    /// through SPI each time was a good part of the gate's cost. Dropped when
    /// the table's relcache entry is invalidated, which the table's own
    /// `registry_changed` trigger makes happen on every change (at commit for
    /// other sessions, at once for this one).
    static FORBIDDEN: Cell<Option<Rc<ForbiddenKeys>>> = const { Cell::new(None) };
}

/// Called from the relcache callback (`store::invalidation`).
pub fn forget_forbidden_keys(relid: pg_sys::Oid) {
    FORBIDDEN.with(|f| {
        let cached = f.take();
        let concerned = relid == pg_sys::InvalidOid || cached.as_ref().is_some_and(|c| c.table == relid);
        if !concerned {
            f.set(cached);
        }
    });
}

/// Why `key` may not be written, if it is a forbidden key name.
pub fn forbidden_reason(key: &str) -> Result<Option<String>> {
    let cached = FORBIDDEN.with(|f| {
        let cached = f.take();
        f.set(cached.clone());
        cached
    });
    let forbidden = match cached {
        Some(forbidden) => forbidden,
        None => {
            let forbidden = Rc::new(spi::as_owner(|client| -> Result<ForbiddenKeys> {
                let rows = spi::select(
                    client,
                    "SELECT key, reason, 'secretgate.forbidden_keys'::pg_catalog.regclass::pg_catalog.oid FROM secretgate.forbidden_keys",
                    None,
                    &[],
                )?;
                let mut table = pg_sys::InvalidOid;
                let mut reasons = HashMap::new();
                for row in rows {
                    if let (Some(key), reason) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                        reasons.insert(key, reason.unwrap_or_default());
                    }
                    table = row.get::<pg_sys::Oid>(3)?.unwrap_or(table);
                }
                Ok(ForbiddenKeys { table, reasons })
            })?);
            let table = forbidden.table;
            // An empty table has no row to name its oid: nothing to cache by.
            if table != pg_sys::InvalidOid {
                FORBIDDEN.with(|f| f.set(Some(forbidden.clone())));
            }
            forbidden
        }
    };
    Ok(forbidden.reasons.get(key).cloned())
}
