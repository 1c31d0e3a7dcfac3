//! The platform's tables that secretgate guards: validated and recorded by
//! `attach_gates`, looked up by every function that reads or writes secrets.

use crate::pg::error::{Failure, Result};
use crate::pg::spi;
use crate::pg::types::{self, Label};
use crate::store::trigger_ddl;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;
use std::cell::Cell;
use std::rc::Rc;

/// The attached tables, as fully qualified, quoted names safe to splice into SQL.
pub struct Attached {
    pub workspaces: String,
    pub secrets: String,
    pub global_secrets: String,
    /// Whether the workspaces table has a `model` column; without one a
    /// workspace's model is its `MODEL` secret.
    pub has_model: bool,
    oids: [pg_sys::Oid; 3],
}

impl Attached {
    pub fn workspaces_oid(&self) -> pg_sys::Oid {
        self.oids[0]
    }

    /// The secrets table and the global secrets table.
    pub fn secret_table_oids(&self) -> [pg_sys::Oid; 2] {
        [self.oids[1], self.oids[2]]
    }

    /// The three qualified names, workspaces first.
    pub fn names(&self) -> trigger_ddl::Tables<'_> {
        [&self.workspaces, &self.secrets, &self.global_secrets]
    }

    /// The model of workspace row `w` as SQL text: its column (through its
    /// type's output function, never a cast), or NULL when the model is the
    /// MODEL secret (read and decrypted by the caller).
    pub fn model_column(&self, w: &str) -> String {
        if self.has_model {
            format!("(CASE WHEN {w}.model IS NULL THEN NULL ELSE {} END)", types::label_sql(&format!("{w}.model")))
        } else {
            "NULL::pg_catalog.text".to_string()
        }
    }
}

thread_local! {
    /// The attached tables as this backend last read them. Every gate needs
    /// them, and the catalog lookup cost more than the gate itself. Dropped
    /// when Postgres invalidates one of the tables (attach and detach create
    /// and drop triggers on them; a rename or drop) or any schema.
    static CACHED: Cell<Option<Rc<Attached>>> = const { Cell::new(None) };
}

fn cached() -> Option<Rc<Attached>> {
    CACHED.with(|c| {
        let attached = c.take();
        c.set(attached.clone());
        attached
    })
}

/// Forgets the cached tables when one of them (or, with `InvalidOid`, any
/// relation) is invalidated; called from `store::invalidation`.
pub fn forget(relid: pg_sys::Oid) {
    CACHED.with(|c| {
        let attached = c.take();
        let concerned = relid == pg_sys::InvalidOid || attached.as_ref().is_some_and(|a| a.oids.contains(&relid));
        if !concerned {
            c.set(attached);
        }
    });
}

/// Forgets the cached tables (a schema was renamed: their names changed).
pub fn forget_all() {
    CACHED.with(|c| c.set(None));
}

/// The type a column must have.
#[derive(Clone, Copy)]
enum Want {
    /// Exactly this type, as `format_type` spells it.
    Exact(&'static str),
    /// `text`, `varchar` or a domain over them.
    Text,
    /// `text`, `varchar`, an enum, or a domain over one of them: the gates compare labels.
    Label,
}

impl Want {
    fn describe(self) -> &'static str {
        match self {
            Want::Exact(t) => t,
            Want::Text => "text, varchar or a domain over them",
            Want::Label => "text, varchar, an enum, or a domain over one of them",
        }
    }

    fn accepts(self, type_oid: pg_sys::Oid, spelled: &str) -> bool {
        match self {
            Want::Exact(t) => spelled == t,
            Want::Text => types::label(type_oid) == Some(Label::Text),
            Want::Label => types::label(type_oid).is_some(),
        }
    }
}

/// Columns secretgate relies on: name, type, whether it may be absent.
const WORKSPACE_COLUMNS: &[(&str, Want, bool)] = &[
    ("id", Want::Exact("uuid"), false),
    ("kind", Want::Label, false),
    ("status", Want::Label, false),
    ("runtime", Want::Text, false),
    // Without it, a workspace's model is its MODEL secret.
    ("model", Want::Text, true),
];
const SECRET_COLUMNS: &[(&str, Want, bool)] = &[
    ("workspace_id", Want::Exact("uuid"), false),
    ("key", Want::Exact("text"), false),
    ("encrypted_value", Want::Exact("bytea"), false),
    ("encryption_version", Want::Exact("integer"), false),
];
const GLOBAL_SECRET_COLUMNS: &[(&str, Want, bool)] = &[
    ("key", Want::Exact("text"), false),
    ("encrypted_value", Want::Exact("bytea"), false),
    ("encryption_version", Want::Exact("integer"), false),
];

