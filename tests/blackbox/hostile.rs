//! The hostile tier: an ordinary login that owns its database and tables
//! (the adoption path) tries every road from there to the extension owner's
//! rights (a superuser here, as in real installs): casts on its enum labels,
//! operators shadowed through session, role and database search_path, its
//! own triggers and index expressions under the DBA's maintenance, database
//! settings and ALLOW_CONNECTIONS against the audit writers, temporary
//! tables squatting the attachment, dropped attached tables, and sessions
//! racing on key check bookkeeping under REPEATABLE READ or idle in a
//! transaction.
//!
//! Every trial ends by asserting the attacker is still not a superuser; the
//! trials that refuse something assert the refusal still became an audit row.
//! Trials change cluster settings (retention), so they run one at a time.

use anyhow::{bail, ensure, Context, Result};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let cluster = Arc::new(Cluster::start("hostile"));
    // Prepared transactions, for the administrative events that follow them;
    // a small audit queue, which one database's storm of refusals fills.
    cluster
        .append_conf("max_prepared_transactions = 4\nsecretgate.audit_queue_size = 64")
        .and_then(|()| cluster.restart("fast"))
        .unwrap_or_else(|e| panic!("max_prepared_transactions: {e:#}"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        enum_cast_never_runs_as_the_extension_owner,
        domain_labels_and_shadowed_operators_bind_nothing,
        database_settings_do_not_bind_the_audit_writers,
        allow_connections_false_does_not_silence_the_trail,
        maintenance_runs_the_owners_code_as_the_owner,
        temporary_tables_cannot_be_attached,
        dropping_an_attached_table_detaches_and_detach_always_works,
        key_check_bookkeeping_never_fails_or_waits,
        administrative_events_follow_commit_prepared,
        one_databases_storm_leaves_room_for_anothers_records,
        history_and_restore_bind_nothing_of_the_table_owner,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// The attacker's world

/// A non-superuser login owning a fresh database in which the DBA created
/// the extension: the attacker of every trial.
struct Hostile {
    role: String,
    db: String,
    /// The DBA (superuser) in the attacker's database.
    dba: PgConnection,
    /// The attacker, logged in as itself.
    app: PgConnection,
}

async fn hostile(cluster: &Cluster, prefix: &str) -> Result<Hostile> {
    let role = db_name(&format!("{prefix}_app"));
    let db = db_name(prefix);
    let mut admin = PgConnection::connect(&cluster.url("postgres")).await.context("connect")?;
    for statement in
        [format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEROLE"), format!("CREATE DATABASE {db} OWNER {role}")]
    {
        sqlx::raw_sql(&statement).execute(&mut admin).await.described("create the attacker and its database")?;
    }
    admin.close().await?;
    let mut dba = PgConnection::connect(&cluster.url(&db)).await.context("connect as the DBA")?;
    sqlx::raw_sql("CREATE EXTENSION secretgate").execute(&mut dba).await.described("CREATE EXTENSION")?;
    let app = PgConnection::connect(&cluster.url_as(&role, &db)).await.context("connect as the attacker")?;
    Ok(Hostile { role, db, dba, app })
}

/// The attacker's function that makes it a superuser when it runs as one:
/// the proof of every road taken. It also notes who it ran as.
fn escalate_sql(role: &str) -> String {
    format!(
        "CREATE TABLE ran_as (who text, at timestamptz DEFAULT now());
         CREATE FUNCTION escalate() RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.ran_as (who) VALUES (current_user);
             IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
             END IF;
         EXCEPTION WHEN insufficient_privilege THEN NULL;
         END $$;
         GRANT INSERT ON ran_as TO PUBLIC;"
    )
}

/// The platform's three tables, owned by the attacker, with `kind` of type
/// `kind_type` (made by the caller), attached by the attacker.
async fn attach_tables(h: &mut Hostile, kind_type: &str) -> Result<()> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE w (id uuid PRIMARY KEY, kind {kind_type} NOT NULL DEFAULT 'workspace', status text NOT NULL, runtime text);
         CREATE TABLE s (workspace_id uuid REFERENCES w(id), key text, encrypted_value bytea, encryption_version int,
                         PRIMARY KEY (workspace_id, key));
         CREATE TABLE g (key text PRIMARY KEY, encrypted_value bytea, encryption_version int);
         SELECT secretgate.attach_gates('w', 's', 'g');"
    ))
    .execute(&mut h.app)
    .await
    .described("the attacker attaches its tables")
    .map(drop)
}

