//! Black-box tests of privilege hardening (issue 6, item 3): what a security
//! reviewer would try against the extension, each attack its own trial with
//! its exact SQLSTATE. The catalog (every function, who may execute it, which
//! run as their owner with a pinned search_path); look-alike functions,
//! operators and tables put before pg_catalog (and pg_temp first); a non-owner
//! switching the gates off or writing the registry; an agent passing itself off
//! as another caller; a non-superuser reading the keyring.

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::{Code, Scope};
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("privileges"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        "catalog_functions_grantees_and_pinned_search_paths" => catalog,
        "privileged_functions_refuse_a_plain_login_role" => privileged_functions_refuse_a_plain_role,
        "lookalikes_with_attacker_schema_first" => |c| lookalikes(c, "attacker"),
        "lookalikes_with_attacker_before_pg_catalog" => |c| lookalikes(c, "attacker, pg_catalog"),
        "lookalikes_with_pg_temp_first" => |c| lookalikes(c, "pg_temp, attacker, pg_catalog"),
        "attach_gates_under_a_hostile_search_path_keeps_the_gates" => attach_under_hostile_search_path,
        "non_owner_cannot_disable_drop_or_replace_the_gates" => non_owner_cannot_switch_gates_off,
        non_owner_cannot_write_secretgate_tables,
        "trigger_privilege_cannot_add_triggers_to_attached_tables" => trigger_privilege_cannot_add_triggers,
        "agent_claiming_another_caller_is_still_refused" => agent_claiming_another_caller,
        "keyring_is_unreadable_for_non_superusers" => keyring_unreadable,
        no_security_definer_function_lacks_a_declared_search_path,
        "agent_without_select_on_workspaces_is_gated_by_kind" => |c| agent_without_select(c, None),
        "agent_without_select_on_workspaces_under_a_hostile_search_path" => |c| agent_without_select(c, Some("attacker, pg_catalog")),
        "agent_without_select_on_workspaces_with_pg_temp_first" => |c| agent_without_select(c, Some("pg_temp, attacker, pg_catalog")),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Helpers

/// Runs the statements in one transaction and commits: the first error, from
/// a statement or from the commit (deferred gates).
async fn in_tx(conn: &mut PgConnection, stmts: &[(&str, Vec<Arg>)]) -> std::result::Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for (sql, args) in stmts {
        execute_with(&mut tx, sql, args).await?;
    }
    tx.commit().await
}

/// A role that logs in, with DML on the platform's tables; an agent when
/// `agent` (member of secretgate_agent).
async fn create_role(admin: &mut PgConnection, db: &str, prefix: &str, agent: bool) -> Result<String> {
    let role = format!("{prefix}_{}", random_hex(4));
    let member = if agent { " IN ROLE secretgate_agent" } else { "" };
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN{member};
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspaces, public.workspace_secrets, public.global_secrets TO {role};
         GRANT CREATE ON DATABASE \"{db}\" TO {role};"
    ))
    .execute(admin)
    .await
    .described("create a role")?;
    Ok(role)
}

async fn connect_as(cluster: &Cluster, role: &str, db: &str) -> Result<PgConnection> {
    PgConnection::connect(&cluster.url_as(role, db)).await.with_context(|| format!("connect as {role}"))
}

/// What the attack trials write into: a platform workspace with a MODEL, one
/// without, an ordinary one, and a BYOK one whose only credential is dead.
struct Platform {
    db: String,
    admin: PgConnection,
    platform: Uuid,
    bare: Uuid,
    ordinary: Uuid,
    byok: Uuid,
    model: String,
}

async fn platform_db(cluster: &Cluster, prefix: &str) -> Result<Platform> {
    let db = db_name(prefix);
    let (_url, mut admin) = migrated_database(cluster, &db).await?;
    let (platform, bare, ordinary, byok) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let model = format!("anthropic:claude-opus-4-7-{}", random_hex(3));
    let key = cluster.fresh_secret();
    in_tx(
        &mut admin,
        &[
            ("INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'offline')", vec![Arg::Id(platform)]),
            ("SELECT secretgate.set_secret($1, 'MODEL', $2)", vec![Arg::Id(platform), Arg::Text(model.clone())]),
            ("INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'offline')", vec![Arg::Id(bare)]),
            ("INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'workspace', 'offline')", vec![Arg::Id(ordinary)]),
            (
                "INSERT INTO public.workspaces (id, kind, status, model) VALUES ($1, 'workspace', 'offline', 'anthropic:claude-opus-4-7')",
                vec![Arg::Id(byok)],
            ),
            ("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)", vec![Arg::Id(byok), Arg::Text(key)]),
        ],
    )
    .await
    .described("the platform's workspaces")?;
    execute_with(&mut admin, "SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 401)", &[Arg::Id(byok)])
        .await
        .described("a dead verdict")?;
    Ok(Platform { db, admin, platform, bare, ordinary, byok, model })
}

/// What must still hold after refused attacks (checked as the superuser).
async fn nothing_changed(p: &mut Platform) -> Result<()> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT workspace_id, key FROM public.workspace_secrets ORDER BY 1, 2")
            .fetch_all(&mut p.admin)
            .await
            .described("secrets")?;
    let mut want = vec![(p.platform, "MODEL".to_string()), (p.byok, "ANTHROPIC_API_KEY".to_string())];
    want.sort();
    ensure!(rows == want, "the stored secrets changed: {rows:?}");
    let globals: i64 = sqlx::query_scalar("SELECT count(*) FROM public.global_secrets")
        .fetch_one(&mut p.admin)
        .await
        .described("globals")?;
    ensure!(globals == 0, "a global secret was written");
    let online: i64 = sqlx::query_scalar("SELECT count(*) FROM public.workspaces WHERE status = 'online'")
        .fetch_one(&mut p.admin)
        .await
        .described("online")?;
    ensure!(online == 0, "{online} workspaces went online");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM public.workspaces")
        .fetch_one(&mut p.admin)
        .await
        .described("count")?;
    ensure!(n == 4, "workspaces were added or removed ({n})");
    let model: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'MODEL')")
        .bind(p.platform)
        .fetch_one(&mut p.admin)
        .await
        .described("MODEL")?;
    ensure!(model.as_deref() == Some(p.model.as_str()), "the platform workspace's MODEL changed");
    Ok(())
}

/// One attempt: what it is, its statements (one transaction) and the SQLSTATE expected.
type Attempt<'a> = (String, Vec<(&'a str, Vec<Arg>)>, &'a str);

