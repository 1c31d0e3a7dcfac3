//! Databases: migrated or empty, connecting while the server recovers, and
//! statements with bind parameters.

use crate::cluster::Cluster;
use crate::errors::describe;
use crate::keys::random_hex;
use anyhow::{anyhow, bail, ensure, Context, Result};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

/// The project's migrations, embedded, for binaries that need a migrated database
/// without going through the command-line tool.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A fresh database with every project migration applied (tables, extension,
/// gates attached), using sqlx's own migrator.
pub async fn migrated_database(cluster: &Cluster, name: &str) -> Result<(String, PgConnection)> {
    let url = cluster.create_database(name);
    let mut conn = PgConnection::connect(&url).await.context("connect")?;
    MIGRATOR.run(&mut conn).await.map_err(|e| anyhow!("applying the migrations to {name}: {e}"))?;
    Ok((url, conn))
}

/// Connects to `url`, retrying for up to `limit` while the server is starting
/// up or recovering from a crash (any backend killed makes the postmaster
/// restart every session).
pub async fn connect_when_ready(url: &str, limit: Duration) -> Result<PgConnection> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("the server did not accept connections within {}s: {}", limit.as_secs(), describe(&e)),
        }
    }
}

/// Waits until `conn` is ended by the server: after a process is killed with
/// SIGKILL the postmaster ends every session, but not at once. A connection
/// made before it reacts would die with the others, so tests wait for an old
/// session to go before they reconnect with [`connect_when_ready`].
pub async fn wait_until_ended(mut conn: PgConnection, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while sqlx::query("SELECT 1").execute(&mut conn).await.is_ok() {
        ensure!(std::time::Instant::now() < deadline, "the other sessions survived a SIGKILL for {}s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A fresh database with nothing in it.
pub async fn empty_database(cluster: &Cluster, name: &str) -> Result<(String, PgConnection)> {
    let url = cluster.create_database(name);
    let conn = PgConnection::connect(&url).await.context("connect")?;
    Ok((url, conn))
}

/// A unique database name: `prefix_<hex>`.
pub fn db_name(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(4))
}

/// Migrates one throwaway database before a binary's parallel trials: the
/// first CREATE EXTENSION creates the cluster-wide role `secretgate_agent`,
/// and two of them racing in different databases can fail with 23505 on
/// pg_authid_rolname_index (the extension's IF NOT EXISTS check is not atomic).
pub fn migrate_once(cluster: &Arc<Cluster>) {
    let cluster = Arc::clone(cluster);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let (_url, conn) = migrated_database(&cluster, &db_name("warmup")).await?;
        conn.close().await?;
        anyhow::Ok(())
    })
    .unwrap_or_else(|e| panic!("warm-up migration: {e:#}"));
}

/// A bind parameter for [`execute_with`] (values are never printed).
#[derive(Clone)]
pub enum Arg {
    Id(uuid::Uuid),
    Text(String),
    Bytes(Vec<u8>),
}

/// Runs `sql` with `args` bound in order.
pub async fn execute_with(conn: &mut PgConnection, sql: &str, args: &[Arg]) -> std::result::Result<(), sqlx::Error> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Id(id) => q.bind(*id),
            Arg::Text(t) => q.bind(t.clone()),
            Arg::Bytes(b) => q.bind(b.clone()),
        };
    }
    q.execute(conn).await.map(|_| ())
}