/// One reason a table cannot be attached.
pub struct Problem {
    /// The table concerned (qualified), or empty for the call as a whole.
    pub table: String,
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(table: &str, code: PgSqlErrorCode, message: String) -> Problem {
        Problem { table: table.to_string(), code, message, hint: None }
    }

    fn hint(mut self, hint: &str) -> Problem {
        self.hint = Some(hint.to_string());
        self
    }

    fn into_failure(self) -> Failure {
        let failure = Failure::sql(self.code, self.message);
        match self.hint {
            Some(hint) => failure.hint(hint),
            None => failure,
        }
    }

    /// The SQLSTATE, as five characters.
    pub fn sqlstate(&self) -> String {
        let code = self.code as i32;
        (0..5).map(|i| char::from(b'0' + ((code >> (6 * i)) & 0x3f) as u8)).collect()
    }
}

const QUALIFIED: &str = "(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     WHERE c.oid OPERATOR(pg_catalog.=) {col})";

/// A table's qualified, quoted name, safe to splice into SQL.
pub fn qualified_name(client: &SpiClient<'_>, table: pg_sys::Oid) -> Result<String> {
    let row = spi::select(client, &format!("SELECT {}", QUALIFIED.replace("{col}", "$1")), Some(1), &[table.into()])?;
    row.first().get_one::<String>()?.ok_or_else(|| {
        Failure::sql(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("secretgate: relation with oid {table:?} does not exist"),
        )
    })
}

/// The attached tables: from this backend's cache, or read through SPI.
pub fn attached() -> Result<Rc<Attached>> {
    match cached() {
        Some(attached) => Ok(attached),
        None => spi::as_owner(load),
    }
}

fn load(client: &SpiClient<'_>) -> Result<Rc<Attached>> {
    let q = format!(
        "SELECT {}, {}, {}, workspaces::pg_catalog.oid, secrets::pg_catalog.oid, global_secrets::pg_catalog.oid, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) workspaces \
                     AND a.attname OPERATOR(pg_catalog.=) 'model' AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM secretgate.attached_tables",
        QUALIFIED.replace("{col}", "workspaces"),
        QUALIFIED.replace("{col}", "secrets"),
        QUALIFIED.replace("{col}", "global_secrets"),
    );
    let row = spi::select(client, &q, Some(1), &[])?;
    if row.is_empty() {
        return Err(not_attached());
    }
    let row = row.first();
    let oids = [row.get::<pg_sys::Oid>(4)?, row.get::<pg_sys::Oid>(5)?, row.get::<pg_sys::Oid>(6)?];
    let has_model = row.get::<bool>(7)?.unwrap_or(false);
    match (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?) {
        (Some(workspaces), Some(secrets), Some(global_secrets)) => {
            let oids = oids.map(Option::unwrap_or_default);
            let attached = Rc::new(Attached { workspaces, secrets, global_secrets, has_model, oids });
            CACHED.with(|c| c.set(Some(attached.clone())));
            Ok(attached)
        }
        _ => Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "secretgate: an attached table no longer exists",
        )
        .hint("call secretgate.detach_gates(), then secretgate.attach_gates(...) with the current tables")),
    }
}

fn not_attached() -> Failure {
    Failure::sql(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "secretgate: no tables are attached")
        .hint("call secretgate.attach_gates(workspaces, secrets, global_secrets) first (the migrations do)")
}

/// Everything that keeps these three tables from being attached by the
/// current role, without raising: column types, keys, ownership, and
/// another set of tables already attached. Empty when `attach` would succeed.
pub fn check(
    client: &SpiClient<'_>,
    workspaces: pg_sys::Oid,
    secrets: pg_sys::Oid,
    global: pg_sys::Oid,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    problems.extend(validate(client, workspaces, WORKSPACE_COLUMNS, &["id"])?);
    problems.extend(validate(client, secrets, SECRET_COLUMNS, &["key", "workspace_id"])?);
    problems.extend(validate(client, global, GLOBAL_SECRET_COLUMNS, &["key"])?);
    if let Some(p) = may_attach(client, [workspaces, secrets, global])? {
        problems.push(p);
    }
    let current = spi::select(
        client,
        "SELECT workspaces::oid, secrets::oid, global_secrets::oid FROM secretgate.attached_tables",
        Some(1),
        &[],
    )?;
    if !current.is_empty() {
        let row = current.first();
        let same = (row.get::<pg_sys::Oid>(1)?, row.get::<pg_sys::Oid>(2)?, row.get::<pg_sys::Oid>(3)?)
            == (Some(workspaces), Some(secrets), Some(global));
        if !same {
            problems.push(
                Problem::new(
                    "",
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "secretgate: other tables are already attached in this database (one set per database)".into(),
                )
                .hint("call secretgate.detach_gates() first"),
            );
        }
    }
    Ok(problems)
}