/// Expects each attempt (a transaction) to fail with its code.
async fn expect_refusals(conn: &mut PgConnection, attempts: Vec<Attempt<'_>>, leaks: &[&str]) -> Result<()> {
    let mut wrong = Vec::new();
    for (what, stmts, code) in attempts {
        let r = in_tx(conn, &stmts).await;
        let checked = match Code::ALL.iter().find(|c| c.sqlstate() == code) {
            Some(c) => expect_sg(r, *c),
            None => expect_sqlstate(r, code),
        };
        match checked {
            Ok(e) => e.assert_no_leak(leaks).with_context(|| what.clone())?,
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    if !wrong.is_empty() {
        bail!("{} attempt(s) not refused as expected:\n{}", wrong.len(), wrong.join("\n"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The catalog

/// Every function in schema secretgate: (signature, EXECUTE granted to PUBLIC
/// (else to its owner only), SECURITY DEFINER, search_path pinned). A new
/// function fails this trial until it is added here: decide its grants.
const FUNCTIONS: &[(&str, bool, bool, bool)] = &[
    ("secretgate.adoption_rows(regclass,regclass)", true, false, false),
    // Any role may call them; the code refuses one that is neither a superuser nor the tables' owner.
    ("secretgate.attach_check(regclass,regclass,regclass)", true, false, true),
    ("secretgate.attach_gates(regclass,regclass,regclass)", true, false, true),
    ("secretgate.audit_status()", true, false, false),
    ("secretgate.byok_credential_present(uuid,text)", true, false, false),
    ("secretgate.byok_credentials()", true, false, false),
    ("secretgate.check_byok(uuid)", true, false, false),
    ("secretgate.current_key_version()", true, false, false),
    ("secretgate.decrypt(bytea,integer,uuid,text)", false, false, false),
    // Event trigger function: detaches when an attached table is dropped,
    // as the extension's owner whoever drops (it runs only as an event trigger).
    ("secretgate.detach_dropped()", false, true, true),
    ("secretgate.detach_gates()", true, false, true),
    ("secretgate.encrypt(text,uuid,text)", false, false, false),
    ("secretgate.ensure_concierge_model(uuid,text)", true, false, false),
    ("secretgate.ensure_concierge_provider(uuid)", true, false, false),
    // Trigger functions: callable only as triggers; they run as their owner,
    // except the two per-row secret gates: SECURITY INVOKER (since 0.4.0),
    // they switch to the extension's owner in code around their reads.
    ("secretgate.gate_byok()", true, true, true),
    ("secretgate.gate_byok_model()", true, true, true),
    ("secretgate.gate_global_secret_write()", true, false, false),
    // History trigger: invoker, keeps versions as the extension's owner in code.
    ("secretgate.gate_history()", true, false, false),
    ("secretgate.global_secret_versions(text)", false, false, false),
    ("secretgate.gate_model_removed()", true, true, true),
    ("secretgate.gate_platform_identity()", true, true, true),
    ("secretgate.gate_secret_write()", true, false, false),
    ("secretgate.gate_secrets_truncate()", true, true, true),
    ("secretgate.gate_workspace_write()", true, true, true),
    // Event trigger function: callable only as an event trigger; runs as the DDL's author.
    ("secretgate.guard_attached_triggers()", true, false, true),
    ("secretgate.has_model_secret(uuid)", true, false, false),
    ("secretgate.key_check_status()", false, false, false),
    ("secretgate.key_formats()", true, false, false),
    ("secretgate.purge_history(uuid,text)", false, false, false),
    ("secretgate.read_global_secret(text)", true, false, false),
    ("secretgate.read_secret(uuid,text)", true, false, false),
    ("secretgate.record_liveness(uuid,text,integer,text)", false, true, true),
    ("secretgate.reencrypt(integer)", false, false, false),
    ("secretgate.reencrypt_skipping(integer)", false, false, false),
    ("secretgate.register_workspace(uuid)", true, false, false),
    ("secretgate.registry_changed()", true, false, false),
    ("secretgate.registry_upsert()", true, false, true),
    ("secretgate.rename_secret_key(text,text)", false, false, false),
    ("secretgate.resolve_provider(text,text)", true, false, false),
    ("secretgate.restore_global_secret(text,integer)", false, false, false),
    ("secretgate.restore_secret(uuid,text,integer)", false, false, false),
    ("secretgate.secret_versions(uuid,text)", false, false, false),
    ("secretgate.set_global_secret(text,text)", true, false, false),
    ("secretgate.set_secret(uuid,text,text)", true, false, false),
    ("secretgate.try_read_secret(uuid,text)", true, false, false),
    ("secretgate.verify_secrets()", true, false, false),
];

async fn catalog(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("p_catalog")).await?;
    // Grantees other than the owner, and the search_path setting if any.
    let rows: Vec<(String, Vec<String>, bool, Option<String>)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text,
                coalesce((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END ORDER BY 1)
                          FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                          WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '{}'),
                p.prosecdef,
                (SELECT substr(c, length('search_path=') + 1) FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
         FROM pg_proc p WHERE p.pronamespace = 'secretgate'::regnamespace ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .described("functions")?;

    let mut problems = Vec::new();
    for (sig, grantees, definer, path) in &rows {
        let Some((_, public, want_definer, want_pinned)) = FUNCTIONS.iter().find(|f| f.0 == sig) else {
            problems.push(format!("{sig}: not in the expected table (decide who may execute it)"));
            continue;
        };
        let want_grantees: Vec<String> = if *public { vec!["PUBLIC".into()] } else { vec![] };
        if grantees != &want_grantees {
            problems.push(format!("{sig}: EXECUTE granted to {grantees:?}, expected {want_grantees:?}"));
        }
        if definer != want_definer {
            problems.push(format!("{sig}: SECURITY DEFINER is {definer}, expected {want_definer}"));
        }
        if path.is_some() != *want_pinned {
            problems.push(format!("{sig}: search_path setting {path:?}, pinned expected: {want_pinned}"));
        }
        // A pinned search_path puts pg_catalog first and pg_temp last.
        if let Some(path) = path {
            let parts: Vec<&str> = path.split(',').map(str::trim).collect();
            if parts.first() != Some(&"pg_catalog") || parts.last() != Some(&"pg_temp") {
                problems.push(format!("{sig}: search_path {path:?} must start with pg_catalog and end with pg_temp"));
            }
        }
        if *definer && path.is_none() {
            problems.push(format!("{sig}: SECURITY DEFINER without a pinned search_path"));
        }
    }
    for (sig, ..) in FUNCTIONS {
        if !rows.iter().any(|r| r.0 == *sig) {
            problems.push(format!("{sig}: expected but missing"));
        }
    }
    // No other schema object is owned by a non-superuser or writable by PUBLIC.
    let writable: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
         WHERE c.relnamespace = 'secretgate'::regnamespace AND a.grantee = 0 AND a.privilege_type <> 'SELECT' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .described("table grants")?;
    if !writable.is_empty() {
        problems.push(format!("tables in secretgate with PUBLIC privileges beyond SELECT: {writable:?}"));
    }
    let schema_create: bool = sqlx::query_scalar("SELECT has_schema_privilege('public', 'secretgate', 'CREATE')")
        .fetch_one(&mut conn)
        .await
        .described("schema privilege")?;
    if schema_create {
        problems.push("PUBLIC may CREATE in schema secretgate".into());
    }
    ensure!(problems.is_empty(), "catalog check:\n{}", problems.join("\n"));
    Ok(())
}

/// Every function of the extension (pg_depend, not only schema secretgate)
/// that runs as its owner declares its search_path; the two per-row secret
/// gates run as the invoker.
async fn no_security_definer_function_lacks_a_declared_search_path(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut conn) = migrated_database(&cluster, &db_name("p_secdef")).await?;
    let undeclared: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
         JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'secretgate'
         WHERE p.prosecdef
           AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE starts_with(c, 'search_path='))
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .described("SECURITY DEFINER functions without a declared search_path")?;
    ensure!(undeclared.is_empty(), "SECURITY DEFINER functions without a declared search_path: {undeclared:?}");
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'secretgate'
         WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'",
    )
    .fetch_one(&mut conn)
    .await
    .described("the extension's functions")?;
    ensure!(members > 20, "the extension should own its functions in pg_depend (found {members})");
    for gate in ["secretgate.gate_secret_write()", "secretgate.gate_global_secret_write()"] {
        let definer: bool = sqlx::query_scalar("SELECT prosecdef FROM pg_proc WHERE oid = $1::regprocedure")
            .bind(gate)
            .fetch_one(&mut conn)
            .await
            .described(gate)?;
        ensure!(!definer, "{gate} should be SECURITY INVOKER (it switches to the extension's owner in code)");
    }
    Ok(())
}

/// An agent that may only INSERT into the secrets table (no SELECT on the
/// workspaces table) writes secrets directly: the gate reads the workspace's
/// kind as the extension's owner, so a platform workspace is still SG101 and
/// an ordinary one is written; with `search_path` set, under the attacker's
/// look-alike operators and decoy tables, the outcome is the same.
async fn agent_without_select(cluster: Arc<Cluster>, search_path: Option<&'static str>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_noselect").await?;
    let role = format!("bb_blind_{}", random_hex(4));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN IN ROLE secretgate_agent;
         GRANT INSERT ON public.workspace_secrets TO {role};
         GRANT CREATE ON DATABASE \"{db}\" TO {role};",
        db = p.db
    ))
    .execute(&mut p.admin)
    .await
    .described("an agent without SELECT on the workspaces table")?;
    let mut conn = connect_as(&cluster, &role, &p.db).await?;
    let can_read: bool = sqlx::query_scalar("SELECT has_table_privilege('public.workspaces', 'SELECT')")
        .fetch_one(&mut conn)
        .await
        .described("has_table_privilege")?;
    ensure!(!can_read, "the agent should not be able to read the workspaces table");
    expect_sqlstate(sqlx::query("SELECT kind FROM public.workspaces").execute(&mut conn).await, "42501")
        .context("the agent reads the workspaces table")?;
    if let Some(path) = search_path {
        sqlx::raw_sql(&attacker_objects(&p)).execute(&mut conn).await.described("the attacker's objects")?;
        sqlx::raw_sql(&format!("SET search_path = {path}")).execute(&mut conn).await.described("search_path")?;
    }
    let v = cluster.fresh_secret();
    let kr = cluster.initial_keys().keyring();
    let seal = |ws: Uuid, key: &str| -> Result<Vec<Arg>> {
        let (version, blob) =
            kr.encrypt(v.as_bytes(), Scope::Workspace(ws), key).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(version == 2, "the current key version is 2");
        Ok(vec![Arg::Id(ws), Arg::Text(key.to_string()), Arg::Bytes(blob)])
    };
    const INSERT: &str =
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, 2)";
    let attempts: Vec<Attempt<'_>> = vec![
        ("INSERT into a platform workspace".into(), vec![(INSERT, seal(p.platform, "BB_SELF")?)], "SG101"),
        ("INSERT into a platform workspace without MODEL".into(), vec![(INSERT, seal(p.bare, "BB_SELF")?)], "SG101"),
        (
            "INSERT into a workspace that does not exist".into(),
            vec![(INSERT, seal(Uuid::new_v4(), "BB_SELF")?)],
            "SG106",
        ),
    ];
    expect_refusals(&mut conn, attempts, &[&v]).await.with_context(|| format!("search_path {search_path:?}"))?;
    nothing_changed(&mut p).await.context("after the refused writes")?;
    in_tx(&mut conn, &[(INSERT, seal(p.ordinary, "BB_FINE")?)])
        .await
        .described(&format!("the agent's INSERT into an ordinary workspace (search_path {search_path:?})"))?;
    let stored: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'BB_FINE')")
        .bind(p.ordinary)
        .fetch_one(&mut p.admin)
        .await
        .described("read back")?;
    ensure!(
        stored.as_deref() == Some(v.as_str()),
        "the agent's secret of an ordinary workspace reads back differently"
    );
    sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'BB_FINE'")
        .bind(p.ordinary)
        .execute(&mut p.admin)
        .await
        .described("cleanup")?;
    nothing_changed(&mut p).await
}

