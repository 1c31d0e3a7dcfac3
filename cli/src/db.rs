//! One dedicated connection, and a URL that is safe to print.

use crate::Failure;
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
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Failure::usage(anyhow!("cannot connect to {}: {}", masked(url), scrub(url, e.to_string())))),
        Err(_) => Err(Failure::usage(anyhow!(
            "cannot connect to {}: no answer within {}s",
            masked(url),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}
