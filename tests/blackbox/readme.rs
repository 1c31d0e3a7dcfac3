//! The README's getting started, run as written against this binary's
//! cluster. Its first block (as root: a keyring, the preload line, a restart)
//! names Debian's own cluster, so it is checked rather than run: its keyring
//! command runs with the path changed to this cluster's keyring, and the
//! settings it writes must be the ones this cluster runs with. Its second
//! block (as the `postgres` user: `createdb`, then a psql script) runs
//! unchanged in a shell, pointed at this cluster through libpq's `PGHOST`,
//! `PGPORT` and `PGUSER` as the README says; what it prints and leaves
//! behind is then checked: the secret encrypted and read back, an unset key
//! told from an error, the agent's write refused with SG101, and that
//! refusal in `secretgate.audit_events`.

use anyhow::{anyhow, bail, ensure, Context, Result};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The concierge the README's script creates.
const CONCIERGE: &str = "7b0e9d8a-0000-4000-8000-000000000001";

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("readme"));
    let trials = trials![&cluster; the_readme_getting_started_runs_as_written];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

fn readme() -> Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The fenced ```sh blocks of the README section headed `## {title}`, in order.
fn sh_blocks(readme: &str, title: &str) -> Result<Vec<String>> {
    let heading = format!("\n## {title}\n");
    let start = readme.find(&heading).ok_or_else(|| anyhow!("README.md has no section {title:?}"))? + heading.len();
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    Ok(section
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .map(|block| format!("{block}\n"))
        .collect())
}

/// The body of the here-document `<<'{tag}'` in `block`.
fn heredoc<'a>(block: &'a str, tag: &str) -> Result<&'a str> {
    let open = format!("<<'{tag}'\n");
    let start = block.find(&open).ok_or_else(|| anyhow!("no <<'{tag}' here-document in:\n{block}"))? + open.len();
    let end = block[start..].find(&format!("\n{tag}\n")).ok_or_else(|| anyhow!("<<'{tag}' is not closed"))?;
    Ok(&block[start..start + end])
}

/// The value of `name = '...'` among postgresql.conf lines.
fn setting<'a>(conf: &'a str, name: &str) -> Result<&'a str> {
    conf.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('\''))
        .ok_or_else(|| anyhow!("the README's configuration does not set {name}:\n{conf}"))
}

/// The first block: its keyring command, with the path changed, makes the
/// keyring this cluster then runs with, and its settings are the ones this
/// cluster was started with (the harness writes the same two lines).
async fn server_setup(cluster: &Cluster, block: &str) -> Result<()> {
    let conf = heredoc(block, "EOF")?;
    ensure!(setting(conf, "shared_preload_libraries")? == "secretgate", "the README preloads something else:\n{conf}");
    let keyring_file = setting(conf, "secretgate.keyring_file")?;
    let command = block
        .lines()
        .find(|line| line.contains("secretgate keyring new"))
        .ok_or_else(|| anyhow!("the README's first block makes no keyring:\n{block}"))?;
    let args: Vec<&str> = command.split_whitespace().skip_while(|word| *word != "secretgate").skip(1).collect();
    ensure!(
        args == ["keyring", "new", "--out", keyring_file],
        "the README's keyring command {command:?} does not write secretgate.keyring_file ({keyring_file})"
    );
    ensure!(
        block.contains(&format!("install -d -m 0700 -o postgres -g postgres {}\n", parent(keyring_file)?)),
        "the README does not make the keyring's directory, 0700, for the server's user:\n{block}"
    );

    let out = cluster.dir().join("readme-keyring.json");
    let run = run_cli(None, &["keyring", "new", "--out", path_str(&out)]).await?;
    ensure!(run.code == Some(0), "secretgate keyring new:\n{run}");
    let json = std::fs::read_to_string(&out).context("read the new keyring")?;
    for key in keyring_keys(&json)? {
        cluster.remember_secret(&key);
    }
    cluster.write_keyring(&json, 0o600);

    let mut conn = PgConnection::connect(&cluster.url("postgres")).await.context("connect")?;
    let (preload, file): (String, String) = sqlx::query_as(
        "SELECT current_setting('shared_preload_libraries'), current_setting('secretgate.keyring_file')",
    )
    .fetch_one(&mut conn)
    .await
    .described("the cluster's settings")?;
    ensure!(preload == "secretgate", "the test cluster does not preload secretgate ({preload:?}): is it installed?");
    ensure!(file == path_str(&cluster.keyring_path()), "the test cluster reads its keyring from {file}");
    Ok(())
}