async fn privileged_functions_refuse_a_plain_role(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_plain").await?;
    let role = create_role(&mut p.admin, &p.db, "bb_plain", false).await?;
    let mut conn = connect_as(&cluster, &role, &p.db).await?;
    let value = cluster.fresh_secret();
    let blob = cluster
        .initial_keys()
        .keyring()
        .encrypt(value.as_bytes(), Scope::Global, "BB_K")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .1;
    let attempts = vec![
        ("encrypt".to_string(), vec![("SELECT secretgate.encrypt($1, NULL, 'BB_K')", vec![Arg::Text(value.clone())])], "42501"),
        ("decrypt".to_string(), vec![("SELECT secretgate.decrypt($1, 2, NULL, 'BB_K')", vec![Arg::Bytes(blob)])], "42501"),
        (
            "attach_gates".to_string(),
            vec![("SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')", vec![])],
            "42501",
        ),
        ("detach_gates".to_string(), vec![("SELECT secretgate.detach_gates()", vec![])], "42501"),
        (
            "record_liveness".to_string(),
            vec![("SELECT secretgate.record_liveness($1, 'ANTHROPIC_API_KEY', 200)", vec![Arg::Id(p.byok)])],
            "42501",
        ),
        ("rename_secret_key".to_string(), vec![("SELECT secretgate.rename_secret_key('MODEL', 'BB_MODEL')", vec![])], "42501"),
        ("reencrypt".to_string(), vec![("SELECT secretgate.reencrypt(10)", vec![])], "42501"),
    ];
    expect_refusals(&mut conn, attempts, &[&value]).await?;
    // The dead verdict is still there.
    let verdict: String = sqlx::query_scalar("SELECT verdict FROM secretgate.liveness WHERE workspace_id = $1")
        .bind(p.byok)
        .fetch_one(&mut p.admin)
        .await
        .described("verdict")?;
    ensure!(verdict == "dead", "record_liveness by a plain role changed the verdict");
    nothing_changed(&mut p).await
}

// ---------------------------------------------------------------------------
// Look-alike objects on the search path

