//! The trigger functions `attach_gates` puts on the platform's tables. Each
//! one is a thin adapter: read the row, call the check in `gates`, raise
//! its failure. A trigger function called as a plain function raises 39P01.

use crate::gates::caller::Caller;
use crate::gates::history::{self, Replacement};
use crate::gates::{admin_audit, byok, identity, secret_write};
use crate::pg::error::{self, Failure, Result};
use crate::pg::keyring;
use crate::pg::spi;
use crate::pg::types;
use crate::store::attached::{self, Attached};
use crate::store::workspaces;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{AllocatedByPostgres, PgSqlErrorCode, PgTrigger, PgTriggerOperation};
use secretgate_core::policy::{Write, MODEL};
use secretgate_core::{uuid::Uuid as CoreUuid, Scope};

type Row<'a> = PgHeapTuple<'a, AllocatedByPostgres>;

/// Declares every trigger function, once each: its SQL name, the C symbol
/// its SQL function names, its body, and whether Postgres runs it
/// `SECURITY DEFINER` (set in `finalize.sql`) or as its invoker. Makes each
/// one's C entry points (the symbol and `pg_finfo_<symbol>`); the body gets
/// the trigger's data and returns the row to pass on (or `None`). Its
/// `CREATE FUNCTION` line is in `TRIGGER_FUNCTIONS_SQL` (pgrx needs that
/// SQL as one literal); a test holds the list against it, the trigger DDL
/// and `finalize.sql`.
macro_rules! gates {
    ($($name:ident: $symbol:ident => $body:path, $rights:ident;)*) => {
        $(
            const _: () = {
                #[export_name = concat!("pg_finfo_", stringify!($symbol))]
                #[doc(hidden)]
                pub extern "C" fn finfo() -> &'static pg_sys::Pg_finfo_record {
                    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
                    &V1
                }
            };

            /// # Safety
            /// Called by Postgres' function manager with a valid `fcinfo`.
            #[no_mangle]
            #[doc(hidden)]
            pub unsafe extern "C-unwind" fn $symbol(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
                // SAFETY: the guard turns a panic or a Postgres error inside into
                // a Postgres ERROR, so nothing unwinds into C.
                unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || dispatch(fcinfo, $body)) }
            }
        )*

        /// The list `gates!` was given, for the test that holds it against the SQL.
        #[cfg(test)]
        const GATES: &[Gate] = &[$(Gate {
            name: stringify!($name),
            symbol: stringify!($symbol),
            definer: gates!(@definer $rights),
        }),*];
    };
    (@definer definer) => { true };
    (@definer invoker) => { false };
}

/// One entry of the list of trigger functions.
#[cfg(test)]
struct Gate {
    name: &'static str,
    symbol: &'static str,
    definer: bool,
}

/// Runs a trigger's body on the trigger data `fcinfo` carries.
fn dispatch(
    fcinfo: pg_sys::FunctionCallInfo,
    body: for<'a> fn(&'a PgTrigger<'a>) -> Result<Option<Row<'a>>>,
) -> pg_sys::Datum {
    // SAFETY: Postgres passes a valid (or null) fcinfo; from_fcinfo checks
    // that its context is trigger data before reading any of it.
    let trigger = match unsafe { fcinfo.as_ref() }.map(|f| unsafe { PgTrigger::from_fcinfo(f) }) {
        Some(Ok(trigger)) => trigger,
        _ => not_called_as_trigger(),
    };
    // Several gates run SECURITY DEFINER and read the platform's tables: in a
    // security-restricted operation, whatever those reads could reach is too.
    match error::run(|| spi::restricted(|| body(&trigger))).and_then(|row| row.into_trigger_datum()) {
        Some(datum) => datum,
        None => pg_sys::Datum::from(0),
    }
}

fn not_called_as_trigger() -> ! {
    Failure::sql(
        PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        "secretgate: trigger functions can only be called as triggers",
    )
    .raise()
}