async fn is_superuser(conn: &mut PgConnection, role: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(conn)
        .await
        .described("rolsuper")
}

async fn still_not_superuser(h: &mut Hostile) -> Result<()> {
    ensure!(!is_superuser(&mut h.dba, &h.role).await?, "{} became a superuser", h.role);
    Ok(())
}

/// The roles the attacker's function ran as (its table `ran_as`).
async fn ran_as(conn: &mut PgConnection) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT who FROM ran_as ORDER BY 1").fetch_all(conn).await.described("ran_as")
}

async fn audit_mark(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM secretgate.audit_events")
        .fetch_one(conn)
        .await
        .described("audit mark")
}

/// Waits until an audit row newer than `mark` with `sqlstate` (or, for an
/// administrative event, `event`) exists.
async fn wait_audit(conn: &mut PgConnection, mark: i64, column: &str, value: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let sql = format!("SELECT count(*) FROM secretgate.audit_events WHERE id > $1 AND {column} = $2");
    loop {
        let n: i64 =
            sqlx::query_scalar(&sql).bind(mark).bind(value).fetch_one(&mut *conn).await.described("audit rows")?;
        if n > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no audit row with {column} = {value} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A workspace of the attacker's tables, written by the attacker.
async fn workspace(h: &mut Hostile) -> Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO w (id, kind, status, runtime) VALUES ($1, 'external', 'provisioning', 'custom')")
        .bind(id)
        .execute(&mut h.app)
        .await
        .described("insert a workspace")?;
    Ok(id)
}

/// The DBA turns `secretgate.direct_index_read` off for the attacker (a
/// superuser's setting): the gates read the kind through SQL from then on.
async fn without_index_read(cluster: &Cluster, h: &mut Hostile) -> Result<()> {
    sqlx::query(&format!("ALTER ROLE {} SET secretgate.direct_index_read = off", h.role))
        .execute(&mut h.dba)
        .await
        .described("index read off")?;
    h.app = PgConnection::connect(&cluster.url_as(&h.role, &h.db)).await.context("reconnect")?;
    Ok(())
}

/// A forbidden key name written by the attacker as an agent (so the gate
/// reads the workspace's kind first): SG105, one audit row.
async fn refusal(h: &mut Hostile, ws: Uuid) -> Result<()> {
    refused_as_agent(&mut h.app, ws).await
}

async fn refused_as_agent(conn: &mut PgConnection, ws: Uuid) -> Result<()> {
    let mut tx = conn.begin().await.described("begin")?;
    sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await.described("caller")?;
    let written = sqlx::query("SELECT secretgate.set_secret($1, 'MODEL_PROVIDER', $2)")
        .bind(ws)
        .bind("x")
        .execute(&mut *tx)
        .await;
    expect_sqlstate(written, "SG105")?;
    tx.rollback().await.described("rollback")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Trials

/// The reproduction: a cast on the enum `kind`, owned by the attacker, is
/// never applied by SQL the extension runs as its owner; the deferred BYOK
/// check still runs and answers.
async fn enum_cast_never_runs_as_the_extension_owner(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_cast").await?;
    sqlx::raw_sql(&format!(
        "{}
         CREATE TYPE ws_kind AS ENUM ('platform', 'workspace', 'external');
         CREATE FUNCTION k2t(ws_kind) RETURNS text LANGUAGE plpgsql STABLE AS $$
           BEGIN PERFORM public.escalate(); RETURN format('%s', $1); END $$;
         CREATE CAST (ws_kind AS text) WITH FUNCTION k2t(ws_kind);",
        escalate_sql(&h.role)
    ))
    .execute(&mut h.app)
    .await
    .described("the attacker's cast")?;
    attach_tables(&mut h, "ws_kind").await?;
    // A BYOK workspace (deferred check at commit) and a platform one going
    // online without a MODEL (SG102 at commit, as the extension's owner).
    let byok = sqlx::query("INSERT INTO w (id, status, runtime) VALUES (gen_random_uuid(), 'provisioning', 'custom')")
        .execute(&mut h.app)
        .await;
    if let Err(e) = &byok {
        let e = db_error(e).context("the BYOK insert failed without a database error")?;
        ensure!(e.sqlstate.starts_with("SG"), "the deferred BYOK check failed with {e}");
    }
    let mark = audit_mark(&mut h.dba).await?;
    let online =
        sqlx::query("INSERT INTO w (id, kind, status, runtime) VALUES (gen_random_uuid(), 'platform', 'online', 'x')")
            .execute(&mut h.app)
            .await;
    expect_sqlstate(online, "SG102")?;
    wait_audit(&mut h.dba, mark, "sqlstate", "SG102").await?;
    // Reads of the kind by every path: the direct index read and SQL.
    let ws = workspace(&mut h).await?;
    refusal(&mut h, ws).await?;
    without_index_read(&cluster, &mut h).await?;
    refusal(&mut h, ws).await?;
    let who = ran_as(&mut h.dba).await?;
    ensure!(!who.iter().any(|r| r == "postgres"), "the attacker's cast ran as the superuser: {who:?}");
    still_not_superuser(&mut h).await
}

/// A domain over text for `kind`, and `=` and `||` operators shadowed in the
/// attacker's schema through session, role and database search_path: the
/// gates still refuse, and nothing of the attacker's runs as the superuser.
async fn domain_labels_and_shadowed_operators_bind_nothing(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_path").await?;
    let (role, db) = (h.role.clone(), h.db.clone());
    sqlx::raw_sql(&format!(
        "{}
         CREATE DOMAIN ws_kind AS text;
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
         CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.eq);
         CREATE FUNCTION evil.teq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.teq);
         CREATE FUNCTION evil.i8eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
         CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8eq);
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         ALTER ROLE {role} SET search_path = evil, pg_catalog, public;
         ALTER DATABASE {db} SET search_path = evil, pg_catalog, public;",
        escalate_sql(&role)
    ))
    .execute(&mut h.app)
    .await
    .described("the attacker's operators")?;
    attach_tables(&mut h, "ws_kind").await?;
    // A new session takes the role's and the database's search_path.
    let mut app = PgConnection::connect(&cluster.url_as(&role, &db)).await.context("reconnect")?;
    let ws = Uuid::new_v4();
    sqlx::query("INSERT INTO public.w (id, kind, status, runtime) VALUES ($1, 'external', 'provisioning', 'custom')")
        .bind(ws)
        .execute(&mut app)
        .await
        .described("insert a workspace")?;
    let mark = audit_mark(&mut h.dba).await?;
    for direct in [true, false] {
        if !direct {
            without_index_read(&cluster, &mut h).await?;
            app = PgConnection::connect(&cluster.url_as(&role, &db)).await.context("reconnect")?;
        }
        sqlx::query("SET search_path = evil, pg_catalog, public").execute(&mut app).await.described("session path")?;
        refused_as_agent(&mut app, ws).await?;
        let value = cluster.fresh_secret();
        sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
            .bind(ws)
            .bind(&value)
            .execute(&mut app)
            .await
            .described("set a secret under the attacker's path")?;
        let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')")
            .bind(ws)
            .fetch_one(&mut app)
            .await
            .described("read it back")?;
        ensure!(read.as_deref() == Some(value.as_str()), "the secret did not read back under the attacker's path");
    }
    wait_audit(&mut h.dba, mark, "sqlstate", "SG105").await?;
    let who = ran_as(&mut h.dba).await?;
    ensure!(!who.iter().any(|r| r == "postgres"), "an operator of the attacker's ran as the superuser: {who:?}");
    still_not_superuser(&mut h).await
}