/// Functions, operators and tables an attacker puts before pg_catalog: every
/// `=` and `<>` it can think of answering false, lookalikes of the functions
/// a check might call, and decoy tables that say nothing is forbidden, every
/// model routes to the platform, and the platform workspaces are ordinary.
fn attacker_objects(p: &Platform) -> String {
    let mut sql = String::from("CREATE SCHEMA attacker;\n");
    for ty in ["text", "uuid", "integer", "bytea", "boolean", "name", "oid"] {
        let f = format!("attacker.never_{}", ty.replace(' ', "_"));
        sql.push_str(&format!(
            "CREATE FUNCTION {f}({ty}, {ty}) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
             CREATE OPERATOR attacker.= (LEFTARG = {ty}, RIGHTARG = {ty}, FUNCTION = {f});
             CREATE OPERATOR attacker.<> (LEFTARG = {ty}, RIGHTARG = {ty}, FUNCTION = {f});\n"
        ));
    }
    sql.push_str(
        "CREATE FUNCTION attacker.texteq(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE FUNCTION attacker.lower(text) RETURNS text LANGUAGE sql AS 'SELECT ''bb_nothing''';
         CREATE FUNCTION attacker.upper(text) RETURNS text LANGUAGE sql AS 'SELECT ''BB_NOTHING''';
         CREATE FUNCTION attacker.length(text) RETURNS integer LANGUAGE sql AS 'SELECT 0';
         CREATE FUNCTION attacker.starts_with(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
         CREATE FUNCTION attacker.\"coalesce\"(text, text) RETURNS text LANGUAGE sql AS 'SELECT ''workspace''';
         CREATE FUNCTION attacker.nullif(text, text) RETURNS text LANGUAGE sql AS 'SELECT NULL::text';
         CREATE FUNCTION attacker.pg_has_role(name, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE FUNCTION attacker.pg_has_role(name, name, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE FUNCTION attacker.pg_has_role(oid, oid, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE FUNCTION attacker.\"current_user\"() RETURNS name LANGUAGE sql AS 'SELECT ''postgres''::name';
         CREATE FUNCTION attacker.\"session_user\"() RETURNS name LANGUAGE sql AS 'SELECT ''postgres''::name';
         CREATE FUNCTION attacker.current_setting(text) RETURNS text LANGUAGE sql AS 'SELECT ''operator''';
         CREATE FUNCTION attacker.current_setting(text, boolean) RETURNS text LANGUAGE sql AS 'SELECT ''operator''';
         CREATE FUNCTION attacker.format(text, text, text) RETURNS text LANGUAGE sql AS 'SELECT ''attacker.workspaces''';
         CREATE FUNCTION attacker.resolve_provider(text, text) RETURNS text LANGUAGE sql AS 'SELECT ''platform''';
         CREATE FUNCTION attacker.pg_notify(text, text) RETURNS void LANGUAGE sql AS '';
         CREATE FUNCTION attacker.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT ''2000-01-01''::timestamptz';
         CREATE TABLE attacker.workspaces (id uuid, kind text, status text, runtime text, model text);
         CREATE TABLE attacker.workspace_secrets (workspace_id uuid, key text, encrypted_value bytea, encryption_version integer);
         CREATE TABLE attacker.global_secrets (key text, encrypted_value bytea, encryption_version integer);
         CREATE TABLE attacker.providers (name text, is_platform boolean, auth_env text[], base_url text, auth_header text, auth_scheme text);
         CREATE TABLE attacker.model_routes (pattern text, provider text, runtime text);
         CREATE TABLE attacker.forbidden_keys (key text, reason text);
         CREATE TABLE attacker.liveness (workspace_id uuid, key text, ciphertext_sha256 bytea, verdict text, http_status integer, checked_at timestamptz);
         CREATE TABLE attacker.attached_tables (singleton boolean, workspaces regclass, secrets regclass, global_secrets regclass, attached_at timestamptz);
         INSERT INTO attacker.providers VALUES ('platform', true, '{}', NULL, 'Authorization', 'Bearer');
         INSERT INTO attacker.model_routes VALUES ('', 'platform', NULL);
         INSERT INTO attacker.attached_tables VALUES (true, 'attacker.workspaces', 'attacker.workspace_secrets', 'attacker.global_secrets', now());\n",
    );
    for id in [p.platform, p.bare, p.ordinary, p.byok] {
        sql.push_str(&format!("INSERT INTO attacker.workspaces VALUES ('{id}', 'workspace', 'online', NULL, NULL);\n"));
    }
    sql.push_str(&format!(
        "INSERT INTO attacker.workspace_secrets VALUES ('{}', 'MODEL', '\\x00', 1), ('{}', 'OPENAI_API_KEY', '\\x00', 1);\n",
        p.bare, p.ordinary
    ));
    // The same decoys as temp tables (pg_temp is searched first for relations unless listed).
    for table in [
        "workspaces",
        "workspace_secrets",
        "global_secrets",
        "providers",
        "model_routes",
        "forbidden_keys",
        "liveness",
        "attached_tables",
    ] {
        sql.push_str(&format!("CREATE TEMP TABLE {table} AS SELECT * FROM attacker.{table};\n"));
    }
    sql
}

/// An agent with look-alikes on `search_path` attempts every gated write.
async fn lookalikes(cluster: Arc<Cluster>, search_path: &'static str) -> Result<()> {
    let mut p = platform_db(&cluster, "p_lookalike").await?;
    let agent = create_role(&mut p.admin, &p.db, "bb_attacker", true).await?;
    let mut conn = connect_as(&cluster, &agent, &p.db).await?;
    sqlx::raw_sql(&attacker_objects(&p)).execute(&mut conn).await.described("the attacker's objects")?;
    sqlx::raw_sql(&format!("SET search_path = {search_path}")).execute(&mut conn).await.described("search_path")?;
    // The look-alikes are live for the attacker's own statements.
    let hijacked: bool =
        sqlx::query_scalar("SELECT NOT ('a'::text = 'a'::text) AND NOT ($1::uuid IS NOT DISTINCT FROM $1::uuid)")
            .bind(p.platform)
            .fetch_one(&mut conn)
            .await
            .described("probe")?;
    if search_path.contains("attacker, pg_catalog") {
        ensure!(hijacked, "the attacker's operators should shadow pg_catalog's with search_path {search_path}");
    }

    let v = cluster.fresh_secret();
    let kr = cluster.initial_keys().keyring();
    let seal = |ws: Uuid, key: &str, value: &str| -> Result<Vec<Arg>> {
        let (version, blob) =
            kr.encrypt(value.as_bytes(), Scope::Workspace(ws), key).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(version == 2, "the current key version is 2");
        Ok(vec![Arg::Id(ws), Arg::Text(key.to_string()), Arg::Bytes(blob)])
    };
    // The attacker's own statements name pg_catalog's `=`: its look-alikes would only empty its own WHERE clauses.
    const INSERT: &str =
        "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ($1, $2, $3, 2)";
    let attempts: Vec<Attempt<'_>> = vec![
        (
            "set_secret to a platform workspace".into(),
            vec![("SELECT secretgate.set_secret($1, 'BB_SELF', $2)", vec![Arg::Id(p.platform), Arg::Text(v.clone())])],
            "SG101",
        ),
        ("INSERT into a platform workspace".into(), vec![(INSERT, seal(p.platform, "BB_SELF", &v)?)], "SG101"),
        (
            "DELETE of a platform workspace's MODEL".into(),
            vec![("DELETE FROM public.workspace_secrets WHERE workspace_id OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) 'MODEL'", vec![Arg::Id(p.platform)])],
            "SG101",
        ),
        (
            "set_secret of a forbidden key".into(),
            vec![("SELECT secretgate.set_secret($1, 'MODEL_PROVIDER', $2)", vec![Arg::Id(p.ordinary), Arg::Text(v.clone())])],
            "SG105",
        ),
        ("INSERT of a forbidden key".into(), vec![(INSERT, seal(p.ordinary, "MODEL_PROVIDER", &v)?)], "SG105"),
        (
            "set_global_secret of a forbidden key".into(),
            vec![("SELECT secretgate.set_global_secret('MODEL_PROVIDER', $1)", vec![Arg::Text(v.clone())])],
            "SG105",
        ),
        (
            "set_secret of a MODEL equal to a provider name".into(),
            vec![("SELECT secretgate.set_secret($1, 'MODEL', 'openai')", vec![Arg::Id(p.ordinary)])],
            "SG107",
        ),
        ("INSERT of a MODEL equal to a provider name".into(), vec![(INSERT, seal(p.ordinary, "MODEL", "openai")?)], "SG107"),
        (
            "a platform workspace online without MODEL".into(),
            vec![("UPDATE public.workspaces SET status = 'online' WHERE id OPERATOR(pg_catalog.=) $1", vec![Arg::Id(p.bare)])],
            "SG102",
        ),
        (
            "a new BYOK workspace without a credential".into(),
            vec![("INSERT INTO public.workspaces (kind, status, model) VALUES ('workspace', 'online', 'anthropic:claude-opus-4-7')", vec![])],
            "SG103",
        ),
        (
            "a workspace switched to a BYOK model without a credential".into(),
            vec![("UPDATE public.workspaces SET model = 'gpt-5', status = 'online' WHERE id OPERATOR(pg_catalog.=) $1", vec![Arg::Id(p.ordinary)])],
            "SG103",
        ),
        (
            "a BYOK workspace online with a dead credential".into(),
            vec![("UPDATE public.workspaces SET status = 'online' WHERE id OPERATOR(pg_catalog.=) $1", vec![Arg::Id(p.byok)])],
            "SG104",
        ),
        ("check_byok of a dead credential".into(), vec![("SELECT secretgate.check_byok($1)", vec![Arg::Id(p.byok)])], "SG104"),
    ];
    expect_refusals(&mut conn, attempts, &[&v]).await.with_context(|| format!("search_path = {search_path}"))?;

    // Registration reports its failures instead of raising, and commits them.
    for (ws, want) in [(p.bare, "PLATFORM_AGENT_IDENTITY_GATE"), (p.byok, "BYOK_CREDENTIAL_INVALID")] {
        let mut tx = conn.begin().await.described("BEGIN")?;
        let got: (String, Option<String>) =
            sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)")
                .bind(ws)
                .fetch_one(&mut *tx)
                .await
                .described("register_workspace")?;
        ensure!(
            got == ("failed".to_string(), Some(want.to_string())),
            "register_workspace under {search_path}: {got:?}, expected failed {want}"
        );
        tx.commit().await.described("commit of the failed registration")?;
        sqlx::query("UPDATE public.workspaces SET status = 'offline' WHERE id = $1")
            .bind(ws)
            .execute(&mut p.admin)
            .await
            .described("reset")?;
    }
    // Reads are not fooled either.
    let has: (bool, bool) = sqlx::query_as("SELECT secretgate.has_model_secret($1), secretgate.has_model_secret($2)")
        .bind(p.platform)
        .bind(p.bare)
        .fetch_one(&mut conn)
        .await
        .described("has_model_secret")?;
    ensure!(has == (true, false), "has_model_secret under {search_path}: {has:?}");
    let present: (bool, bool) = sqlx::query_as(
        "SELECT secretgate.byok_credential_present($1, 'anthropic'), secretgate.byok_credential_present($2, 'openai')",
    )
    .bind(p.byok)
    .bind(p.ordinary)
    .fetch_one(&mut conn)
    .await
    .described("byok_credential_present")?;
    ensure!(present == (true, false), "byok_credential_present under {search_path}: {present:?}");
    let model: (String, Option<String>) =
        sqlx::query_as("SELECT state, value FROM secretgate.try_read_secret($1, 'MODEL')")
            .bind(p.platform)
            .fetch_one(&mut conn)
            .await
            .described("try_read_secret")?;
    ensure!(
        model.0 == "value" && model.1.as_deref() == Some(p.model.as_str()),
        "try_read_secret under {search_path}: {}",
        model.0
    );
    let provider: String = sqlx::query_scalar("SELECT secretgate.ensure_concierge_provider($1)")
        .bind(p.platform)
        .fetch_one(&mut conn)
        .await
        .described("ensure_concierge_provider")?;
    ensure!(provider == "skipped_byok", "ensure_concierge_provider under {search_path}: {provider}");
    conn.close().await.ok();
    nothing_changed(&mut p).await
}

/// The DBA re-attaches with the attacker's schema before pg_catalog: the
/// triggers' WHEN clauses must still use pg_catalog's operators.
async fn attach_under_hostile_search_path(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_attach").await?;
    let agent = create_role(&mut p.admin, &p.db, "bb_attacker", true).await?;
    let mut conn = connect_as(&cluster, &agent, &p.db).await?;
    sqlx::raw_sql(&attacker_objects(&p)).execute(&mut conn).await.described("the attacker's objects")?;
    sqlx::raw_sql(
        "SELECT secretgate.detach_gates();
         SET search_path = attacker, pg_catalog;
         SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets');
         RESET search_path;",
    )
    .execute(&mut p.admin)
    .await
    .described("re-attach under the attacker's search_path")?;
    let bound: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE tgname LIKE 'secretgate%' AND pg_get_triggerdef(oid) LIKE '%attacker%' ORDER BY 1",
    )
    .fetch_all(&mut p.admin)
    .await
    .described("trigger definitions")?;
    ensure!(bound.is_empty(), "triggers bound to the attacker's operators: {bound:?}");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'secretgate%' AND NOT tgisinternal")
            .fetch_one(&mut p.admin)
            .await
            .described("triggers")?;
    // 8 gates and (0.5.0) 5 history triggers.
    ensure!(n == 13, "expected the 13 gate and history triggers after re-attaching, found {n}");
    let attempts: Vec<Attempt<'_>> = vec![
        (
            "a platform workspace online without MODEL".into(),
            vec![("UPDATE public.workspaces SET status = 'online' WHERE id = $1", vec![Arg::Id(p.bare)])],
            "SG102",
        ),
        (
            "a new BYOK workspace without a credential".into(),
            vec![("INSERT INTO public.workspaces (kind, status, model) VALUES ('workspace', 'online', 'anthropic:claude-opus-4-7')", vec![])],
            "SG103",
        ),
        (
            "a BYOK workspace online with a dead credential".into(),
            vec![("UPDATE public.workspaces SET status = 'online' WHERE id = $1", vec![Arg::Id(p.byok)])],
            "SG104",
        ),
    ];
    // The agent, and the superuser alike (the deferred gates apply to everyone).
    expect_refusals(&mut conn, attempts.clone(), &[]).await.context("the agent")?;
    expect_refusals(&mut p.admin, attempts, &[]).await.context("the superuser")?;
    // The platform workspace with its MODEL may go online; its MODEL then cannot go.
    in_tx(&mut p.admin, &[("UPDATE public.workspaces SET status = 'online' WHERE id = $1", vec![Arg::Id(p.platform)])])
        .await
        .described("a platform workspace with its MODEL goes online")?;
    let r = in_tx(
        &mut p.admin,
        &[(
            "DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'",
            vec![Arg::Id(p.platform)],
        )],
    )
    .await;
    expect_sg(r, Code::PlatformAgentIdentityGate).context("deleting the MODEL of an online platform workspace")?;
    sqlx::query("UPDATE public.workspaces SET status = 'offline' WHERE id = $1")
        .bind(p.platform)
        .execute(&mut p.admin)
        .await
        .described("reset")?;
    nothing_changed(&mut p).await
}

