//! The gates of CONTRACT §6: who is calling, what a secret write may do, and
//! the platform-identity invariant checked at commit.
//!
//! The checks are plain functions returning `Result`; the triggers and the
//! SQL functions that write secrets both call them, so a refusal raised for
//! `set_secret` is the same refusal a direct INSERT meets in the trigger.

use crate::index_read;
use crate::keyring;
use crate::plans;
use crate::report::{Failure, Refusal, Result};
use crate::secrets::{self, core_refusal};
use crate::tables::Attached;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use secretgate_core::{Code, Error as CoreError, Scope};
use serde_json::json;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

pub const MODEL: &str = "MODEL";

/// `secretgate.caller`: what the service says the current request is.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallerSetting {
    #[name = c"unset"]
    Unset,
    #[name = c"agent"]
    Agent,
    #[name = c"operator"]
    Operator,
    #[name = c"workspace"]
    Workspace,
}

pub static CALLER: GucSetting<CallerSetting> = GucSetting::<CallerSetting>::new(CallerSetting::Unset);

pub fn register_guc() {
    GucRegistry::define_enum_guc(
        c"secretgate.caller",
        c"Who the current request acts for: agent, operator, workspace or unset.",
        c"Services SET LOCAL it per request. It can only add restrictions: members of secretgate_agent are agents whatever it says.",
        &CALLER,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Who is writing, as the gates and the audit see it.
pub struct Caller {
    pub agent: bool,
    pub via_role: bool,
    pub setting: CallerSetting,
    /// The SET ROLE user; its name is looked up only for an audit line.
    role: pg_sys::Oid,
}

impl Caller {
    /// Agent when the setting says so, or when the role (as of SET ROLE, so
    /// not the owner of a SECURITY DEFINER gate) or the session user really
    /// is a member of `secretgate_agent`. Superuser alone never makes an agent.
    pub fn current() -> Caller {
        let setting = CALLER.get();
        let (outer, session) = unsafe { (pg_sys::GetOuterUserId(), pg_sys::GetSessionUserId()) };
        let agent_role = unsafe { pg_sys::get_role_oid(c"secretgate_agent".as_ptr(), true) };
        let via_role = agent_role != pg_sys::InvalidOid
            && unsafe {
                pg_sys::is_member_of_role_nosuper(outer, agent_role)
                    || pg_sys::is_member_of_role_nosuper(session, agent_role)
            };
        Caller { agent: via_role || setting == CallerSetting::Agent, via_role, setting, role: outer }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let setting = match self.setting {
            CallerSetting::Unset => "unset",
            CallerSetting::Agent => "agent",
            CallerSetting::Operator => "operator",
            CallerSetting::Workspace => "workspace",
        };
        let role = unsafe {
            let name = pg_sys::GetUserNameFromId(self.role, true);
            if name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
            }
        };
        json!({ "agent": self.agent, "setting": setting, "agent_role_member": self.via_role, "role": role })
    }
}

/// What a write does to a secret row.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Insert,
    Update,
    Delete,
}

impl Write {
    fn event(self) -> &'static str {
        match self {
            Write::Insert | Write::Update => "secret.set.refused",
            Write::Delete => "secret.delete.refused",
        }
    }
}

/// A gate refusal about one secret, with its audit line.
fn secret_refusal(code: Code, reason: String, op: Write, scope: Scope, key: &str, caller: &Caller) -> Failure {
    let refusal = with_scope(Failure::refusal(code, reason), scope).with("key", key);
    audited(refusal, op.event(), caller)
}

fn with_scope(r: Refusal, scope: Scope) -> Refusal {
    match scope {
        Scope::Workspace(id) => r.with("workspace_id", id.hyphenated().to_string()),
        Scope::Global => r.with("scope", "global"),
    }
}

pub fn audited(refusal: Refusal, event: &str, caller: &Caller) -> Failure {
    refusal.audit(event, caller.to_json()).into()
}

