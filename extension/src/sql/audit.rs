//! `secretgate.audit_status()`: the audit queue's health.

use crate::pg::audit_shmem;
use crate::pg::error::{self, Failure};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

#[pg_extern(volatile)]
fn audit_status() -> TableIterator<
    'static,
    (
        name!(queued, i64),
        name!(written, i64),
        name!(dropped, i64),
        name!(skipped, i64),
        name!(last_error, Option<String>),
        name!(queue_size, i32),
    ),
> {
    let status = error::raise_on(|| {
        audit_shmem::status()
            .ok_or_else(|| Failure::sql(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, error::NOT_PRELOADED))
    });
    TableIterator::once((
        status.queued,
        status.written,
        status.dropped,
        status.skipped,
        status.last_error,
        status.queue_size,
    ))
}