// ---------------------------------------------------------------------------
// Switching the gates off, writing the registry

async fn non_owner_cannot_switch_gates_off(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_owner").await?;
    let mut results = Vec::new();
    for agent in [false, true] {
        let role = create_role(&mut p.admin, &p.db, if agent { "bb_agent" } else { "bb_service" }, agent).await?;
        let mut conn = connect_as(&cluster, &role, &p.db).await?;
        let owner_of = format!("ALTER FUNCTION secretgate.read_secret(uuid, text) OWNER TO {role}");
        let stmts: Vec<String> = vec![
            "ALTER TABLE public.workspace_secrets DISABLE TRIGGER secretgate_secret_write".into(),
            "ALTER TABLE public.workspace_secrets DISABLE TRIGGER ALL".into(),
            "ALTER TABLE public.workspaces DISABLE TRIGGER USER".into(),
            "ALTER TABLE public.workspaces ENABLE REPLICA TRIGGER secretgate_platform_identity".into(),
            "DROP TRIGGER secretgate_secret_write ON public.workspace_secrets".into(),
            "DROP TRIGGER secretgate_platform_identity ON public.workspaces".into(),
            "SET session_replication_role = replica".into(),
            "SET LOCAL session_replication_role = replica".into(),
            "SELECT set_config('session_replication_role', 'replica', true)".into(),
            "DROP FUNCTION secretgate.gate_secret_write()".into(),
            "DROP FUNCTION secretgate.gate_platform_identity() CASCADE".into(),
            "CREATE OR REPLACE FUNCTION secretgate.gate_secret_write() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'".into(),
            "CREATE OR REPLACE FUNCTION secretgate.read_secret(uuid, text) RETURNS text LANGUAGE sql AS 'SELECT NULL::text'".into(),
            "CREATE FUNCTION secretgate.bb_extra() RETURNS integer LANGUAGE sql AS 'SELECT 1'".into(),
            "ALTER FUNCTION secretgate.gate_secret_write() SECURITY INVOKER".into(),
            "ALTER FUNCTION secretgate.gate_secret_write() RESET search_path".into(),
            "ALTER FUNCTION secretgate.gate_workspace_write() RENAME TO bb_renamed".into(),
            "ALTER FUNCTION secretgate.set_secret(uuid, text, text) SET search_path = public".into(),
            owner_of,
            "ALTER EXTENSION secretgate DROP FUNCTION secretgate.gate_secret_write()".into(),
            "DROP EXTENSION secretgate CASCADE".into(),
            "ALTER SCHEMA secretgate RENAME TO bb_gone".into(),
            "SELECT secretgate.detach_gates()".into(),
            "SET ROLE postgres".into(),
            "SET SESSION AUTHORIZATION postgres".into(),
        ];
        for sql in &stmts {
            results.push((format!("{role}: {sql}"), in_tx(&mut conn, &[(sql.as_str(), vec![])]).await));
        }
    }
    let mut wrong = Vec::new();
    for (what, r) in results {
        if let Err(e) = expect_sqlstate(r, "42501") {
            wrong.push(format!("{what}: {e:#}"));
        }
    }
    ensure!(wrong.is_empty(), "not refused with 42501:\n{}", wrong.join("\n"));
    // The gates are all still in place and enabled.
    let enabled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'secretgate%' AND NOT tgisinternal AND tgenabled = 'O'",
    )
    .fetch_one(&mut p.admin)
    .await
    .described("triggers")?;
    ensure!(enabled == 13, "{enabled} of the 13 gate and history triggers are enabled");
    nothing_changed(&mut p).await
}

