//! Statements planned once per backend and kept. Every gate and every read
//! runs the same few statements, and planning them on each call cost more
//! than the work itself. A plan is keyed by its text (which names the
//! attached tables, so a renamed table gives a new entry), its argument
//! types and the search_path; Postgres' plan cache revalidates a kept plan after DDL on anything
//! it uses, and rechecks privileges on every execution.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, Spi, SpiClient, SpiResult, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A bound on the cache: the extension has a few dozen statements per set of
/// attached tables; past this, something keeps renaming tables, so start over.
const MAX_PLANS: usize = 256;

/// One kept plan of a statement text: its argument types, whether it writes,
/// and the search_path in force when it was made (the gates run with a pinned
/// path and other functions with the caller's, and Postgres re-plans a kept
/// plan used under another path each time).
struct Variant {
    types: Vec<pg_sys::Oid>,
    mutating: bool,
    search_path: Vec<u8>,
    plan: Rc<OwnedPreparedStatement>,
}

impl Variant {
    fn matches(&self, args: &[DatumWithOid<'_>], mutating: bool, search_path: &[u8]) -> bool {
        self.mutating == mutating
            && self.search_path == search_path
            && self.types.len() == args.len()
            && self.types.iter().zip(args).all(|(t, a)| *t == a.oid())
    }
}

thread_local! {
    /// By statement text, looked up without allocating on every call.
    static PLANS: RefCell<HashMap<String, Vec<Variant>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, preparing it on first use. The `Rc` is cloned out
/// so no borrow is held while it runs (a trigger it fires may plan too).
fn plan(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
    mutating: bool,
) -> SpiResult<Rc<OwnedPreparedStatement>> {
    let path = search_path();
    let found = PLANS.with(|plans| {
        let plans = plans.borrow();
        let variant = plans.get(sql)?.iter().find(|v| v.matches(args, mutating, path));
        variant.map(|v| Rc::clone(&v.plan))
    });
    if let Some(plan) = found {
        return Ok(plan);
    }
    let search_path = path.to_vec();
    let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let pg_types: Vec<PgOid> = types.iter().map(|&oid| PgOid::from(oid)).collect();
    let prepared = if mutating { client.prepare_mut(sql, &pg_types)? } else { client.prepare(sql, &pg_types)? };
    let plan = Rc::new(prepared.keep());
    let variant = Variant { types, mutating, search_path, plan: Rc::clone(&plan) };
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        if plans.values().map(Vec::len).sum::<usize>() >= MAX_PLANS {
            plans.clear();
        }
        plans.entry(sql.to_owned()).or_default().push(variant);
    });
    Ok(plan)
}

/// The search_path setting as it stands (no copy).
fn search_path() -> &'static [u8] {
    let path = unsafe { pg_sys::namespace_search_path };
    if path.is_null() {
        return &[];
    }
    // SAFETY: the GUC's string lives until the setting changes; `plan` compares
    // or copies it before running anything that could change it.
    unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes()
}

/// `client.select` through a kept plan.
pub fn select<'conn>(
    client: &SpiClient<'conn>,
    sql: &str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> SpiResult<SpiTupleTable<'conn>> {
    let plan = plan(client, sql, args, false)?;
    client.select(&*plan, limit, args)
}

/// `client.update` (a statement that writes or locks) through a kept plan.
pub fn update<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> SpiResult<SpiTupleTable<'conn>> {
    prevent_if_read_only(sql);
    let plan = plan(client, sql, args, true)?;
    client.update(&*plan, limit, args)
}

/// Before a statement that writes or locks: in a read-only transaction (every
/// transaction on a hot standby) Postgres' own 25006 "cannot execute INSERT in
/// a read-only transaction". Without it pgrx's `update` first asks for a
/// transaction id, which a standby refuses with an internal error (XX000).
pub fn prevent_if_read_only(sql: &str) {
    if unsafe { pg_sys::XactReadOnly } {
        let command = sql.split_whitespace().next().unwrap_or("a write").to_ascii_uppercase();
        let command = std::ffi::CString::new(command).unwrap_or_default();
        unsafe { pg_sys::PreventCommandIfReadOnly(command.as_ptr()) };
    }
}

/// The search_path every statement of the gates is planned under.
const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// `Spi::connect` under the pinned search_path, restored afterwards (on an
/// error, by the (sub)transaction's abort, as for a function's own `SET`).
/// The per-row secret gates are SECURITY DEFINER without `SET search_path`:
/// applying it on every row was a fifth of their cost, and a row usually
/// runs no SQL at all. Every lookup they can make on a cold cache, or for a
/// MODEL value, comes through here, so a writer's path never binds their SQL.
pub fn connect_pinned<T, E>(f: impl FnOnce(&SpiClient<'_>) -> Result<T, E>) -> Result<T, E> {
    let nest_level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            PINNED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let result = Spi::connect(f);
    unsafe { pg_sys::AtEOXact_GUC(true, nest_level) };
    result
}