/// Superusers and the owner of all three tables (a member of the owning
/// role, as Postgres' own ownership checks) may attach and detach: 42501 otherwise.
fn may_attach(client: &SpiClient<'_>, tables: [pg_sys::Oid; 3]) -> Result<Option<Problem>> {
    let not_owned = spi::select(
        client,
        "SELECT pg_catalog.string_agg(c.oid::pg_catalog.regclass::pg_catalog.text, ', ' ORDER BY c.oid) \
           FROM pg_catalog.pg_class c \
          WHERE c.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]) AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')",
        Some(1),
        &[tables.to_vec().into()],
    )?
    .first()
    .get_one::<String>()?;
    Ok(not_owned.map(|tables| {
        Problem::new(
            "",
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("secretgate: only a superuser or the owner of all three tables may attach or detach the gates; the current role does not own {tables}"),
        )
        .hint("run it as the role that owns the tables (the role the migrations run as), or as a superuser")
    }))
}

/// Validates the three tables and records them; the same tables again is a no-op.
pub fn attach(
    client: &mut SpiClient<'_>,
    workspaces: pg_sys::Oid,
    secrets: pg_sys::Oid,
    global: pg_sys::Oid,
) -> Result<()> {
    // Ownership first: a role that may not attach learns nothing more.
    if let Some(p) = may_attach(client, [workspaces, secrets, global])? {
        return Err(p.into_failure());
    }
    if let Some(p) = check(client, workspaces, secrets, global)?.into_iter().next() {
        return Err(p.into_failure());
    }
    let current = spi::select(client, "SELECT 1 FROM secretgate.attached_tables", Some(1), &[])?;
    if !current.is_empty() {
        return Ok(()); // the same tables (check refused others)
    }
    // The record is the extension's: written as its owner (the caller owns the tables, not it).
    spi::as_owner_mut(|owner| {
        spi::update(
            owner,
            "INSERT INTO secretgate.attached_tables (workspaces, secrets, global_secrets) VALUES ($1::pg_catalog.oid, $2::pg_catalog.oid, $3::pg_catalog.oid)",
            None,
            &[workspaces.into(), secrets.into(), global.into()],
        )
        .map(drop)
    })?;
    let attached = attached()?;
    // The library may be newer than the extension's SQL (before ALTER
    // EXTENSION … UPDATE): the history triggers need the 0.5.0 function.
    let history = spi::select(
        client,
        "SELECT pg_catalog.to_regprocedure('secretgate.gate_history()') IS NOT NULL",
        Some(1),
        &[],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false);
    for statement in trigger_ddl::create_statements(attached.names(), attached.has_model) {
        if !history && statement.contains("secretgate.gate_history(") {
            continue;
        }
        client.update(&statement, None, &[])?;
    }
    Ok(())
}

/// Drops the gates' triggers and forgets the tables; a no-op when none are
/// attached. Works when an attached table no longer exists (its triggers
/// went with it). Allowed to a superuser, the extension's owner, the
/// database's owner, and the owner of every attached table that still
/// exists (42501 otherwise). Each table's triggers are dropped as that
/// table's owner, in a security-restricted operation.
pub fn detach(client: &mut SpiClient<'_>) -> Result<()> {
    let current = spi::select(
        client,
        "SELECT workspaces::pg_catalog.oid, secrets::pg_catalog.oid, global_secrets::pg_catalog.oid FROM secretgate.attached_tables",
        Some(1),
        &[],
    )?;
    if current.is_empty() {
        return Ok(());
    }
    let row = current.first();
    let oids = [row.get::<pg_sys::Oid>(1)?, row.get::<pg_sys::Oid>(2)?, row.get::<pg_sys::Oid>(3)?]
        .map(Option::unwrap_or_default);
    let mut names: [Option<String>; 3] = Default::default();
    for (name, oid) in names.iter_mut().zip(oids) {
        let found =
            spi::select(client, &format!("SELECT {}", QUALIFIED.replace("{col}", "$1")), Some(1), &[oid.into()])?;
        *name = found.first().get_one::<String>()?;
    }
    let existing: Vec<pg_sys::Oid> = oids.iter().zip(&names).filter(|(_, n)| n.is_some()).map(|(o, _)| *o).collect();
    if !may_detach(client, &existing)? {
        return Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "secretgate: only a superuser, the extension's owner, the database's owner or the owner of the attached tables may detach the gates",
        ));
    }
    let [w, s, g] = names.each_ref().map(|n| n.as_deref());
    for (table, statement) in trigger_ddl::drop_statements([w, s, g]) {
        spi::prevent_if_read_only(&statement);
        let owner = spi::table_owner(oids[table]).unwrap_or_default();
        spi::elevated(owner, || client.update(&statement, None, &[]).map(drop))?;
    }
    spi::as_owner_mut(|owner| spi::update(owner, "DELETE FROM secretgate.attached_tables", None, &[]).map(drop))?;
    forget_all();
    Ok(())
}