/// A role granted TRIGGER on an attached table could add a BEFORE trigger
/// that sorts after secretgate's and rewrites a row the gate already checked
/// (say, an agent's write redirected into the platform workspace). Adding a
/// trigger there is the owner's alone: 42501 for anyone else, while the owner
/// keeps its own triggers and the role keeps TRIGGER on other tables.
async fn trigger_privilege_cannot_add_triggers(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_trigger").await?;
    let role = create_role(&mut p.admin, &p.db, "bb_agent", true).await?;
    sqlx::raw_sql(&format!(
        "GRANT TRIGGER ON public.workspaces, public.workspace_secrets, public.global_secrets TO {role};
         CREATE TABLE public.bb_other (id int);
         GRANT TRIGGER ON public.bb_other TO {role};"
    ))
    .execute(&mut p.admin)
    .await
    .described("grant TRIGGER")?;
    let mut conn = connect_as(&cluster, &role, &p.db).await?;
    let redirect = format!(
        "CREATE SCHEMA bb_evil;
         CREATE FUNCTION bb_evil.redirect() RETURNS trigger LANGUAGE plpgsql AS
           'BEGIN NEW.workspace_id := ''{platform}''; RETURN NEW; END';
         CREATE FUNCTION bb_evil.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';",
        platform = p.platform
    );
    sqlx::raw_sql(&redirect).execute(&mut conn).await.described("the attacker's trigger functions")?;
    let mut wrong = Vec::new();
    for (table, function) in [
        ("public.workspace_secrets", "bb_evil.redirect"),
        ("public.workspaces", "bb_evil.noop"),
        ("public.global_secrets", "bb_evil.noop"),
    ] {
        for timing in ["BEFORE INSERT OR UPDATE", "AFTER INSERT"] {
            let sql =
                format!("CREATE TRIGGER zz_redirect {timing} ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()");
            if let Err(e) = expect_sqlstate(in_tx(&mut conn, &[(sql.as_str(), vec![])]).await, "42501") {
                wrong.push(format!("{sql}: {e:#}"));
            }
        }
    }
    ensure!(wrong.is_empty(), "a non-owner added a trigger to an attached table:\n{}", wrong.join("\n"));
    // What the trigger would have done is refused, since it does not exist.
    let r = in_tx(
        &mut conn,
        &[("SELECT secretgate.set_secret($1, 'NOTES', 'v')", vec![Arg::Id(p.ordinary)]), ("SELECT 1", vec![])],
    )
    .await;
    ensure!(
        r.is_ok(),
        "the agent's own write to an ordinary workspace should pass: {:?}",
        r.err().map(|e| describe(&e))
    );
    execute_with(&mut p.admin, "DELETE FROM public.workspace_secrets WHERE workspace_id = $1", &[Arg::Id(p.ordinary)])
        .await
        .described("clean up")?;
    // TRIGGER elsewhere is untouched, and the owner adds triggers as before.
    in_tx(
        &mut conn,
        &[(
            "CREATE TRIGGER bb_fine BEFORE INSERT ON public.bb_other FOR EACH ROW EXECUTE FUNCTION bb_evil.noop()",
            vec![],
        )],
    )
    .await
    .described("a trigger on a table secretgate does not guard")?;
    sqlx::raw_sql(
        "CREATE FUNCTION public.bb_touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TRIGGER bb_owner_trigger BEFORE UPDATE ON public.workspace_secrets FOR EACH ROW EXECUTE FUNCTION public.bb_touch();
         DROP TRIGGER bb_owner_trigger ON public.workspace_secrets;",
    )
    .execute(&mut p.admin)
    .await
    .described("the owner's own trigger")?;
    nothing_changed(&mut p).await
}

