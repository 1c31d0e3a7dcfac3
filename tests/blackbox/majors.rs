//! Black-box test of moving a secretgate database between PostgreSQL majors
//! (issue 14): a cluster holding secrets under two key versions, a liveness
//! verdict, the DBA's registry edits and the gates attached is
//! * upgraded in place with `pg_upgrade` from 15 and 16 to 17 and to 18
//!   (the extension installed for the new major first, `pg_upgrade --check`
//!   first), and
//! * dumped with 18's `pg_dump` from 15 and restored into 18.
//!
//! Afterwards every ciphertext is byte-for-byte the one stored before and
//! opens with the same keyring, the registry and verdict are kept,
//! `verify_secrets` is clean and every gate refuses as before, with its
//! SQLSTATE. A major that is not installed (scripts/setup.sh --pg N) makes
//! its trials ignored, with the reason printed; so does a SECRETGATE_PG_BIN
//! naming another major than the one moved to (the other passes of
//! scripts/test.sh). The extension must be installed in every major involved
//! (scripts/install.sh --pg N).

use anyhow::{ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments, Failed, Trial};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        cross_major("pg_upgrade_15_to_17_keeps_every_secret_verdict_edit_and_gate", 15, 17, Route::PgUpgrade),
        cross_major("pg_upgrade_16_to_17_keeps_every_secret_verdict_edit_and_gate", 16, 17, Route::PgUpgrade),
        cross_major("pg_upgrade_15_to_18_keeps_every_secret_verdict_edit_and_gate", 15, 18, Route::PgUpgrade),
        cross_major("pg_upgrade_16_to_18_keeps_every_secret_verdict_edit_and_gate", 16, 18, Route::PgUpgrade),
        cross_major("pg_dump_from_15_restored_into_18_keeps_every_secret_verdict_edit_and_gate", 15, 18, Route::Dump),
    ];
    libtest_mimic::run(&args, trials).exit()
}

#[derive(Clone, Copy, Debug)]
enum Route {
    PgUpgrade,
    Dump,
}

/// One trial from major `from` to major `to`; ignored (reason printed) when
/// either server is not installed.
fn cross_major(name: &str, from: u32, to: u32, route: Route) -> Trial {
    let (Some(old_bin), Some(new_bin)) = (pg_bin_of(from), pg_bin_of(to)) else {
        let missing: Vec<String> =
            [from, to].iter().filter(|m| pg_bin_of(**m).is_none()).map(|m| format!("PostgreSQL {m}")).collect();
        eprintln!("{name}: ignored, {} not installed (scripts/setup.sh --pg N)", missing.join(" and "));
        return Trial::test(name, || Ok(())).with_ignored_flag(true);
    };
    // scripts/test.sh runs the black-box tier once per major: these trials
    // run in the new major's pass (when every major holds this build).
    if let Some(under_test) = std::env::var_os("SECRETGATE_PG_BIN").filter(|d| !d.is_empty()) {
        let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
        if !same(Path::new(&under_test), &new_bin) {
            eprintln!("{name}: ignored, runs when SECRETGATE_PG_BIN is PostgreSQL {to}'s");
            return Trial::test(name, || Ok(())).with_ignored_flag(true);
        }
    }
    Trial::test(name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
        rt.block_on(move_between_majors(old_bin, new_bin, from, to, route)).map_err(|e| Failed::from(format!("{e:#}")))
    })
}

/// A kept version of a secret: (scope, key, number, key version, ciphertext, reason).
type KeptVersion = (Option<Uuid>, String, i32, Option<i32>, Option<Vec<u8>>, String);

/// What must survive the move (no Debug: it holds ciphertexts, which no message may show).
#[derive(PartialEq)]
struct Snapshot {
    /// (scope, key, version, ciphertext) of every row: the bytes themselves.
    ciphertexts: Vec<(Option<Uuid>, String, i32, Vec<u8>)>,
    /// md5 over every plaintext (never the plaintexts themselves in a message).
    plaintexts: String,
    registry: Vec<String>,
    /// Every kept version of a secret.
    history: Vec<KeptVersion>,
    verify: Vec<(String, Option<String>, i64)>,
    extension_version: String,
}