/// The database's owner sets the database's search_path to its own `=` for
/// bigint (the prune statement's) and makes its transactions read-only by
/// default: the writers still write and prune, as a role that is no superuser.
async fn database_settings_do_not_bind_the_audit_writers(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_writer").await?;
    let (role, db) = (h.role.clone(), h.db.clone());
    sqlx::raw_sql(&format!(
        "{}
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.i8eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
         CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8eq);
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA evil TO PUBLIC;
         ALTER DATABASE {db} SET search_path = evil, pg_catalog, public;
         ALTER DATABASE {db} SET statement_timeout = 1;
         ALTER DATABASE {db} SET default_transaction_read_only = on;",
        escalate_sql(&role)
    ))
    .execute(&mut h.app)
    .await
    .described("the attacker's database settings")?;
    attach_tables(&mut h, "text").await?;
    let ws = workspace(&mut h).await?;
    // Rows become older than the retention at once; the writer prunes them.
    set_retention(&mut h.dba, "1").await?;
    let result = async {
        let mark = audit_mark(&mut h.dba).await?;
        refusal(&mut h, ws).await?;
        wait_audit(&mut h.dba, mark, "sqlstate", "SG105").await?;
        let first = audit_mark(&mut h.dba).await?;
        // Older than the retention; the next refusal wakes a writer, which prunes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            refusal(&mut h, ws).await?;
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE id > $1 AND id <= $2")
                    .bind(mark)
                    .bind(first)
                    .fetch_one(&mut h.dba)
                    .await
                    .described("rows left")?;
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                let status: (i64, i64, Option<String>) =
                    sqlx::query_as("SELECT written, skipped, last_error FROM secretgate.audit_status()")
                        .fetch_one(&mut h.dba)
                        .await
                        .described("audit_status")?;
                bail!("the writer did not prune its database's old rows within 40 s (written, skipped, last error: {status:?})");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::Ok(())
    }
    .await;
    set_retention(&mut h.dba, "DEFAULT").await?;
    result?;
    let who = ran_as(&mut h.dba).await?;
    ensure!(who.is_empty(), "the attacker's operator ran in a writer, as {who:?}");
    still_not_superuser(&mut h).await
}