/// The constraints whose triggers on `tables` are deferred (deferrable and
/// initially deferred: the gates' commit-time checks, and any of the
/// platform's own), as a list for `SET CONSTRAINTS` (qualified, quoted);
/// `None` when there are none. Maintenance makes them immediate around its
/// writes: Postgres refuses to queue a deferred trigger event inside a
/// security-restricted operation, since it would fire later, outside it.
pub fn deferred_constraints(client: &SpiClient<'_>, tables: &[pg_sys::Oid]) -> Result<Option<String>> {
    let list = spi::select(
        client,
        "SELECT pg_catalog.string_agg(DISTINCT pg_catalog.format('%I.%I', n.nspname, con.conname), ', ') \
           FROM pg_catalog.pg_trigger t \
           JOIN pg_catalog.pg_constraint con ON con.oid OPERATOR(pg_catalog.=) t.tgconstraint \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) con.connamespace \
          WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]) AND t.tgdeferrable AND t.tginitdeferred",
        Some(1),
        &[tables.to_vec().into()],
    )?;
    Ok(list.first().get_one::<String>()?)
}

/// Whether the current role may detach: see [`detach`].
fn may_detach(client: &SpiClient<'_>, existing: &[pg_sys::Oid]) -> Result<bool> {
    let allowed = spi::select(
        client,
        "SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE') OR pg_catalog.pg_has_role(n.nspowner, 'USAGE') \
             OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]) \
                              AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')) \
           FROM pg_catalog.pg_database d, pg_catalog.pg_namespace n \
          WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() AND n.nspname OPERATOR(pg_catalog.=) 'secretgate'",
        Some(1),
        &[existing.to_vec().into()],
    )?;
    Ok(allowed.first().get_one::<bool>()?.unwrap_or(false))
}

/// An ordinary or partitioned table with the required columns (extra ones
/// are fine) and a plain unique index on exactly `unique_key`, which
/// `set_secret`'s upsert uses as its conflict target: every problem found.
fn validate(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    columns: &[(&str, Want, bool)],
    unique_key: &[&str],
) -> Result<Vec<Problem>> {
    let rel = spi::select(
        client,
        &format!(
            "SELECT {}, c.relkind::pg_catalog.text, c.relpersistence::pg_catalog.text FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            QUALIFIED.replace("{col}", "$1")
        ),
        Some(1),
        &[table.into()],
    )?;
    let (found, persistence) = if rel.is_empty() {
        ((None, None), None)
    } else {
        let rel = rel.first();
        (rel.get_two::<String, String>()?, rel.get::<String>(3)?)
    };
    let (name, relkind) = match found {
        (Some(name), Some(kind)) => (name, kind),
        _ => {
            return Ok(vec![Problem::new(
                "",
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("secretgate: relation with oid {table:?} does not exist"),
            )])
        }
    };
    if relkind != "r" && relkind != "p" {
        return Ok(vec![Problem::new(
            &name,
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("secretgate: {name} is not a table"),
        )]);
    }
    // A temporary table lives as long as its session: attached, it would leave
    // the database's one attachment pointing at nothing once the session ends.
    if persistence.as_deref() == Some("t") {
        return Ok(vec![Problem::new(
            &name,
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("secretgate: {name} is a temporary table; only permanent tables can be attached"),
        )
        .hint("attach ordinary tables of a permanent schema")]);
    }
    let mut problems = Vec::new();
    for (column, want, optional) in columns {
        let found = spi::select(
            client,
            "SELECT a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
               AND a.attnum > 0 AND NOT a.attisdropped",
            Some(1),
            &[table.into(), (*column).into()],
        )?;
        let found = if found.is_empty() { (None, None) } else { found.first().get_two::<pg_sys::Oid, String>()? };
        match found {
            (Some(type_oid), Some(got)) if !want.accepts(type_oid, &got) => problems.push(Problem::new(
                &name,
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("secretgate: column {name}.\"{column}\" is {got}; secretgate needs {}", want.describe()),
            )),
            (Some(_), Some(_)) => {}
            _ if *optional => {}
            _ => problems.push(Problem::new(
                &name,
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("secretgate: table {name} has no column \"{column}\" ({})", want.describe()),
            )),
        }
    }
    let has_key = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisunique AND i.indimmediate AND i.indisvalid \
                 AND i.indpred IS NULL AND i.indexprs IS NULL \
                 AND (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attname) FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
                        AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[])) \
                     OPERATOR(pg_catalog.=) $2::pg_catalog.text[])",
            Some(1),
            &[table.into(), unique_key.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if !has_key {
        problems.push(Problem::new(
            &name,
            PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE,
            format!("secretgate: table {name} needs a primary key or unique constraint on ({})", unique_key.join(", ")),
        ));
    }
    Ok(problems)
}
