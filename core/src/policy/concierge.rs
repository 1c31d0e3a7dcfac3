//! The concierge helpers (`ensure_concierge_provider`,
//! `ensure_concierge_model`): what each seeds, respects or skips, decided
//! from what it read before anything is written; a read error fails closed.

use super::PLATFORM;
use crate::Error;

/// How a concierge helper seeds a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// Only when no row exists (a row written meanwhile stands).
    IfAbsent,
    /// Replace an existing (unusable: empty) row.
    ReplaceEmpty,
}

/// What a concierge helper does, decided before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    NotPlatform,
    Respected,
    /// A read failed: nothing is written, the reason is logged as a WARNING.
    FailClosed(String),
    Seed(Seed, String),
    SkippedByok,
}

impl Plan {
    /// The function's answer once the plan is carried out; `seeded` is
    /// whether a seed wrote a row (a row written meanwhile stands: respected).
    pub fn answer(&self, seeded: bool) -> &'static str {
        match self {
            Plan::NotPlatform => "not_platform",
            Plan::Respected => "respected",
            Plan::SkippedByok => "skipped_byok",
            Plan::FailClosed(_) => "fail_closed",
            Plan::Seed(..) if seeded => "seeded",
            Plan::Seed(..) => "respected",
        }
    }
}

fn describe(e: &Error) -> String {
    format!("{} {}: {e}", e.code().sqlstate(), e.code().word())
}

/// `ensure_concierge_provider`: respect a readable LLM_PROVIDER; seed
/// `platform` when there is none and MODEL is unset, empty or routes to a
/// platform provider (`routes_to_platform`, asked only then); skip for a
/// BYOK model; fail closed on any read error.
pub fn concierge_provider_plan<E>(
    platform: bool,
    provider: Result<Option<String>, Error>,
    model: impl FnOnce() -> Result<Option<String>, Error>,
    routes_to_platform: impl FnOnce(&str) -> Result<bool, E>,
) -> Result<Plan, E> {
    if !platform {
        return Ok(Plan::NotPlatform);
    }
    match provider {
        Err(e) => return Ok(Plan::FailClosed(describe(&e))),
        Ok(Some(_)) => return Ok(Plan::Respected),
        Ok(None) => {}
    }
    let model = match model() {
        Err(e) => return Ok(Plan::FailClosed(format!("MODEL cannot be read: {}", describe(&e)))),
        Ok(model) => model.unwrap_or_default(),
    };
    if model.is_empty() || routes_to_platform(&model)? {
        Ok(Plan::Seed(Seed::IfAbsent, PLATFORM.into()))
    } else {
        Ok(Plan::SkippedByok)
    }
}

/// `ensure_concierge_model`: respect a usable MODEL, replace an empty one,
/// seed the default when there is none, fail closed on a read error.
pub fn concierge_model_plan(platform: bool, model: Result<Option<String>, Error>, default_model: &str) -> Plan {
    if !platform {
        return Plan::NotPlatform;
    }
    match model {
        Err(e) => Plan::FailClosed(describe(&e)),
        Ok(Some(model)) if !model.is_empty() => Plan::Respected,
        Ok(Some(_)) => Plan::Seed(Seed::ReplaceEmpty, default_model.into()),
        Ok(None) => Plan::Seed(Seed::IfAbsent, default_model.into()),
    }
}