async fn set_retention(dba: &mut PgConnection, value: &str) -> Result<()> {
    sqlx::query(&format!("ALTER SYSTEM SET secretgate.audit_retention = {value}"))
        .execute(&mut *dba)
        .await
        .described("audit_retention")?;
    sqlx::query("SELECT pg_reload_conf()").execute(&mut *dba).await.described("reload")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// The database's owner forbids connections to it: the refusals made in a
/// session already connected still become audit rows.
async fn allow_connections_false_does_not_silence_the_trail(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_conn").await?;
    attach_tables(&mut h, "text").await?;
    let ws = workspace(&mut h).await?;
    let db = h.db.clone();
    // The owner, from another database (not while connected to its own).
    let mut elsewhere = PgConnection::connect(&cluster.url_as(&h.role, "postgres")).await.context("connect")?;
    sqlx::raw_sql(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"))
        .execute(&mut elsewhere)
        .await
        .described("ALLOW_CONNECTIONS false")?;
    let result = async {
        // Let any idle writer of this database leave first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let skipped = "SELECT skipped FROM secretgate.audit_status()";
        let before: i64 = sqlx::query_scalar(skipped).fetch_one(&mut h.dba).await.described("audit_status")?;
        let mark = audit_mark(&mut h.dba).await?;
        refusal(&mut h, ws).await?;
        wait_audit(&mut h.dba, mark, "sqlstate", "SG105").await?;
        let after: i64 = sqlx::query_scalar(skipped).fetch_one(&mut h.dba).await.described("audit_status")?;
        ensure!(after == before, "{} records were skipped", after - before);
        anyhow::Ok(())
    }
    .await;
    sqlx::raw_sql(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"))
        .execute(&mut elsewhere)
        .await
        .described("ALLOW_CONNECTIONS true")?;
    result?;
    still_not_superuser(&mut h).await
}

/// The DBA renames a key (maintenance): the attacker's trigger, rule-like
/// index expression and column default on its secrets table run as the
/// attacker, the table's owner, never as the DBA.
async fn maintenance_runs_the_owners_code_as_the_owner(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_maint").await?;
    sqlx::raw_sql(&escalate_sql(&h.role)).execute(&mut h.app).await.described("escalate()")?;
    attach_tables(&mut h, "text").await?;
    let ws = workspace(&mut h).await?;
    let value = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'OLD_NAME', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut h.app)
        .await
        .described("store a secret")?;
    sqlx::raw_sql(
        "CREATE FUNCTION on_write() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM public.escalate(); RETURN COALESCE(NEW, OLD); END $$;
         CREATE TRIGGER zz_owner BEFORE INSERT OR UPDATE OR DELETE ON s FOR EACH ROW EXECUTE FUNCTION on_write();
         CREATE FUNCTION idx(text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
           BEGIN PERFORM public.escalate(); RETURN $1; END $$;
         CREATE INDEX s_idx ON s (idx(key));",
    )
    .execute(&mut h.app)
    .await
    .described("the attacker's trigger and index")?;
    sqlx::query("TRUNCATE ran_as").execute(&mut h.app).await.described("truncate ran_as")?;
    let mark = audit_mark(&mut h.dba).await?;
    let renamed: i64 = sqlx::query_scalar("SELECT secretgate.rename_secret_key('OLD_NAME', 'NEW_NAME')")
        .fetch_one(&mut h.dba)
        .await
        .described("the DBA renames a key")?;
    ensure!(renamed == 1, "rename_secret_key renamed {renamed} rows, expected 1");
    let moved: i64 =
        sqlx::query_scalar("SELECT secretgate.reencrypt(100)").fetch_one(&mut h.dba).await.described("reencrypt")?;
    ensure!(moved == 0, "nothing was stale, yet reencrypt moved {moved} rows");
    wait_audit(&mut h.dba, mark, "event", "secret.renamed").await?;
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'NEW_NAME')")
        .bind(ws)
        .fetch_one(&mut h.dba)
        .await
        .described("read the renamed secret")?;
    ensure!(read.as_deref() == Some(value.as_str()), "the renamed secret does not read back");
    let who = ran_as(&mut h.dba).await?;
    ensure!(
        who == vec![h.role.clone()],
        "the attacker's code during maintenance ran as {who:?}, expected only the owner"
    );
    still_not_superuser(&mut h).await
}

/// Any login with TEMP could attach temporary tables first and leave the
/// database attached to nothing: refused with 42809, and nothing recorded.
async fn temporary_tables_cannot_be_attached(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_temp").await?;
    sqlx::raw_sql(
        "CREATE TEMP TABLE w (id uuid PRIMARY KEY, kind text NOT NULL, status text NOT NULL, runtime text);
         CREATE TEMP TABLE s (workspace_id uuid, key text, encrypted_value bytea, encryption_version int,
                              PRIMARY KEY (workspace_id, key));
         CREATE TEMP TABLE g (key text PRIMARY KEY, encrypted_value bytea, encryption_version int);",
    )
    .execute(&mut h.app)
    .await
    .described("temporary tables")?;
    let attached =
        sqlx::query("SELECT secretgate.attach_gates('pg_temp.w', 'pg_temp.s', 'pg_temp.g')").execute(&mut h.app).await;
    let e = expect_sqlstate(attached, "42809")?;
    ensure!(e.message.contains("temporary"), "the refusal should say the table is temporary: {e}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.attached_tables")
        .fetch_one(&mut h.dba)
        .await
        .described("attached_tables")?;
    ensure!(left == 0, "a refused attach left {left} rows in attached_tables");
    // The real tables attach afterwards, in a new session.
    h.app.close().await?;
    h.app = PgConnection::connect(&cluster.url_as(&h.role, &h.db)).await?;
    attach_tables(&mut h, "text").await?;
    workspace(&mut h).await?;
    still_not_superuser(&mut h).await
}

/// Dropping an attached table detaches the gates in the same transaction
/// (the other tables keep no trigger of secretgate's), with an audit event;
/// an attachment left dangling anyway is removed by the database's owner.
async fn dropping_an_attached_table_detaches_and_detach_always_works(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_drop").await?;
    attach_tables(&mut h, "text").await?;
    let mark = audit_mark(&mut h.dba).await?;
    sqlx::query("DROP TABLE g").execute(&mut h.app).await.described("DROP TABLE g")?;
    let (rows, triggers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM secretgate.attached_tables), \
                (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'secretgate%' AND NOT tgisinternal)",
    )
    .fetch_one(&mut h.dba)
    .await
    .described("after the drop")?;
    ensure!(rows == 0 && triggers == 0, "after DROP TABLE: {rows} attachments and {triggers} secretgate triggers left");
    wait_audit(&mut h.dba, mark, "event", "gates.detached").await?;
    // The tables work as plain tables again.
    workspace(&mut h).await?;

    // A dangling attachment (the event trigger disabled by the DBA): every
    // function says so, and the database's owner removes it.
    sqlx::raw_sql(
        "CREATE TABLE g (key text PRIMARY KEY, encrypted_value bytea, encryption_version int);
         SELECT secretgate.attach_gates('w', 's', 'g');",
    )
    .execute(&mut h.app)
    .await
    .described("attach again")?;
    sqlx::raw_sql("ALTER EVENT TRIGGER secretgate_detach_dropped DISABLE")
        .execute(&mut h.dba)
        .await
        .described("disable")?;
    let dropped = sqlx::query("DROP TABLE g").execute(&mut h.app).await.described("DROP TABLE g");
    sqlx::raw_sql("ALTER EVENT TRIGGER secretgate_detach_dropped ENABLE")
        .execute(&mut h.dba)
        .await
        .described("enable")?;
    dropped?;
    let broken = sqlx::query("SELECT secretgate.read_secret(gen_random_uuid(), 'K')").execute(&mut h.app).await;
    expect_sqlstate(broken, "55000")?;
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut h.app).await.described("the owner detaches")?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.attached_tables")
        .fetch_one(&mut h.dba)
        .await
        .described("attached_tables")?;
    ensure!(rows == 0, "detach_gates left {rows} attachments");
    still_not_superuser(&mut h).await
}

