//! SPI: statements planned once per backend and kept, and the elevated
//! context ([`elevated`]) every statement run with other rights than the
//! caller's runs in: as the extension's owner ([`as_owner`]), a table's owner
//! ([`table_owner`], for maintenance) or the audit writer role.
//!
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
use std::ffi::CStr;
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
    // SAFETY: reads the GUC variable's pointer; it is null or a C string.
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
    // SAFETY: reads a Postgres global flag.
    if unsafe { pg_sys::XactReadOnly } {
        let command = sql.split_whitespace().next().unwrap_or("a write").to_ascii_uppercase();
        let command = std::ffi::CString::new(command).unwrap_or_default();
        // SAFETY: a C string that outlives the call; the 25006 it raises
        // reaches Rust as a panic through pgrx's FFI guard.
        unsafe { pg_sys::PreventCommandIfReadOnly(command.as_ptr()) };
    }
}

/// The search_path every statement of the gates is planned under.
const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

thread_local! {
    /// The owner of the `secretgate` schema (the extension's owner), as last
    /// looked up; forgotten on any namespace change ([`forget_owner`]).
    static OWNER: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// Called from the namespace invalidation callback.
pub fn forget_owner() {
    OWNER.set(pg_sys::InvalidOid);
}

/// The owner of the `secretgate` schema: the role the gates read as (the
/// bootstrap superuser where there is no such schema: nothing of the
/// extension's is read then).
pub fn extension_owner() -> pg_sys::Oid {
    let cached = OWNER.get();
    if cached != pg_sys::InvalidOid {
        return cached;
    }
    // SAFETY: a syscache lookup of the schema by oid; the tuple is released
    // before return and its struct is read while it is held.
    let owner = unsafe {
        let schema = pg_sys::get_namespace_oid(c"secretgate".as_ptr(), true);
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as std::ffi::c_int,
            pg_sys::Datum::from(schema),
        );
        if tuple.is_null() {
            return pg_sys::BOOTSTRAP_SUPERUSERID.into();
        }
        let form = pg_sys::GETSTRUCT(tuple) as pg_sys::Form_pg_namespace;
        let owner = (*form).nspowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    };
    OWNER.set(owner);
    owner
}

/// `Spi::connect` as the extension's owner, in an elevated context
/// ([`elevated`]). The per-row secret gates run as the invoker, so that
/// applying SECURITY DEFINER's context on every row costs nothing: the reads
/// they make on a cold cache, or for a MODEL value, come through here, so
/// neither the writer's privileges nor its search_path bind their SQL.
pub fn as_owner<T, E>(f: impl FnOnce(&SpiClient<'_>) -> Result<T, E>) -> Result<T, E> {
    elevated(extension_owner(), || Spi::connect(f))
}

/// [`as_owner`] for work that writes (the record `attach_gates` keeps).
pub fn as_owner_mut<T, E>(f: impl FnOnce(&mut SpiClient<'_>) -> Result<T, E>) -> Result<T, E> {
    elevated(extension_owner(), || Spi::connect_mut(f))
}

/// [`as_owner_mut`] for point statements on the extension's own tables that
/// must find their rows through an index whatever the table's statistics say
/// (a plan made while a table was empty would scan it on every call as it
/// grows): sequential scans off while they are planned and run.
pub fn as_owner_mut_indexed<T, E>(f: impl FnOnce(&mut SpiClient<'_>) -> Result<T, E>) -> Result<T, E> {
    elevated_with(extension_owner(), &[(c"enable_seqscan", c"off")], || Spi::connect_mut(f))
}

/// The owner of relation `table`: the role maintenance acts as on it.
pub fn table_owner(table: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup of the relation by oid; the tuple is released
    // before return and its struct is read while it is held.
    unsafe {
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as std::ffi::c_int, pg_sys::Datum::from(table));
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::GETSTRUCT(tuple) as pg_sys::Form_pg_class;
        let owner = (*form).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// Marks the running code as a security-restricted operation (SET ROLE,
/// temporary objects, and the like are refused to anything it calls), for
/// the trigger functions that run SECURITY DEFINER; undone afterwards, or by
/// the (sub)transaction's abort on an error.
pub fn restricted<T>(f: impl FnOnce() -> T) -> T {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: reads the current user and security context and sets them
    // back with one more flag; restored below.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(user, context | pg_sys::SECURITY_RESTRICTED_OPERATION as i32);
    }
    let result = f();
    // SAFETY: the context saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    result
}

/// The context of every statement that runs with other rights than the
/// caller's: the role `role` (SECURITY_LOCAL_USERID_CHANGE, as ri_triggers.c
/// does), a security-restricted operation, `search_path` pinned to
/// `pg_catalog, pg_temp` and `row_security` off (a policy of someone else's
/// would otherwise run its expressions with these rights: the statement
/// fails with 42501 instead). All restored afterwards, or by the
/// (sub)transaction's abort on an error, as for a function's own `SET`.
pub fn elevated<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    elevated_with(role, &[], f)
}

/// [`elevated`], with more settings pinned for the statements `f` runs.
pub fn elevated_with<T>(role: pg_sys::Oid, settings: &[(&CStr, &CStr)], f: impl FnOnce() -> T) -> T {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: saves the current user and security context, switches to
    // `role`, and opens a GUC nest level for the pinned settings; both are
    // undone below, or by the transaction's abort on an error.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        let flags = pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION;
        pg_sys::SetUserIdAndSecContext(role, saved_context | flags as i32);
        let level = pg_sys::NewGUCNestLevel();
        let pinned = [(c"search_path", PINNED_SEARCH_PATH), (c"row_security", c"off")];
        for &(name, value) in pinned.iter().chain(settings) {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let result = f();
    // SAFETY: the nest level and the saved context are the ones opened above.
    unsafe {
        pg_sys::AtEOXact_GUC(true, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    result
}