async fn snapshot(conn: &mut PgConnection) -> Result<Snapshot> {
    let ciphertexts = sqlx::query_as(
        "SELECT workspace_id, key, encryption_version, encrypted_value FROM public.workspace_secrets \
         UNION ALL SELECT NULL, key, encryption_version, encrypted_value FROM public.global_secrets ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .described("ciphertexts")?;
    let registry = sqlx::query_scalar(
        "SELECT format('%s|%s|%s|%s|%s|%s', name, is_platform, auth_env, base_url, auth_header, auth_scheme) FROM secretgate.providers \
         UNION ALL SELECT format('route %s|%s|%s', pattern, provider, runtime) FROM secretgate.model_routes \
         UNION ALL SELECT format('forbidden %s|%s', key, reason) FROM secretgate.forbidden_keys \
         UNION ALL SELECT format('verdict %s|%s|%s|%s', workspace_id, key, verdict, encode(ciphertext_sha256, 'hex')) FROM secretgate.liveness \
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .described("registry")?;
    let history = sqlx::query_as(
        "SELECT workspace_id, key, version, encryption_version, encrypted_value, reason FROM secretgate.secret_history \
         ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await
    .described("kept versions")?;
    let extension_version = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'secretgate'")
        .fetch_one(&mut *conn)
        .await
        .described("extension version")?;
    Ok(Snapshot {
        ciphertexts,
        plaintexts: checksum(conn).await?,
        registry,
        history,
        verify: verify_states(conn).await?,
        extension_version,
    })
}

/// The fixture: what a database holds before the move.
struct Fixture {
    platform: Uuid,
    byok: Uuid,
}

/// Secrets under key versions 1 and 2 (workspace and global), an online
/// platform workspace with its MODEL, a BYOK workspace whose key is recorded
/// dead, and the DBA's registry edits.
async fn populate(cluster: &Cluster, conn: &mut PgConnection) -> Result<Fixture> {
    let model = format!("anthropic:claude-opus-4-7-{}", random_hex(3));

    // Key version 1 current: the first secrets are written under it.
    let mut v1 = cluster.initial_keys().clone();
    v1.current_version = 1;
    cluster.write_keyring(&v1.to_json(), 0o600);
    let version: i32 =
        sqlx::query_scalar("SELECT secretgate.current_key_version()").fetch_one(&mut *conn).await.described("v1")?;
    ensure!(version == 1, "the keyring with version 1 current was not picked up (current {version})");
    // A BYOK workspace and its key, in one transaction (the gate checks at commit).
    let mut tx = conn.begin().await?;
    let byok: Uuid = sqlx::query_scalar(
        "INSERT INTO public.workspaces (kind, model) VALUES ('workspace', 'anthropic:claude-opus-4-7') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .described("byok")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(byok)
        .bind(cluster.fresh_secret())
        .execute(&mut *tx)
        .await
        .described("BYOK key under version 1")?;
    tx.commit().await.described("commit the BYOK workspace")?;
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)")
        .bind(cluster.fresh_secret())
        .execute(&mut *conn)
        .await
        .described("global under version 1")?;

    // Back to the baseline keyring (version 2 current) for the rest.
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
    let version: i32 =
        sqlx::query_scalar("SELECT secretgate.current_key_version()").fetch_one(&mut *conn).await.described("v2")?;
    ensure!(version == 2, "the baseline keyring was not picked up (current {version})");
    // An online platform workspace with its MODEL, in one transaction (the gate checks at commit).
    let mut tx = conn.begin().await?;
    let platform: Uuid =
        sqlx::query_scalar("INSERT INTO public.workspaces (kind, status) VALUES ('platform', 'online') RETURNING id")
            .fetch_one(&mut *tx)
            .await
            .described("platform")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'MODEL', $2)")
        .bind(platform)
        .bind(&model)
        .execute(&mut *tx)
        .await
        .described("MODEL under version 2")?;
    tx.commit().await.described("commit the platform workspace")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'GITHUB_TOKEN', $2)")
        .bind(byok)
        .bind(cluster.fresh_secret())
        .execute(&mut *conn)
        .await
        .described("workspace secret under version 2")?;
    // Overwritten: its first value is kept (history), and must survive the move.
    sqlx::query("SELECT secretgate.set_secret($1, 'GITHUB_TOKEN', $2)")
        .bind(byok)
        .bind(cluster.fresh_secret())
        .execute(&mut *conn)
        .await
        .described("overwrite, keeping a version")?;
    sqlx::query("SELECT secretgate.set_global_secret('SLACK_TOKEN', $1)")
        .bind(cluster.fresh_secret())
        .execute(&mut *conn)
        .await
        .described("global under version 2")?;

    for sql in [
        "UPDATE secretgate.providers SET base_url = 'https://llm-proxy.internal/v1' WHERE name = 'openai'",
        "INSERT INTO secretgate.providers (name, auth_env, base_url) VALUES ('acme', '{ACME_API_KEY}', 'https://api.acme.example/v1')",
        "INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('acme:', 'acme')",
        "UPDATE secretgate.forbidden_keys SET reason = 'edited by the DBA' WHERE key = 'MODEL_PROVIDER'",
        "INSERT INTO secretgate.forbidden_keys VALUES ('OLD_TOKEN', 'retired')",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.described(sql)?;
    }
    sqlx::query("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)")
        .bind(byok)
        .execute(&mut *conn)
        .await
        .described("dead verdict")?;
    Ok(Fixture { platform, byok })
}

/// Every gate refuses, with its SQLSTATE, and nothing stored changes.
async fn gates_refuse(conn: &mut PgConnection, f: &Fixture, when: &str) -> Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("agent")?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'X', 'v')").bind(f.platform).execute(&mut *tx).await;
    expect_sg(r, Code::ConciergeSelfWriteBlocked)
        .with_context(|| format!("{when}: an agent writing a platform secret"))?;
    drop(tx);
    let r = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
        .bind(f.platform)
        .execute(&mut *conn)
        .await;
    expect_sg(r, Code::PlatformAgentIdentityGate)
        .with_context(|| format!("{when}: deleting an online platform's MODEL"))?;
    let r = sqlx::query("SELECT secretgate.set_secret($1, 'OLD_TOKEN', 'v')").bind(f.byok).execute(&mut *conn).await;
    expect_sg(r, Code::ForbiddenSecretKey).with_context(|| format!("{when}: the forbidden key the DBA added"))?;
    let r = sqlx::query("UPDATE public.workspaces SET status = 'online' WHERE id = $1")
        .bind(f.byok)
        .execute(&mut *conn)
        .await;
    expect_sg(r, Code::ByokCredentialInvalid).with_context(|| format!("{when}: the dead verdict"))?;
    Ok(())
}