/// The first use of a key version records its key check. A session whose
/// REPEATABLE READ snapshot predates another session's record still reads
/// (no 40001); a session idle in a transaction holding its uncommitted
/// record makes no other reader wait; the check is recorded all the same.
async fn key_check_bookkeeping_never_fails_or_waits(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_check").await?;
    attach_tables(&mut h, "text").await?;
    let ws = workspace(&mut h).await?;
    let value = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut h.app)
        .await
        .described("store a secret")?;
    let url = cluster.url_as(&h.role, &h.db);
    let read = "SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')";
    let forget = "DELETE FROM secretgate.key_checks";

    // REPEATABLE READ: the snapshot is taken before another session records.
    sqlx::query(forget).execute(&mut h.dba).await.described("forget the checks")?;
    let mut rr = PgConnection::connect(&url).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").execute(&mut rr).await.described("snapshot")?;
    let mut other = PgConnection::connect(&url).await?;
    let got: Option<String> = sqlx::query_scalar(read).bind(ws).fetch_one(&mut other).await.described("first read")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the first read did not return the value");
    let got: Option<String> =
        sqlx::query_scalar(read).bind(ws).fetch_one(&mut rr).await.described("the REPEATABLE READ read")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the REPEATABLE READ read did not return the value");
    sqlx::query("COMMIT").execute(&mut rr).await.described("commit")?;

    // Idle in a transaction after its first read: the others do not wait.
    sqlx::query(forget).execute(&mut h.dba).await.described("forget the checks")?;
    let mut idle = PgConnection::connect(&url).await?;
    sqlx::query("BEGIN").execute(&mut idle).await.described("begin")?;
    let _: Option<String> = sqlx::query_scalar(read).bind(ws).fetch_one(&mut idle).await.described("idle's read")?;
    sqlx::query("SET statement_timeout = '5s'").execute(&mut other).await.described("timeout")?;
    let started = Instant::now();
    let got: Option<String> = sqlx::query_scalar(read)
        .bind(ws)
        .fetch_one(&mut other)
        .await
        .described("a read while another session holds its record")?;
    ensure!(got.as_deref() == Some(value.as_str()), "the read did not return the value");
    ensure!(started.elapsed() < Duration::from_secs(5), "the read waited on the idle session");
    sqlx::query("ROLLBACK").execute(&mut idle).await.described("rollback")?;

    // Recorded all the same (by the writer, the idle session having rolled back).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _: Option<String> = sqlx::query_scalar(read).bind(ws).fetch_one(&mut other).await.described("read")?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM secretgate.key_checks")
            .fetch_one(&mut h.dba)
            .await
            .described("key_checks")?;
        if n > 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "no key check was recorded within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    still_not_superuser(&mut h).await
}

