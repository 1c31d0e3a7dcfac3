//! Who is writing, as the gates and the audit see it.

use crate::pg::gucs::{CallerSetting, CALLER};
use pgrx::prelude::*;
use serde_json::json;

/// Who is writing.
pub struct Caller {
    pub agent: bool,
    pub via_role: bool,
    pub setting: CallerSetting,
    /// The SET ROLE user; its name is looked up only for an audit line.
    role: pg_sys::Oid,
}

impl Caller {
    /// Agent when the setting says so, or when the role (as of SET ROLE) or
    /// the session user really is a member of `secretgate_agent`.
    /// Superuser alone never makes an agent.
    pub fn current() -> Caller {
        let setting = CALLER.get();
        // SAFETY: plain reads of the session's user ids and a catalog
        // lookup by name (missing_ok: InvalidOid when there is no such role).
        let (outer, session, agent_role) = unsafe {
            (
                pg_sys::GetOuterUserId(),
                pg_sys::GetSessionUserId(),
                pg_sys::get_role_oid(c"secretgate_agent".as_ptr(), true),
            )
        };
        let via_role = agent_role != pg_sys::InvalidOid
            // SAFETY: membership checks between existing role oids.
            && unsafe {
                pg_sys::is_member_of_role_nosuper(outer, agent_role)
                    || pg_sys::is_member_of_role_nosuper(session, agent_role)
            };
        Caller { agent: via_role || setting == CallerSetting::Agent, via_role, setting, role: outer }
    }

    /// The caller as an audit record names it.
    pub fn to_json(&self) -> serde_json::Value {
        let setting = match self.setting {
            CallerSetting::Unset => "unset",
            CallerSetting::Agent => "agent",
            CallerSetting::Operator => "operator",
            CallerSetting::Workspace => "workspace",
        };
        // SAFETY: GetUserNameFromId with noerr returns NULL or a palloc'd C string.
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
