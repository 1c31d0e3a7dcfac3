//! The platform's tables that secretgate guards: validated and recorded by
//! `attach_gates`, looked up by every function that reads or writes secrets.

use crate::pg::error::{Failure, Result};
use crate::pg::spi;
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
    oids: [pg_sys::Oid; 3],
}

impl Attached {
    pub fn workspaces_oid(&self) -> pg_sys::Oid {
        self.oids[0]
    }

    /// The three qualified names, workspaces first.
    pub fn names(&self) -> trigger_ddl::Tables<'_> {
        [&self.workspaces, &self.secrets, &self.global_secrets]
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

/// Columns secretgate relies on, with their types as `format_type` spells them.
const WORKSPACE_COLUMNS: &[(&str, &str)] =
    &[("id", "uuid"), ("kind", "text"), ("status", "text"), ("runtime", "text"), ("model", "text")];
const SECRET_COLUMNS: &[(&str, &str)] =
    &[("workspace_id", "uuid"), ("key", "text"), ("encrypted_value", "bytea"), ("encryption_version", "integer")];
const GLOBAL_SECRET_COLUMNS: &[(&str, &str)] =
    &[("key", "text"), ("encrypted_value", "bytea"), ("encryption_version", "integer")];

const QUALIFIED: &str = "(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     WHERE c.oid OPERATOR(pg_catalog.=) {col})";

/// The attached tables: from this backend's cache, or read through SPI.
pub fn attached() -> Result<Rc<Attached>> {
    match cached() {
        Some(attached) => Ok(attached),
        None => spi::as_owner(load),
    }
}

fn load(client: &SpiClient<'_>) -> Result<Rc<Attached>> {
    let q = format!(
        "SELECT {}, {}, {}, workspaces::pg_catalog.oid, secrets::pg_catalog.oid, global_secrets::pg_catalog.oid \
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
    match (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?) {
        (Some(workspaces), Some(secrets), Some(global_secrets)) => {
            let oids = oids.map(Option::unwrap_or_default);
            let attached = Rc::new(Attached { workspaces, secrets, global_secrets, oids });
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

/// Validates the three tables and records them; the same tables again is a no-op.
pub fn attach(
    client: &mut SpiClient<'_>,
    workspaces: pg_sys::Oid,
    secrets: pg_sys::Oid,
    global: pg_sys::Oid,
) -> Result<()> {
    validate(client, workspaces, WORKSPACE_COLUMNS, &["id"])?;
    validate(client, secrets, SECRET_COLUMNS, &["key", "workspace_id"])?;
    validate(client, global, GLOBAL_SECRET_COLUMNS, &["key"])?;

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
        return if same {
            Ok(())
        } else {
            Err(Failure::sql(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "secretgate: other tables are already attached in this database (one set per database)",
            )
            .hint("call secretgate.detach_gates() first"))
        };
    }
    spi::update(
        client,
        "INSERT INTO secretgate.attached_tables (workspaces, secrets, global_secrets) VALUES ($1::pg_catalog.oid, $2::pg_catalog.oid, $3::pg_catalog.oid)",
        None,
        &[workspaces.into(), secrets.into(), global.into()],
    )?;
    let attached = attached()?;
    for statement in trigger_ddl::create_statements(attached.names()) {
        client.update(&statement, None, &[])?;
    }
    Ok(())
}

/// Drops the gates' triggers and forgets the tables; a no-op when none are attached.
pub fn detach(client: &mut SpiClient<'_>) -> Result<()> {
    let current = spi::select(client, "SELECT 1 FROM secretgate.attached_tables", Some(1), &[])?;
    if current.is_empty() {
        return Ok(());
    }
    let attached = attached()?;
    for statement in trigger_ddl::drop_statements(attached.names()) {
        spi::prevent_if_read_only(&statement);
        client.update(&statement, None, &[])?;
    }
    spi::update(client, "DELETE FROM secretgate.attached_tables", None, &[])?;
    Ok(())
}

/// An ordinary or partitioned table with the required columns (extra ones
/// are fine) and a plain unique index on exactly `unique_key`, which
/// `set_secret`'s upsert uses as its conflict target.
fn validate(client: &SpiClient<'_>, table: pg_sys::Oid, columns: &[(&str, &str)], unique_key: &[&str]) -> Result<()> {
    let rel = spi::select(
        client,
        &format!(
            "SELECT {}, c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            QUALIFIED.replace("{col}", "$1")
        ),
        Some(1),
        &[table.into()],
    )?;
    let found = if rel.is_empty() { (None, None) } else { rel.first().get_two::<String, String>()? };
    let (name, relkind) = match found {
        (Some(name), Some(kind)) => (name, kind),
        _ => {
            return Err(Failure::sql(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("secretgate: relation with oid {table:?} does not exist"),
            ))
        }
    };
    if relkind != "r" && relkind != "p" {
        return Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("secretgate: {name} is not a table"),
        ));
    }
    for (column, want) in columns {
        let found = spi::select(
            client,
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
               AND a.attnum > 0 AND NOT a.attisdropped",
            Some(1),
            &[table.into(), (*column).into()],
        )?;
        let found = if found.is_empty() { None } else { found.first().get_one::<String>()? };
        match found {
            None => {
                return Err(Failure::sql(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("secretgate: table {name} has no column \"{column}\" ({want})"),
                ))
            }
            Some(got) if got != *want => {
                return Err(Failure::sql(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!("secretgate: column {name}.\"{column}\" is {got}; secretgate needs {want}"),
                ))
            }
            Some(_) => {}
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
        return Err(Failure::sql(
            PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE,
            format!("secretgate: table {name} needs a primary key or unique constraint on ({})", unique_key.join(", ")),
        ));
    }
    Ok(())
}
