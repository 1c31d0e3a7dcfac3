//! Liveness verdicts (`secretgate.liveness`): one per credential (scope and
//! key name) and provider, bound to the ciphertext it was given for.

use crate::pg::args::sql_uuid;
use crate::pg::error::Result;
use crate::pg::spi;
use pgrx::datum::DatumWithOid;
use pgrx::spi::SpiClient;
use secretgate_core::{Scope, Verdict};

/// Whether `secretgate.liveness` has its `provider` column: not until
/// `ALTER EXTENSION secretgate UPDATE` has run after the library was
/// upgraded; until then verdicts keep their old, per-credential meaning.
fn per_provider(client: &SpiClient<'_>) -> Result<bool> {
    let found = spi::select(
        client,
        "SELECT 1 FROM pg_catalog.pg_attribute \
         WHERE attrelid OPERATOR(pg_catalog.=) 'secretgate.liveness'::pg_catalog.regclass \
         AND attname OPERATOR(pg_catalog.=) 'provider' AND NOT attisdropped",
        Some(1),
        &[],
    )?;
    Ok(!found.is_empty())
}

// Not IS NOT DISTINCT FROM: it looks `=` up on the caller's search_path.
const VERDICT: &str = "SELECT verdict FROM secretgate.liveness \
     WHERE (workspace_id OPERATOR(pg_catalog.=) $1 OR (workspace_id IS NULL AND $1 IS NULL)) \
     AND key OPERATOR(pg_catalog.=) $2 AND ciphertext_sha256 OPERATOR(pg_catalog.=) $3";

/// The verdict on this ciphertext of the credential, for `provider`.
pub fn verdict(
    client: &SpiClient<'_>,
    scope: Scope,
    key: &str,
    provider: &str,
    digest: &[u8],
) -> Result<Option<Verdict>> {
    let mut args: Vec<DatumWithOid<'_>> = vec![sql_uuid(scope).into(), key.into(), digest.into()];
    let sql = if per_provider(client)? {
        args.push(provider.into());
        format!("{VERDICT} AND provider OPERATOR(pg_catalog.=) $4")
    } else {
        VERDICT.to_string()
    };
    let row = spi::select(client, &sql, Some(1), &args)?;
    let verdict = if row.is_empty() { None } else { row.first().get_one::<String>()? };
    Ok(match verdict.as_deref() {
        Some("dead") => Some(Verdict::Dead),
        Some("transient") => Some(Verdict::Transient),
        Some("ok") => Some(Verdict::Ok),
        _ => None,
    })
}

/// Stores a verdict for the credential's current ciphertext and provider
/// (`None` for a key name no provider accepts).
pub fn record(
    client: &mut SpiClient<'_>,
    scope: Scope,
    key: &str,
    provider: Option<&str>,
    digest: &[u8],
    verdict: Verdict,
    http_status: i32,
) -> Result<()> {
    let mut args: Vec<DatumWithOid<'_>> =
        vec![sql_uuid(scope).into(), key.into(), digest.into(), verdict.as_str().into(), http_status.into()];
    let sql = if per_provider(client)? {
        args.push(provider.into());
        "INSERT INTO secretgate.liveness (workspace_id, key, ciphertext_sha256, verdict, http_status, provider) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (workspace_id, key, provider) DO UPDATE SET ciphertext_sha256 = EXCLUDED.ciphertext_sha256, \
           verdict = EXCLUDED.verdict, http_status = EXCLUDED.http_status, checked_at = pg_catalog.now()"
    } else {
        "INSERT INTO secretgate.liveness (workspace_id, key, ciphertext_sha256, verdict, http_status) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workspace_id, key) DO UPDATE SET ciphertext_sha256 = EXCLUDED.ciphertext_sha256, \
           verdict = EXCLUDED.verdict, http_status = EXCLUDED.http_status, checked_at = pg_catalog.now()"
    };
    spi::update(client, sql, None, &args)?;
    Ok(())
}

/// Moves a credential's verdicts (every provider's) to its re-encrypted ciphertext.
pub fn carry(client: &mut SpiClient<'_>, scope: Scope, key: &str, old: &[u8], new: &[u8]) -> Result<()> {
    spi::update(
        client,
        "UPDATE secretgate.liveness SET ciphertext_sha256 = $4 \
         WHERE (workspace_id OPERATOR(pg_catalog.=) $1 OR (workspace_id IS NULL AND $1 IS NULL)) \
         AND key OPERATOR(pg_catalog.=) $2 AND ciphertext_sha256 OPERATOR(pg_catalog.=) $3",
        None,
        &[sql_uuid(scope).into(), key.into(), old.into(), new.into()],
    )?;
    Ok(())
}
