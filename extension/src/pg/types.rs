//! Column types the gates read as labels: `text`, `varchar`, an enum, or a
//! domain over one of them. The gates compare labels, so each of these is
//! read as its text.

use pgrx::pg_sys::{self, Oid};
use pgrx::FromDatum;
use std::ffi::CStr;

/// How a label column's value is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Label {
    /// `text`, `varchar` or a domain over them: the datum is the text.
    Text,
    /// An enum (or a domain over one): its label, through the output function.
    Enum,
}

/// What kind of label type `type_oid` is, `None` when it is not one.
pub fn label(type_oid: Oid) -> Option<Label> {
    // The common case without a catalog lookup: the gates' hot path reads a text kind.
    if type_oid == pg_sys::TEXTOID || type_oid == pg_sys::VARCHAROID {
        return Some(Label::Text);
    }
    // SAFETY: catalog lookups by type oid; getBaseType returns the oid itself for a non-domain.
    unsafe {
        let base = pg_sys::getBaseType(type_oid);
        if base == pg_sys::TEXTOID || base == pg_sys::VARCHAROID {
            Some(Label::Text)
        } else if pg_sys::type_is_enum(base) {
            Some(Label::Enum)
        } else {
            None
        }
    }
}

/// The text of a label datum of type `type_oid` (not NULL).
/// # Safety
/// `datum` must be a valid, non-NULL datum of type `type_oid`.
pub unsafe fn label_text(datum: pg_sys::Datum, type_oid: Oid) -> Option<String> {
    match label(type_oid)? {
        // SAFETY: a text-like datum (the caller's contract).
        Label::Text => unsafe { String::from_datum(datum, false) },
        // SAFETY: the type's own output function on a valid datum of it gives a palloc'd C string.
        Label::Enum => unsafe {
            let mut output = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena);
            let text = pg_sys::OidOutputFunctionCall(output, datum);
            Some(CStr::from_ptr(text).to_string_lossy().into_owned())
        },
    }
}

/// A column of a trigger's row read as a label: `Ok(None)` for NULL, `Err`
/// when the row has no such column or it is not a label type. `new` picks
/// the new row of an UPDATE (otherwise the row the trigger fired for).
pub fn trigger_column(data: &pg_sys::TriggerData, new: bool, column: &str) -> Result<Option<String>, String> {
    // SAFETY: the trigger data Postgres passed is valid for the call; its
    // relation is open and its tuples belong to it.
    unsafe {
        let tuple = if new && !data.tg_newtuple.is_null() { data.tg_newtuple } else { data.tg_trigtuple };
        if tuple.is_null() {
            return Err("the trigger has no row".into());
        }
        let desc = (*data.tg_relation).rd_att;
        let Some(att) = super::compat::attributes(desc)
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == column.as_bytes())
        else {
            return Err(format!("no column {column}"));
        };
        let mut null = false;
        let datum = pg_sys::heap_getattr(tuple, att.attnum.into(), desc, &mut null);
        if null {
            return Ok(None);
        }
        label_text(datum, att.atttypid)
            .map(Some)
            .ok_or_else(|| format!("column {column} is not text, varchar or an enum"))
    }
}

/// Column `ordinal` (1-based) of the current row of an SPI result read as a
/// label, through its type's output function: never a cast, which the
/// type's owner may have replaced with a function of theirs (and the
/// statement may run with more rights than theirs). `Ok(None)` for NULL.
pub fn spi_label(table: &pgrx::spi::SpiTupleTable<'_>, ordinal: usize) -> crate::pg::error::Result<Option<String>> {
    let type_oid = table.column_type_oid(ordinal)?.value();
    let Some(datum) = table.get_datum_by_ordinal(ordinal)? else {
        return Ok(None);
    };
    // SAFETY: a non-NULL datum of the column's own type, from the live SPI result.
    unsafe { label_text(datum, type_oid) }.map(Some).ok_or_else(|| {
        crate::pg::error::Failure::sql(
            pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "secretgate: the attached table's column {} is not text, varchar or an enum",
                table.column_name(ordinal).unwrap_or_default()
            ),
        )
    })
}

/// SQL for the text of label column `column` (any label type) in a WHERE
/// clause: `format` calls the type's output function, not a cast.
pub fn label_sql(column: &str) -> String {
    format!("pg_catalog.format('%s', {column})")
}