fn uuid_col(row: &Row<'_>, col: &str) -> Result<Option<CoreUuid>> {
    let id = row.get_by_name::<pgrx::Uuid>(col).map_err(|e| column_error(col, e))?;
    Ok(id.map(|id| CoreUuid::from_bytes(*id)))
}

fn text_col(row: &Row<'_>, col: &str) -> Result<Option<String>> {
    row.get_by_name::<String>(col).map_err(|e| column_error(col, e))
}

/// A label column (`kind`: text, varchar, an enum or a domain) of the new
/// row (`new`) or the row the trigger fired for.
fn label_col(trigger: &PgTrigger<'_>, new: bool, col: &str) -> Result<Option<String>> {
    types::trigger_column(trigger.trigger_data(), new, col).map_err(|e| column_error(col, e))
}

#[track_caller]
fn column_error(col: &str, e: impl std::fmt::Display) -> Failure {
    Failure::sql(
        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        format!("secretgate: the attached table's column {col} cannot be read: {e}"),
    )
}

/// The plaintext a row writes, for the MODEL value check. A MODEL that does
/// not decrypt is refused with its decrypt error (fail closed).
fn written_model(row: &Row<'_>, scope: Scope) -> Result<Option<String>> {
    let blob = row.get_by_name::<&[u8]>("encrypted_value").ok().flatten().map(<[u8]>::to_vec);
    let version = row.get_by_name::<i32>("encryption_version").ok().flatten();
    keyring::open((blob, version), scope, MODEL).map(Some).map_err(|e| Failure::core(&e, Some(scope), Some(MODEL)))
}

fn with_attached<T>(f: impl FnOnce(&mut SpiClient<'_>, &Attached) -> Result<T>) -> Result<T> {
    Spi::connect_mut(|client| {
        let attached = attached::attached()?;
        f(client, &attached)
    })
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

/// Self-write, forbidden keys and MODEL values for one secret row.
fn check_secret_row<'a>(
    trigger: &'a PgTrigger<'a>,
    scope_of: impl Fn(&Row<'_>) -> Result<Scope>,
) -> Result<Option<Row<'a>>> {
    let op = operation(trigger);
    let caller = Caller::current();
    // No SPI connection of its own: the common write needs none (see `store::workspaces::kind`).
    let attached = attached::attached()?;
    let new = trigger.new().filter(|_| op != Write::Delete);
    let new_scope = new.as_ref().map(&scope_of).transpose()?;
    if let Some(old) = trigger.old().filter(|_| op != Write::Insert) {
        let scope = scope_of(&old)?;
        // Deleting a row, or moving it away, is a write to the workspace it leaves.
        if new_scope != Some(scope) {
            let key = text_col(&old, "key")?.unwrap_or_default();
            secret_write::check_secret_write(&attached, Write::Delete, scope, &key, None, &caller)?;
        }
    }
    if let (Some(new), Some(scope)) = (new, new_scope) {
        let key = text_col(&new, "key")?.unwrap_or_default();
        let value = if key == MODEL { written_model(&new, scope)? } else { None };
        secret_write::check_secret_write(&attached, op, scope, &key, value.as_deref(), &caller)?;
    }
    Ok(pass(trigger, op))
}

fn workspace_scope(row: &Row<'_>) -> Result<Scope> {
    // A NULL workspace_id cannot name a workspace: its kind is unknown.
    Ok(uuid_col(row, "workspace_id")?.map_or(Scope::Workspace(CoreUuid::nil()), Scope::Workspace))
}

fn secret_write<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    check_secret_row(trigger, workspace_scope)
}

fn global_secret_write<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    check_secret_row(trigger, |_| Ok(Scope::Global))
}

