//! Bring your own key: a workspace whose model routes to a provider that is
//! not the platform's needs a usable credential that provider accepts
//! (SG103), and not one every probe found dead (SG104). External agents are
//! exempt.

use super::{Refusal, EXTERNAL};
use crate::{Code, Scope, Verdict};

/// One row of `secretgate.providers`, as the BYOK rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub is_platform: bool,
    pub auth_env: Vec<String>,
}

/// A usable credential (a row that decrypts to a non-empty value) and the
/// last verdict on its current ciphertext for the provider in question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub scope: Scope,
    pub key: String,
    pub verdict: Option<Verdict>,
}

/// What the BYOK rule says about one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Whether a workspace is an external agent (exempt from BYOK): kind
/// `external`, or a runtime the DBA listed in `secretgate.external_runtimes`.
pub fn is_external(kind: Option<&str>, runtime_listed: bool) -> bool {
    kind == Some(EXTERNAL) || runtime_listed
}

/// Whether a workspace is outside the BYOK rule before any credential is
/// looked at: an external agent, or a provider that is the platform's or
/// cannot be derived.
pub fn byok_exempt(kind: Option<&str>, provider: Option<&Provider>) -> bool {
    kind == Some(EXTERNAL) || provider.is_none_or(|p| p.is_platform)
}

/// The BYOK rule for a workspace that is not exempt, given its usable credentials.
pub fn evaluate_byok(provider: &Provider, usable: &[Credential]) -> Byok {
    if usable.is_empty() {
        return Byok::Missing { provider: provider.name.clone() };
    }
    if usable.iter().all(|c| c.verdict == Some(Verdict::Dead)) {
        return Byok::Dead { provider: provider.name.clone() };
    }
    let transient = usable.iter().filter(|c| c.verdict == Some(Verdict::Transient)).map(|c| c.key.clone()).collect();
    Byok::Satisfied { transient }
}

impl Byok {
    /// The refusal for this outcome (SG103/SG104), `None` when it passes.
    pub fn refusal(&self, workspace: Scope) -> Option<Refusal> {
        let (code, provider, reason) = match self {
            Byok::Exempt | Byok::Satisfied { .. } => return None,
            Byok::Missing { provider } => (
                Code::MissingByokCredential,
                provider,
                format!("no usable credential that provider {provider} accepts, at workspace or global scope"),
            ),
            Byok::Dead { provider } => (
                Code::ByokCredentialInvalid,
                provider,
                format!(
                    "every usable credential for provider {provider} was refused by it (401/403) at the last probe"
                ),
            ),
        };
        let id = workspace.workspace_id().map(|id| id.hyphenated().to_string());
        Some(
            Refusal::new(code, reason)
                .with("workspace_id", id)
                .with("provider", provider.as_str())
                .audited("workspace.byok.refused"),
        )
    }

    /// Credentials allowed with a WARNING (their last probe got no answer).
    pub fn transient(&self) -> &[String] {
        match self {
            Byok::Satisfied { transient } => transient,
            _ => &[],
        }
    }
}