fn clean_verify(snap: &Snapshot, when: &str) -> Result<()> {
    ensure!(
        !snap.verify.is_empty() && snap.verify.iter().all(|(state, code, _)| state == "ok" && code.is_none()),
        "{when}: verify_secrets should be all ok: {:?}",
        snap.verify
    );
    let versions: std::collections::BTreeSet<i32> = snap.ciphertexts.iter().map(|c| c.2).collect();
    ensure!(versions == [1, 2].into(), "{when}: secrets under key versions 1 and 2 expected, got {versions:?}");
    Ok(())
}

/// The server's major, from `SHOW server_version_num`.
async fn server_major(conn: &mut PgConnection) -> Result<u32> {
    let num: String =
        sqlx::query_scalar("SHOW server_version_num").fetch_one(&mut *conn).await.described("server_version_num")?;
    Ok(num.parse::<u32>()? / 10_000)
}

async fn move_between_majors(old_bin: PathBuf, new_bin: PathBuf, from: u32, to: u32, route: Route) -> Result<()> {
    let old = Cluster::start_on(&format!("majors-{from}"), &old_bin);
    let name = db_name("majors");
    let (_, mut conn) = migrated_database(&old, &name).await?;
    ensure!(server_major(&mut conn).await? == from, "the old cluster should run PostgreSQL {from}");
    let fixture = populate(&old, &mut conn).await?;
    let before = snapshot(&mut conn).await?;
    clean_verify(&before, "before")?;
    gates_refuse(&mut conn, &fixture, &format!("on {from}")).await?;
    ensure!(snapshot(&mut conn).await? == before, "refused writes changed something on {from}");
    conn.close().await?;

    // The new major's cluster, with the same keyring (same keys, version 2 current).
    // 18's initdb turns data checksums on by default; pg_upgrade needs them as the old cluster has them (off).
    let initdb_args: &[&str] =
        if to >= 18 && matches!(route, Route::PgUpgrade) { &["--no-data-checksums"] } else { &[] };
    let new = Cluster::init(&format!("majors-{to}"), &new_bin, old.initial_keys().clone(), initdb_args)?;
    for secret in old.secrets() {
        new.remember_secret(&secret);
    }

    match route {
        Route::PgUpgrade => {
            let stripped = strip_debian_attver(&old).await?;
            if stripped > 0 {
                eprintln!(
                    "[majors] cleared Debian's column option pg_attver from {stripped} column(s) before pg_upgrade"
                );
            }
            old.stop();
            let (old_data, new_data) = (old.data_dir(), new.data_dir());
            let (old_port, new_port) = (old.port().to_string(), new.port().to_string());
            let common = [
                "-b",
                path_str(&old_bin),
                "-B",
                path_str(&new_bin),
                "-d",
                path_str(&old_data),
                "-D",
                path_str(&new_data),
                "-p",
                &old_port,
                "-P",
                &new_port,
                "-U",
                "postgres",
                "-s",
                path_str(new.dir()),
            ];
            let mut check = vec!["--check"];
            check.extend_from_slice(&common);
            new.run_program("pg_upgrade", &check).context("pg_upgrade --check")?;
            new.run_program("pg_upgrade", &common).context("pg_upgrade")?;
            new.start_server()?;
        }
        Route::Dump => {
            new.start_server()?;
            // The new major's pg_dump reads the old server (the documented
            // direction); a plain dump, without the column option pg_attver
            // that Debian's 15.20 stamps on every column and no other major knows.
            let file = new.dir().join(format!("{name}.sql"));
            let old_port = old.port().to_string();
            let dump = output(&new_bin, "pg_dump", &["-h", "127.0.0.1", "-p", &old_port, "-U", "postgres", &name])?;
            let (kept, dropped): (Vec<&str>, Vec<&str>) = dump.lines().partition(|line| !is_attver_line(line));
            if !dropped.is_empty() {
                eprintln!("[majors] left {} pg_attver line(s) out of the dump", dropped.len());
            }
            std::fs::write(&file, kept.join("\n") + "\n").context("write the filtered dump")?;
            new.create_database(&name);
            let new_port = new.port().to_string();
            output(
                &new_bin,
                "psql",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &new_port,
                    "-U",
                    "postgres",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                    path_str(&file),
                    &name,
                ],
            )?;
            std::fs::remove_file(&file).ok();
        }
    }

    let mut conn = PgConnection::connect(&new.url(&name)).await.context("connect to the new major")?;
    ensure!(server_major(&mut conn).await? == to, "the new cluster should run PostgreSQL {to}");
    let after = snapshot(&mut conn).await?;
    ensure!(
        after.ciphertexts == before.ciphertexts,
        "ciphertexts differ after {route:?} from {from} to {to} ({} rows before, {} after)",
        before.ciphertexts.len(),
        after.ciphertexts.len()
    );
    ensure!(after.plaintexts == before.plaintexts, "plaintexts differ after {route:?} from {from} to {to}");
    ensure!(after.registry == before.registry, "registry, forbidden keys or verdicts differ after {route:?}");
    ensure!(!before.history.is_empty(), "the fixture kept no version of a secret");
    ensure!(after.history == before.history, "kept versions of secrets differ after {route:?} from {from} to {to}");
    ensure!(after.extension_version == before.extension_version, "extension version changed");
    clean_verify(&after, "after")?;
    gates_refuse(&mut conn, &fixture, &format!("on {to} after {route:?}")).await?;
    ensure!(snapshot(&mut conn).await? == after, "refused writes changed something on {to}");
    conn.close().await?;

    // No stored value and no key in either server's log.
    let mut leaks = leaks_in(&old, &old.log_contents(), &format!("the {from} server log"));
    leaks.extend(leaks_in(&old, &new.log_contents(), &format!("the {to} server log")));
    ensure!(leaks.is_empty(), "{}", leaks.join("; "));
    old.destroy();
    new.destroy();
    Ok(())
}