/// An administrative event of a prepared transaction is recorded by COMMIT
/// PREPARED, in any session, and never by ROLLBACK PREPARED, nor by the next
/// transaction of the session that prepared it.
async fn administrative_events_follow_commit_prepared(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_2pc").await?;
    attach_tables(&mut h, "text").await?;
    // The attachment's own event is written first, so it cannot be counted below.
    wait_audit(&mut h.dba, 0, "event", "gates.attached").await?;
    let count = "SELECT count(*) FROM secretgate.audit_events WHERE id > $1 AND event = $2";
    let mark = audit_mark(&mut h.dba).await?;
    let gid = db_name("detach");
    sqlx::raw_sql(&format!("BEGIN; SELECT secretgate.detach_gates(); PREPARE TRANSACTION '{gid}'"))
        .execute(&mut h.dba)
        .await
        .described("a prepared detach")?;
    sqlx::query("SELECT 1").execute(&mut h.dba).await.described("the next transaction")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early: i64 = sqlx::query_scalar(count).bind(mark).bind("gates.detached").fetch_one(&mut h.dba).await?;
    ensure!(early == 0, "the prepared detach was recorded before COMMIT PREPARED");
    let mut other = PgConnection::connect(&cluster.url(&h.db)).await?;
    sqlx::raw_sql(&format!("COMMIT PREPARED '{gid}'")).execute(&mut other).await.described("COMMIT PREPARED")?;
    let recorded: i64 = sqlx::query_scalar(count).bind(mark).bind("gates.detached").fetch_one(&mut h.dba).await?;
    ensure!(recorded == 1, "COMMIT PREPARED recorded {recorded} gates.detached events, expected 1");

    let mark = audit_mark(&mut h.dba).await?;
    let gid = db_name("attach");
    sqlx::raw_sql(&format!("BEGIN; SELECT secretgate.attach_gates('w', 's', 'g'); PREPARE TRANSACTION '{gid}'"))
        .execute(&mut h.app)
        .await
        .described("a prepared attach")?;
    sqlx::query("SELECT 1").execute(&mut h.app).await.described("the next transaction")?;
    sqlx::raw_sql(&format!("ROLLBACK PREPARED '{gid}'")).execute(&mut other).await.described("ROLLBACK PREPARED")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attached: i64 = sqlx::query_scalar(count).bind(mark).bind("gates.attached").fetch_one(&mut h.dba).await?;
    ensure!(attached == 0, "a rolled-back prepared attach was recorded {attached} times");
    still_not_superuser(&mut h).await
}

