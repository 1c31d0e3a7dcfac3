//! The invariant stress test (issue 6 item 1): every invariant of CONTRACT §6
//! checked over what actually committed while many real sessions hammer the
//! gates at once.
//!
//! 16 worker sessions (5 members of `secretgate_agent`, 3 services that
//! `SET LOCAL secretgate.caller = 'agent'`, 5 superuser operators, 3
//! non-superuser operators), each on its own connection, run random
//! transactions (READ COMMITTED mostly, some REPEATABLE READ and
//! SERIALIZABLE) for `SECRETGATE_STRESS_SECS` seconds (default 20): create
//! platform, BYOK, platform-managed and external workspaces; set and delete
//! workspace and global secrets (through `set_secret` and by direct INSERT
//! of ciphertext encrypted here); register_workspace; online/offline; change
//! MODEL, model/runtime and kind; delete workspaces; record liveness
//! verdicts; the concierge helpers; agents' forbidden writes. Meanwhile a
//! rotator session runs `reencrypt` batches and the keyring gets a new
//! current version every few seconds (file rewritten, then reloaded), and a
//! sampler checks the platform invariant in consistent REPEATABLE READ
//! snapshots.
//!
//! The history comes from the test's own PL/pgSQL triggers
//! (`stress_audit.sql`): rows written inside the transaction they describe,
//! so they exist exactly for what committed. Afterwards the test checks:
//! * platform identity: the per-write history (kind/status, MODEL usability)
//!   replayed in commit-timestamp order never has a platform workspace online
//!   without a usable MODEL, after any commit; nor does any sampler snapshot
//!   or the final state;
//! * BYOK: no committed insert / going online / model change of a
//!   non-external workspace routed to a BYOK provider without a usable,
//!   not-dead credential, read at commit before and after the gates;
//! * self-write: no secret of a platform workspace written by an agent (kind
//!   read before and after the gate), no platform workspace deleted or
//!   re-kinded by an agent;
//! * forbidden keys and MODEL values: none stored;
//! * every secret decrypts (`verify_secrets`), and after draining the
//!   rotation every row is under the final key version.
//!
//! It fails on any violation, any SQLSTATE outside the expected refusals
//! (XX000 included), or when some kind of operation never committed (or a
//! forbidden one was never refused). The report goes to stdout.
//!
//! Replay: the seed is printed; `SECRETGATE_STRESS_SEED=<seed>` gives every
//! session the same stream of random choices again (the interleaving, and so
//! the outcomes, still differ from run to run).
//!
//! Sessions pick half their targets among the newest few workspaces (and
//! half their online/MODEL operations among concierges), so that they often
//! race on the same row: with the identity gate's row lock removed, the
//! replay caught the resulting write skew (online committed while a
//! concurrent transaction emptied the MODEL, repaired 16 ms later) in a
//! 30 s run; nothing else saw it.
//!
//! What the audit can miss, under READ COMMITTED: the BYOK and self-write
//! audits read "at that moment" twice, just before and just after the gate,
//! each with its own snapshot; a concurrent commit in between makes the two
//! disagree (reported as "ambiguous", not as a violation). So a gate that
//! wrongly passed at the very instant a concurrent transaction flipped the
//! answer back and forth between the two reads would go unseen; and a
//! commit-time self-check, like the gate it audits, cannot see write skew
//! (hence the replay). The identity replay orders transactions by commit
//! timestamp, taken just before a commit becomes visible: two transactions
//! committing in the same microsecond without waiting on each other could be
//! replayed in the wrong order (the gates make conflicting ones wait, which
//! orders them). TRUNCATE and moving a secret to another workspace are not
//! in the mix.

use anyhow::{anyhow, bail, Context, Result};
use secretgate_core::{Keyring, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("stress"));
    let trials = trials![&cluster;
        "invariants_hold_under_random_concurrent_load" => stress,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

const AUDIT_SQL: &str = include_str!("stress_audit.sql");

/// Refusals the contract expects under this load. 23503: a secret written
/// for a workspace another session just deleted.
const EXPECTED: &[&str] = &["SG101", "SG102", "SG103", "SG104", "SG105", "SG106", "SG107", "40001", "40P01", "23503"];

/// Kinds of operation that must commit at least once.
const MUST_COMMIT: &[&str] = &[
    "create_platform",
    "create_byok",
    "create_platform_managed",
    "create_external",
    "set_secret",
    "delete_secret",
    "set_global",
    "delete_global",
    "register",
    "go_online",
    "go_offline",
    "model_secret",
    "model_fields",
    "change_kind",
    "delete_workspace",
    "reencrypt",
    "record_liveness",
    "ensure_concierge",
    "rotation_batch",
];

/// Forbidden attempts: must be refused at least once, with these codes.
const MUST_REFUSE: &[(&str, &str)] = &[
    ("forbidden_key", "SG105"),
    ("model_is_provider", "SG107"),
    ("agent_platform_secret", "SG101"),
    ("agent_unknown_workspace", "SG106"),
    ("agent_delete_platform", "SG101"),
    ("agent_kind_change", "SG101"),
];

/// Forbidden attempts that nothing may ever let commit.
const NEVER_COMMIT: &[&str] = &["forbidden_key", "model_is_provider", "agent_unknown_workspace"];

// Model ids routed to BYOK providers, with the provider; platform-managed ones.
const BYOK_MODELS: &[(&str, &str)] = &[
    ("anthropic:claude-opus-4-7", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gpt-5", "openai"),
    ("openai:gpt-4.1", "openai"),
    ("gemini-2.5-pro", "gemini"),
    ("kimi-k2", "moonshot"),
];
const PLATFORM_MODELS: &[Option<&str>] =
    &[Some("platform:auto"), Some("platform:claude-opus"), Some("mystery-model-7"), None];
const PROVIDER_KEYS: &[(&str, &[&str])] = &[
    ("anthropic", &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]),
    ("openai", &["OPENAI_API_KEY"]),
    ("gemini", &["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
    ("moonshot", &["MOONSHOT_API_KEY", "KIMI_API_KEY"]),
];
const CREDENTIAL_KEYS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "MOONSHOT_API_KEY",
    "KIMI_API_KEY",
];
/// How many of the newest workspaces make the contended "hot" set.
const HOT_SET: usize = 4;
const RUNTIMES: &[Option<&str>] = &[None, None, Some("claude-code"), Some("codex")];
const PROVIDER_NAMES: &[&str] = &["platform", "anthropic", "openai", "minimax", "gemini"];

// ---------------------------------------------------------------------------
// Configuration and the seeded random stream

fn stress_secs() -> Result<u64> {
    match std::env::var("SECRETGATE_STRESS_SECS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| anyhow!("SECRETGATE_STRESS_SECS must be a whole number of seconds >= 1, got {v:?}")),
        Err(_) => Ok(20),
    }
}

fn stress_seed() -> Result<u64> {
    match std::env::var("SECRETGATE_STRESS_SEED") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow!("SECRETGATE_STRESS_SEED must be an unsigned 64-bit number, got {v:?}")),
        Err(_) => Ok(u64::from_le_bytes(random_bytes(8).try_into().expect("8 bytes"))),
    }
}

/// SplitMix64: small, seedable, plenty for picking operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------------------
// Sessions

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    /// A login role that is a member of secretgate_agent (an agent whatever it sets).
    MemberAgent,
    /// A non-member role whose service sets `secretgate.caller = 'agent'`.
    ServiceAgent,
    SuperOperator,
    /// A non-superuser, non-member role with table privileges.
    RoleOperator,
}

impl Who {
    fn is_agent(self) -> bool {
        matches!(self, Who::MemberAgent | Who::ServiceAgent)
    }

    /// `secretgate.caller` for one transaction; `None` leaves it unset.
    fn setting(self, rng: &mut Rng) -> Option<&'static str> {
        match self {
            Who::MemberAgent => rng.pick(&[None, Some("operator"), Some("agent"), Some("workspace")]),
            Who::ServiceAgent => Some("agent"),
            Who::SuperOperator => rng.pick(&[None, Some("operator")]),
            Who::RoleOperator => rng.pick(&[None, Some("operator"), Some("workspace")]),
        }
    }
}

