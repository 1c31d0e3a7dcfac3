//! Black-box tests of the gates (CONTRACT §4–§6; DOMAIN incidents 1–3):
//! self-write (SG101/SG106), forbidden keys (SG105), MODEL values (SG107),
//! the platform-identity invariant at commit (SG102), register_workspace and
//! its NOTIFY, has_model_secret, the fail-closed concierge helpers and the
//! audit lines. Every refusal is checked for its exact SQLSTATE and for
//! "nothing changed", re-read on a fresh connection. Each trial has its own
//! database, so they run in parallel.

use anyhow::{anyhow, ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::libtest_mimic::{self, Arguments};
use secretgate_tests::*;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    let args = Arguments::from_args();
    let cluster = Arc::new(Cluster::start("gates"));
    migrate_once(&cluster);
    let trials = trials![&cluster;
        agent_setting_cannot_write_platform_secrets,
        agent_role_member_is_agent_whatever_it_sets,
        agent_write_to_unknown_workspace_is_sg106,
        refusal_raised_inside_set_secret_keeps_its_code,
        agent_may_write_ordinary_workspaces,
        operator_unset_and_superuser_may_write_platform,
        caller_setting_rejects_invalid_values,
        forbidden_key_model_provider_is_sg105,
        forbidden_key_changes_reach_every_session,
        model_equal_to_provider_name_is_sg107,
        platform_online_without_model_is_sg102,
        platform_online_with_unusable_model_is_sg102,
        online_platform_keeps_its_model,
        platform_created_online_with_model_in_one_transaction,
        kind_changed_to_platform_while_online_is_sg102,
        register_workspace_failure_commits_and_notifies,
        register_workspace_success_and_unknown_id,
        has_model_secret_states,
        ensure_concierge_provider_outcomes,
        ensure_concierge_provider_fails_closed,
        ensure_concierge_model_outcomes,
        refusals_are_audited_once_without_values,
        agent_deleting_workspaces_cascades_through_the_gate,
        agent_cannot_launder_a_write_through_a_kind_change,
        remembered_row_places_never_outlive_the_row,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    finish(cluster, conclusion)
}

// ---------------------------------------------------------------------------
// Self-write (SG101, SG106) and callers

async fn agent_setting_cannot_write_platform_secrets(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_selfwrite").await?;
    let model = model_value(&cluster);
    let p = db.platform("offline", Some(&model)).await?;
    let o = db.workspace("workspace", "online").await?;
    db.set(p, "BB_TOKEN", &cluster.fresh_secret()).await?;
    db.set(o, "BB_OTHER", &cluster.fresh_secret()).await?;
    let v = cluster.fresh_secret();
    let other_model = model_value(&cluster);

    let move_sql = "UPDATE public.workspace_secrets SET workspace_id = $2 WHERE workspace_id = $1 AND key = 'BB_TOKEN'";
    let move_in = "UPDATE public.workspace_secrets SET workspace_id = $2 WHERE workspace_id = $1 AND key = 'BB_OTHER'";
    let cases: Vec<(&str, Vec<Op>)> = vec![
        ("BB_NEW", vec![Op::Insert(p, "BB_NEW", &v)]),
        ("BB_NEW", vec![Op::SetSecret(p, "BB_NEW", &v)]),
        ("BB_TOKEN", vec![Op::Update(p, "BB_TOKEN", &v)]),
        ("BB_TOKEN", vec![Op::SetSecret(p, "BB_TOKEN", &v)]),
        ("BB_TOKEN", vec![Op::Delete(p, "BB_TOKEN")]),
        ("MODEL", vec![Op::Update(p, "MODEL", &other_model)]),
        ("MODEL", vec![Op::SetSecret(p, "MODEL", &other_model)]),
        ("MODEL", vec![Op::Delete(p, "MODEL")]),
        ("BB_TOKEN", vec![Op::Ws2(move_sql, p, o)]),
        ("BB_OTHER", vec![Op::Ws2(move_in, o, p)]),
        // A rename writes the new key name (the refusal names it).
        (
            "BB_RENAMED",
            vec![Op::Ws(
                "UPDATE public.workspace_secrets SET key = 'BB_RENAMED' WHERE workspace_id = $1 AND key = 'BB_TOKEN'",
                p,
            )],
        ),
        // A later allowed statement does not rescue the transaction.
        ("BB_NEW", vec![Op::SetSecret(o, "BB_FINE", &v), Op::Insert(p, "BB_NEW", &v)]),
    ];
    for (key, ops) in &cases {
        let e = db.refused(AGENT, ops, At::Statement, Code::ConciergeSelfWriteBlocked, Some(p), Some(key)).await?;
        e.assert_no_leak(&[&v, &model, &other_model])?;
    }
    // The upper-case spelling of the setting is the same enum value.
    db.refused(
        Some("AGENT"),
        &[Op::SetSecret(p, "BB_NEW", &v)],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(p),
        Some("BB_NEW"),
    )
    .await?;

    // Online: deleting MODEL as an agent is a self-write first (not SG102 at commit).
    db.allowed(OPERATOR, &[Op::Ws("UPDATE public.workspaces SET status = 'online' WHERE id = $1", p)]).await?;
    db.refused(
        AGENT,
        &[Op::Delete(p, "MODEL")],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(p),
        Some("MODEL"),
    )
    .await?;
    db.refused(
        AGENT,
        &[Op::Insert(p, "BB_NEW", &v)],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(p),
        Some("BB_NEW"),
    )
    .await?;
    Ok(())
}

async fn agent_role_member_is_agent_whatever_it_sets(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_member").await?;
    let model = model_value(&cluster);
    let p = db.platform("offline", Some(&model)).await?;
    let o = db.workspace("workspace", "offline").await?;
    db.set(p, "BB_TOKEN", &cluster.fresh_secret()).await?;
    let member = format!("bb_agent_{}", random_hex(4));
    let outsider = format!("bb_service_{}", random_hex(4));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {member} LOGIN IN ROLE secretgate_agent;
         CREATE ROLE {outsider} LOGIN;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspaces, public.workspace_secrets, public.global_secrets TO {member}, {outsider};"
    ))
    .execute(&mut db.conn)
    .await
    .described("roles")?;
    let v = cluster.fresh_secret();

    let mut as_member = Db {
        name: db.name.clone(),
        url: db.url.clone(),
        conn: PgConnection::connect(&cluster.url_as(&member, &db.name)).await.context("connect as the member")?,
        kr: cluster.initial_keys().keyring(),
    };
    for setting in [OPERATOR, UNSET, Some("workspace"), AGENT] {
        for ops in
            [vec![Op::Insert(p, "BB_NEW", &v)], vec![Op::SetSecret(p, "BB_NEW", &v)], vec![Op::Delete(p, "BB_TOKEN")]]
        {
            let key = if matches!(ops[0], Op::Delete(..)) { "BB_TOKEN" } else { "BB_NEW" };
            as_member
                .refused(setting, &ops, At::Statement, Code::ConciergeSelfWriteBlocked, Some(p), Some(key))
                .await
                .context(format!("member of secretgate_agent with secretgate.caller {setting:?}"))?;
        }
    }
    // The member stays an agent, and agents may write ordinary workspaces.
    as_member.allowed(OPERATOR, &[Op::Insert(o, "BB_MEMBER", &v), Op::SetSecret(o, "BB_MEMBER2", &v)]).await?;
    as_member.conn.close().await?;
    db.expect_value(o, "BB_MEMBER", &v, "member's write to an ordinary workspace").await?;

    // A superuser session that SET ROLEs to the member is an agent too.
    let set_role = format!("SET LOCAL ROLE {member}");
    db.refused(
        OPERATOR,
        &[Op::Sql(&set_role), Op::SetSecret(p, "BB_NEW", &v)],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(p),
        Some("BB_NEW"),
    )
    .await
    .context("superuser after SET ROLE to a secretgate_agent member")?;

    // A role outside secretgate_agent is an agent only when the setting says so.
    let mut as_outsider = Db {
        name: db.name.clone(),
        url: db.url.clone(),
        conn: PgConnection::connect(&cluster.url_as(&outsider, &db.name)).await.context("connect as the outsider")?,
        kr: cluster.initial_keys().keyring(),
    };
    as_outsider
        .refused(
            AGENT,
            &[Op::Insert(p, "BB_NEW", &v)],
            At::Statement,
            Code::ConciergeSelfWriteBlocked,
            Some(p),
            Some("BB_NEW"),
        )
        .await?;
    as_outsider.allowed(UNSET, &[Op::Insert(p, "BB_OUT1", &v)]).await.context("non-member, setting unset")?;
    as_outsider.allowed(OPERATOR, &[Op::SetSecret(p, "BB_OUT2", &v)]).await.context("non-member, setting operator")?;
    as_outsider.conn.close().await?;
    db.expect_value(p, "BB_OUT1", &v, "non-member's write").await?;
    db.expect_value(p, "BB_OUT2", &v, "non-member's write").await?;
    Ok(())
}

