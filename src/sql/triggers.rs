//! The triggers `attach_gates` creates on the platform's tables. Each one is
//! a thin adapter: read the row, call the check in `gates`, raise its failure.

use crate::gates::{self, Caller, Write, MODEL};
use crate::plans;
use crate::report::{self, Failure};
use crate::tables::{self, Attached};
use crate::{keyring, secrets};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{AllocatedByPostgres, PgTrigger};
use secretgate_core::{uuid::Uuid as CoreUuid, Scope};
use std::convert::Infallible;

type Row<'a> = PgHeapTuple<'a, AllocatedByPostgres>;
type TriggerResult<'a> = std::result::Result<Option<Row<'a>>, Infallible>;

/// Every trigger `attach_gates` creates: (name, table role, SQL after `ON <table>`).
/// The identity triggers are deferred constraint triggers: they check at
/// commit, so a workspace and its MODEL may be created in one transaction.
pub const TRIGGERS: &[(&str, TableRole, &str)] = &[
    (
        "secretgate_secret_write",
        TableRole::Secrets,
        "BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_secret_write()",
    ),
    (
        "secretgate_global_secret_write",
        TableRole::GlobalSecrets,
        "BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_global_secret_write()",
    ),
    (
        "secretgate_workspace_write",
        TableRole::Workspaces,
        "BEFORE UPDATE OF kind OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_workspace_write()",
    ),
    (
        "secretgate_platform_identity",
        TableRole::Workspaces,
        "AFTER INSERT OR UPDATE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind = 'platform' AND NEW.status = 'online') EXECUTE FUNCTION secretgate.gate_platform_identity()",
    ),
    (
        "secretgate_byok_insert",
        TableRole::Workspaces,
        "AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind IS DISTINCT FROM 'external') EXECUTE FUNCTION secretgate.gate_byok()",
    ),
    (
        "secretgate_byok_update",
        TableRole::Workspaces,
        "AFTER UPDATE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind IS DISTINCT FROM 'external' AND ((NEW.status = 'online' AND OLD.status IS DISTINCT FROM 'online') \
               OR NEW.model IS DISTINCT FROM OLD.model OR NEW.runtime IS DISTINCT FROM OLD.runtime \
               OR NEW.kind IS DISTINCT FROM OLD.kind)) \
         EXECUTE FUNCTION secretgate.gate_byok()",
    ),
    (
        "secretgate_model_removed",
        TableRole::Secrets,
        "AFTER UPDATE OR DELETE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION secretgate.gate_model_removed()",
    ),
    (
        "secretgate_secrets_truncate",
        TableRole::Secrets,
        "BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION secretgate.gate_secrets_truncate()",
    ),
];

#[derive(Clone, Copy)]
pub enum TableRole {
    Workspaces,
    Secrets,
    GlobalSecrets,
}

/// `CREATE [CONSTRAINT] TRIGGER` statements for the attached tables.
pub fn create_statements(attached: &Attached) -> Vec<String> {
    TRIGGERS
        .iter()
        .map(|(name, role, body)| {
            let table = match role {
                TableRole::Workspaces => &attached.workspaces,
                TableRole::Secrets => &attached.secrets,
                TableRole::GlobalSecrets => &attached.global_secrets,
            };
            let kind = if body.contains("DEFERRABLE") { "CONSTRAINT TRIGGER" } else { "TRIGGER" };
            format!("CREATE {kind} {name} {}", body.replace("{table}", table))
        })
        .collect()
}

pub fn drop_statements(attached: &Attached) -> Vec<String> {
    TRIGGERS
        .iter()
        .map(|(name, role, _)| {
            let table = match role {
                TableRole::Workspaces => &attached.workspaces,
                TableRole::Secrets => &attached.secrets,
                TableRole::GlobalSecrets => &attached.global_secrets,
            };
            format!("DROP TRIGGER IF EXISTS {name} ON {table}")
        })
        .collect()
}