const SESSIONS: &[Who] = &[
    Who::MemberAgent,
    Who::SuperOperator,
    Who::ServiceAgent,
    Who::RoleOperator,
    Who::MemberAgent,
    Who::SuperOperator,
    Who::MemberAgent,
    Who::SuperOperator,
    Who::ServiceAgent,
    Who::RoleOperator,
    Who::MemberAgent,
    Who::SuperOperator,
    Who::ServiceAgent,
    Who::RoleOperator,
    Who::MemberAgent,
    Who::SuperOperator,
];

/// What every session shares.
struct Ctx {
    cluster: Arc<Cluster>,
    started: Instant,
    deadline: Instant,
    /// Workspaces created so far (and not known deleted), with their last known kind.
    pool: Mutex<Vec<(Uuid, &'static str)>>,
    /// The keyring the file holds now, for direct writes encrypted here.
    keyring: RwLock<Arc<Keyring>>,
    /// Credential values and MODEL values (all remembered for the log leak check).
    values: Vec<String>,
    models: Vec<String>,
}

impl Ctx {
    fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().unwrap().clone()
    }

    fn value(&self, rng: &mut Rng) -> String {
        if rng.percent(8) {
            String::new()
        } else {
            self.values[rng.below(self.values.len())].clone()
        }
    }

    fn model_value(&self, rng: &mut Rng) -> String {
        if rng.percent(10) {
            String::new()
        } else {
            self.models[rng.below(self.models.len())].clone()
        }
    }

    /// A random known workspace, preferring `kind` when given. Half the time
    /// it comes from the newest few, so that sessions often race on the
    /// same workspace.
    fn pick_ws(&self, rng: &mut Rng, kind: Option<&str>) -> Option<(Uuid, &'static str)> {
        let pool = self.pool.lock().unwrap();
        let hot = rng.percent(50);
        let candidates: Vec<(Uuid, &'static str)> = match kind {
            Some(kind) if pool.iter().any(|(_, k)| *k == kind) => {
                pool.iter().filter(|(_, k)| *k == kind).copied().collect()
            }
            _ => pool.clone(),
        };
        if candidates.is_empty() {
            return None;
        }
        let from = if hot { candidates.len().saturating_sub(HOT_SET) } else { 0 };
        Some(candidates[from + rng.below(candidates.len() - from)])
    }
}

// ---------------------------------------------------------------------------
// Operations

/// A secret write: through `set_secret`, or a direct upsert of ciphertext
/// encrypted here under the current keyring (as an application may do).
#[derive(Clone)]
struct SecretWrite {
    ws: Option<Uuid>,
    key: &'static str,
    value: String,
    direct: bool,
}

enum Plan {
    Create {
        op: &'static str,
        ws: Uuid,
        kind: &'static str,
        status: &'static str,
        model: Option<&'static str>,
        runtime: Option<&'static str>,
        secrets: Vec<SecretWrite>,
    },
    Secret {
        op: &'static str,
        write: SecretWrite,
    },
    DeleteSecret {
        op: &'static str,
        ws: Option<Uuid>,
        key: &'static str,
    },
    Register {
        ws: Uuid,
    },
    Status {
        op: &'static str,
        ws: Uuid,
        status: &'static str,
    },
    ModelFields {
        ws: Uuid,
        model: Option<&'static str>,
        runtime: Option<&'static str>,
    },
    Kind {
        op: &'static str,
        ws: Uuid,
        kind: &'static str,
    },
    DeleteWorkspace {
        op: &'static str,
        ws: Uuid,
    },
    Reencrypt {
        batch: i32,
    },
    Liveness {
        ws: Option<Uuid>,
        key: &'static str,
        http: i32,
    },
    EnsureModel {
        ws: Uuid,
        default: String,
    },
    EnsureProvider {
        ws: Uuid,
    },
}

impl Plan {
    fn op(&self) -> &'static str {
        match self {
            Plan::Create { op, .. }
            | Plan::Secret { op, .. }
            | Plan::DeleteSecret { op, .. }
            | Plan::Status { op, .. } => op,
            Plan::Kind { op, .. } | Plan::DeleteWorkspace { op, .. } => op,
            Plan::Register { .. } => "register",
            Plan::ModelFields { .. } => "model_fields",
            Plan::Reencrypt { .. } => "reencrypt",
            Plan::Liveness { .. } => "record_liveness",
            Plan::EnsureModel { .. } | Plan::EnsureProvider { .. } => "ensure_concierge",
        }
    }

    fn ws(&self) -> Option<Uuid> {
        match self {
            Plan::Create { ws, .. }
            | Plan::Register { ws }
            | Plan::Status { ws, .. }
            | Plan::ModelFields { ws, .. }
            | Plan::Kind { ws, .. }
            | Plan::DeleteWorkspace { ws, .. }
            | Plan::EnsureModel { ws, .. }
            | Plan::EnsureProvider { ws } => Some(*ws),
            Plan::Secret { write, .. } => write.ws,
            Plan::DeleteSecret { ws, .. } | Plan::Liveness { ws, .. } => *ws,
            Plan::Reencrypt { .. } => None,
        }
    }
}

fn weights(who: Who, pool_len: usize) -> Vec<(&'static str, u32)> {
    let few = pool_len < 20;
    let many = pool_len > 150;
    let mut w = vec![
        ("create_platform", if few { 10 } else { 3 }),
        ("create_byok", if few { 10 } else { 4 }),
        ("create_platform_managed", if few { 10 } else { 3 }),
        ("create_external", 2),
        ("set_secret", 14),
        ("delete_secret", 5),
        ("set_global", 3),
        ("delete_global", 2),
        ("register", 6),
        ("go_online", 7),
        ("go_offline", 4),
        ("model_secret", 6),
        ("model_fields", 4),
        ("delete_workspace", if many { 10 } else { 2 }),
        ("ensure_concierge", 2),
        ("forbidden_key", 1),
        ("model_is_provider", 1),
    ];
    if who.is_agent() {
        w.extend([
            ("agent_platform_secret", 4),
            ("agent_unknown_workspace", 1),
            ("agent_delete_platform", 1),
            ("agent_kind_change", 1),
        ]);
    } else {
        w.push(("change_kind", 2));
    }
    // reencrypt and record_liveness are not granted to PUBLIC.
    if who == Who::SuperOperator {
        w.extend([("reencrypt", 2), ("record_liveness", 3)]);
    }
    w
}

fn secret_key(rng: &mut Rng) -> &'static str {
    match rng.below(20) {
        0..=8 => rng.pick(CREDENTIAL_KEYS),
        9..=12 => "MODEL",
        13..=15 => "LLM_PROVIDER",
        _ => "STRESS_TOKEN",
    }
}

fn provider_keys(provider: &str) -> &'static [&'static str] {
    PROVIDER_KEYS.iter().find(|(p, _)| *p == provider).map(|(_, k)| *k).unwrap_or(&[])
}

fn secret_value(ctx: &Ctx, rng: &mut Rng, key: &str) -> String {
    match key {
        "MODEL" => ctx.model_value(rng),
        "LLM_PROVIDER" => rng.pick(&["platform", "anthropic", "openai"]).to_string(),
        _ => ctx.value(rng),
    }
}

fn write_of(ctx: &Ctx, rng: &mut Rng, ws: Option<Uuid>, key: &'static str) -> SecretWrite {
    SecretWrite { ws, key, value: secret_value(ctx, rng, key), direct: rng.percent(40) }
}

fn choose(ctx: &Ctx, who: Who, rng: &mut Rng) -> Plan {
    let pool_len = ctx.pool.lock().unwrap().len();
    let table = weights(who, pool_len);
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut roll = (rng.next() % total as u64) as u32;
    let mut op = table[0].0;
    for (name, w) in &table {
        if roll < *w {
            op = name;
            break;
        }
        roll -= w;
    }
    build(ctx, who, rng, op)
}