/// A login in one database refuses as fast as it can, filling the audit
/// queue (records are dropped and counted): the refusals made meanwhile in
/// another database still become rows, since no database may take the
/// whole queue; the storming database's writers, ended under that load,
/// stop at once.
async fn one_databases_storm_leaves_room_for_anothers_records(cluster: Arc<Cluster>) -> Result<()> {
    let mut storm = hostile(&cluster, "h_storm").await?;
    attach_tables(&mut storm, "text").await?;
    let mut quiet = hostile(&cluster, "h_quiet").await?;
    attach_tables(&mut quiet, "text").await?;
    let ws = workspace(&mut quiet).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dropped = "SELECT dropped FROM secretgate.audit_status()";
    let dropped_before: i64 = sqlx::query_scalar(dropped).fetch_one(&mut quiet.dba).await.described("status")?;
    let mark = audit_mark(&mut quiet.dba).await?;
    // On a thread of its own (sqlx's futures are not Send across this runtime).
    let url = cluster.url_as(&storm.role, &storm.db);
    let storming = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::raw_sql(
                "DO $$ BEGIN FOR i IN 1..40000 LOOP BEGIN \
                   PERFORM secretgate.set_global_secret('MODEL_PROVIDER', 'storm-not-a-secret'); \
                 EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$",
            )
            .execute(&mut conn)
            .await
            .described("the storm")?;
            Ok(())
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Writers ended under load stop at once (another starts for what is queued).
    let writers = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'secretgate audit writer' AND datname = $1";
    let busy: Vec<i32> =
        sqlx::query_scalar(writers).bind(&storm.db).fetch_all(&mut quiet.dba).await.described("writers")?;
    ensure!(!busy.is_empty(), "no audit writer is running for the storming database");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&busy)
        .execute(&mut quiet.dba)
        .await
        .described("pg_terminate_backend")?;
    let ended = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
            .bind(&busy)
            .fetch_one(&mut quiet.dba)
            .await
            .described("writers left")?;
        if left == 0 {
            break;
        }
        ensure!(
            ended.elapsed() < Duration::from_secs(2),
            "{left} audit writers under load outlived pg_terminate_backend by 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut made = 0;
    while !storming.is_finished() && made < 20 {
        refusal(&mut quiet, ws).await?;
        made += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    storming.join().map_err(|_| anyhow::anyhow!("the storm thread panicked"))??;
    let dropped_after: i64 = sqlx::query_scalar(dropped).fetch_one(&mut quiet.dba).await.described("status")?;
    ensure!(made >= 5, "the storm ended before the other database refused 5 times ({made})");
    ensure!(dropped_after > dropped_before, "the storm never filled the queue: this trial proves nothing");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM secretgate.audit_events WHERE id > $1 AND sqlstate = 'SG105'")
                .bind(mark)
                .fetch_one(&mut quiet.dba)
                .await
                .described("the quiet database's rows")?;
        if rows == made {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{rows} of the quiet database's {made} refusals became rows during another's storm ({} records dropped)",
            dropped_after - dropped_before
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    still_not_superuser(&mut storm).await?;
    still_not_superuser(&mut quiet).await
}

/// History runs as the extension's owner (kept versions written, pruned
/// past `history_keep`, listed, purged, re-encrypted) and restore writes for
/// a DBA: the table owner's operators for every type those statements
/// compare, first on the session's, role's and database's search_path, bind
/// none of it, and the owner never becomes a superuser.
async fn history_and_restore_bind_nothing_of_the_table_owner(cluster: Arc<Cluster>) -> Result<()> {
    let mut h = hostile(&cluster, "h_hist").await?;
    let (role, db) = (h.role.clone(), h.db.clone());
    let mut operators = String::new();
    for (name, ty, op) in [
        ("ueq", "uuid", "="),
        ("teq", "text", "="),
        ("ieq", "integer", "="),
        ("ile", "integer", "<="),
        ("ilt", "integer", "<"),
        ("ine", "integer", "<>"),
        ("beq", "bytea", "="),
    ] {
        operators.push_str(&format!(
            "CREATE FUNCTION evil.{name}({ty}, {ty}) RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.{op}) $2; END $$;
             CREATE OPERATOR evil.{op} (LEFTARG = {ty}, RIGHTARG = {ty}, FUNCTION = evil.{name});\n"
        ));
    }
    for (name, op) in [("iminus", "-"), ("iplus", "+")] {
        operators.push_str(&format!(
            "CREATE FUNCTION evil.{name}(integer, integer) RETURNS integer LANGUAGE plpgsql AS $$
               BEGIN PERFORM public.escalate(); RETURN $1 OPERATOR(pg_catalog.{op}) $2; END $$;
             CREATE OPERATOR evil.{op} (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.{name});\n"
        ));
    }
    sqlx::raw_sql(&format!(
        "{}
         CREATE SCHEMA evil;
         {operators}
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         ALTER ROLE {role} SET search_path = evil, pg_catalog, public;
         ALTER DATABASE {db} SET search_path = evil, pg_catalog, public;",
        escalate_sql(&role)
    ))
    .execute(&mut h.app)
    .await
    .described("the attacker's operators")?;
    attach_tables(&mut h, "text").await?;
    // One version kept per secret: every further overwrite also prunes.
    sqlx::raw_sql(&format!("ALTER DATABASE {db} SET secretgate.history_keep = 1"))
        .execute(&mut h.dba)
        .await
        .described("history_keep")?;
    let mut app = PgConnection::connect(&cluster.url_as(&role, &db)).await.context("reconnect")?;
    sqlx::query("SET search_path = evil, pg_catalog, public").execute(&mut app).await.described("session path")?;
    let ws = Uuid::new_v4();
    sqlx::query("INSERT INTO public.w (id, kind, status, runtime) VALUES ($1, 'external', 'provisioning', 'custom')")
        .bind(ws)
        .execute(&mut app)
        .await
        .described("insert a workspace")?;
    let values: Vec<String> = (0..4).map(|_| cluster.fresh_secret()).collect();
    for v in &values {
        sqlx::query("SELECT secretgate.set_secret($1, 'K', $2)")
            .bind(ws)
            .bind(v)
            .execute(&mut app)
            .await
            .described("set")?;
    }
    sqlx::query("DELETE FROM public.s WHERE workspace_id = $1 AND key = 'K'")
        .bind(ws)
        .execute(&mut app)
        .await
        .described("delete")?;

    // The DBA, in a session that takes the database's search_path.
    let mut dba = PgConnection::connect(&cluster.url(&db)).await.context("connect as the DBA")?;
    let kept: Vec<i32> = sqlx::query_scalar("SELECT version FROM secretgate.secret_versions($1, 'K')")
        .bind(ws)
        .fetch_all(&mut dba)
        .await
        .described("secret_versions")?;
    ensure!(kept.len() == 1, "history_keep = 1 should leave one version, found {kept:?}");
    sqlx::query("SELECT secretgate.restore_secret($1, 'K', $2)")
        .bind(ws)
        .bind(kept[0])
        .execute(&mut dba)
        .await
        .described("restore_secret")?;
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'K')")
        .bind(ws)
        .fetch_one(&mut dba)
        .await
        .described("read the restored value")?;
    ensure!(read.as_deref() == Some(values[3].as_str()), "the restore did not bring the last value back");
    sqlx::query("SELECT count(*) FROM secretgate.verify_secrets()").execute(&mut dba).await.described("verify")?;
    sqlx::query("SELECT secretgate.purge_history($1)").bind(ws).execute(&mut dba).await.described("purge")?;
    let who = ran_as(&mut h.dba).await?;
    // The operators are live: the attacker's own DELETE above ran them, as itself.
    ensure!(who.contains(&role), "the attacker's operators never ran at all: {who:?}");
    ensure!(!who.iter().any(|r| r == "postgres"), "an operator of the attacker's ran as the superuser: {who:?}");
    still_not_superuser(&mut h).await
}
