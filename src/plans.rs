//! Statements planned once per backend and kept. Every gate and every read
//! runs the same few statements, and planning them on each call cost more
//! than the work itself. A plan is keyed by its text (which names the
//! attached tables, so a renamed table gives a new entry) and its argument
//! types; Postgres' plan cache revalidates a kept plan after DDL on anything
//! it uses, and rechecks privileges on every execution.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A bound on the cache: the extension has a few dozen statements per set of
/// attached tables; past this, something keeps renaming tables, so start over.
const MAX_PLANS: usize = 256;

/// Text, argument types, whether it writes, and the search_path in force:
/// the gates run with a pinned path and other functions with the caller's,
/// and Postgres re-plans a kept plan used under another path each time.
type Key = (String, Vec<pg_sys::Oid>, bool, Vec<u8>);

thread_local! {
    static PLANS: RefCell<HashMap<Key, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, preparing it on first use. The `Rc` is cloned out
/// so no borrow is held while it runs (a trigger it fires may plan too).
fn plan(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
    mutating: bool,
) -> SpiResult<Rc<OwnedPreparedStatement>> {
    let key: Key = (sql.to_owned(), args.iter().map(|a| a.oid()).collect(), mutating, search_path());
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let types: Vec<PgOid> = key.1.iter().map(|&oid| PgOid::from(oid)).collect();
    let prepared = if mutating { client.prepare_mut(sql, &types)? } else { client.prepare(sql, &types)? };
    let plan = Rc::new(prepared.keep());
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, Rc::clone(&plan));
    });
    Ok(plan)
}

fn search_path() -> Vec<u8> {
    let path = unsafe { pg_sys::namespace_search_path };
    if path.is_null() {
        return Vec::new();
    }
    unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes().to_vec()
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