async fn non_owner_cannot_write_secretgate_tables(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_registry").await?;
    let role = create_role(&mut p.admin, &p.db, "bb_agent", true).await?;
    let mut conn = connect_as(&cluster, &role, &p.db).await?;
    let stmts = [
        "INSERT INTO secretgate.attached_tables (workspaces, secrets, global_secrets) VALUES ('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
        "UPDATE secretgate.attached_tables SET workspaces = 'public.global_secrets'",
        "DELETE FROM secretgate.attached_tables",
        "TRUNCATE secretgate.attached_tables",
        "INSERT INTO secretgate.providers (name, is_platform) VALUES ('bb_evil', true)",
        "UPDATE secretgate.providers SET is_platform = true",
        "DELETE FROM secretgate.providers WHERE name = 'openai'",
        "TRUNCATE secretgate.providers CASCADE",
        "INSERT INTO secretgate.model_routes (pattern, provider) VALUES ('', 'platform')",
        "UPDATE secretgate.model_routes SET provider = 'platform'",
        "DELETE FROM secretgate.model_routes",
        "TRUNCATE secretgate.model_routes",
        "INSERT INTO secretgate.forbidden_keys (key, reason) VALUES ('BB_KEY', 'x')",
        "UPDATE secretgate.forbidden_keys SET key = 'BB_OTHER'",
        "DELETE FROM secretgate.forbidden_keys",
        "TRUNCATE secretgate.forbidden_keys",
        "INSERT INTO secretgate.liveness (workspace_id, key, ciphertext_sha256, verdict, http_status) VALUES (NULL, 'BB_K', '\\x00', 'ok', 200)",
        "UPDATE secretgate.liveness SET verdict = 'ok'",
        "DELETE FROM secretgate.liveness",
        "TRUNCATE secretgate.liveness",
        "ALTER TABLE secretgate.providers DISABLE TRIGGER ALL",
        "ALTER TABLE secretgate.liveness DROP CONSTRAINT liveness_verdict_check",
        "CREATE POLICY bb ON secretgate.liveness USING (false)",
    ];
    let mut wrong = Vec::new();
    for sql in stmts {
        if let Err(e) = expect_sqlstate(in_tx(&mut conn, &[(sql, vec![])]).await, "42501") {
            wrong.push(format!("{sql}: {e:#}"));
        }
    }
    ensure!(wrong.is_empty(), "not refused with 42501:\n{}", wrong.join("\n"));
    // And the reads stay open to everyone: the gates' inputs are no secret.
    for table in ["attached_tables", "providers", "model_routes", "forbidden_keys", "liveness"] {
        execute_with(&mut conn, &format!("SELECT count(*) FROM secretgate.{table}"), &[]).await.described(table)?;
    }
    let dead: String = sqlx::query_scalar("SELECT verdict FROM secretgate.liveness WHERE workspace_id = $1")
        .bind(p.byok)
        .fetch_one(&mut p.admin)
        .await
        .described("verdict")?;
    ensure!(dead == "dead", "the verdict changed");
    nothing_changed(&mut p).await
}

// ---------------------------------------------------------------------------
// Callers

async fn agent_claiming_another_caller(cluster: Arc<Cluster>) -> Result<()> {
    let mut p = platform_db(&cluster, "p_caller").await?;
    let agent = create_role(&mut p.admin, &p.db, "bb_agent", true).await?;
    let service = create_role(&mut p.admin, &p.db, "bb_service", false).await?;
    // The agent can become the service role, and call its SECURITY DEFINER helpers.
    sqlx::raw_sql(&format!(
        "GRANT {service} TO {agent};
         CREATE FUNCTION public.bb_service_write(ws uuid, k text, v text) RETURNS void LANGUAGE sql SECURITY DEFINER
             SET search_path = pg_catalog AS 'SELECT secretgate.set_secret(ws, k, v)';
         ALTER FUNCTION public.bb_service_write(uuid, text, text) OWNER TO {service};
         CREATE FUNCTION public.bb_service_delete(ws uuid) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
             SET search_path = pg_catalog AS $$ BEGIN SET LOCAL secretgate.caller = 'operator';
             DELETE FROM public.workspace_secrets WHERE workspace_id = ws AND key = 'MODEL'; END $$;
         ALTER FUNCTION public.bb_service_delete(uuid) OWNER TO {service};
         REVOKE EXECUTE ON FUNCTION public.bb_service_write(uuid, text, text), public.bb_service_delete(uuid) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION public.bb_service_write(uuid, text, text), public.bb_service_delete(uuid) TO {agent};"
    ))
    .execute(&mut p.admin)
    .await
    .described("the service role and its helpers")?;
    let v = cluster.fresh_secret();
    let write = || ("SELECT secretgate.set_secret($1, 'BB_SELF', $2)", vec![Arg::Id(p.platform), Arg::Text(v.clone())]);
    let delete = || {
        ("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'", vec![Arg::Id(p.platform)])
    };
    let set_role = format!("SET LOCAL ROLE {service}");
    let set_role = set_role.as_str();
    let session_auth = format!("SET SESSION AUTHORIZATION {service}");
    let mut attempts: Vec<Attempt<'_>> = Vec::new();
    for setting in ["operator", "workspace", "unset"] {
        let set = match setting {
            "operator" => "SET LOCAL secretgate.caller = 'operator'",
            "workspace" => "SET LOCAL secretgate.caller = 'workspace'",
            _ => "SET LOCAL secretgate.caller = 'unset'",
        };
        attempts.push((format!("caller {setting}: set_secret"), vec![(set, vec![]), write()], "SG101"));
        attempts.push((format!("caller {setting}: DELETE"), vec![(set, vec![]), delete()], "SG101"));
    }
    attempts.push((
        "set_config('secretgate.caller', 'operator')".into(),
        vec![("SELECT set_config('secretgate.caller', 'operator', true)", vec![]), write()],
        "SG101",
    ));
    attempts.push((format!("{set_role}: set_secret"), vec![(set_role, vec![]), write()], "SG101"));
    attempts.push((
        format!("{set_role} and caller operator: DELETE"),
        vec![(set_role, vec![]), ("SET LOCAL secretgate.caller = 'operator'", vec![]), delete()],
        "SG101",
    ));
    attempts.push((
        "the service's SECURITY DEFINER set_secret".into(),
        vec![("SELECT public.bb_service_write($1, 'BB_SELF', $2)", vec![Arg::Id(p.platform), Arg::Text(v.clone())])],
        "SG101",
    ));
    attempts.push((
        "the service's SECURITY DEFINER DELETE with caller operator".into(),
        vec![("SELECT public.bb_service_delete($1)", vec![Arg::Id(p.platform)])],
        "SG101",
    ));
    attempts.push((
        "SET secretgate.caller to an unknown value".into(),
        vec![("SET LOCAL secretgate.caller = 'superuser'", vec![])],
        "22023",
    ));
    attempts.push(("SET ROLE to the superuser".into(), vec![("SET LOCAL ROLE postgres", vec![])], "42501"));
    attempts.push(("SET SESSION AUTHORIZATION to the service".into(), vec![(session_auth.as_str(), vec![])], "42501"));
    let mut conn = connect_as(&cluster, &agent, &p.db).await?;
    expect_refusals(&mut conn, attempts, &[&v]).await?;

    // A session default set on the role itself changes nothing either.
    execute_with(&mut conn, &format!("ALTER ROLE {agent} SET secretgate.caller = 'operator'"), &[])
        .await
        .described("ALTER ROLE ... SET")?;
    let mut conn = connect_as(&cluster, &agent, &p.db).await?;
    let setting: String = sqlx::query_scalar("SHOW secretgate.caller").fetch_one(&mut conn).await.described("SHOW")?;
    ensure!(setting == "operator", "the role default should be in force: {setting}");
    expect_refusals(&mut conn, vec![("role default caller operator".into(), vec![write()], "SG101")], &[&v]).await?;

    // Control: the service role itself is no agent, so with caller operator it may write.
    let mut as_service = connect_as(&cluster, &service, &p.db).await?;
    in_tx(&mut as_service, &[("SET LOCAL secretgate.caller = 'operator'", vec![]), write()])
        .await
        .described("the service role's own write")?;
    let n = sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'BB_SELF'")
        .bind(p.platform)
        .execute(&mut p.admin)
        .await
        .described("cleanup")?
        .rows_affected();
    ensure!(n == 1, "the control write should have stored one row");
    nothing_changed(&mut p).await
}

