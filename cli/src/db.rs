//! One dedicated connection, and a URL that is safe to print; and the check,
//! on every connection, that the database's extension is this tool's version.

use crate::failure::Failure;
use anyhow::anyhow;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions;
use std::str::FromStr;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The URL with its password replaced by `***`; unparsable URLs are not shown at all.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // set_password fails only for URLs that cannot have one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable URL>".to_string(),
    }
}

/// Removes the URL's password from a message, in case a driver quoted it.
pub fn scrub(url: &str, message: String) -> String {
    match url::Url::parse(url).ok().and_then(|u| u.password().map(str::to_string)) {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message,
    }
}

/// Opens a single connection (never a pool: a session advisory lock must die with it).
pub async fn connect(url: &str, application_name: &str) -> Result<PgConnection, Failure> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Failure::usage(anyhow!(
            "invalid database URL {}: expected postgres://user:password@host:port/database",
            masked(url)
        )));
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Failure::usage(anyhow!("invalid database URL {}: {}", masked(url), scrub(url, e.to_string()))))?
        .application_name(application_name);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(mut conn)) => {
            warn_on_version_mismatch(&mut conn).await;
            Ok(conn)
        }
        Ok(Err(e)) => Err(Failure::usage(anyhow!("cannot connect to {}: {}", masked(url), scrub(url, e.to_string())))),
        Err(_) => Err(Failure::usage(anyhow!(
            "cannot connect to {}: no answer within {}s",
            masked(url),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// This tool's version: the workspace's, which is the extension's (released together).
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reads the installed extension's version and, when it differs from this
/// tool's, prints a one-line warning on stderr and carries on. Nothing is said
/// when they match or the extension is not installed (`migrate run` creates
/// it). A failure to read the catalog is not this check's business: the
/// command's own queries report it.
async fn warn_on_version_mismatch(conn: &mut PgConnection) {
    let installed: Option<String> =
        match sqlx::query_scalar("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'secretgate'")
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(v) => v,
            Err(_) => return,
        };
    if let Some(message) = installed.as_deref().and_then(|v| version_warning(v, TOOL_VERSION)) {
        eprintln!("{message}");
    }
}

/// The warning for extension version `installed` seen by tool version `tool`, or None when they match.
fn version_warning(installed: &str, tool: &str) -> Option<String> {
    if installed == tool {
        return None;
    }
    let advice = match (numeric(installed), numeric(tool)) {
        (Some(db), Some(ours)) if db > ours => format!("use secretgate {installed} with this database"),
        _ => "run ALTER EXTENSION secretgate UPDATE".to_string(),
    };
    Some(format!(
        "secretgate: warning: the database has extension secretgate {installed}, this tool is {tool}; {advice}"
    ))
}

/// `0.4.0` as [0, 4, 0]; None when a part is not a number (a pre-release, a dev build).
fn numeric(version: &str) -> Option<Vec<u64>> {
    version.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_warning_only_when_versions_differ() {
        assert_eq!(version_warning("0.4.0", "0.4.0"), None);
        assert_eq!(
            version_warning("0.3.0", "0.4.0").as_deref(),
            Some(
                "secretgate: warning: the database has extension secretgate 0.3.0, this tool is 0.4.0; \
                 run ALTER EXTENSION secretgate UPDATE"
            )
        );
        let newer = version_warning("0.10.0", "0.4.0").unwrap_or_default();
        assert!(newer.ends_with("use secretgate 0.10.0 with this database"), "{newer}");
        let odd = version_warning("0.4.0-dev", "0.4.0").unwrap_or_default();
        assert!(odd.ends_with("run ALTER EXTENSION secretgate UPDATE"), "{odd}");
    }
}