fn uuid_col(row: &Row<'_>, col: &str) -> report::Result<Option<CoreUuid>> {
    let id = row
        .get_by_name::<pgrx::Uuid>(col)
        .map_err(|e| Failure::sql("XX000", format!("secretgate: reading column {col}: {e}")))?;
    Ok(id.map(|id| CoreUuid::from_bytes(*id)))
}

fn text_col(row: &Row<'_>, col: &str) -> report::Result<Option<String>> {
    row.get_by_name::<String>(col).map_err(|e| Failure::sql("XX000", format!("secretgate: reading column {col}: {e}")))
}

/// The plaintext a row writes, for the MODEL value check. A MODEL that does
/// not decrypt is refused with its decrypt error (fail closed).
fn written_model(row: &Row<'_>, scope: Scope) -> report::Result<Option<String>> {
    let blob = row.get_by_name::<&[u8]>("encrypted_value").ok().flatten().map(<[u8]>::to_vec);
    let version = row.get_by_name::<i32>("encryption_version").ok().flatten();
    keyring::current()
        .and_then(|k| secrets::open(&k, (blob, version), scope, MODEL))
        .map(Some)
        .map_err(|e| gates::refusal_for_core(e, scope, MODEL))
}

fn with_attached<T>(f: impl FnOnce(&mut SpiClient<'_>, &Attached) -> report::Result<T>) -> report::Result<T> {
    Spi::connect_mut(|client| {
        let attached = tables::attached()?;
        f(client, &attached)
    })
}

/// Self-write, forbidden keys and MODEL values for one secret row.
fn check_secret_row(
    op: Write,
    scope_of: impl Fn(&Row<'_>) -> report::Result<Scope>,
    trigger: &PgTrigger<'_>,
) -> report::Result<()> {
    let caller = Caller::current();
    // No SPI connection of its own: the common write needs none (see `gates::workspace_kind`).
    let attached = tables::attached()?;
    let new = trigger.new().filter(|_| op != Write::Delete);
    let new_scope = new.as_ref().map(&scope_of).transpose()?;
    if let Some(old) = trigger.old().filter(|_| op != Write::Insert) {
        let scope = scope_of(&old)?;
        // Deleting a row, or moving it away, is a write to the workspace it leaves.
        if new_scope != Some(scope) {
            let key = text_col(&old, "key")?.unwrap_or_default();
            gates::check_secret_write(&attached, Write::Delete, scope, &key, None, &caller)?;
        }
    }
    if let (Some(new), Some(scope)) = (new, new_scope) {
        let key = text_col(&new, "key")?.unwrap_or_default();
        let value = if key == MODEL { written_model(&new, scope)? } else { None };
        gates::check_secret_write(&attached, op, scope, &key, value.as_deref(), &caller)?;
    }
    Ok(())
}

fn operation(trigger: &PgTrigger<'_>) -> Write {
    let event = trigger.event();
    if event.fired_by_insert() {
        Write::Insert
    } else if event.fired_by_update() {
        Write::Update
    } else {
        Write::Delete
    }
}

/// The row a BEFORE trigger lets through: NEW, or OLD for a DELETE.
fn pass<'a>(trigger: &'a PgTrigger<'a>, op: Write) -> Option<Row<'a>> {
    if op == Write::Delete {
        trigger.old()
    } else {
        trigger.new()
    }
}

fn workspace_scope(row: &Row<'_>) -> report::Result<Scope> {
    // A NULL workspace_id cannot name a workspace: its kind is unknown.
    Ok(uuid_col(row, "workspace_id")?.map_or(Scope::Workspace(CoreUuid::nil()), Scope::Workspace))
}

#[pg_trigger]
fn gate_secret_write<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let op = operation(trigger);
    Failure::unwrap_or_raise(check_secret_row(op, workspace_scope, trigger));
    Ok(pass(trigger, op))
}

#[pg_trigger]
fn gate_global_secret_write<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let op = operation(trigger);
    Failure::unwrap_or_raise(check_secret_row(op, |_| Ok(Scope::Global), trigger));
    Ok(pass(trigger, op))
}