/// Runs a client program of the server in `bin` (pg_dump, psql) as ourselves: its stdout.
fn output(bin: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin.join(program)).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().take(20).collect::<Vec<_>>().join("\n")
    );
    String::from_utf8(out.stdout).with_context(|| format!("{program}'s output is not UTF-8"))
}

/// `ALTER TABLE ONLY t ALTER COLUMN c SET (pg_attver=N);`: Debian's 15.20
/// stamps this column option on every column; pg_dump writes it out and no
/// other major accepts it ("unrecognized parameter").
fn is_attver_line(line: &str) -> bool {
    line.starts_with("ALTER TABLE ") && line.contains(" ALTER COLUMN ") && line.contains(" SET (pg_attver=")
}

/// Clears the column option pg_attver (see [`is_attver_line`]) from every
/// user column in every database of `cluster`, as docs/operations.md tells
/// a DBA to before pg_upgrade from Debian's 15.20: pg_upgrade's own schema
/// dump would carry it into the new major, which refuses it. Returns how
/// many columns had it.
async fn strip_debian_attver(cluster: &Cluster) -> Result<u64> {
    let mut admin = PgConnection::connect(&cluster.url("postgres")).await.context("connect to postgres")?;
    let databases: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datallowconn")
        .fetch_all(&mut admin)
        .await
        .described("databases")?;
    admin.close().await?;
    let mut stripped = 0;
    for db in databases {
        let mut conn = PgConnection::connect(&cluster.url(&db)).await.with_context(|| format!("connect to {db}"))?;
        stripped += sqlx::query(STRIP_ATTVER).execute(&mut conn).await.described("clear pg_attver")?.rows_affected();
        conn.close().await?;
    }
    Ok(stripped)
}

/// The statement docs/operations.md gives (user columns only: OIDs from 16384, FirstNormalObjectId).
const STRIP_ATTVER: &str = "UPDATE pg_catalog.pg_attribute \
     SET attoptions = (SELECT NULLIF(array_agg(o), '{}') FROM unnest(attoptions) AS o WHERE o NOT LIKE 'pg_attver=%') \
     WHERE attrelid >= 16384 AND attoptions::text LIKE '%pg_attver=%'";