fn build(ctx: &Ctx, who: Who, rng: &mut Rng, op: &'static str) -> Plan {
    let needs_ws = !matches!(
        op,
        "create_platform"
            | "create_byok"
            | "create_platform_managed"
            | "create_external"
            | "set_global"
            | "delete_global"
            | "reencrypt"
            | "forbidden_key"
            | "model_is_provider"
            | "agent_unknown_workspace"
    );
    let preferred = match op {
        "agent_platform_secret" | "agent_delete_platform" | "ensure_concierge" => Some("platform"),
        // Half the time, race the identity invariant on concierges.
        "go_online" | "register" | "model_secret" | "change_kind" if rng.percent(50) => Some("platform"),
        _ => None,
    };
    let picked = ctx.pick_ws(rng, preferred);
    let (ws, ws_kind) = match picked {
        Some(p) => p,
        None if needs_ws => return build(ctx, who, rng, "create_platform_managed"),
        None => (Uuid::nil(), "workspace"),
    };
    let status_on_create = |rng: &mut Rng| if rng.percent(50) { "online" } else { "provisioning" };
    match op {
        "create_platform" => {
            let new = Uuid::new_v4();
            let model = if rng.percent(75) { rng.pick(PLATFORM_MODELS) } else { Some(rng.pick(BYOK_MODELS).0) };
            let mut secrets = Vec::new();
            if rng.percent(80) {
                secrets.push(SecretWrite {
                    ws: Some(new),
                    key: "MODEL",
                    value: ctx.model_value(rng),
                    direct: rng.percent(40),
                });
            }
            if let Some(provider) = BYOK_MODELS.iter().find(|(m, _)| Some(*m) == model).map(|(_, p)| *p) {
                if rng.percent(60) {
                    let key = rng.pick(provider_keys(provider));
                    secrets.push(write_of(ctx, rng, Some(new), key));
                }
            }
            Plan::Create {
                op,
                ws: new,
                kind: "platform",
                status: status_on_create(rng),
                model,
                runtime: rng.pick(RUNTIMES),
                secrets,
            }
        }
        "create_byok" => {
            let new = Uuid::new_v4();
            let (model, provider) = rng.pick(BYOK_MODELS);
            let mut secrets = Vec::new();
            match rng.below(20) {
                // Its own provider's key (sometimes empty: not usable).
                0..=12 => {
                    let key = rng.pick(provider_keys(provider));
                    secrets.push(write_of(ctx, rng, Some(new), key));
                }
                // Another provider's key never counts.
                13..=15 => {
                    let other = rng.pick(CREDENTIAL_KEYS);
                    secrets.push(write_of(ctx, rng, Some(new), other));
                }
                // None: only a global credential can satisfy it.
                _ => {}
            }
            Plan::Create {
                op,
                ws: new,
                kind: "workspace",
                status: status_on_create(rng),
                model: Some(model),
                runtime: rng.pick(RUNTIMES),
                secrets,
            }
        }
        "create_platform_managed" => {
            let new = Uuid::new_v4();
            let mut secrets = Vec::new();
            if rng.percent(30) {
                secrets.push(write_of(ctx, rng, Some(new), "STRESS_TOKEN"));
            }
            Plan::Create {
                op,
                ws: new,
                kind: "workspace",
                status: status_on_create(rng),
                model: rng.pick(PLATFORM_MODELS),
                runtime: rng.pick(RUNTIMES),
                secrets,
            }
        }
        "create_external" => {
            let new = Uuid::new_v4();
            let model = if rng.percent(50) { Some(rng.pick(BYOK_MODELS).0) } else { rng.pick(PLATFORM_MODELS) };
            Plan::Create {
                op,
                ws: new,
                kind: "external",
                status: status_on_create(rng),
                model,
                runtime: rng.pick(RUNTIMES),
                secrets: Vec::new(),
            }
        }
        "set_secret" => {
            let key = secret_key(rng);
            Plan::Secret { op, write: write_of(ctx, rng, Some(ws), key) }
        }
        "delete_secret" => Plan::DeleteSecret { op, ws: Some(ws), key: secret_key(rng) },
        "set_global" => {
            let key = rng.pick(CREDENTIAL_KEYS);
            Plan::Secret { op, write: write_of(ctx, rng, None, key) }
        }
        "delete_global" => Plan::DeleteSecret { op, ws: None, key: rng.pick(CREDENTIAL_KEYS) },
        "register" => Plan::Register { ws },
        "go_online" => Plan::Status { op, ws, status: "online" },
        "go_offline" => Plan::Status { op, ws, status: rng.pick(&["offline", "offline", "failed", "provisioning"]) },
        "model_secret" => {
            if rng.percent(25) {
                Plan::DeleteSecret { op, ws: Some(ws), key: "MODEL" }
            } else {
                Plan::Secret {
                    op,
                    write: SecretWrite {
                        ws: Some(ws),
                        key: "MODEL",
                        value: ctx.model_value(rng),
                        direct: rng.percent(40),
                    },
                }
            }
        }
        "model_fields" => {
            let model = if rng.percent(60) { Some(rng.pick(BYOK_MODELS).0) } else { rng.pick(PLATFORM_MODELS) };
            Plan::ModelFields { ws, model, runtime: rng.pick(RUNTIMES) }
        }
        "change_kind" => {
            let kind = rng.pick(&["platform", "workspace", "external"]);
            Plan::Kind { op, ws, kind }
        }
        "delete_workspace" => Plan::DeleteWorkspace { op, ws },
        "reencrypt" => Plan::Reencrypt { batch: rng.pick(&[1, 5, 20, 50]) },
        "record_liveness" => {
            let scope = if rng.percent(70) { Some(ws) } else { None };
            Plan::Liveness {
                ws: scope,
                key: rng.pick(CREDENTIAL_KEYS),
                http: rng.pick(&[401, 403, 200, 200, 503, 429, 0]),
            }
        }
        "ensure_concierge" => {
            if rng.percent(50) {
                Plan::EnsureModel { ws, default: ctx.models[rng.below(ctx.models.len())].clone() }
            } else {
                Plan::EnsureProvider { ws }
            }
        }
        "forbidden_key" => {
            let scope = if rng.percent(70) { ctx.pick_ws(rng, None).map(|p| p.0) } else { None };
            Plan::Secret {
                op,
                write: SecretWrite {
                    ws: scope,
                    key: "MODEL_PROVIDER",
                    value: ctx.model_value(rng),
                    direct: rng.percent(40),
                },
            }
        }
        "model_is_provider" => {
            let scope = if rng.percent(70) {
                ctx.pick_ws(rng, Some(if who.is_agent() { "workspace" } else { "platform" })).map(|p| p.0)
            } else {
                None
            };
            Plan::Secret {
                op,
                write: SecretWrite {
                    ws: scope,
                    key: "MODEL",
                    value: rng.pick(PROVIDER_NAMES).to_string(),
                    direct: rng.percent(40),
                },
            }
        }
        "agent_platform_secret" => {
            let key = secret_key(rng);
            if rng.percent(30) {
                Plan::DeleteSecret { op, ws: Some(ws), key }
            } else {
                Plan::Secret { op, write: write_of(ctx, rng, Some(ws), key) }
            }
        }
        "agent_unknown_workspace" => {
            let key = secret_key(rng);
            Plan::Secret { op, write: write_of(ctx, rng, Some(Uuid::new_v4()), key) }
        }
        "agent_delete_platform" => Plan::DeleteWorkspace { op, ws },
        "agent_kind_change" => {
            let kind = if ws_kind == "platform" { rng.pick(&["workspace", "external"]) } else { "platform" };
            Plan::Kind { op, ws, kind }
        }
        other => unreachable!("unknown operation {other}"),
    }
}