async fn agent_write_to_unknown_workspace_is_sg106(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_unknown").await?;
    let nobody = Uuid::new_v4();
    let v = cluster.fresh_secret();
    for ops in [vec![Op::SetSecret(nobody, "BB_K", &v)], vec![Op::Insert(nobody, "BB_K", &v)]] {
        db.refused(AGENT, &ops, At::Statement, Code::WorkspaceKindUnknown, Some(nobody), Some("BB_K"))
            .await?
            .assert_no_leak(&[&v])?;
    }
    Ok(())
}

/// `set_secret` checks the gates before it writes, but a transaction that
/// commits in between (here: the workspace becomes a platform one while the
/// agent's upsert waits for the row) leaves the refusal to the trigger, inside
/// the extension's own INSERT. The agent still gets SG101 with its JSON
/// DETAIL, not XX000 (pgrx knows only Postgres' own codes).
async fn refusal_raised_inside_set_secret_keeps_its_code(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut admin) = migrated_database(&cluster, &db_name("g_inside")).await?;
    let ws = Uuid::new_v4();
    let (old, new) = (cluster.fresh_secret(), cluster.fresh_secret());
    sqlx::query("INSERT INTO public.workspaces (id, kind) VALUES ($1, 'external')")
        .bind(ws)
        .execute(&mut admin)
        .await
        .described("ws")?;
    sqlx::query("SELECT secretgate.set_secret($1, 'NOTES', $2)")
        .bind(ws)
        .bind(&old)
        .execute(&mut admin)
        .await
        .described("seed")?;

    // An operator holds the secret's row.
    let mut operator = PgConnection::connect(&url).await.context("operator")?;
    let mut held = operator.begin().await?;
    sqlx::query("UPDATE public.workspace_secrets SET updated_at = now() WHERE workspace_id = $1 AND key = 'NOTES'")
        .bind(ws)
        .execute(&mut *held)
        .await
        .described("hold the row")?;
    // The agent's set_secret passes its pre-check and waits for the row.
    let (agent_url, value) = (url.clone(), new.clone());
    let agent = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&agent_url).await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL secretgate.caller = 'agent'").execute(&mut *tx).await?;
        sqlx::query("SELECT secretgate.set_secret($1, 'NOTES', $2)")
            .bind(ws)
            .bind(&value)
            .execute(&mut *tx)
            .await
            .map(|_| ())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut admin)
        .await
        .described("waiters")?;
        if waiting > 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "the agent's set_secret never waited for the held row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the workspace becomes a platform one.
    sqlx::query("UPDATE public.workspaces SET kind = 'platform' WHERE id = $1")
        .bind(ws)
        .execute(&mut *held)
        .await
        .described("kind")?;
    held.commit().await.described("commit")?;
    let result = agent.await.context("the agent's task")?;
    expect_sg(result, Code::ConciergeSelfWriteBlocked)?.assert_no_leak(&[&new, &old])?;
    let kept: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'NOTES')")
        .bind(ws)
        .fetch_one(&mut admin)
        .await
        .described("read back")?;
    ensure!(kept.as_deref() == Some(old.as_str()), "the refused write changed the secret");
    Ok(())
}

async fn agent_may_write_ordinary_workspaces(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_ordinary").await?;
    for kind in ["workspace", "external"] {
        let w = db.workspace(kind, "online").await?;
        let (a, b, c) = (cluster.fresh_secret(), cluster.fresh_secret(), cluster.fresh_secret());
        db.allowed(AGENT, &[Op::Insert(w, "BB_A", &a), Op::SetSecret(w, "BB_B", &b)]).await.context(kind)?;
        db.expect_value(w, "BB_A", &a, "agent INSERT").await?;
        db.expect_value(w, "BB_B", &b, "agent set_secret").await?;
        db.allowed(AGENT, &[Op::Update(w, "BB_A", &c), Op::SetSecret(w, "BB_B", &c)]).await.context(kind)?;
        db.expect_value(w, "BB_A", &c, "agent UPDATE").await?;
        db.expect_value(w, "BB_B", &c, "agent set_secret upsert").await?;
        db.allowed(AGENT, &[Op::Delete(w, "BB_A")]).await.context(kind)?;
        ensure!(!db.state().await?.has(w, "BB_A"), "an agent's DELETE on a {kind} workspace should remove the row");
        // Global secrets are not a platform workspace's.
        let g = format!("BB_G_{}", kind.to_uppercase());
        db.allowed(AGENT, &[Op::SetGlobal(&g, &a)]).await?;
        ensure!(
            db.read_global(&g).await?.as_deref() == Some(a.as_str()),
            "agent set_global_secret should store the value"
        );
    }
    Ok(())
}

async fn operator_unset_and_superuser_may_write_platform(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_operator").await?;
    let model = model_value(&cluster);
    let p = db.platform("online", Some(&model)).await?;
    // The superuser with no setting at all: a superuser is not an agent for being one.
    for (n, caller) in [OPERATOR, UNSET, Some("workspace")].into_iter().enumerate() {
        let (a, b) = (cluster.fresh_secret(), cluster.fresh_secret());
        let (ka, kb) = (format!("BB_A{n}"), format!("BB_B{n}"));
        db.allowed(caller, &[Op::Insert(p, &ka, &a), Op::SetSecret(p, &kb, &b)]).await?;
        db.expect_value(p, &ka, &a, "INSERT").await?;
        db.expect_value(p, &kb, &b, "set_secret").await?;
        db.allowed(caller, &[Op::Update(p, &ka, &b)]).await?;
        db.expect_value(p, &ka, &b, "UPDATE").await?;
        db.allowed(caller, &[Op::Delete(p, &ka)]).await?;
        ensure!(!db.state().await?.has(p, &ka), "{caller:?}: DELETE should remove the row");
    }
    let m2 = model_value(&cluster);
    db.allowed(UNSET, &[Op::SetSecret(p, "MODEL", &m2)])
        .await
        .context("the operator replaces MODEL with another usable one")?;
    db.expect_value(p, "MODEL", &m2, "MODEL replaced").await?;
    // Outside a transaction block too.
    let v = cluster.fresh_secret();
    sqlx::query("SELECT secretgate.set_secret($1, 'BB_AUTO', $2)")
        .bind(p)
        .bind(&v)
        .execute(&mut db.conn)
        .await
        .described("autocommit set_secret")?;
    db.expect_value(p, "BB_AUTO", &v, "autocommit set_secret").await?;
    Ok(())
}