#[pg_trigger]
fn gate_workspace_write<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let op = operation(trigger);
    let check = || -> report::Result<()> {
        let Some(old) = trigger.old() else {
            return Ok(());
        };
        let id = uuid_col(&old, "id")?.map_or(Scope::Global, Scope::Workspace);
        let new_kind = match trigger.new().filter(|_| op == Write::Update) {
            Some(new) => Some(text_col(&new, "kind")?),
            None => None,
        };
        let old_kind = text_col(&old, "kind")?;
        gates::check_workspace_write(
            id,
            old_kind.as_deref(),
            new_kind.as_ref().map(Option::as_deref),
            &Caller::current(),
        )
    };
    Failure::unwrap_or_raise(check());
    Ok(pass(trigger, op))
}

/// The platform-identity invariant for the workspace a row names.
fn identity_at_commit(row: Option<Row<'_>>, id_column: &str) -> report::Result<()> {
    let Some(row) = row else { return Ok(()) };
    let Some(id) = uuid_col(&row, id_column)? else {
        return Ok(());
    };
    let caller = Caller::current();
    with_attached(|client, attached| gates::check_platform_identity(client, attached, Scope::Workspace(id), &caller))
}

/// At commit: a workspace inserted or updated as platform + online.
#[pg_trigger]
fn gate_platform_identity<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    Failure::unwrap_or_raise(identity_at_commit(trigger.new(), "id"));
    Ok(None)
}

/// At commit: a MODEL row deleted, emptied, renamed or moved away.
#[pg_trigger]
fn gate_model_removed<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    Failure::unwrap_or_raise(identity_at_commit(trigger.old(), "workspace_id"));
    Ok(None)
}

/// At commit: a workspace created, set online, or given another model or
/// runtime needs a usable credential its provider accepts (SG103/SG104).
#[pg_trigger]
fn gate_byok<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let check = || -> report::Result<()> {
        let Some(new) = trigger.new() else {
            return Ok(());
        };
        let Some(id) = uuid_col(&new, "id")? else {
            return Ok(());
        };
        let caller = Caller::current();
        with_attached(|client, attached| crate::byok::check_at_commit(client, attached, Scope::Workspace(id), &caller))
    };
    Failure::unwrap_or_raise(check());
    Ok(None)
}

/// TRUNCATE removes every MODEL at once: refused while any platform workspace is online.
#[pg_trigger]
fn gate_secrets_truncate<'a>(_trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let check = || -> report::Result<()> {
        let caller = Caller::current();
        with_attached(|client, attached| {
            let online = plans::select(
                client,
                &format!("SELECT 1 FROM {} WHERE kind = 'platform' AND status = 'online' LIMIT 1", attached.workspaces),
                Some(1),
                &[],
            )?;
            if online.is_empty() {
                return Ok(());
            }
            let refusal = Failure::refusal(
                secretgate_core::Code::PlatformAgentIdentityGate,
                "TRUNCATE would leave online platform workspaces without a MODEL",
            );
            Err(gates::audited(refusal, "secret.truncate.refused", &caller))
        })
    };
    Failure::unwrap_or_raise(check());
    Ok(None)
}

/// After any change to `secretgate.forbidden_keys`: the backends that keep
/// the table in memory (`gates::forbidden_reason`) drop it, this one at once
/// and the others when the change commits.
#[pg_trigger]
fn registry_changed<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    match trigger.relation() {
        Ok(relation) => unsafe { pg_sys::CacheInvalidateRelcache(relation.as_ptr()) },
        // Never keep a stale copy: drop every relcache entry instead.
        Err(_) => unsafe { pg_sys::CacheInvalidateRelcacheAll() },
    }
    Ok(None)
}