/// Runs a plan's statements in the open transaction; returns a note on
/// what happened (never a value).
async fn execute(conn: &mut PgConnection, ctx: &Ctx, plan: &Plan) -> std::result::Result<String, sqlx::Error> {
    Ok(match plan {
        Plan::Create { ws, kind, status, model, runtime, secrets, .. } => {
            sqlx::query("INSERT INTO public.workspaces (id, kind, status, model, runtime) VALUES ($1, $2, $3, $4, $5)")
                .bind(ws)
                .bind(kind)
                .bind(status)
                .bind(model)
                .bind(runtime)
                .execute(&mut *conn)
                .await?;
            for w in secrets {
                write_secret(conn, ctx, w).await?;
            }
            format!("created {status}")
        }
        Plan::Secret { write, .. } => {
            write_secret(conn, ctx, write).await?;
            if write.value.is_empty() { "wrote empty" } else { "wrote" }.to_string()
        }
        Plan::DeleteSecret { ws, key, .. } => {
            let done = match ws {
                Some(ws) => {
                    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = $2")
                        .bind(ws)
                        .bind(key)
                        .execute(&mut *conn)
                        .await?
                }
                None => {
                    sqlx::query("DELETE FROM public.global_secrets WHERE key = $1")
                        .bind(key)
                        .execute(&mut *conn)
                        .await?
                }
            };
            rows_note(done.rows_affected())
        }
        Plan::Register { ws } => {
            let (status, code): (String, Option<String>) =
                sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)")
                    .bind(ws)
                    .fetch_one(&mut *conn)
                    .await?;
            match code {
                Some(code) => format!("{status} {code}"),
                None => status,
            }
        }
        Plan::Status { ws, status, .. } => {
            let done = sqlx::query("UPDATE public.workspaces SET status = $2 WHERE id = $1")
                .bind(ws)
                .bind(status)
                .execute(&mut *conn)
                .await?;
            rows_note(done.rows_affected())
        }
        Plan::ModelFields { ws, model, runtime } => {
            let done = sqlx::query("UPDATE public.workspaces SET model = $2, runtime = $3 WHERE id = $1")
                .bind(ws)
                .bind(model)
                .bind(runtime)
                .execute(&mut *conn)
                .await?;
            rows_note(done.rows_affected())
        }
        Plan::Kind { ws, kind, .. } => {
            let done = sqlx::query("UPDATE public.workspaces SET kind = $2 WHERE id = $1")
                .bind(ws)
                .bind(kind)
                .execute(&mut *conn)
                .await?;
            rows_note(done.rows_affected())
        }
        Plan::DeleteWorkspace { ws, .. } => {
            let done = sqlx::query("DELETE FROM public.workspaces WHERE id = $1").bind(ws).execute(&mut *conn).await?;
            rows_note(done.rows_affected())
        }
        Plan::Reencrypt { batch } => {
            let moved: i64 =
                sqlx::query_scalar("SELECT secretgate.reencrypt($1)").bind(batch).fetch_one(&mut *conn).await?;
            if moved > 0 { "moved rows" } else { "nothing to move" }.to_string()
        }
        Plan::Liveness { ws, key, http } => {
            // Only a stored credential can carry a verdict (else P0002, not a gate's business).
            let stored: bool =
                match ws {
                    Some(ws) => sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM public.workspace_secrets WHERE workspace_id = $1 AND key = $2)",
                    )
                    .bind(ws)
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?,
                    None => {
                        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM public.global_secrets WHERE key = $1)")
                            .bind(key)
                            .fetch_one(&mut *conn)
                            .await?
                    }
                };
            if !stored {
                return Ok("no credential".into());
            }
            let verdict: String = sqlx::query_scalar("SELECT secretgate.record_liveness($1, $2, $3)")
                .bind(ws)
                .bind(key)
                .bind(http)
                .fetch_one(&mut *conn)
                .await?;
            verdict
        }
        Plan::EnsureModel { ws, default } => {
            sqlx::query_scalar::<_, String>("SELECT secretgate.ensure_concierge_model($1, $2)")
                .bind(ws)
                .bind(default)
                .fetch_one(&mut *conn)
                .await?
        }
        Plan::EnsureProvider { ws } => {
            sqlx::query_scalar::<_, String>("SELECT secretgate.ensure_concierge_provider($1)")
                .bind(ws)
                .fetch_one(&mut *conn)
                .await?
        }
    })
}

fn rows_note(n: u64) -> String {
    if n == 0 { "0 rows" } else { "changed" }.to_string()
}

async fn write_secret(conn: &mut PgConnection, ctx: &Ctx, w: &SecretWrite) -> std::result::Result<(), sqlx::Error> {
    if !w.direct {
        match w.ws {
            Some(ws) => {
                sqlx::query("SELECT secretgate.set_secret($1, $2, $3)")
                    .bind(ws)
                    .bind(w.key)
                    .bind(&w.value)
                    .execute(&mut *conn)
                    .await?
            }
            None => {
                sqlx::query("SELECT secretgate.set_global_secret($1, $2)")
                    .bind(w.key)
                    .bind(&w.value)
                    .execute(&mut *conn)
                    .await?
            }
        };
        return Ok(());
    }
    let keyring = ctx.keyring();
    let scope = Scope::from_workspace(w.ws);
    let (version, blob) = keyring.encrypt(w.value.as_bytes(), scope, w.key).expect("core encrypt");
    match w.ws {
        Some(ws) => {
            sqlx::query(
                "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (workspace_id, key) DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version",
            )
            .bind(ws)
            .bind(w.key)
            .bind(blob)
            .bind(version)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO public.global_secrets (key, encrypted_value, encryption_version) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = EXCLUDED.encryption_version",
            )
            .bind(w.key)
            .bind(blob)
            .bind(version)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(())
}

// ---------------------------------------------------------------------------
// Counting

#[derive(Default, Clone)]
struct OpStats {
    attempts: u64,
    commits: u64,
    refused: BTreeMap<String, u64>,
    notes: BTreeMap<String, u64>,
}

/// One finished operation, for the history printed next to a violation.
#[derive(Clone)]
struct Event {
    at_ms: u128,
    session: usize,
    op: &'static str,
    ws: Option<Uuid>,
    outcome: String,
}

#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, OpStats>,
    events: Vec<Event>,
    unexpected: Vec<String>,
}

impl Tally {
    fn record(
        &mut self,
        session: usize,
        at_ms: u128,
        op: &'static str,
        ws: Option<Uuid>,
        outcome: std::result::Result<String, String>,
    ) {
        let stats = self.ops.entry(op).or_default();
        stats.attempts += 1;
        let text = match &outcome {
            Ok(note) => {
                stats.commits += 1;
                *stats.notes.entry(note.clone()).or_default() += 1;
                format!("committed ({note})")
            }
            Err(code) => {
                *stats.refused.entry(code.clone()).or_default() += 1;
                // record_liveness of a credential deleted since we looked: P0002, its documented answer.
                let allowed = EXPECTED.contains(&code.as_str()) || (op == "record_liveness" && code == "P0002");
                if !allowed {
                    self.unexpected.push(format!("session {session} {op} ws {ws:?} at {at_ms} ms: SQLSTATE {code}"));
                }
                format!("refused {code}")
            }
        };
        self.events.push(Event { at_ms, session, op, ws, outcome: text });
    }

    fn merge(&mut self, other: Tally) {
        for (op, s) in other.ops {
            let mine = self.ops.entry(op).or_default();
            mine.attempts += s.attempts;
            mine.commits += s.commits;
            for (k, v) in s.refused {
                *mine.refused.entry(k).or_default() += v;
            }
            for (k, v) in s.notes {
                *mine.notes.entry(k).or_default() += v;
            }
        }
        self.events.extend(other.events);
        self.unexpected.extend(other.unexpected);
    }
}

