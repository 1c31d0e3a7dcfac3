//! Rows of the attached workspaces table: every read and write of one.

use crate::pg::args::sql_uuid;
use crate::pg::error::Result;
use crate::pg::types::{label_sql, spi_label};
use crate::pg::{index_read, spi};
use crate::store::attached::Attached;
use pgrx::spi::SpiClient;
use secretgate_core::Scope;

/// The kind of a workspace: `None` when there is no such row. Read through
/// the primary key without SPI when the table allows it (and
/// `secretgate.direct_index_read` is on), else through SQL as the owner.
pub fn kind(attached: &Attached, id: Scope) -> Result<Option<String>> {
    let Scope::Workspace(id) = id else {
        return Ok(None);
    };
    if let Some(kind) = index_read::text_by_uuid_key(attached.workspaces_oid(), c"id", c"kind", id.as_bytes()) {
        return Ok(kind);
    }
    spi::as_owner(|client| {
        let table = spi::select(
            client,
            &format!("SELECT kind FROM {} WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
            Some(1),
            &[sql_uuid(Scope::Workspace(id)).into()],
        )?;
        Ok(if table.is_empty() { None } else { spi_label(&table.first(), 1)?.or(Some(String::new())) })
    })
}

/// What the BYOK rule reads of a workspace.
pub struct Routing {
    pub kind: Option<String>,
    pub runtime: Option<String>,
    /// The model column; `None` also when the table has none (then the
    /// model is the MODEL secret, which the gates read and decrypt).
    pub model: Option<String>,
    /// Whether the runtime is listed in `secretgate.external_runtimes`.
    pub external_runtime: bool,
}

/// Whether `secretgate.external_runtimes` exists: not until `ALTER
/// EXTENSION secretgate UPDATE` has run after the library was upgraded;
/// until then only `kind = 'external'` marks an external agent.
pub fn external_runtimes_listed(client: &SpiClient<'_>) -> Result<bool> {
    let found =
        spi::select(client, "SELECT pg_catalog.to_regclass('secretgate.external_runtimes') IS NOT NULL", Some(1), &[])?;
    Ok(found.first().get_one::<bool>()?.unwrap_or(false))
}

/// SQL: whether the runtime of workspace row `w` is listed as external.
pub fn external_runtime_sql(client: &SpiClient<'_>, w: &str) -> Result<String> {
    Ok(if external_runtimes_listed(client)? {
        format!(
            "EXISTS (SELECT 1 FROM secretgate.external_runtimes x WHERE x.runtime OPERATOR(pg_catalog.=) {})",
            label_sql(&format!("{w}.runtime"))
        )
    } else {
        "false".to_string()
    })
}

/// Kind, runtime and model of a workspace; `None` when there is no such row.
pub fn routing(client: &SpiClient<'_>, attached: &Attached, workspace: Scope) -> Result<Option<Routing>> {
    let row = spi::select(
        client,
        &format!(
            "SELECT w.kind, w.runtime, {}, {} \
             FROM {} w WHERE w.id OPERATOR(pg_catalog.=) $1",
            attached.model_column("w"),
            external_runtime_sql(client, "w")?,
            attached.workspaces
        ),
        Some(1),
        &[sql_uuid(workspace).into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    let row = row.first();
    Ok(Some(Routing {
        kind: spi_label(&row, 1)?,
        runtime: spi_label(&row, 2)?,
        model: row.get::<String>(3)?,
        external_runtime: row.get::<bool>(4)?.unwrap_or(false),
    }))
}

/// Kind and status, the row locked FOR SHARE (the platform-identity gate:
/// a concurrent transaction that sets it online waits for this one).
pub fn kind_and_status_for_share(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
) -> Result<Option<(Option<String>, Option<String>)>> {
    let row = spi::update(
        client,
        &format!("SELECT kind, status FROM {} WHERE id OPERATOR(pg_catalog.=) $1 FOR SHARE", attached.workspaces),
        Some(1),
        &[sql_uuid(workspace).into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    let row = row.first();
    Ok(Some((spi_label(&row, 1)?, spi_label(&row, 2)?)))
}

/// The kind, the row locked FOR UPDATE (registration); `None`: no such row.
pub fn kind_for_update(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    workspace: Scope,
) -> Result<Option<Option<String>>> {
    let row = spi::update(
        client,
        &format!("SELECT kind FROM {} WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE", attached.workspaces),
        Some(1),
        &[sql_uuid(workspace).into()],
    )?;
    if row.is_empty() {
        return Ok(None);
    }
    Ok(Some(spi_label(&row.first(), 1)?))
}

/// The statuses secretgate itself sets.
#[derive(Clone, Copy)]
pub enum Status {
    Online,
    Failed,
}

/// Sets a workspace's status.
/// The status is spliced in as a literal, which Postgres coerces to the
/// column's type (text, varchar, an enum with that label, a domain).
pub fn set_status(client: &mut SpiClient<'_>, attached: &Attached, workspace: Scope, status: Status) -> Result<()> {
    let status = match status {
        Status::Online => "online",
        Status::Failed => "failed",
    };
    spi::update(
        client,
        &format!("UPDATE {} SET status = '{status}' WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
        None,
        &[sql_uuid(workspace).into()],
    )?;
    Ok(())
}

/// Whether any platform workspace is online.
pub fn platform_online(client: &SpiClient<'_>, attached: &Attached) -> Result<bool> {
    let online = spi::select(
        client,
        &format!(
            "SELECT 1 FROM {} WHERE {} OPERATOR(pg_catalog.=) 'platform' \
               AND {} OPERATOR(pg_catalog.=) 'online' LIMIT 1",
            attached.workspaces,
            label_sql("kind"),
            label_sql("status"),
        ),
        Some(1),
        &[],
    )?;
    Ok(!online.is_empty())
}