fn workspace_write<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let op = operation(trigger);
    if let Some(old) = trigger.old() {
        let id = uuid_col(&old, "id")?.map_or(Scope::Global, Scope::Workspace);
        let new_kind = match trigger.new().filter(|_| op == Write::Update) {
            Some(_) => Some(label_col(trigger, true, "kind")?),
            None => None,
        };
        let old_kind = label_col(trigger, false, "kind")?;
        secret_write::check_workspace_write(
            id,
            old_kind.as_deref(),
            new_kind.as_ref().map(Option::as_deref),
            &Caller::current(),
        )?;
    }
    Ok(pass(trigger, op))
}

/// The platform-identity invariant for the workspace a row names.
fn identity_at_commit(row: Option<Row<'_>>, id_column: &str) -> Result<()> {
    let Some(row) = row else { return Ok(()) };
    let Some(id) = uuid_col(&row, id_column)? else {
        return Ok(());
    };
    let caller = Caller::current();
    with_attached(|client, attached| identity::check_platform_identity(client, attached, Scope::Workspace(id), &caller))
}

/// At commit: a workspace inserted or updated as platform + online.
fn platform_identity<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    identity_at_commit(trigger.new(), "id").map(|()| None)
}

/// At commit: a MODEL row deleted, emptied, renamed or moved away.
fn model_removed<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    identity_at_commit(trigger.old(), "workspace_id").map(|()| None)
}

/// At commit: a workspace created, set online, or given another model or
/// runtime needs a usable credential its provider accepts (SG103/SG104).
fn byok_at_commit<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let Some(id) = trigger.new().map(|new| uuid_col(&new, "id")).transpose()?.flatten() else {
        return Ok(None);
    };
    let caller = Caller::current();
    with_attached(|client, attached| byok::check_at_commit(client, attached, Scope::Workspace(id), &caller))?;
    Ok(None)
}

/// At commit: a workspace's MODEL written, changed or removed, when the
/// MODEL secret is its model (no model column): the BYOK rule again, for
/// the workspace of the new row (`'new'`) or of the old one (`'old'`).
fn byok_model_at_commit<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let old = trigger.extra_args().ok().is_some_and(|args| args.first().map(String::as_str) == Some("old"));
    let row = if old { trigger.old() } else { trigger.new() };
    let Some(id) = row.map(|row| uuid_col(&row, "workspace_id")).transpose()?.flatten() else {
        return Ok(None);
    };
    if !old && operation(trigger) == Write::Update && same_model(trigger, id)? {
        // Re-encrypted (a rotation), not changed: the model is what it was.
        return Ok(None);
    }
    let caller = Caller::current();
    with_attached(|client, attached| {
        if attached.has_model {
            return Ok(());
        }
        byok::check_at_commit(client, attached, Scope::Workspace(id), &caller)
    })?;
    Ok(None)
}

/// History: a secret row overwritten or deleted (argument `workspace` or
/// `global`) keeps its ciphertext; a workspace row deleted (`workspaces`)
/// takes its secrets' history with it. A secret deleted because its
/// workspace went (a cascade, whose row events fire after the workspace's)
/// keeps nothing.
fn keep_history<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let table = trigger.extra_args().ok().and_then(|args| args.first().cloned()).unwrap_or_default();
    let Some(old) = trigger.old() else { return Ok(None) };
    if table == "workspaces" {
        if let Some(id) = uuid_col(&old, "id")? {
            history::forget_workspace(Scope::Workspace(id))?;
        }
        return Ok(None);
    }
    let scope = if table == "global" { Scope::Global } else { workspace_scope(&old)? };
    let how = if trigger.new().is_some() { Replacement::Update } else { Replacement::Delete };
    if how == Replacement::Delete
        && scope != Scope::Global
        && workspaces::kind(&*attached::attached()?, scope)?.is_none()
    {
        return Ok(None);
    }
    let key = text_col(&old, "key")?.unwrap_or_default();
    let blob = old.get_by_name::<&[u8]>("encrypted_value").map_err(|e| column_error("encrypted_value", e))?;
    let version = old.get_by_name::<i32>("encryption_version").map_err(|e| column_error("encryption_version", e))?;
    history::keep(scope, &key, blob, version, how)?;
    Ok(None)
}

