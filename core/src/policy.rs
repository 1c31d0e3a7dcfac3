//! The product's rules as decisions over facts: given who is writing, what
//! they write and what the database holds, allow or return the [`Refusal`].
//! No Postgres in here: the extension gathers the facts, asks, and raises.
//!
//! One module per rule; this one holds the words they share and re-exports
//! every decision, so callers name `policy::self_write`, never the module.

/// The key that names a workspace's model.
pub const MODEL: &str = "MODEL";
/// The concierge's provider pin.
pub const LLM_PROVIDER: &str = "LLM_PROVIDER";
/// The `kind` of the concierge's workspace, and the name of the platform provider.
pub const PLATFORM: &str = "platform";
/// The `kind` of an external agent (exempt from BYOK).
pub const EXTERNAL: &str = "external";

mod byok;
mod concierge;
mod identity;
mod key_names;
mod reads;
mod refusal;
mod registration;
mod routing;
mod self_write;
mod sqlstate;

pub use byok::{byok_exempt, evaluate_byok, is_external, Byok, Credential, Provider};
pub use concierge::{concierge_model_plan, concierge_provider_plan, Plan, Seed};
pub use identity::{platform_identity, truncate_secrets, ModelState};
pub use key_names::{checks_model_value, forbidden_key, model_value};
pub use reads::{audits_read, read_audit_line, three_state, ReadAudit};
pub use refusal::{recognise_refusal, Refusal};
pub use registration::{registration, registration_failed};
pub use routing::{route, Route};
pub use self_write::{needs_kind, self_write, workspace_write};
pub use sqlstate::{pack_sqlstate, unpack_sqlstate};

/// What a write does to a secret row (the self-write and key-name rules,
/// and the audit event a refusal of it is logged under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Insert,
    Update,
    Delete,
}

impl Write {
    pub fn event(self) -> &'static str {
        match self {
            Write::Insert | Write::Update => "secret.set.refused",
            Write::Delete => "secret.delete.refused",
        }
    }
}

#[cfg(test)]
mod tests;