/// The kind of a workspace: `None` when there is no such row. Read through
/// the primary key without SPI when the table allows it.
pub fn workspace_kind(attached: &Attached, id: Scope) -> Result<Option<String>> {
    let Scope::Workspace(id) = id else {
        return Ok(None);
    };
    if let Some(kind) = index_read::text_by_uuid_key(attached.workspaces_oid(), c"id", c"kind", id.as_bytes()) {
        return Ok(kind);
    }
    plans::connect_pinned(|client| {
        let table = plans::select(
            client,
            &format!("SELECT kind FROM {} WHERE id OPERATOR(pg_catalog.=) $1", attached.workspaces),
            Some(1),
            &[secrets::sql_uuid(Scope::Workspace(id)).into()],
        )?;
        Ok(if table.is_empty() { None } else { table.first().get_one::<String>()?.or(Some(String::new())) })
    })
}

/// An agent may not delete a platform workspace (which deletes the
/// concierge and, by cascade, its secrets), nor turn a workspace into or out
/// of a platform one (demote, write its secrets, promote back): SG101.
pub fn check_workspace_write(
    id: Scope,
    old_kind: Option<&str>,
    new_kind: Option<Option<&str>>,
    caller: &Caller,
) -> Result<()> {
    if !caller.agent {
        return Ok(());
    }
    let (event, reason) = match new_kind {
        None if old_kind == Some("platform") => (
            "workspace.delete.refused",
            "an agent caller may not delete a platform (concierge) workspace or its secrets",
        ),
        Some(new_kind) if new_kind != old_kind && (old_kind == Some("platform") || new_kind == Some("platform")) => (
            "workspace.kind.refused",
            "an agent caller may not change whether a workspace is a platform (concierge) workspace",
        ),
        _ => return Ok(()),
    };
    let refusal = with_scope(Failure::refusal(Code::ConciergeSelfWriteBlocked, reason), id);
    Err(audited(refusal, event, caller))
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

/// Called from the relcache callback (`tables::register_invalidation`).
pub(crate) fn forget_forbidden_keys(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    FORBIDDEN.with(|f| {
        let cached = f.take();
        let concerned = relid == pg_sys::InvalidOid || cached.as_ref().is_some_and(|c| c.table == relid);
        if !concerned {
            f.set(cached);
        }
    });
}

/// Why `key` may not be written, if it is a forbidden key name.
fn forbidden_reason(key: &str) -> Result<Option<String>> {
    let cached = FORBIDDEN.with(|f| {
        let cached = f.take();
        f.set(cached.clone());
        cached
    });
    let forbidden = match cached {
        Some(forbidden) => forbidden,
        None => {
            let forbidden = Rc::new(plans::connect_pinned(|client| -> Result<ForbiddenKeys> {
                let rows = plans::select(
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

/// Everything a secret write must pass before anything is written:
/// self-write (SG101/SG106), forbidden key names (SG105), MODEL values (SG107).
/// `value` is the plaintext being written, when known.
pub fn check_secret_write(
    attached: &Attached,
    op: Write,
    scope: Scope,
    key: &str,
    value: Option<&str>,
    caller: &Caller,
) -> Result<()> {
    if caller.agent {
        if let Scope::Workspace(_) = scope {
            match workspace_kind(attached, scope)?.as_deref() {
                // Its workspace is gone (a cascade from deleting it): nothing left to protect.
                None if op == Write::Delete => {}
                None => {
                    return Err(secret_refusal(
                        Code::WorkspaceKindUnknown,
                        "the target workspace does not exist or cannot be read, so an agent's write is refused".into(),
                        op,
                        scope,
                        key,
                        caller,
                    ))
                }
                Some("platform") => {
                    return Err(secret_refusal(
                        Code::ConciergeSelfWriteBlocked,
                        "an agent caller may not write the secrets of a platform (concierge) workspace".into(),
                        op,
                        scope,
                        key,
                        caller,
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if op == Write::Delete {
        return Ok(());
    }
    if let Some(reason) = forbidden_reason(key)? {
        return Err(secret_refusal(
            Code::ForbiddenSecretKey,
            format!("the key name {key} may not be written: {reason}"),
            op,
            scope,
            key,
            caller,
        ));
    }
    if let (MODEL, Some(value)) = (key, value) {
        let is_provider = plans::connect_pinned(|client| {
            plans::select(
                client,
                "SELECT 1 FROM secretgate.providers WHERE name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[value.into()],
            )
            .map(|rows| !rows.is_empty())
        })?;
        if is_provider {
            // The value is a provider name, not a secret: safe to name the provider.
            let refusal = with_scope(
                Failure::refusal(
                    Code::InvalidModelId,
                    "MODEL must be a model id (such as anthropic:claude-opus-4-7), not a provider name",
                ),
                scope,
            )
            .with("key", key)
            .with("provider", value);
            return Err(audited(refusal, op.event(), caller));
        }
    }
    Ok(())
}

/// Whether the workspace's MODEL is usable: a row, that decrypts, non-empty.
/// `Err` when it cannot be told (decrypt or keyring error). Locks the row
/// under REPEATABLE READ and SERIALIZABLE so a concurrent delete after this
/// transaction's snapshot is a serialization failure, not a stale "present".
pub fn model_usable(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
) -> Result<std::result::Result<bool, CoreError>> {
    // A read-only transaction (a hot standby) sets nothing online and cannot lock rows: it only reads.
    let lock =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 && !unsafe { pg_sys::XactReadOnly };
    let row = secrets::fetch_locked(client, attached, scope, MODEL, lock)?;
    Ok(match row {
        None => Ok(false),
        Some(row) => keyring::current().and_then(|k| secrets::open(&k, row, scope, MODEL)).map(|v| !v.is_empty()),
    })
}

/// The platform-identity invariant for one workspace, checked at commit:
/// a `kind='platform'` workspace that is `online` has a usable MODEL.
/// The workspace row is locked FOR SHARE, so a concurrent transaction that
/// sets it online waits for this one (or this one for it) and then sees
/// the other's committed state: no interleaving lets both commit.
pub fn check_platform_identity(
    client: &mut SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    caller: &Caller,
) -> Result<()> {
    let Scope::Workspace(id) = scope else {
        return Ok(());
    };
    let row = plans::update(
        client,
        &format!("SELECT kind, status FROM {} WHERE id OPERATOR(pg_catalog.=) $1 FOR SHARE", attached.workspaces),
        Some(1),
        &[secrets::sql_uuid(Scope::Workspace(id)).into()],
    )?;
    if row.is_empty() {
        return Ok(());
    }
    let (kind, status) = row.first().get_two::<String, String>()?;
    if kind.as_deref() != Some("platform") || status.as_deref() != Some("online") {
        return Ok(());
    }
    let reason = match model_usable(client, attached, scope)? {
        Ok(true) => return Ok(()),
        Ok(false) => "a platform workspace may not be online without a usable MODEL (missing or empty)".to_string(),
        Err(e) => format!(
            "a platform workspace may not be online without a usable MODEL; its MODEL cannot be read ({} {})",
            e.code().sqlstate(),
            e.code().word()
        ),
    };
    let refusal = with_scope(Failure::refusal(Code::PlatformAgentIdentityGate, reason), scope).with("key", MODEL);
    Err(audited(refusal, "workspace.online.refused", caller))
}

/// Reads the MODEL-or-other secret for the concierge helpers: value, unset,
/// or the error that must never be mistaken for either.
pub fn read_state(
    client: &SpiClient<'_>,
    attached: &Attached,
    scope: Scope,
    key: &str,
) -> Result<std::result::Result<Option<String>, CoreError>> {
    Ok(match secrets::fetch(client, attached, scope, key)? {
        None => Ok(None),
        Some(row) => keyring::current().and_then(|k| secrets::open(&k, row, scope, key)).map(Some),
    })
}

pub fn refusal_for_core(e: CoreError, scope: Scope, key: &str) -> Failure {
    core_refusal(e, Some(scope), Some(key)).into()
}