async fn caller_setting_rejects_invalid_values(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_setting").await?;
    for bad in ["root", "", "agents", "superuser"] {
        let sql = format!("SET secretgate.caller = '{bad}'");
        expect_sqlstate(sqlx::raw_sql(&sql).execute(&mut db.conn).await, "22023").with_context(|| sql.clone())?;
        let r = run_tx(&mut db.conn, &db.kr, None, &[Op::Sql(&format!("SET LOCAL secretgate.caller = '{bad}'"))]).await;
        expect_sqlstate(r.map_err(|(_, e)| e), "22023")
            .with_context(|| format!("SET LOCAL secretgate.caller = '{bad}'"))?;
        let r = sqlx::query("SELECT set_config('secretgate.caller', $1, true)").bind(bad).execute(&mut db.conn).await;
        expect_sqlstate(r, "22023").with_context(|| format!("set_config('secretgate.caller', '{bad}')"))?;
    }
    let shown: String = sqlx::query_scalar("SHOW secretgate.caller").fetch_one(&mut db.conn).await.described("SHOW")?;
    ensure!(shown == "unset", "secretgate.caller should default to 'unset', got {shown:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Forbidden keys (SG105) and MODEL values (SG107)

async fn forbidden_key_model_provider_is_sg105(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_forbidden").await?;
    let model = model_value(&cluster);
    let p = db.platform("offline", Some(&model)).await?;
    let o = db.workspace("workspace", "offline").await?;
    db.set(o, "BB_TOKEN", &cluster.fresh_secret()).await?;
    db.allowed(OPERATOR, &[Op::SetGlobal("BB_G", &cluster.fresh_secret())]).await?;
    let v = "minimax";
    const K: &str = "MODEL_PROVIDER";
    for caller in [UNSET, OPERATOR] {
        for (ws, ops) in [
            (Some(o), vec![Op::Insert(o, K, v)]),
            (Some(o), vec![Op::SetSecret(o, K, v)]),
            (Some(p), vec![Op::Insert(p, K, v)]),
            (Some(p), vec![Op::SetSecret(p, K, v)]),
            (Some(o), vec![Op::Ws("UPDATE public.workspace_secrets SET key = 'MODEL_PROVIDER' WHERE workspace_id = $1 AND key = 'BB_TOKEN'", o)]),
            (None, vec![Op::InsertGlobal(K, v)]),
            (None, vec![Op::SetGlobal(K, v)]),
            (None, vec![Op::Sql("UPDATE public.global_secrets SET key = 'MODEL_PROVIDER' WHERE key = 'BB_G'")]),
        ] {
            db.refused(caller, &ops, At::Statement, Code::ForbiddenSecretKey, ws, Some(K)).await?;
        }
    }
    // An agent on an ordinary workspace meets the same gate.
    db.refused(AGENT, &[Op::SetSecret(o, K, v)], At::Statement, Code::ForbiddenSecretKey, Some(o), Some(K)).await?;

    // Legacy rows planted with the gates detached: updating them is refused, deleting is allowed.
    sqlx::query("SELECT secretgate.detach_gates()").execute(&mut db.conn).await.described("detach_gates")?;
    let planted = db
        .allowed(UNSET, &[Op::Insert(o, K, "claude-code"), Op::Insert(p, K, "minimax"), Op::InsertGlobal(K, "minimax")])
        .await;
    sqlx::query(
        "SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')",
    )
    .execute(&mut db.conn)
    .await
    .described("attach_gates")?;
    planted.context("planting MODEL_PROVIDER rows with the gates detached")?;
    db.refused(
        OPERATOR,
        &[Op::Update(o, K, "anthropic:claude-opus-4-7")],
        At::Statement,
        Code::ForbiddenSecretKey,
        Some(o),
        Some(K),
    )
    .await?;
    db.refused(
        OPERATOR,
        &[Op::UpdateGlobal(K, "anthropic:claude-opus-4-7")],
        At::Statement,
        Code::ForbiddenSecretKey,
        None,
        Some(K),
    )
    .await?;
    db.allowed(OPERATOR, &[Op::Delete(o, K), Op::Delete(p, K)])
        .await
        .context("deleting a legacy MODEL_PROVIDER row")?;
    db.allowed(UNSET, &[Op::DeleteGlobal(K)]).await.context("deleting a legacy global MODEL_PROVIDER row")?;
    let s = db.state().await?;
    ensure!(
        !s.has(o, K) && !s.has(p, K) && !s.globals.contains_key(K),
        "the legacy MODEL_PROVIDER rows should be deleted"
    );
    Ok(())
}

/// Each backend keeps the forbidden key names in memory: a key the DBA
/// forbids (or allows again) in another session applies to a session that has
/// already used the list, from its next transaction; and in the DBA's own
/// transaction at once.
async fn write_old_token(conn: &mut PgConnection, ws: Uuid, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT secretgate.set_secret($1, 'OLD_TOKEN', $2)")
        .bind(ws)
        .bind(value)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn forbidden_key_changes_reach_every_session(cluster: Arc<Cluster>) -> Result<()> {
    let (url, mut dba) = migrated_database(&cluster, &db_name("g_forbid")).await?;
    let mut writer = PgConnection::connect(&url).await.context("writer")?;
    let ws: Uuid = sqlx::query_scalar("INSERT INTO public.workspaces (kind) VALUES ('external') RETURNING id")
        .fetch_one(&mut dba)
        .await
        .described("ws")?;
    let value = cluster.fresh_secret();
    write_old_token(&mut writer, ws, &value).await.described("allowed at first")?;
    sqlx::query("INSERT INTO secretgate.forbidden_keys VALUES ('OLD_TOKEN', 'retired')")
        .execute(&mut dba)
        .await
        .described("forbid")?;
    expect_sg(write_old_token(&mut writer, ws, &value).await, Code::ForbiddenSecretKey)
        .context("forbidden in another session")?;
    sqlx::query("UPDATE secretgate.forbidden_keys SET key = 'OLDER_TOKEN' WHERE key = 'OLD_TOKEN'")
        .execute(&mut dba)
        .await
        .described("rename")?;
    write_old_token(&mut writer, ws, &value).await.described("allowed again after the DBA renamed the entry")?;
    // In the DBA's own transaction, its change applies to its next statement.
    let mut tx = dba.begin().await?;
    write_old_token(&mut tx, ws, &value).await.described("allowed before the change")?;
    sqlx::query("DELETE FROM secretgate.forbidden_keys WHERE key = 'OLDER_TOKEN'")
        .execute(&mut *tx)
        .await
        .described("delete")?;
    sqlx::query("INSERT INTO secretgate.forbidden_keys VALUES ('OLD_TOKEN', 'retired again')")
        .execute(&mut *tx)
        .await
        .described("re-add")?;
    expect_sg(write_old_token(&mut tx, ws, &value).await, Code::ForbiddenSecretKey)
        .context("forbidden in the same transaction")?;
    drop(tx);
    // Rolled back: allowed again, in both sessions.
    write_old_token(&mut dba, ws, &value).await.described("allowed after the rollback")?;
    write_old_token(&mut writer, ws, &value).await.described("allowed in the other session after the rollback")?;
    Ok(())
}

async fn model_equal_to_provider_name_is_sg107(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_modelid").await?;
    let o = db.workspace("workspace", "offline").await?;
    let p = db.platform("offline", None).await?;
    for name in ["minimax", "openai", "anthropic", "platform"] {
        for ops in [
            vec![Op::SetSecret(o, "MODEL", name)],
            vec![Op::Insert(o, "MODEL", name)],
            vec![Op::SetSecret(p, "MODEL", name)],
        ] {
            let ws = match ops[0] {
                Op::SetSecret(w, ..) | Op::Insert(w, ..) => w,
                _ => unreachable!(),
            };
            let e = db.refused(OPERATOR, &ops, At::Statement, Code::InvalidModelId, Some(ws), Some("MODEL")).await?;
            ensure!(e.field("provider").as_deref() == Some(name), "SG107 DETAIL should name the provider {name}: {e}");
        }
        db.refused(UNSET, &[Op::SetGlobal("MODEL", name)], At::Statement, Code::InvalidModelId, None, Some("MODEL"))
            .await?;
        db.refused(UNSET, &[Op::InsertGlobal("MODEL", name)], At::Statement, Code::InvalidModelId, None, Some("MODEL"))
            .await?;
    }
    // Updating an existing MODEL to a slug.
    let good = model_value(&cluster);
    db.set(o, "MODEL", &good).await?;
    db.refused(
        OPERATOR,
        &[Op::Update(o, "MODEL", "minimax")],
        At::Statement,
        Code::InvalidModelId,
        Some(o),
        Some("MODEL"),
    )
    .await?;
    db.refused(
        AGENT,
        &[Op::SetSecret(o, "MODEL", "openai")],
        At::Statement,
        Code::InvalidModelId,
        Some(o),
        Some("MODEL"),
    )
    .await?;
    db.expect_value(o, "MODEL", &good, "MODEL after refused updates").await?;
    // The registry decides: a provider added by a DBA is a slug too.
    sqlx::query("INSERT INTO secretgate.providers (name) VALUES ('bb-custom')")
        .execute(&mut db.conn)
        .await
        .described("add provider")?;
    db.refused(
        OPERATOR,
        &[Op::SetSecret(o, "MODEL", "bb-custom")],
        At::Statement,
        Code::InvalidModelId,
        Some(o),
        Some("MODEL"),
    )
    .await?;
    // Real model ids that merely start with a provider name are fine.
    for id in ["minimax:abab6.5s-chat", "MiniMax-M1", "gpt-5", "openai:gpt-4o", "platform:default"] {
        db.allowed(OPERATOR, &[Op::SetSecret(o, "MODEL", id)]).await?;
        db.expect_value(o, "MODEL", id, "a model id").await?;
    }
    // Other keys may hold a provider name.
    db.allowed(OPERATOR, &[Op::SetSecret(o, "LLM_PROVIDER", "minimax")]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Platform identity (SG102)

const ONLINE: &str = "UPDATE public.workspaces SET status = 'online' WHERE id = $1";

async fn platform_online_without_model_is_sg102(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_nomodel").await?;
    for from in ["provisioning", "offline", "failed"] {
        let p = db.platform(from, None).await?;
        for caller in [OPERATOR, UNSET, AGENT] {
            db.refused(
                caller,
                &[Op::Ws(ONLINE, p)],
                At::Commit,
                Code::PlatformAgentIdentityGate,
                Some(p),
                Some("MODEL"),
            )
            .await?;
            ensure!(db.state().await?.status(p) == Some(from), "status should still be {from}");
        }
        // Outside a transaction block the statement's own commit refuses it.
        let before = db.state().await?;
        let r = sqlx::query(ONLINE).bind(p).execute(&mut db.conn).await;
        expect_sg(r, Code::PlatformAgentIdentityGate).context("autocommit UPDATE to online")?;
        let after = db.state().await?;
        ensure!(before == after, "autocommit UPDATE refused, yet: {}", before.diff(&after));
    }
    // Inserted online without a MODEL.
    let id = Uuid::new_v4();
    db.refused(
        OPERATOR,
        &[Op::Ws("INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'online')", id)],
        At::Commit,
        Code::PlatformAgentIdentityGate,
        Some(id),
        Some("MODEL"),
    )
    .await?;
    // A MODEL under another key name does not count.
    let p = db.platform("offline", None).await?;
    db.set(p, "BB_MODEL", &model_value(&cluster)).await?;
    db.refused(OPERATOR, &[Op::Ws(ONLINE, p)], At::Commit, Code::PlatformAgentIdentityGate, Some(p), Some("MODEL"))
        .await?;
    // Ordinary workspaces need no MODEL.
    let o = db.workspace("workspace", "offline").await?;
    db.allowed(OPERATOR, &[Op::Ws(ONLINE, o)]).await?;
    Ok(())
}

async fn platform_online_with_unusable_model_is_sg102(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_badmodel").await?;
    let empty = db.platform("offline", Some("")).await?;
    let corrupt = db.platform("offline", Some(&model_value(&cluster))).await?;
    db.corrupt(corrupt, "MODEL").await?;
    let unknown = db.platform("offline", Some(&model_value(&cluster))).await?;
    db.unknown_version(unknown, "MODEL").await?;
    for (what, p) in [("empty", empty), ("corrupt", corrupt), ("unknown key version", unknown)] {
        db.refused(OPERATOR, &[Op::Ws(ONLINE, p)], At::Commit, Code::PlatformAgentIdentityGate, Some(p), Some("MODEL"))
            .await
            .context(format!("MODEL {what}"))?;
        ensure!(db.state().await?.status(p) == Some("offline"), "MODEL {what}: status should still be offline");
    }
    Ok(())
}

async fn online_platform_keeps_its_model(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_keepmodel").await?;
    let model = model_value(&cluster);
    let p = db.platform("online", Some(&model)).await?;
    let o = db.workspace("workspace", "online").await?;
    db.set(o, "BB_TOKEN", &cluster.fresh_secret()).await?;
    let rename = "UPDATE public.workspace_secrets SET key = 'MODEL_OLD' WHERE workspace_id = $1 AND key = 'MODEL'";
    for caller in [OPERATOR, UNSET] {
        for ops in [
            vec![Op::Delete(p, "MODEL")],
            vec![Op::SetSecret(p, "MODEL", "")],
            vec![Op::Update(p, "MODEL", "")],
            vec![Op::Ws(rename, p)],
            vec![Op::Ws("DELETE FROM public.workspace_secrets WHERE workspace_id = $1", p)],
            // Replaced, then deleted by a later statement of the same transaction.
            vec![Op::SetSecret(p, "MODEL", &model), Op::Delete(p, "MODEL")],
        ] {
            db.refused(caller, &ops, At::Commit, Code::PlatformAgentIdentityGate, Some(p), Some("MODEL")).await?;
        }
    }
    // Outside a transaction block.
    let before = db.state().await?;
    expect_sg(
        sqlx::query("DELETE FROM public.workspace_secrets WHERE workspace_id = $1 AND key = 'MODEL'")
            .bind(p)
            .execute(&mut db.conn)
            .await,
        Code::PlatformAgentIdentityGate,
    )
    .context("autocommit DELETE of MODEL")?;
    let after = db.state().await?;
    ensure!(before == after, "autocommit DELETE of MODEL refused, yet: {}", before.diff(&after));
    // TRUNCATE is refused at once.
    db.refused(
        OPERATOR,
        &[Op::Sql("TRUNCATE public.workspace_secrets")],
        At::Statement,
        Code::PlatformAgentIdentityGate,
        None,
        None,
    )
    .await?;
    db.expect_value(p, "MODEL", &model, "MODEL after the refusals").await?;

    // Replacing MODEL with another usable one, or delete + insert in one transaction, is fine.
    let m2 = model_value(&cluster);
    db.allowed(OPERATOR, &[Op::Delete(p, "MODEL"), Op::Insert(p, "MODEL", &m2)]).await?;
    db.expect_value(p, "MODEL", &m2, "MODEL replaced in one transaction").await?;
    // Taken offline first, the MODEL may go.
    db.allowed(
        OPERATOR,
        &[Op::Ws("UPDATE public.workspaces SET status = 'offline' WHERE id = $1", p), Op::Delete(p, "MODEL")],
    )
    .await?;
    ensure!(!db.state().await?.has(p, "MODEL"), "MODEL of an offline platform workspace should be deletable");
    // With no platform workspace online, TRUNCATE is allowed.
    db.allowed(OPERATOR, &[Op::Sql("TRUNCATE public.workspace_secrets")]).await?;
    ensure!(db.state().await?.secrets.is_empty(), "TRUNCATE should have emptied workspace_secrets");
    Ok(())
}

async fn platform_created_online_with_model_in_one_transaction(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_oneshot").await?;
    let insert_online = "INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'online')";
    let insert_prov = "INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'provisioning')";
    let (a, b, c, d) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (ma, mb, mc) = (model_value(&cluster), model_value(&cluster), model_value(&cluster));
    db.allowed(OPERATOR, &[Op::Ws(insert_online, a), Op::SetSecret(a, "MODEL", &ma)])
        .await
        .context("insert online, then set_secret MODEL")?;
    db.allowed(UNSET, &[Op::Ws(insert_online, b), Op::Insert(b, "MODEL", &mb)])
        .await
        .context("insert online, then INSERT MODEL")?;
    db.allowed(OPERATOR, &[Op::Ws(insert_prov, c), Op::SetSecret(c, "MODEL", &mc), Op::Ws(ONLINE, c)])
        .await
        .context("provisioning, MODEL, online")?;
    let s = db.state().await?;
    for (ws, m) in [(a, &ma), (b, &mb), (c, &mc)] {
        ensure!(s.status(ws) == Some("online"), "{ws} should be online");
        db.expect_value(ws, "MODEL", m, "MODEL created with its workspace").await?;
    }
    // Inserted online with an empty MODEL is still refused.
    db.refused(
        OPERATOR,
        &[Op::Ws(insert_online, d), Op::SetSecret(d, "MODEL", "")],
        At::Commit,
        Code::PlatformAgentIdentityGate,
        Some(d),
        Some("MODEL"),
    )
    .await?;
    Ok(())
}

async fn kind_changed_to_platform_while_online_is_sg102(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_kind").await?;
    let to_platform = "UPDATE public.workspaces SET kind = 'platform' WHERE id = $1";
    for kind in ["workspace", "external"] {
        let w = db.workspace(kind, "online").await?;
        db.refused(
            OPERATOR,
            &[Op::Ws(to_platform, w)],
            At::Commit,
            Code::PlatformAgentIdentityGate,
            Some(w),
            Some("MODEL"),
        )
        .await?;
        let s = db.state().await?;
        ensure!(s.workspaces.get(&w).map(|(k, _)| k.as_str()) == Some(kind), "kind should still be {kind}");
        // With an empty MODEL too.
        db.set(w, "MODEL", "").await?;
        db.refused(
            OPERATOR,
            &[Op::Ws(to_platform, w)],
            At::Commit,
            Code::PlatformAgentIdentityGate,
            Some(w),
            Some("MODEL"),
        )
        .await?;
        // With a usable MODEL it may become the concierge.
        db.set(w, "MODEL", &model_value(&cluster)).await?;
        db.allowed(OPERATOR, &[Op::Ws(to_platform, w)]).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// register_workspace

async fn register(conn: &mut PgConnection, ws: Uuid) -> Result<(String, Option<String>), sqlx::Error> {
    sqlx::query_as("SELECT status, code FROM secretgate.register_workspace($1)").bind(ws).fetch_one(conn).await
}

async fn next_event(listener: &mut PgListener, within: Duration) -> Result<Option<Value>> {
    match tokio::time::timeout(within, listener.recv()).await {
        Err(_) => Ok(None),
        Ok(n) => {
            let n = n.map_err(|e| anyhow!("listener: {e}"))?;
            ensure!(n.channel() == "secretgate_events", "notification on channel {:?}", n.channel());
            let v: Value =
                serde_json::from_str(n.payload()).with_context(|| format!("payload is not JSON: {}", n.payload()))?;
            Ok(Some(v))
        }
    }
}

async fn register_workspace_failure_commits_and_notifies(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_register_fail").await?;
    let mut listener = PgListener::connect(&db.url).await.context("listener")?;
    listener.listen("secretgate_events").await.context("LISTEN")?;

    let none = db.platform("provisioning", None).await?;
    let empty = db.platform("provisioning", Some("")).await?;
    let corrupt = db.platform("provisioning", Some(&model_value(&cluster))).await?;
    db.corrupt(corrupt, "MODEL").await?;
    let unknown = db.platform("offline", Some(&model_value(&cluster))).await?;
    db.unknown_version(unknown, "MODEL").await?;

    for (n, (what, p)) in [
        ("no MODEL", none),
        ("empty MODEL", empty),
        ("corrupt MODEL", corrupt),
        ("MODEL under an unknown key version", unknown),
    ]
    .into_iter()
    .enumerate()
    {
        let before = db.state().await?;
        let mark = audit_lines(&cluster, &db.name)?.len();
        // Twice in an explicit transaction, twice in autocommit: the failure commits either way.
        let row = if n % 2 == 0 {
            register(&mut db.conn, p).await.described(what)?
        } else {
            sqlx::raw_sql("BEGIN").execute(&mut db.conn).await?;
            let row = register(&mut db.conn, p).await;
            sqlx::raw_sql("COMMIT").execute(&mut db.conn).await.described("COMMIT after register_workspace")?;
            row.described(what)?
        };
        ensure!(
            row == ("failed".to_string(), Some("PLATFORM_AGENT_IDENTITY_GATE".to_string())),
            "{what}: register_workspace should return ('failed', 'PLATFORM_AGENT_IDENTITY_GATE'), got {row:?}"
        );
        let after = db.state().await?;
        ensure!(
            after.status(p) == Some("failed"),
            "{what}: status should be committed as 'failed', is {:?}",
            after.status(p)
        );
        ensure!(
            before.secrets == after.secrets && before.globals == after.globals,
            "{what}: secrets changed: {}",
            before.diff(&after)
        );
        let event = next_event(&mut listener, Duration::from_secs(5))
            .await?
            .ok_or_else(|| anyhow!("{what}: no secretgate_events notification"))?;
        ensure!(
            event.get("event") == Some(&json!("WORKSPACE_PROVISION_FAILED"))
                && event.get("code") == Some(&json!("PLATFORM_AGENT_IDENTITY_GATE"))
                && event.get("workspace_id") == Some(&json!(p.to_string())),
            "{what}: unexpected event {event}"
        );
        expect_one_audit(
            &cluster,
            &db.name,
            mark,
            &[
                ("event", json!("workspace.register.refused")),
                ("code", json!("PLATFORM_AGENT_IDENTITY_GATE")),
                ("sqlstate", json!("SG102")),
                ("workspace_id", json!(p.to_string())),
                ("key", json!("MODEL")),
            ],
            json!({"agent": false, "setting": "unset", "agent_role_member": false}),
            &[],
        )
        .await
        .context(what)?;
        // Failed stays failed: the row cannot then be set online by hand either.
        db.refused(OPERATOR, &[Op::Ws(ONLINE, p)], At::Commit, Code::PlatformAgentIdentityGate, Some(p), Some("MODEL"))
            .await?;
    }
    // A rolled-back registration sends nothing (NOTIFY is transactional) and changes nothing.
    let p = db.platform("provisioning", None).await?;
    sqlx::raw_sql("BEGIN").execute(&mut db.conn).await?;
    let _ = register(&mut db.conn, p).await.described("register in a rolled-back transaction")?;
    sqlx::raw_sql("ROLLBACK").execute(&mut db.conn).await?;
    ensure!(
        db.state().await?.status(p) == Some("provisioning"),
        "a rolled-back registration must not change the status"
    );
    ensure!(
        next_event(&mut listener, Duration::from_millis(500)).await?.is_none(),
        "a rolled-back registration must not notify"
    );
    Ok(())
}

async fn register_workspace_success_and_unknown_id(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_register_ok").await?;
    let mut listener = PgListener::connect(&db.url).await.context("listener")?;
    listener.listen("secretgate_events").await.context("LISTEN")?;
    let model = model_value(&cluster);
    let p = db.platform("provisioning", Some(&model)).await?;
    let w = db.workspace("workspace", "provisioning").await?;
    let x = db.workspace("external", "failed").await?;
    for (what, ws) in
        [("platform with MODEL", p), ("platform again (re-registration)", p), ("ordinary", w), ("external", x)]
    {
        let row = register(&mut db.conn, ws).await.described(what)?;
        ensure!(
            row == ("online".to_string(), None),
            "{what}: register_workspace should return ('online', NULL), got {row:?}"
        );
        ensure!(db.state().await?.status(ws) == Some("online"), "{what}: status should be online");
    }
    db.expect_value(p, "MODEL", &model, "MODEL after registration").await?;
    ensure!(
        next_event(&mut listener, Duration::from_millis(500)).await?.is_none(),
        "a successful registration must not announce a failure"
    );

    let nobody = Uuid::new_v4();
    let before = db.state().await?;
    let e = expect_sg(register(&mut db.conn, nobody).await, Code::WorkspaceKindUnknown)
        .context("register_workspace of an unknown id")?;
    ensure!(
        e.field("workspace_id").as_deref() == Some(nobody.to_string().as_str()),
        "SG106 DETAIL should name the id: {e}"
    );
    let after = db.state().await?;
    ensure!(before == after, "register_workspace of an unknown id changed: {}", before.diff(&after));
    Ok(())
}

// ---------------------------------------------------------------------------
// has_model_secret and the concierge helpers

async fn has_model(conn: &mut PgConnection, ws: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.has_model_secret($1)").bind(ws).fetch_one(conn).await
}

async fn has_model_secret_states(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_hasmodel").await?;
    let usable = db.platform("online", Some(&model_value(&cluster))).await?;
    let none = db.platform("offline", None).await?;
    let empty = db.platform("offline", Some("")).await?;
    let corrupt = db.platform("offline", Some(&model_value(&cluster))).await?;
    db.corrupt(corrupt, "MODEL").await?;
    let unknown = db.platform("offline", Some(&model_value(&cluster))).await?;
    db.unknown_version(unknown, "MODEL").await?;
    let ordinary = db.workspace("workspace", "offline").await?;
    db.set(ordinary, "MODEL", "gpt-5").await?;

    for (what, ws, want) in [
        ("usable", usable, true),
        ("no row", none, false),
        ("empty", empty, false),
        ("ordinary with MODEL", ordinary, true),
        ("unknown workspace", Uuid::new_v4(), false),
    ] {
        let got = has_model(&mut db.conn, ws).await.described(what)?;
        ensure!(got == want, "has_model_secret ({what}) should be {want}, got {got}");
    }
    let e = expect_sg(has_model(&mut db.conn, corrupt).await, Code::DecryptFailed)
        .context("has_model_secret of a corrupt MODEL")?;
    ensure!(
        e.field("workspace_id").as_deref() == Some(corrupt.to_string().as_str()),
        "SG001 should name the workspace: {e}"
    );
    expect_sg(has_model(&mut db.conn, unknown).await, Code::UnknownKeyVersion)
        .context("has_model_secret of a MODEL under version 99")?;
    Ok(())
}

async fn ensure_provider(conn: &mut PgConnection, ws: Uuid) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.ensure_concierge_provider($1)").bind(ws).fetch_one(conn).await
}

async fn ensure_model(conn: &mut PgConnection, ws: Uuid, default: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT secretgate.ensure_concierge_model($1, $2)").bind(ws).bind(default).fetch_one(conn).await
}

async fn ensure_concierge_provider_outcomes(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_provider").await?;
    let ordinary = db.workspace("workspace", "online").await?;
    let respected = db.platform("online", Some(&model_value(&cluster))).await?;
    let pinned = cluster.fresh_secret();
    db.set(respected, "LLM_PROVIDER", &pinned).await?;
    let unset = db.platform("provisioning", None).await?;
    let empty = db.platform("provisioning", Some("")).await?;
    let platform_routed = db.platform("online", Some("platform:default")).await?;
    let unroutable = db.platform("online", Some("bb-local-model-7b")).await?;
    let anthropic = db.platform("online", Some("anthropic:claude-opus-4-7")).await?;
    let gpt = db.platform("online", Some("gpt-5")).await?;

    // Nothing written: not_platform, respected, skipped_byok.
    for (what, ws, want) in [
        ("ordinary workspace", ordinary, "not_platform"),
        ("readable LLM_PROVIDER", respected, "respected"),
        ("MODEL anthropic:claude-opus-4-7", anthropic, "skipped_byok"),
        ("MODEL gpt-5", gpt, "skipped_byok"),
    ] {
        let before = db.state().await?;
        let got = ensure_provider(&mut db.conn, ws).await.described(what)?;
        ensure!(got == want, "ensure_concierge_provider ({what}) should return {want:?}, got {got:?}");
        let after = db.state().await?;
        ensure!(
            before == after,
            "ensure_concierge_provider ({what}) returned {got:?} but wrote: {}",
            before.diff(&after)
        );
    }
    db.expect_value(respected, "LLM_PROVIDER", &pinned, "a respected LLM_PROVIDER").await?;

    // Seeded: exactly one new row, LLM_PROVIDER = platform.
    for (what, ws) in [
        ("MODEL unset", unset),
        ("MODEL empty", empty),
        ("platform-routed MODEL", platform_routed),
        ("unroutable MODEL", unroutable),
    ] {
        let before = db.state().await?;
        let got = ensure_provider(&mut db.conn, ws).await.described(what)?;
        ensure!(got == "seeded", "ensure_concierge_provider ({what}) should return 'seeded', got {got:?}");
        let after = db.state().await?;
        let mut expected = before.secrets.keys().cloned().collect::<Vec<_>>();
        expected.push((ws, "LLM_PROVIDER".to_string()));
        expected.sort();
        ensure!(
            after.secrets.keys().cloned().collect::<Vec<_>>() == expected,
            "{what}: seeding should add exactly LLM_PROVIDER: {}",
            before.diff(&after)
        );
        db.expect_value(ws, "LLM_PROVIDER", "platform", what).await?;
        let again = ensure_provider(&mut db.conn, ws).await.described(what)?;
        ensure!(again == "respected", "{what}: a second call should return 'respected', got {again:?}");
    }

    // An agent cannot seed a platform workspace's pin (self-write).
    let p = db.platform("provisioning", None).await?;
    let before = db.state().await?;
    let r = run_tx(&mut db.conn, &db.kr, AGENT, &[Op::Ws("SELECT secretgate.ensure_concierge_provider($1)", p)]).await;
    expect_sg(r.map_err(|(_, e)| e), Code::ConciergeSelfWriteBlocked)
        .context("ensure_concierge_provider as an agent")?;
    let after = db.state().await?;
    ensure!(before == after, "ensure_concierge_provider as an agent changed: {}", before.diff(&after));

    expect_sg(ensure_provider(&mut db.conn, Uuid::new_v4()).await, Code::WorkspaceKindUnknown)
        .context("ensure_concierge_provider of an unknown workspace")?;
    Ok(())
}

async fn ensure_concierge_provider_fails_closed(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_provider_fc").await?;
    let model = model_value(&cluster);
    let corrupt_pin = db.platform("online", Some(&model)).await?;
    db.set(corrupt_pin, "LLM_PROVIDER", "anthropic").await?;
    db.corrupt(corrupt_pin, "LLM_PROVIDER").await?;
    let unknown_pin = db.platform("online", Some(&model)).await?;
    db.set(unknown_pin, "LLM_PROVIDER", "anthropic").await?;
    db.unknown_version(unknown_pin, "LLM_PROVIDER").await?;
    // No LLM_PROVIDER row, and a MODEL that cannot be read: not "unset" either.
    let corrupt_model = db.platform("offline", Some(&model)).await?;
    db.corrupt(corrupt_model, "MODEL").await?;
    let unknown_model = db.platform("offline", Some(&model)).await?;
    db.unknown_version(unknown_model, "MODEL").await?;

    for (what, ws) in [
        ("corrupt LLM_PROVIDER", corrupt_pin),
        ("LLM_PROVIDER under an unknown key version", unknown_pin),
        ("corrupt MODEL, no LLM_PROVIDER", corrupt_model),
        ("MODEL under an unknown key version, no LLM_PROVIDER", unknown_model),
    ] {
        let before = db.state().await?;
        let got = ensure_provider(&mut db.conn, ws).await.described(what)?;
        ensure!(got == "fail_closed", "ensure_concierge_provider ({what}) should return 'fail_closed', got {got:?}");
        let after = db.state().await?;
        ensure!(before == after, "ensure_concierge_provider ({what}) must write nothing: {}", before.diff(&after));
        let deadline = Instant::now() + Duration::from_secs(3);
        while !warned(&cluster, &db.name, &ws.to_string()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            warned(&cluster, &db.name, &ws.to_string()),
            "ensure_concierge_provider ({what}): no WARNING naming the workspace in the server log"
        );
    }
    Ok(())
}

async fn ensure_concierge_model_outcomes(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_model").await?;
    let default = model_value(&cluster);
    let model = model_value(&cluster);
    let ordinary = db.workspace("workspace", "online").await?;
    let respected = db.platform("online", Some(&model)).await?;
    let absent = db.platform("provisioning", None).await?;
    let empty = db.platform("provisioning", Some("")).await?;
    let corrupt = db.platform("offline", Some(&model)).await?;
    db.corrupt(corrupt, "MODEL").await?;
    let unknown = db.platform("offline", Some(&model)).await?;
    db.unknown_version(unknown, "MODEL").await?;

    for (what, ws, want) in [
        ("ordinary workspace", ordinary, "not_platform"),
        ("usable MODEL", respected, "respected"),
        ("corrupt MODEL", corrupt, "fail_closed"),
        ("MODEL under an unknown key version", unknown, "fail_closed"),
    ] {
        let before = db.state().await?;
        let got = ensure_model(&mut db.conn, ws, &default).await.described(what)?;
        ensure!(got == want, "ensure_concierge_model ({what}) should return {want:?}, got {got:?}");
        let after = db.state().await?;
        ensure!(before == after, "ensure_concierge_model ({what}) returned {got:?} but wrote: {}", before.diff(&after));
    }
    db.expect_value(respected, "MODEL", &model, "a respected MODEL").await?;
    for (what, ws) in [("no MODEL", absent), ("empty MODEL", empty)] {
        let got = ensure_model(&mut db.conn, ws, &default).await.described(what)?;
        ensure!(got == "seeded", "ensure_concierge_model ({what}) should return 'seeded', got {got:?}");
        db.expect_value(ws, "MODEL", &default, what).await?;
        let again = ensure_model(&mut db.conn, ws, &default).await.described(what)?;
        ensure!(again == "respected", "{what}: a second call should return 'respected', got {again:?}");
        // Now usable, the workspace can go online.
        db.allowed(OPERATOR, &[Op::Ws(ONLINE, ws)]).await.context(what)?;
    }
    // The default itself passes the MODEL gate: a provider slug is refused, nothing written.
    let p = db.platform("provisioning", None).await?;
    let before = db.state().await?;
    expect_sg(ensure_model(&mut db.conn, p, "minimax").await, Code::InvalidModelId)
        .context("ensure_concierge_model with default 'minimax'")?;
    let after = db.state().await?;
    ensure!(before == after, "refused ensure_concierge_model changed: {}", before.diff(&after));
    Ok(())
}

// ---------------------------------------------------------------------------
// Audit

/// (caller, statements, where refused, code, expected audit fields, expected caller object)
type AuditCase<'a> = (Caller, Vec<Op<'a>>, At, Code, Vec<(&'a str, Value)>, &'a Value);

async fn refusals_are_audited_once_without_values(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_audit").await?;
    let model = model_value(&cluster);
    let p = db.platform("online", Some(&model)).await?;
    let bare = db.platform("offline", None).await?;
    let o = db.workspace("workspace", "online").await?;
    let v = cluster.fresh_secret();
    let name = db.name.clone();
    let agent_caller = json!({"agent": true, "setting": "agent", "agent_role_member": false, "role": "postgres"});
    let operator_caller =
        json!({"agent": false, "setting": "operator", "agent_role_member": false, "role": "postgres"});
    let ws = |id: Uuid| json!(id.to_string());
    let nobody = Uuid::new_v4();

    let cases: Vec<AuditCase> = vec![
        (
            AGENT,
            vec![Op::SetSecret(p, "BB_NEW", &v)],
            At::Statement,
            Code::ConciergeSelfWriteBlocked,
            vec![("event", json!("secret.set.refused")), ("workspace_id", ws(p)), ("key", json!("BB_NEW"))],
            &agent_caller,
        ),
        (
            AGENT,
            vec![Op::Insert(p, "BB_NEW", &v)],
            At::Statement,
            Code::ConciergeSelfWriteBlocked,
            vec![("event", json!("secret.set.refused")), ("workspace_id", ws(p)), ("key", json!("BB_NEW"))],
            &agent_caller,
        ),
        (
            AGENT,
            vec![Op::Delete(p, "MODEL")],
            At::Statement,
            Code::ConciergeSelfWriteBlocked,
            vec![("event", json!("secret.delete.refused")), ("workspace_id", ws(p)), ("key", json!("MODEL"))],
            &agent_caller,
        ),
        (
            AGENT,
            vec![Op::SetSecret(nobody, "BB_NEW", &v)],
            At::Statement,
            Code::WorkspaceKindUnknown,
            vec![("event", json!("secret.set.refused")), ("workspace_id", ws(nobody)), ("key", json!("BB_NEW"))],
            &agent_caller,
        ),
        (
            OPERATOR,
            vec![Op::SetSecret(o, "MODEL_PROVIDER", &v)],
            At::Statement,
            Code::ForbiddenSecretKey,
            vec![("event", json!("secret.set.refused")), ("workspace_id", ws(o)), ("key", json!("MODEL_PROVIDER"))],
            &operator_caller,
        ),
        (
            OPERATOR,
            vec![Op::Insert(o, "MODEL", "minimax")],
            At::Statement,
            Code::InvalidModelId,
            vec![("event", json!("secret.set.refused")), ("workspace_id", ws(o)), ("key", json!("MODEL"))],
            &operator_caller,
        ),
        (
            OPERATOR,
            vec![Op::Ws(ONLINE, bare)],
            At::Commit,
            Code::PlatformAgentIdentityGate,
            vec![("event", json!("workspace.online.refused")), ("workspace_id", ws(bare)), ("key", json!("MODEL"))],
            &operator_caller,
        ),
        (
            OPERATOR,
            vec![Op::SetSecret(p, "MODEL", "")],
            At::Commit,
            Code::PlatformAgentIdentityGate,
            vec![("event", json!("workspace.online.refused")), ("workspace_id", ws(p)), ("key", json!("MODEL"))],
            &operator_caller,
        ),
        (
            OPERATOR,
            vec![Op::Sql("TRUNCATE public.workspace_secrets")],
            At::Statement,
            Code::PlatformAgentIdentityGate,
            vec![("event", json!("secret.truncate.refused"))],
            &operator_caller,
        ),
    ];
    let mut refusals = 0;
    for (caller, ops, at, code, mut fields, who) in cases {
        let mark = audit_lines(&cluster, &name)?.len();
        let ws_id = fields
            .iter()
            .find(|(k, _)| *k == "workspace_id")
            .and_then(|(_, v)| v.as_str())
            .and_then(|s| s.parse().ok());
        let key = fields.iter().find(|(k, _)| *k == "key").and_then(|(_, v)| v.as_str()).map(str::to_string);
        db.refused(caller, &ops, at, code, ws_id, key.as_deref()).await?;
        refusals += 1;
        fields.push(("code", json!(code.word())));
        fields.push(("sqlstate", json!(code.sqlstate())));
        let line = expect_one_audit(&cluster, &name, mark, &fields, who.clone(), &[&v, &model])
            .await
            .with_context(|| format!("audit of [{}]", ops_label(&ops)))?;
        ensure!(
            line.get("reason").and_then(Value::as_str).is_some_and(|r| !r.is_empty()),
            "audit line lacks a reason: {line}"
        );
    }
    // The member of secretgate_agent is named as such.
    let member = format!("bb_audit_agent_{}", random_hex(4));
    sqlx::raw_sql(&format!("CREATE ROLE {member} LOGIN IN ROLE secretgate_agent; GRANT SELECT, INSERT, UPDATE, DELETE ON public.workspace_secrets, public.workspaces TO {member}"))
        .execute(&mut db.conn)
        .await
        .described("role")?;
    let mark = audit_lines(&cluster, &name)?.len();
    let mut as_member = Db {
        name: name.clone(),
        url: db.url.clone(),
        conn: PgConnection::connect(&cluster.url_as(&member, &name)).await?,
        kr: cluster.initial_keys().keyring(),
    };
    as_member
        .refused(
            OPERATOR,
            &[Op::SetSecret(p, "BB_NEW", &v)],
            At::Statement,
            Code::ConciergeSelfWriteBlocked,
            Some(p),
            Some("BB_NEW"),
        )
        .await?;
    refusals += 1;
    as_member.conn.close().await?;
    expect_one_audit(
        &cluster,
        &name,
        mark,
        &[
            ("event", json!("secret.set.refused")),
            ("code", json!("CONCIERGE_SELF_WRITE_BLOCKED")),
            ("workspace_id", ws(p)),
            ("key", json!("BB_NEW")),
        ],
        json!({"agent": true, "setting": "operator", "agent_role_member": true, "role": member}),
        &[&v],
    )
    .await
    .context("audit of a secretgate_agent member")?;

    // Exactly one line per refusal in all, and none holds a value.
    let all = audit_lines(&cluster, &name)?;
    ensure!(all.len() == refusals, "{refusals} refusals should leave {refusals} audit lines, found {}", all.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Deleting whole workspaces

async fn agent_deleting_workspaces_cascades_through_the_gate(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_cascade").await?;
    let model = model_value(&cluster);
    let p = db.platform("offline", Some(&model)).await?;
    let o = db.workspace("workspace", "offline").await?;
    db.set(o, "BB_TOKEN", &cluster.fresh_secret()).await?;
    let bare = db.workspace("workspace", "offline").await?;
    let delete_ws = "DELETE FROM public.workspaces WHERE id = $1";
    let mut problems = Vec::new();

    // Removing a platform workspace removes its secrets (ON DELETE CASCADE):
    // a delete of a platform workspace's secrets by an agent, so SG101.
    let before = db.state().await?;
    match run_tx(&mut db.conn, &db.kr, AGENT, &[Op::Ws(delete_ws, p)]).await {
        Ok(()) => problems.push("an agent deleted a platform workspace and its secrets".to_string()),
        Err((_, e)) => {
            if let Err(e) = expect_sg::<()>(Err(e), Code::ConciergeSelfWriteBlocked) {
                problems.push(format!("agent DELETE of a platform workspace: {e:#}"));
            }
        }
    }
    let after = db.state().await?;
    ensure!(before == after, "agent DELETE of a platform workspace: {}", before.diff(&after));

    // Ordinary workspaces are not a platform target: not blocked, with or without secrets.
    db.allowed(AGENT, &[Op::Ws(delete_ws, bare)])
        .await
        .context("agent DELETE of an ordinary workspace without secrets")?;
    if let Err(e) = db.allowed(AGENT, &[Op::Ws(delete_ws, o)]).await {
        problems.push(format!("agent DELETE of an ordinary workspace with secrets: {e:#}"));
    }
    // The operator may remove the platform workspace.
    db.allowed(OPERATOR, &[Op::Ws(delete_ws, p)]).await?;
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The kind the gate reads is the one the agent's own transaction sees: an
/// agent that demotes the concierge, writes its secret and promotes it back
/// in one transaction has still written a platform workspace's secret.
async fn agent_cannot_launder_a_write_through_a_kind_change(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_launder").await?;
    let model = model_value(&cluster);
    let p = db.platform("online", Some(&model)).await?;
    let v = cluster.fresh_secret();
    let other = model_value(&cluster);
    let demote = "UPDATE public.workspaces SET kind = 'workspace' WHERE id = $1";
    let promote = "UPDATE public.workspaces SET kind = 'platform' WHERE id = $1";
    let mut problems = Vec::new();
    for (key, write) in [("BB_NEW", Op::SetSecret(p, "BB_NEW", &v)), ("MODEL", Op::Update(p, "MODEL", &other))] {
        let before = db.state().await?;
        let r = run_tx(&mut db.conn, &db.kr, AGENT, &[Op::Ws(demote, p), write, Op::Ws(promote, p)]).await;
        let after = db.state().await?;
        match r {
            Ok(()) => problems.push(format!(
                "an agent demoted the platform workspace, wrote its {key} and promoted it back, and it committed ({})",
                before.diff(&after)
            )),
            Err((_, e)) => {
                if let Err(e) = expect_sg::<()>(Err(e), Code::ConciergeSelfWriteBlocked) {
                    problems.push(format!("kind round-trip writing {key}: {e:#}"));
                }
                ensure!(before == after, "refused, yet: {}", before.diff(&after));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The gate remembers, per backend, where it last found each workspace row
/// and fetches that heap tuple before searching the index. The agent's
/// session below writes first (so the place is remembered), then another
/// session moves the row on, and the agent's next write must see that: a
/// kind changed by a committed UPDATE, a slot VACUUM freed and another
/// workspace took, a table VACUUM truncated past the remembered block.
async fn remembered_row_places_never_outlive_the_row(cluster: Arc<Cluster>) -> Result<()> {
    let mut db = db(&cluster, "g_places").await?;
    let mut admin = PgConnection::connect(&db.url).await.context("admin connection")?;
    let v = cluster.fresh_secret();
    let ctid =
        |id: Uuid| sqlx::query_scalar::<_, String>("SELECT ctid::text FROM public.workspaces WHERE id = $1").bind(id);

    // 1. Promoted by another session after the agent's last write to it.
    let w = db.workspace("workspace", "provisioning").await?;
    db.allowed(AGENT, &[Op::Insert(w, "BB_FIRST", &v)]).await?;
    sqlx::query("UPDATE public.workspaces SET kind = 'platform' WHERE id = $1")
        .bind(w)
        .execute(&mut admin)
        .await
        .described("promote")?;
    db.refused(
        AGENT,
        &[Op::Insert(w, "BB_AFTER", &v)],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(w),
        Some("BB_AFTER"),
    )
    .await
    .context("promoted after the agent's first write")?;

    // 2. Deleted, its slot freed by VACUUM and taken by a platform workspace.
    let gone = db.workspace("workspace", "online").await?;
    db.allowed(AGENT, &[Op::Insert(gone, "BB_FIRST", &v)]).await?;
    let slot = ctid(gone).fetch_one(&mut admin).await.described("ctid")?;
    sqlx::query("DELETE FROM public.workspaces WHERE id = $1")
        .bind(gone)
        .execute(&mut admin)
        .await
        .described("delete")?;
    sqlx::query("VACUUM public.workspaces").execute(&mut admin).await.described("vacuum")?;
    let taker = Uuid::new_v4();
    sqlx::query("INSERT INTO public.workspaces (id, kind, status) VALUES ($1, 'platform', 'provisioning')")
        .bind(taker)
        .execute(&mut admin)
        .await
        .described("insert the taker")?;
    let taken = ctid(taker).fetch_one(&mut admin).await.described("ctid")?;
    ensure!(taken == slot, "setup: the new workspace should reuse the freed slot {slot}, it is at {taken}");
    db.refused(
        AGENT,
        &[Op::Insert(gone, "BB_AFTER", &v)],
        At::Statement,
        Code::WorkspaceKindUnknown,
        Some(gone),
        Some("BB_AFTER"),
    )
    .await
    .context("a deleted workspace whose slot another row took")?;
    db.refused(
        AGENT,
        &[Op::Insert(taker, "BB_AFTER", &v)],
        At::Statement,
        Code::ConciergeSelfWriteBlocked,
        Some(taker),
        Some("BB_AFTER"),
    )
    .await
    .context("the platform workspace in the reused slot")?;

    // 3. The remembered block no longer exists: VACUUM truncated the table.
    sqlx::query(
        "INSERT INTO public.workspaces (kind, status) SELECT 'workspace', 'online' FROM generate_series(1, 3000)",
    )
    .execute(&mut admin)
    .await
    .described("fill")?;
    let last: Uuid = sqlx::query_scalar("SELECT id FROM public.workspaces ORDER BY ctid DESC LIMIT 1")
        .fetch_one(&mut admin)
        .await
        .described("last row")?;
    db.allowed(AGENT, &[Op::Insert(last, "BB_FIRST", &v)]).await?;
    sqlx::query("DELETE FROM public.workspaces WHERE (ctid::text::point)[0] >= 2")
        .execute(&mut admin)
        .await
        .described("delete the tail")?;
    sqlx::query("VACUUM public.workspaces").execute(&mut admin).await.described("vacuum")?;
    let blocks: i64 =
        sqlx::query_scalar("SELECT pg_relation_size('public.workspaces') / current_setting('block_size')::int")
            .fetch_one(&mut admin)
            .await
            .described("size")?;
    ensure!(blocks <= 2, "setup: VACUUM should have truncated the table to 2 blocks, it has {blocks}");
    db.refused(
        AGENT,
        &[Op::Insert(last, "BB_AFTER", &v)],
        At::Statement,
        Code::WorkspaceKindUnknown,
        Some(last),
        Some("BB_AFTER"),
    )
    .await
    .context("a workspace whose block VACUUM truncated away")?;
    let kept: Uuid = sqlx::query_scalar("SELECT id FROM public.workspaces WHERE kind = 'workspace' LIMIT 1")
        .fetch_one(&mut admin)
        .await
        .described("a kept workspace")?;
    db.allowed(AGENT, &[Op::Insert(kept, "BB_AFTER", &v)]).await.context("a workspace still in the table")?;
    Ok(())
}