// ---------------------------------------------------------------------------
// The keyring

async fn keyring_unreadable(cluster: Arc<Cluster>) -> Result<()> {
    let (_url, mut admin) = migrated_database(&cluster, &db_name("p_keyring")).await?;
    let db: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&mut admin).await.described("db")?;
    let path = cluster.keyring_path().to_str().context("keyring path")?.to_string();
    for (i, role_kind) in ["service", "agent"].iter().enumerate() {
        let role = create_role(&mut admin, &db, &format!("bb_{role_kind}"), i == 1).await?;
        let mut conn = connect_as(&cluster, &role, &db).await?;
        let path_arg = || vec![Arg::Text(path.clone())];
        let copy = format!("COPY pg_temp.bb_k FROM '{path}'");
        let attempts: Vec<Attempt<'_>> = vec![
            ("SHOW".into(), vec![("SHOW secretgate.keyring_file", vec![])], "42501"),
            ("SHOW the command".into(), vec![("SHOW secretgate.keyring_command", vec![])], "42501"),
            (
                "current_setting of the command".into(),
                vec![("SELECT current_setting('secretgate.keyring_command')", vec![])],
                "42501",
            ),
            (
                "set_config of the command".into(),
                vec![("SELECT set_config('secretgate.keyring_command', 'cat /tmp/x', false)", vec![])],
                "55P02",
            ),
            ("current_setting".into(), vec![("SELECT current_setting('secretgate.keyring_file')", vec![])], "42501"),
            (
                "current_setting missing_ok".into(),
                vec![("SELECT current_setting('secretgate.keyring_file', true)", vec![])],
                "42501",
            ),
            ("pg_file_settings".into(), vec![("SELECT * FROM pg_file_settings", vec![])], "42501"),
            ("pg_read_file".into(), vec![("SELECT pg_read_file($1)", path_arg())], "42501"),
            ("pg_read_binary_file".into(), vec![("SELECT pg_read_binary_file($1)", path_arg())], "42501"),
            ("pg_stat_file".into(), vec![("SELECT pg_stat_file($1)", path_arg())], "42501"),
            ("lo_import".into(), vec![("SELECT lo_import($1)", path_arg())], "42501"),
            (
                "COPY FROM the file".into(),
                vec![("CREATE TEMP TABLE bb_k (line text)", vec![]), (copy.as_str(), vec![])],
                "42501",
            ),
            ("SET".into(), vec![("SET secretgate.keyring_file = '/tmp/bb-other.json'", vec![])], "55P02"),
            (
                "set_config".into(),
                vec![("SELECT set_config('secretgate.keyring_file', '/tmp/bb-other.json', false)", vec![])],
                "55P02",
            ),
        ];
        expect_refusals(&mut conn, attempts, &[&path]).await.with_context(|| format!("as a {role_kind}"))?;
        // (ALTER SYSTEM cannot run in a transaction block.)
        expect_sqlstate(
            execute_with(&mut conn, "ALTER SYSTEM SET secretgate.keyring_file = '/tmp/bb-other.json'", &[]).await,
            "42501",
        )
        .context("ALTER SYSTEM")?;
        let shown: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_settings WHERE name = 'secretgate.keyring_file' OR setting = $1",
        )
        .bind(&path)
        .fetch_one(&mut conn)
        .await
        .described("pg_settings")?;
        ensure!(shown == 0, "pg_settings shows the keyring setting to a {role_kind}");
        let all: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pg_show_all_settings() WHERE name LIKE 'secretgate.%'")
                .fetch_all(&mut conn)
                .await
                .described("SHOW ALL")?;
        // The caller, (0.4.0) direct_index_read, keyring_command_timeout, the
        // audit and (0.5.0) history settings are no secret; the keyring file
        // and command are not listed.
        ensure!(
            all == vec![
                "secretgate.audit_queue_size".to_string(),
                "secretgate.audit_reads".to_string(),
                "secretgate.audit_retention".to_string(),
                "secretgate.caller".to_string(),
                "secretgate.direct_index_read".to_string(),
                "secretgate.history_keep".to_string(),
                "secretgate.history_retention".to_string(),
                "secretgate.keyring_command_timeout".to_string()
            ],
            "SHOW ALL lists {all:?} to a {role_kind}"
        );
        // The keyring still works for the role (it never needed to see it).
        let v: i32 = sqlx::query_scalar("SELECT secretgate.current_key_version()")
            .fetch_one(&mut conn)
            .await
            .described("version")?;
        ensure!(v == 2, "current_key_version for a {role_kind}: {v}");
    }
    // The file itself: a regular file, 0600, owned by the server's user.
    let meta = std::fs::metadata(cluster.keyring_path()).context("stat the keyring")?;
    let data = std::fs::metadata(cluster.data_dir()).context("stat the data directory")?;
    ensure!(meta.is_file(), "the keyring is not a regular file");
    ensure!(meta.permissions().mode() & 0o777 == 0o600, "keyring mode {:o}", meta.permissions().mode() & 0o777);
    ensure!(
        meta.uid() == data.uid(),
        "the keyring is owned by uid {}, the server runs as uid {}",
        meta.uid(),
        data.uid()
    );
    Ok(())
}