/// Whether an UPDATE of a MODEL row left the same workspace's MODEL with the
/// same value (a re-encryption). A side that cannot be decrypted counts as a
/// change, so the gate runs (and fails closed on it).
fn same_model(trigger: &PgTrigger<'_>, id: CoreUuid) -> Result<bool> {
    let (Some(old), Some(new)) = (trigger.old(), trigger.new()) else {
        return Ok(false);
    };
    if uuid_col(&old, "workspace_id")? != Some(id) || text_col(&old, "key")?.as_deref() != Some(MODEL) {
        return Ok(false);
    }
    let value = |row: &Row<'_>| {
        let blob = row.get_by_name::<&[u8]>("encrypted_value").ok().flatten().map(<[u8]>::to_vec);
        let version = row.get_by_name::<i32>("encryption_version").ok().flatten();
        keyring::open((blob, version), Scope::Workspace(id), MODEL).ok()
    };
    Ok(matches!((value(&old), value(&new)), (Some(a), Some(b)) if a == b))
}

/// TRUNCATE removes every MODEL at once: refused while any platform workspace is online.
fn secrets_truncate<'a>(_trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let caller = Caller::current();
    with_attached(|client, attached| identity::check_truncate(client, attached, &caller))?;
    Ok(None)
}

/// After any change to a registry table (`providers`, `model_routes`,
/// `forbidden_keys`, `credential_auth`): the backends that keep it in memory
/// drop it, this one at once and the others when the change commits; and
/// the change is an administrative event of the audit trail at commit.
fn forbidden_keys_changed<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>> {
    let op = match trigger.op() {
        Ok(PgTriggerOperation::Insert) => "INSERT",
        Ok(PgTriggerOperation::Update) => "UPDATE",
        Ok(PgTriggerOperation::Delete) => "DELETE",
        Ok(PgTriggerOperation::Truncate) => "TRUNCATE",
        Err(_) => "change",
    };
    let table = trigger.table_name().unwrap_or_else(|_| "a registry table".into());
    // Once per table and transaction: registry_upsert's nested UPDATE fires this trigger too.
    admin_audit::record_once("registry.changed", &format!("{op} on secretgate.{table}"), &format!("registry:{table}"));
    match trigger.relation() {
        // SAFETY: the trigger's relation is open for the trigger's duration.
        Ok(relation) => unsafe { pg_sys::CacheInvalidateRelcache(relation.as_ptr()) },
        // Never keep a stale copy: drop every relcache entry instead.
        // SAFETY: no argument; queues an invalidation of every relcache entry.
        Err(_) => unsafe { pg_sys::CacheInvalidateRelcacheAll() },
    }
    Ok(None)
}

// The per-row secret gates run as the invoker and switch to the owner in
// code around the few reads they make: a declared SECURITY DEFINER context
// would be set up and torn down on every row written.
gates! {
    gate_secret_write: gate_secret_write_wrapper => secret_write, invoker;
    gate_global_secret_write: gate_global_secret_write_wrapper => global_secret_write, invoker;
    gate_workspace_write: gate_workspace_write_wrapper => workspace_write, definer;
    gate_platform_identity: gate_platform_identity_wrapper => platform_identity, definer;
    gate_model_removed: gate_model_removed_wrapper => model_removed, definer;
    gate_byok: gate_byok_wrapper => byok_at_commit, definer;
    gate_byok_model: gate_byok_model_wrapper => byok_model_at_commit, definer;
    gate_secrets_truncate: gate_secrets_truncate_wrapper => secrets_truncate, definer;
    registry_changed: registry_changed_wrapper => forbidden_keys_changed, invoker;
    gate_history: gate_history_wrapper => keep_history, invoker;
}