/// The SQLSTATE of a failed statement; anything else (a broken connection) is fatal.
fn code_of(e: &sqlx::Error, what: &str) -> Result<String> {
    match db_error(e) {
        Some(d) => Ok(d.sqlstate),
        None => bail!("{what}: non-database error: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The tasks

async fn connect(url: &str) -> Result<PgConnection> {
    let mut conn = PgConnection::connect(url).await.context("connect")?;
    // A stuck lock must show up as an error, not as a hang.
    sqlx::raw_sql("SET lock_timeout = '60s'; SET statement_timeout = '120s'")
        .execute(&mut conn)
        .await
        .described("session settings")?;
    Ok(conn)
}

async fn worker(ctx: Arc<Ctx>, index: usize, who: Who, url: String, seed: u64) -> Result<Tally> {
    let mut conn = connect(&url).await.with_context(|| format!("session {index} ({who:?})"))?;
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    while Instant::now() < ctx.deadline {
        let plan = choose(&ctx, who, &mut rng);
        let isolation = match rng.below(20) {
            0..=13 => "READ COMMITTED",
            14..=16 => "REPEATABLE READ",
            _ => "SERIALIZABLE",
        };
        let setting = who.setting(&mut rng);
        let run = async {
            sqlx::raw_sql(&format!("BEGIN ISOLATION LEVEL {isolation}")).execute(&mut conn).await.described("BEGIN")?;
            if let Some(s) = setting {
                sqlx::raw_sql(&format!("SET LOCAL secretgate.caller = '{s}'"))
                    .execute(&mut conn)
                    .await
                    .described("SET LOCAL")?;
            }
            let outcome = match execute(&mut conn, &ctx, &plan).await {
                Ok(note) => match sqlx::raw_sql("COMMIT").execute(&mut conn).await {
                    Ok(_) => Ok(note),
                    Err(e) => Err(code_of(&e, "COMMIT")?),
                },
                Err(e) => {
                    let code = code_of(&e, plan.op())?;
                    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.described("ROLLBACK")?;
                    Err(code)
                }
            };
            anyhow::Ok(outcome)
        };
        let outcome = tokio::time::timeout(Duration::from_secs(180), run).await.map_err(|_| {
            anyhow!("session {index} ({who:?}): {} on {:?} did not finish within 180 s", plan.op(), plan.ws())
        })??;
        if outcome.is_ok() {
            let mut pool = ctx.pool.lock().unwrap();
            match &plan {
                Plan::Create { ws, kind, .. } => pool.push((*ws, kind)),
                Plan::DeleteWorkspace { ws, .. } => pool.retain(|(id, _)| id != ws),
                Plan::Kind { ws, kind, .. } => {
                    for entry in pool.iter_mut().filter(|(id, _)| id == ws) {
                        entry.1 = kind;
                    }
                }
                _ => {}
            }
        }
        tally.record(index, ctx.started.elapsed().as_millis(), plan.op(), plan.ws(), outcome);
    }
    conn.close().await.ok();
    Ok(tally)
}

/// Reencrypt batches in autocommit, all the time (the `secretgate rotate` loop).
async fn rotator(ctx: Arc<Ctx>, url: String) -> Result<(Tally, i64)> {
    let mut conn = connect(&url).await.context("rotator")?;
    let mut tally = Tally::default();
    let mut moved_total = 0;
    while Instant::now() < ctx.deadline {
        let r: std::result::Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT secretgate.reencrypt(25)").fetch_one(&mut conn).await;
        let outcome = match r {
            Ok(moved) => {
                moved_total += moved;
                if moved == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(if moved > 0 { "moved rows" } else { "nothing to move" }.to_string())
            }
            Err(e) => Err(code_of(&e, "rotator reencrypt")?),
        };
        tally.record(SESSIONS.len(), ctx.started.elapsed().as_millis(), "rotation_batch", None, outcome);
    }
    conn.close().await.ok();
    Ok((tally, moved_total))
}

/// A new current key version every `every`, written to the keyring file and
/// reloaded; old versions stay. Returns the versions made current.
async fn keyring_changer(ctx: Arc<Ctx>, mut keys: TestKeys, every: Duration) -> Result<Vec<i32>> {
    let mut versions = Vec::new();
    loop {
        let wake = Instant::now() + every;
        if wake >= ctx.deadline {
            break;
        }
        tokio::time::sleep_until(wake.into()).await;
        let next = keys.current_version + 1;
        keys.add_version(next);
        for k in keys.encodings() {
            ctx.cluster.remember_secret(&k);
        }
        // File first: the server must know a version before anyone encrypts under it here.
        ctx.cluster.write_keyring(&keys.to_json(), 0o600);
        *ctx.keyring.write().unwrap() = Arc::new(keys.keyring());
        let cluster = Arc::clone(&ctx.cluster);
        tokio::task::spawn_blocking(move || cluster.reload()).await.context("reload")?;
        versions.push(next);
    }
    Ok(versions)
}

/// Consistent snapshots of committed state: no platform workspace online
/// without a usable MODEL. Returns (snapshots, violations seen).
async fn sampler(ctx: Arc<Ctx>, url: String) -> Result<(u64, Vec<(u128, Uuid)>)> {
    let mut conn = connect(&url).await.context("sampler")?;
    let (mut samples, mut bad) = (0, Vec::new());
    while Instant::now() < ctx.deadline {
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await
            .described("sampler BEGIN")?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT w.id FROM public.workspaces w WHERE w.kind = 'platform' AND w.status = 'online' AND NOT stress.model_usable(w.id)",
        )
        .fetch_all(&mut conn)
        .await
        .described("sampler query")?;
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.described("sampler COMMIT")?;
        samples += 1;
        let at = ctx.started.elapsed().as_millis();
        bad.extend(ids.into_iter().map(|id| (at, id)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.ok();
    Ok((samples, bad))
}

/// Every session, the rotator, the keyring changer and the sampler, at once,
/// until the deadline. `urls`: member agent, service agent, role operator, superuser.
async fn run_load(
    ctx: &Arc<Ctx>,
    seed: u64,
    urls: [String; 4],
    keys: TestKeys,
    every: Duration,
) -> (Result<Tally>, Result<(Tally, i64)>, Result<Vec<i32>>, Result<(u64, Vec<(u128, Uuid)>)>) {
    let mut master = Rng::new(seed);
    let mut workers = Vec::new();
    for (i, who) in SESSIONS.iter().copied().enumerate() {
        let url = match who {
            Who::MemberAgent => urls[0].clone(),
            Who::ServiceAgent => urls[1].clone(),
            Who::RoleOperator => urls[2].clone(),
            Who::SuperOperator => urls[3].clone(),
        };
        workers.push(tokio::task::spawn_local(worker(Arc::clone(ctx), i, who, url, master.next())));
    }
    let rot = tokio::task::spawn_local(rotator(Arc::clone(ctx), urls[3].clone()));
    let changer = tokio::task::spawn_local(keyring_changer(Arc::clone(ctx), keys, every));
    let samp = tokio::task::spawn_local(sampler(Arc::clone(ctx), urls[3].clone()));

    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match w.await {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => failures.push(format!("session {i}: {e:#}")),
            Err(e) => failures.push(format!("session {i} panicked: {e}")),
        }
    }
    let tally =
        if failures.is_empty() { Ok(tally) } else { Err(anyhow!("sessions failed:\n  {}", failures.join("\n  "))) };
    let rot = rot.await.map_err(|e| anyhow!("rotator panicked: {e}")).and_then(|r| r);
    let changer = changer.await.map_err(|e| anyhow!("keyring changer panicked: {e}")).and_then(|r| r);
    let samp = samp.await.map_err(|e| anyhow!("sampler panicked: {e}")).and_then(|r| r);
    (tally, rot, changer, samp)
}

// ---------------------------------------------------------------------------
// The trial

async fn stress(cluster: Arc<Cluster>) -> Result<()> {
    let secs = stress_secs()?;
    let seed = stress_seed()?;
    println!(
        "secretgate stress: seed {seed} (replay the choices with SECRETGATE_STRESS_SEED={seed}), {secs} s of load"
    );
    let wall = Instant::now();

    // Commit timestamps order the history replay.
    cluster.append_conf("track_commit_timestamp = on")?;
    cluster.restart("fast")?;

    let name = db_name("stress");
    let (url, mut control) = migrated_database(&cluster, &name).await?;
    let suffix = random_hex(4);
    let (agent, service, operator) =
        (format!("stress_agent_{suffix}"), format!("stress_service_{suffix}"), format!("stress_operator_{suffix}"));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {agent} LOGIN IN ROLE secretgate_agent;
         CREATE ROLE {service} LOGIN;
         CREATE ROLE {operator} LOGIN;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspaces, public.workspace_secrets, public.global_secrets TO {agent}, {service}, {operator};
         ALTER DATABASE {name} SET deadlock_timeout = '50ms';"
    ))
    .execute(&mut control)
    .await
    .described("roles")?;
    sqlx::raw_sql(AUDIT_SQL).execute(&mut control).await.described("the audit schema (stress_audit.sql)")?;

    let keys = cluster.initial_keys().clone();
    let values: Vec<String> = (0..40).map(|_| cluster.fresh_secret()).collect();
    let models: Vec<String> = (0..8)
        .map(|_| {
            let m = format!("anthropic:claude-stress-{}", random_hex(6));
            cluster.remember_secret(&m);
            m
        })
        .collect();
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        cluster: Arc::clone(&cluster),
        started,
        deadline: started + Duration::from_secs(secs),
        pool: Mutex::new(Vec::new()),
        keyring: RwLock::new(Arc::new(keys.keyring())),
        values,
        models,
    });

    // Tasks on a LocalSet: sqlx's futures are not `Send` for every lifetime.
    let local = tokio::task::LocalSet::new();
    let urls =
        [cluster.url_as(&agent, &name), cluster.url_as(&service, &name), cluster.url_as(&operator, &name), url.clone()];
    let every = Duration::from_secs((secs / 6).clamp(2, 30));
    let (tally, rot, changer, samp) = local.run_until(run_load(&ctx, seed, urls, keys, every)).await;
    let (rot_tally, rotated_rows) = rot?;
    let versions = changer?;
    let (samples, sampled_bad) = samp?;
    let mut tally = tally?;
    tally.merge(rot_tally);
    let load_secs = started.elapsed().as_secs_f64();

    // Drain the rotation under the final keyring, then check everything.
    let mut drained = 0i64;
    loop {
        match sqlx::query_scalar::<_, i64>("SELECT secretgate.reencrypt(1000)").fetch_one(&mut control).await {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) => bail!("draining the rotation: {}", describe(&e)),
        }
    }
    let checks = final_checks(&mut control).await?;
    let replay = replay_identity(&mut control).await?;

    // -------------------------------------------------------------------
    // The report
    let mut problems: Vec<String> = Vec::new();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n=== secretgate stress report: seed {seed}, {} sessions ({} member agents, {} service agents, {} superuser operators, {} role operators) + rotator + sampler, load {load_secs:.1} s",
        SESSIONS.len(),
        SESSIONS.iter().filter(|w| **w == Who::MemberAgent).count(),
        SESSIONS.iter().filter(|w| **w == Who::ServiceAgent).count(),
        SESSIONS.iter().filter(|w| **w == Who::SuperOperator).count(),
        SESSIONS.iter().filter(|w| **w == Who::RoleOperator).count(),
    );
    let _ = writeln!(
        report,
        "{:<26} {:>8} {:>8}  refusals by SQLSTATE | committed outcomes",
        "operation", "attempts", "commits"
    );
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let (mut attempts, mut commits) = (0, 0);
    for (op, s) in &tally.ops {
        attempts += s.attempts;
        commits += s.commits;
        for (code, n) in &s.refused {
            *totals.entry(code.clone()).or_default() += n;
        }
        let refused = s.refused.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(" ");
        let notes = s.notes.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(report, "{op:<26} {:>8} {:>8}  {refused} | {notes}", s.attempts, s.commits);
    }
    let _ = writeln!(
        report,
        "{:<26} {attempts:>8} {commits:>8}  {}",
        "TOTAL",
        totals.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        report,
        "keyring: {} new current versions during the load ({versions:?}); rotator moved {rotated_rows} rows, the final drain {drained}",
        versions.len()
    );
    let _ = writeln!(
        report,
        "sampler: {samples} consistent snapshots, {} platform-online-without-MODEL sightings",
        sampled_bad.len()
    );
    let _ = writeln!(report, "{}", checks.describe());
    let _ = writeln!(
        report,
        "identity replay: {} committed transactions replayed in commit-timestamp order, {} workspace states checked, {} violations",
        replay.transactions,
        replay.states_checked,
        replay.violations.len()
    );
    let _ = writeln!(
        report,
        "unexpected SQLSTATEs: {}",
        if tally.unexpected.is_empty() { "none".to_string() } else { tally.unexpected.len().to_string() }
    );
    for u in tally.unexpected.iter().take(20) {
        let _ = writeln!(report, "  {u}");
    }

    // Verdicts.
    if !tally.unexpected.is_empty() {
        problems.push(format!("{} operations failed with an unexpected SQLSTATE", tally.unexpected.len()));
    }
    for op in MUST_COMMIT {
        if tally.ops.get(op).map_or(0, |s| s.commits) == 0 {
            problems.push(format!("operation {op} never committed: the mix did not exercise it"));
        }
    }
    if rotated_rows == 0 {
        problems.push("the rotator never moved a row".into());
    }
    if versions.is_empty() {
        problems.push("the keyring never changed during the load".into());
    }
    for (op, code) in MUST_REFUSE {
        if tally.ops.get(op).and_then(|s| s.refused.get(*code)).copied().unwrap_or(0) == 0 {
            problems.push(format!("forbidden operation {op} was never refused with {code}"));
        }
    }
    for op in NEVER_COMMIT {
        let n = tally.ops.get(op).map_or(0, |s| s.commits);
        if n > 0 {
            problems.push(format!("forbidden operation {op} committed {n} times"));
        }
    }
    problems.extend(checks.problems());
    let mut suspects: Vec<Uuid> = checks.suspects.clone();
    if !sampled_bad.is_empty() {
        problems.push(format!(
            "{} sampler snapshots saw a platform workspace online without a usable MODEL",
            sampled_bad.len()
        ));
        suspects.extend(sampled_bad.iter().map(|(_, id)| *id));
    }
    if !replay.violations.is_empty() {
        problems.push(format!("{} identity violations in the replayed history", replay.violations.len()));
        suspects.extend(replay.violations.iter().map(|(_, id)| *id));
    }
    suspects.sort();
    suspects.dedup();
    for ws in suspects.iter().take(5) {
        let _ = writeln!(report, "{}", history_of(&mut control, &tally, *ws).await?);
    }
    let _ = writeln!(
        report,
        "violations: {}",
        if problems.is_empty() { "0".to_string() } else { problems.len().to_string() }
    );
    let _ = writeln!(report, "wall time (setup, load, drain, checks): {:.1} s", wall.elapsed().as_secs_f64());
    println!("{report}");
    control.close().await.ok();
    if !problems.is_empty() {
        bail!("seed {seed}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Checks over the committed state and the audit

#[derive(Default)]
struct Checks {
    final_platform_without_model: Vec<Uuid>,
    forbidden_keys_stored: i64,
    model_values_that_are_providers: i64,
    rows: i64,
    undecryptable: Vec<String>,
    not_current_version: i64,
    secret_writes: i64,
    agent_secret_writes: i64,
    agent_platform_writes: Vec<Uuid>,
    agent_platform_writes_ambiguous: i64,
    workspace_changes: i64,
    agent_platform_workspace_changes: Vec<Uuid>,
    byok_events: i64,
    byok_online_events: i64,
    byok_violations: Vec<Uuid>,
    byok_ambiguous: i64,
    byok_ext_mismatch: i64,
    byok_ext_mismatch_once: i64,
    identity_events: i64,
    identity_violations: Vec<Uuid>,
    identity_ambiguous: i64,
    suspects: Vec<Uuid>,
}

impl Checks {
    fn describe(&self) -> String {
        format!(
            "final state: {} secret rows, {} undecryptable (verify_secrets), {} not under the final key version after the drain; \
             {} platform workspaces online without a usable MODEL; {} forbidden key names stored; {} MODEL values that are provider names\n\
             self-write audit: {} secret writes recorded ({} by agents), {} agent writes to platform secrets, {} ambiguous (kind changed between the reads); \
             {} workspace deletions/kind updates, {} of platform workspaces by agents\n\
             commit audit: {} BYOK gate events ({} going online), {} without a usable live credential, {} ambiguous, byok_credential_present disagreed in {} (in both reads: {}); \
             {} platform-online checks, {} without a usable MODEL, {} ambiguous",
            self.rows,
            self.undecryptable.len(),
            self.not_current_version,
            self.final_platform_without_model.len(),
            self.forbidden_keys_stored,
            self.model_values_that_are_providers,
            self.secret_writes,
            self.agent_secret_writes,
            self.agent_platform_writes.len(),
            self.agent_platform_writes_ambiguous,
            self.workspace_changes,
            self.agent_platform_workspace_changes.len(),
            self.byok_events,
            self.byok_online_events,
            self.byok_violations.len(),
            self.byok_ambiguous,
            self.byok_ext_mismatch_once,
            self.byok_ext_mismatch,
            self.identity_events,
            self.identity_violations.len(),
            self.identity_ambiguous,
        )
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut add = |n: usize, what: &str| {
            if n > 0 {
                p.push(format!("{n} {what}"));
            }
        };
        add(self.final_platform_without_model.len(), "platform workspaces online without a usable MODEL at the end");
        add(self.forbidden_keys_stored as usize, "forbidden key names stored");
        add(self.model_values_that_are_providers as usize, "MODEL values equal to a provider name stored");
        add(self.undecryptable.len(), "secrets that do not decrypt (verify_secrets)");
        add(self.not_current_version as usize, "rows not under the final key version after draining the rotation");
        add(self.agent_platform_writes.len(), "secrets of platform workspaces written by agents");
        add(self.agent_platform_workspace_changes.len(), "platform workspaces deleted or re-kinded by agents");
        add(self.byok_violations.len(), "BYOK gate events committed without a usable live credential");
        add(
            self.byok_ext_mismatch as usize,
            "transactions where byok_credential_present disagreed with the re-implementation in both commit-time reads",
        );
        add(
            self.identity_violations.len(),
            "commits leaving a platform workspace online without a usable MODEL (commit audit)",
        );
        p
    }
}

async fn uuids(conn: &mut PgConnection, sql: &str) -> Result<Vec<Uuid>> {
    sqlx::query_scalar(sql).fetch_all(conn).await.described(sql)
}

async fn count(conn: &mut PgConnection, sql: &str) -> Result<i64> {
    sqlx::query_scalar(sql).fetch_one(conn).await.described(sql)
}

async fn final_checks(conn: &mut PgConnection) -> Result<Checks> {
    let mut c = Checks {
        final_platform_without_model: uuids(
            conn,
            "SELECT w.id FROM public.workspaces w WHERE w.kind = 'platform' AND w.status = 'online' \
             AND (NOT stress.model_usable(w.id) OR NOT secretgate.has_model_secret(w.id))",
        )
        .await?,
        ..Checks::default()
    };
    c.forbidden_keys_stored = count(
        conn,
        "SELECT count(*) FROM (SELECT key FROM public.workspace_secrets UNION ALL SELECT key FROM public.global_secrets) s \
         WHERE s.key IN (SELECT key FROM secretgate.forbidden_keys)",
    )
    .await?;
    // Compared inside the server: no value leaves it.
    c.model_values_that_are_providers = count(
        conn,
        "SELECT (SELECT count(*) FROM public.workspace_secrets s WHERE s.key = 'MODEL' \
                 AND secretgate.decrypt(s.encrypted_value, s.encryption_version, s.workspace_id, s.key) IN (SELECT name FROM secretgate.providers)) \
              + (SELECT count(*) FROM public.global_secrets g WHERE g.key = 'MODEL' \
                 AND secretgate.decrypt(g.encrypted_value, g.encryption_version, NULL, g.key) IN (SELECT name FROM secretgate.providers))",
    )
    .await?;
    let rows = sqlx::query("SELECT workspace_id, key, state, error_code FROM secretgate.verify_secrets()")
        .fetch_all(&mut *conn)
        .await
        .described("verify_secrets")?;
    c.rows = rows.len() as i64;
    for r in rows {
        let state: String = r.get("state");
        if state != "ok" {
            let ws: Option<Uuid> = r.get("workspace_id");
            let key: String = r.get("key");
            let code: Option<String> = r.get("error_code");
            c.undecryptable.push(format!("{ws:?} {key} {state} {code:?}"));
        }
    }
    c.not_current_version = count(
        conn,
        "SELECT (SELECT count(*) FROM public.workspace_secrets WHERE encryption_version <> secretgate.current_key_version()) \
              + (SELECT count(*) FROM public.global_secrets WHERE encryption_version <> secretgate.current_key_version())",
    )
    .await?;

    // Self-write: group the BEFORE and AFTER reads of one write.
    let row = sqlx::query(
        "WITH g AS (SELECT txid, workspace_id, key, bool_or(agent) AS agent, \
                           coalesce(bool_or(phase = 'before' AND kind = 'platform'), false) AS b, \
                           coalesce(bool_or(phase = 'after' AND kind = 'platform'), false) AS a \
                    FROM stress.secret_audit GROUP BY txid, workspace_id, key) \
         SELECT count(*) AS writes, count(*) FILTER (WHERE agent) AS agent_writes, \
                count(*) FILTER (WHERE agent AND a <> b) AS ambiguous FROM g",
    )
    .fetch_one(&mut *conn)
    .await
    .described("secret audit")?;
    c.secret_writes = row.get("writes");
    c.agent_secret_writes = row.get("agent_writes");
    c.agent_platform_writes_ambiguous = row.get("ambiguous");
    c.agent_platform_writes = uuids(
        conn,
        "SELECT workspace_id FROM stress.secret_audit GROUP BY txid, workspace_id, key \
         HAVING bool_or(agent) AND bool_or(phase = 'before' AND kind = 'platform') AND bool_or(phase = 'after' AND kind = 'platform')",
    )
    .await?;
    c.workspace_changes = count(conn, "SELECT count(*) FROM stress.workspace_audit").await?;
    c.agent_platform_workspace_changes = uuids(
        conn,
        "SELECT workspace_id FROM stress.workspace_audit WHERE agent AND \
         ((op = 'DELETE' AND old_kind = 'platform') \
          OR (op = 'UPDATE' AND old_kind IS DISTINCT FROM new_kind AND (old_kind = 'platform' OR new_kind = 'platform')))",
    )
    .await?;

    // Commit audit: the reads just before (a) and just after (z) the gates.
    let group = "WITH g AS (SELECT txid, workspace_id, \
                   bool_or(cred_alive IS NOT NULL) AS byok, \
                   bool_or(cred_alive IS NOT NULL AND (event LIKE '%online%' OR (event = 'insert' AND status = 'online'))) AS online, \
                   coalesce(bool_or(phase = 'a' AND NOT cred_alive), false) AS a_byok, \
                   coalesce(bool_or(phase = 'z' AND NOT cred_alive), false) AS z_byok, \
                   bool_or(model_usable IS NOT NULL) AS ident, \
                   coalesce(bool_or(phase = 'a' AND NOT model_usable), false) AS a_id, \
                   coalesce(bool_or(phase = 'z' AND NOT model_usable), false) AS z_id \
                 FROM stress.commit_audit GROUP BY txid, workspace_id)";
    let row = sqlx::query(&format!(
        "{group} SELECT count(*) FILTER (WHERE byok) AS byok, count(*) FILTER (WHERE online) AS online, \
                count(*) FILTER (WHERE byok AND a_byok <> z_byok) AS byok_amb, \
                count(*) FILTER (WHERE ident) AS ident, count(*) FILTER (WHERE ident AND a_id <> z_id) AS id_amb FROM g"
    ))
    .fetch_one(&mut *conn)
    .await
    .described("commit audit")?;
    c.byok_events = row.get("byok");
    c.byok_online_events = row.get("online");
    c.byok_ambiguous = row.get("byok_amb");
    c.identity_events = row.get("ident");
    c.identity_ambiguous = row.get("id_amb");
    c.byok_violations = uuids(conn, &format!("{group} SELECT workspace_id FROM g WHERE a_byok AND z_byok")).await?;
    c.identity_violations = uuids(conn, &format!("{group} SELECT workspace_id FROM g WHERE a_id AND z_id")).await?;
    // byok_credential_present reads through SPI, which under READ COMMITTED takes
    // a fresh snapshot per query once the transaction has written (pgrx passes
    // read_only = false): a commit landing meanwhile makes one read differ. A
    // real disagreement in the rule shows in both reads of a transaction.
    let row = sqlx::query(
        "WITH g AS (SELECT txid, workspace_id, \
                           coalesce(bool_or(phase = 'a' AND cred_present_ext IS DISTINCT FROM cred_usable), false) AS a, \
                           coalesce(bool_or(phase = 'z' AND cred_present_ext IS DISTINCT FROM cred_usable), false) AS z \
                    FROM stress.commit_audit WHERE cred_usable IS NOT NULL GROUP BY txid, workspace_id) \
         SELECT count(*) FILTER (WHERE a OR z) AS once, count(*) FILTER (WHERE a AND z) AS both FROM g",
    )
    .fetch_one(&mut *conn)
    .await
    .described("byok_credential_present cross-check")?;
    c.byok_ext_mismatch_once = row.get("once");
    c.byok_ext_mismatch = row.get("both");

    c.suspects = [
        &c.final_platform_without_model,
        &c.agent_platform_writes,
        &c.agent_platform_workspace_changes,
        &c.byok_violations,
        &c.identity_violations,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    Ok(c)
}

struct Replay {
    transactions: u64,
    states_checked: u64,
    /// (transaction id, workspace) after whose commit the invariant failed.
    violations: Vec<(i64, Uuid)>,
}

#[derive(Default, Clone)]
struct WsState {
    exists: bool,
    kind: String,
    status: String,
    model_usable: bool,
}

/// Replays the per-write history in commit order and checks the identity
/// invariant after every committed transaction, for each workspace it touched.
async fn replay_identity(conn: &mut PgConnection) -> Result<Replay> {
    let missing_ts =
        count(conn, "SELECT count(*) FROM stress.history WHERE pg_xact_commit_timestamp(xid(xid)) IS NULL").await?;
    if missing_ts > 0 {
        bail!("{missing_ts} history rows have no commit timestamp (is track_commit_timestamp on?)");
    }
    let rows = sqlx::query(
        "SELECT xid::text::bigint AS xid, workspace_id, what, kind, status, gone, model_usable FROM stress.history \
         ORDER BY pg_xact_commit_timestamp(xid(xid)), xid, seq",
    )
    .fetch_all(&mut *conn)
    .await
    .described("history")?;
    let mut state: HashMap<Uuid, WsState> = HashMap::new();
    let mut replay = Replay { transactions: 0, states_checked: 0, violations: Vec::new() };
    let mut touched: Vec<Uuid> = Vec::new();
    let mut current: Option<i64> = None;
    let check = |xid: i64, touched: &mut Vec<Uuid>, state: &HashMap<Uuid, WsState>, replay: &mut Replay| {
        touched.sort();
        touched.dedup();
        for ws in touched.drain(..) {
            replay.states_checked += 1;
            if let Some(s) = state.get(&ws) {
                if s.exists && s.kind == "platform" && s.status == "online" && !s.model_usable {
                    replay.violations.push((xid, ws));
                }
            }
        }
        replay.transactions += 1;
    };
    for r in rows {
        let xid: i64 = r.get("xid");
        if current.is_some_and(|c| c != xid) {
            check(current.unwrap(), &mut touched, &state, &mut replay);
        }
        current = Some(xid);
        let ws: Uuid = r.get("workspace_id");
        let what: String = r.get("what");
        let s = state.entry(ws).or_default();
        if what == "workspace" {
            let gone: bool = r.get("gone");
            s.exists = !gone;
            s.kind = r.get::<Option<String>, _>("kind").unwrap_or_default();
            s.status = r.get::<Option<String>, _>("status").unwrap_or_default();
            if gone {
                s.model_usable = false;
            }
        } else {
            s.model_usable = r.get::<Option<bool>, _>("model_usable").unwrap_or(false);
        }
        touched.push(ws);
    }
    if let Some(xid) = current {
        check(xid, &mut touched, &state, &mut replay);
    }
    Ok(replay)
}

/// Everything recorded about one workspace: the sessions' operations and the
/// audit rows, in order. Ids, kinds, statuses and SQLSTATEs only.
async fn history_of(conn: &mut PgConnection, tally: &Tally, ws: Uuid) -> Result<String> {
    let mut out = format!("--- history of workspace {ws}\n");
    let mut events: Vec<&Event> = tally.events.iter().filter(|e| e.ws == Some(ws)).collect();
    events.sort_by_key(|e| e.at_ms);
    for e in events {
        let _ = writeln!(out, "  {:>7} ms  session {:>2}  {:<24} {}", e.at_ms, e.session, e.op, e.outcome);
    }
    let rows = sqlx::query(
        "SELECT xid::text AS xid, pg_xact_commit_timestamp(xid(xid))::text AS ts, what, kind, status, gone, model_usable \
         FROM stress.history WHERE workspace_id = $1 ORDER BY pg_xact_commit_timestamp(xid(xid)), xid, seq",
    )
    .bind(ws)
    .fetch_all(&mut *conn)
    .await
    .described("history rows")?;
    for r in rows {
        let _ = writeln!(
            out,
            "  history xid {} at {}: {} kind={:?} status={:?} gone={} model_usable={:?}",
            r.get::<String, _>("xid"),
            r.get::<Option<String>, _>("ts").unwrap_or_default(),
            r.get::<String, _>("what"),
            r.get::<Option<String>, _>("kind"),
            r.get::<Option<String>, _>("status"),
            r.get::<bool, _>("gone"),
            r.get::<Option<bool>, _>("model_usable"),
        );
    }
    let rows = sqlx::query(
        "SELECT txid, phase, event, kind, status, provider, cred_usable, cred_alive, cred_present_ext, model_usable \
         FROM stress.commit_audit WHERE workspace_id = $1 ORDER BY id",
    )
    .bind(ws)
    .fetch_all(&mut *conn)
    .await
    .described("commit audit rows")?;
    for r in rows {
        let _ = writeln!(
            out,
            "  commit-audit txid {} {} {:?}: kind={:?} status={:?} provider={:?} usable={:?} alive={:?} ext={:?} model_usable={:?}",
            r.get::<i64, _>("txid"),
            r.get::<String, _>("phase"),
            r.get::<String, _>("event"),
            r.get::<Option<String>, _>("kind"),
            r.get::<Option<String>, _>("status"),
            r.get::<Option<String>, _>("provider"),
            r.get::<Option<bool>, _>("cred_usable"),
            r.get::<Option<bool>, _>("cred_alive"),
            r.get::<Option<bool>, _>("cred_present_ext"),
            r.get::<Option<bool>, _>("model_usable"),
        );
    }
    let rows = sqlx::query(
        "SELECT txid, phase, op, key, session_role::text AS session_role, caller_setting, agent, kind FROM stress.secret_audit \
         WHERE workspace_id = $1 ORDER BY id",
    )
    .bind(ws)
    .fetch_all(&mut *conn)
    .await
    .described("secret audit rows")?;
    for r in rows {
        let _ = writeln!(
            out,
            "  secret-audit txid {} {} {} {}: role={} setting={:?} agent={} kind={:?}",
            r.get::<i64, _>("txid"),
            r.get::<String, _>("phase"),
            r.get::<String, _>("op"),
            r.get::<Option<String>, _>("key").unwrap_or_default(),
            r.get::<String, _>("session_role"),
            r.get::<Option<String>, _>("caller_setting"),
            r.get::<bool, _>("agent"),
            r.get::<Option<String>, _>("kind"),
        );
    }
    Ok(out)
}