fn parent(path: &str) -> Result<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir).ok_or_else(|| anyhow!("{path} has no directory"))
}

/// Every key of a keyring file, base64 as written (none may reach the log).
fn keyring_keys(json: &str) -> Result<Vec<String>> {
    let parsed: serde_json::Value = serde_json::from_str(json).context("the new keyring is not JSON")?;
    let keys = parsed.get("keys").and_then(|k| k.as_object()).ok_or_else(|| anyhow!("the new keyring has no keys"))?;
    Ok(keys
        .values()
        .filter_map(|entry| entry.as_str().or_else(|| entry.get("key").and_then(|k| k.as_str())))
        .map(str::to_string)
        .collect())
}

/// The second block, run unchanged by bash (stopping at a failed command)
/// as a shell pasted into would: libpq's variables name this cluster, and
/// the server's own `bin` comes first in PATH.
async fn run_block(cluster: &Cluster, block: &str) -> Result<(String, String)> {
    let path = format!("{}:{}", cluster.bin().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-e", "-o", "pipefail", "-c", block]).current_dir(cluster.dir()).env("PATH", path);
    for var in ["PGDATABASE", "PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGSSLMODE", "DATABASE_URL"] {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", "127.0.0.1").env("PGPORT", cluster.port().to_string()).env("PGUSER", "postgres");
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| anyhow!("the README's block did not finish within 120s"))?
        .context("run bash")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("the README's block failed ({}):\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

async fn the_readme_getting_started_runs_as_written(cluster: Arc<Cluster>) -> Result<()> {
    let readme = readme()?;
    let blocks = sh_blocks(&readme, "Getting started")?;
    ensure!(blocks.len() == 2, "Getting started should have two ```sh blocks (as root, then as postgres): {blocks:?}");
    server_setup(&cluster, &blocks[0]).await?;

    let (stdout, stderr) = run_block(&cluster, &blocks[1]).await?;
    let shown = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");

    // The database it made: the secret is stored encrypted under the keyring's
    // version 1, and reads back as what psql printed.
    let mut conn = PgConnection::connect(&cluster.url("demo")).await.context("connect to demo")?;
    let value: String = sqlx::query_scalar("SELECT secretgate.read_secret($1::uuid, 'ANTHROPIC_API_KEY')")
        .bind(CONCIERGE)
        .fetch_one(&mut conn)
        .await
        .described("read the README's secret back")?;
    cluster.remember_secret(&value);
    ensure!(value.starts_with("sk-ant-") && value.len() == 39, "the README's secret reads back in another shape");
    let (version, raw): (i32, bool) = sqlx::query_as(
        "SELECT encryption_version, position(convert_to($1, 'UTF8') in encrypted_value) > 0 FROM workspace_secrets",
    )
    .bind(&value)
    .fetch_one(&mut conn)
    .await
    .described("the stored row")?;
    ensure!(version == 1 && !raw, "the README's secret is not stored encrypted under key version 1 ({version})");

    // What it printed: the value read back, MODEL unset, and one error: SG101.
    ensure!(stdout.contains(&value), "psql did not print the value read back:\n{}", shown.replace(&value, "<value>"));
    let shown = shown.replace(&value, "<value>");
    ensure!(stdout.contains(" unset "), "try_read_secret of MODEL did not print 'unset':\n{shown}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR:")).collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("SG101: CONCIERGE_SELF_WRITE_BLOCKED:"),
        "the README's script should fail exactly once, with SG101:\n{shown}"
    );
    ensure!(!stderr.contains("WARNING:"), "the README's script warns:\n{shown}");

    // The agent's write changed nothing, and is in the audit trail.
    let after: String = sqlx::query_scalar("SELECT secretgate.read_secret($1::uuid, 'ANTHROPIC_API_KEY')")
        .bind(CONCIERGE)
        .fetch_one(&mut conn)
        .await
        .described("read the secret after the refusal")?;
    ensure!(after == value, "the refused write changed the secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audited: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM secretgate.audit_events \
              WHERE code = 'CONCIERGE_SELF_WRITE_BLOCKED' AND sqlstate = 'SG101' \
                AND workspace_id = $1::uuid AND key = 'ANTHROPIC_API_KEY'",
        )
        .bind(CONCIERGE)
        .fetch_one(&mut conn)
        .await
        .described("secretgate.audit_events")?;
        if audited == 1 {
            return Ok(());
        }
        ensure!(
            audited == 0 && std::time::Instant::now() < deadline,
            "secretgate.audit_events has {audited} row(s) of the refusal (expected 1 within 30s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