/// Declares `sql` as the SQL of the trigger functions, and keeps it as
/// `TRIGGER_FUNCTIONS_SQL` for the test that holds it against `gates!`.
macro_rules! trigger_functions_sql {
    ($sql:literal) => {
        #[cfg(test)]
        const TRIGGER_FUNCTIONS_SQL: &str = $sql;

        pgrx::extension_sql!($sql, name = "trigger_functions", requires = ["bootstrap"],);
    };
}

// The SQL functions the entry points above implement (pgrx's #[pg_trigger]
// would make them too, but its entry point cannot refuse a plain call with
// a clear error: it panics, which reaches the client as XX000).
trigger_functions_sql!(
    r#"
CREATE FUNCTION secretgate."gate_secret_write"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_secret_write_wrapper';
CREATE FUNCTION secretgate."gate_global_secret_write"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_global_secret_write_wrapper';
CREATE FUNCTION secretgate."gate_workspace_write"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_workspace_write_wrapper';
CREATE FUNCTION secretgate."gate_platform_identity"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_platform_identity_wrapper';
CREATE FUNCTION secretgate."gate_model_removed"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_model_removed_wrapper';
CREATE FUNCTION secretgate."gate_byok"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_byok_wrapper';
CREATE FUNCTION secretgate."gate_byok_model"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_byok_model_wrapper';
CREATE FUNCTION secretgate."gate_secrets_truncate"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_secrets_truncate_wrapper';
CREATE FUNCTION secretgate."registry_changed"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'registry_changed_wrapper';
CREATE FUNCTION secretgate."gate_history"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_history_wrapper';
"#
);

#[cfg(test)]
mod tests {
    use super::{GATES, TRIGGER_FUNCTIONS_SQL};
    use crate::store::trigger_ddl::TRIGGERS;
    use std::collections::BTreeSet;

    const FINALIZE: &str = include_str!("../../sql/finalize.sql");

    /// The functions `text` runs as `EXECUTE FUNCTION secretgate.X(`.
    fn executed(text: &str) -> BTreeSet<&str> {
        text.split("EXECUTE FUNCTION secretgate.")
            .skip(1)
            .filter_map(|rest| rest.split_once('('))
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn create_function_lines_are_the_gate_list() {
        let lines: Vec<&str> = TRIGGER_FUNCTIONS_SQL.lines().filter(|line| !line.trim().is_empty()).collect();
        let expected: Vec<String> = GATES
            .iter()
            .map(|g| {
                format!(
                    "CREATE FUNCTION secretgate.\"{}\"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', '{}';",
                    g.name, g.symbol
                )
            })
            .collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn every_trigger_runs_a_listed_gate_and_every_gate_has_a_trigger() {
        let names: BTreeSet<&str> = GATES.iter().map(|g| g.name).collect();
        let attached: BTreeSet<&str> = TRIGGERS.iter().flat_map(|(_, _, body)| executed(body)).collect();
        assert!(
            attached.is_subset(&names),
            "attach_gates runs functions not in the list: {:?}",
            attached.difference(&names)
        );
        // finalize.sql puts registry_changed on the registry tables.
        let finalize: BTreeSet<&str> = executed(FINALIZE);
        let unused: Vec<&&str> = names.iter().filter(|n| !attached.contains(*n) && !finalize.contains(*n)).collect();
        assert!(unused.is_empty(), "listed gates no trigger runs: {unused:?}");
    }

    #[test]
    fn finalize_makes_exactly_the_definer_gates_security_definer() {
        for g in GATES {
            let definer = format!(
                "ALTER FUNCTION secretgate.{}() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;",
                g.name
            );
            let declared =
                FINALIZE.lines().filter(|line| line.starts_with(&format!("ALTER FUNCTION secretgate.{}(", g.name)));
            let lines: Vec<&str> = declared.collect();
            if g.definer {
                assert_eq!(lines, [definer.as_str()], "{} is SECURITY DEFINER with a pinned search_path", g.name);
            } else {
                assert!(lines.is_empty(), "{} runs as its invoker: finalize.sql alters it: {lines:?}", g.name);
            }
        }
    }
}
