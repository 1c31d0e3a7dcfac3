//! The triggers `attach_gates` creates on the platform's tables, as DDL.
//! The functions they call are in `sql::triggers`, whose test checks that
//! each one this DDL names is in its list of trigger functions.

/// Every trigger `attach_gates` creates: (name, table role, SQL after `ON <table>`).
/// The identity triggers are deferred constraint triggers: they check at
/// commit, so a workspace and its MODEL may be created in one transaction.
/// `kind` and `status` are compared as text: they may be `text`, `varchar`,
/// an enum or a domain (an enum without a label named here must not make
/// the trigger itself fail). `{model_changed}` is the model column's
/// change, when the table has one.
pub const TRIGGERS: &[(&str, TableRole, &str)] = &[
    (
        "secretgate_secret_write",
        TableRole::Secrets,
        "BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_secret_write()",
    ),
    (
        "secretgate_global_secret_write",
        TableRole::GlobalSecrets,
        "BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_global_secret_write()",
    ),
    (
        "secretgate_workspace_write",
        TableRole::Workspaces,
        "BEFORE UPDATE OF kind OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_workspace_write()",
    ),
    (
        "secretgate_platform_identity",
        TableRole::Workspaces,
        "AFTER INSERT OR UPDATE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind::text = 'platform' AND NEW.status::text = 'online') EXECUTE FUNCTION secretgate.gate_platform_identity()",
    ),
    (
        "secretgate_byok_insert",
        TableRole::Workspaces,
        "AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind::text IS DISTINCT FROM 'external') EXECUTE FUNCTION secretgate.gate_byok()",
    ),
    (
        "secretgate_byok_update",
        TableRole::Workspaces,
        "AFTER UPDATE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.kind::text IS DISTINCT FROM 'external' AND ((NEW.status::text = 'online' AND OLD.status::text IS DISTINCT FROM 'online') \
               {model_changed}OR NEW.runtime IS DISTINCT FROM OLD.runtime \
               OR NEW.kind IS DISTINCT FROM OLD.kind)) \
         EXECUTE FUNCTION secretgate.gate_byok()",
    ),
    (
        "secretgate_model_removed",
        TableRole::Secrets,
        "AFTER UPDATE OR DELETE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION secretgate.gate_model_removed()",
    ),
    // Without a model column the model is the MODEL secret: writing,
    // changing or removing it is a change of model (the gate skips a table
    // that has the column).
    (
        "secretgate_byok_model_write",
        TableRole::Secrets,
        "AFTER INSERT OR UPDATE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.key = 'MODEL') EXECUTE FUNCTION secretgate.gate_byok_model('new')",
    ),
    (
        "secretgate_byok_model_gone",
        TableRole::Secrets,
        "AFTER UPDATE OF workspace_id, key OR DELETE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION secretgate.gate_byok_model('old')",
    ),
    // History: the ciphertext an overwrite or a delete replaces is kept.
    (
        "secretgate_history_update",
        TableRole::Secrets,
        "AFTER UPDATE ON {table} FOR EACH ROW \
         WHEN (OLD.encrypted_value IS DISTINCT FROM NEW.encrypted_value OR OLD.key IS DISTINCT FROM NEW.key \
               OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id) \
         EXECUTE FUNCTION secretgate.gate_history('workspace')",
    ),
    (
        "secretgate_history_delete",
        TableRole::Secrets,
        "AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_history('workspace')",
    ),
    (
        "secretgate_global_history_update",
        TableRole::GlobalSecrets,
        "AFTER UPDATE ON {table} FOR EACH ROW \
         WHEN (OLD.encrypted_value IS DISTINCT FROM NEW.encrypted_value OR OLD.key IS DISTINCT FROM NEW.key) \
         EXECUTE FUNCTION secretgate.gate_history('global')",
    ),
    (
        "secretgate_global_history_delete",
        TableRole::GlobalSecrets,
        "AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_history('global')",
    ),
    (
        "secretgate_history_workspace_gone",
        TableRole::Workspaces,
        "AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION secretgate.gate_history('workspaces')",
    ),
    (
        "secretgate_secrets_truncate",
        TableRole::Secrets,
        "BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION secretgate.gate_secrets_truncate()",
    ),
];

#[derive(Clone, Copy)]
pub enum TableRole {
    Workspaces,
    Secrets,
    GlobalSecrets,
}

/// `CREATE [CONSTRAINT] TRIGGER` statements for the attached tables.
/// The attached tables' qualified names: workspaces, secrets, global secrets.
pub type Tables<'a> = [&'a str; 3];

pub fn create_statements([workspaces, secrets, global_secrets]: Tables<'_>, has_model: bool) -> Vec<String> {
    let model_changed = if has_model { "OR NEW.model IS DISTINCT FROM OLD.model " } else { "" };
    TRIGGERS
        .iter()
        .filter(|(name, _, _)| !(has_model && name.starts_with("secretgate_byok_model_")))
        .map(|(name, role, body)| {
            let table = match role {
                TableRole::Workspaces => workspaces,
                TableRole::Secrets => secrets,
                TableRole::GlobalSecrets => global_secrets,
            };
            let kind = if body.contains("DEFERRABLE") { "CONSTRAINT TRIGGER" } else { "TRIGGER" };
            format!("CREATE {kind} {name} {}", body.replace("{table}", table).replace("{model_changed}", model_changed))
        })
        .collect()
}

/// `DROP TRIGGER` statements for the attached tables that still exist
/// (`None`: dropped, and its triggers with it), each with the index of its
/// table in `tables`.
pub fn drop_statements([workspaces, secrets, global_secrets]: [Option<&str>; 3]) -> Vec<(usize, String)> {
    TRIGGERS
        .iter()
        .filter_map(|(name, role, _)| {
            let (index, table) = match role {
                TableRole::Workspaces => (0, workspaces),
                TableRole::Secrets => (1, secrets),
                TableRole::GlobalSecrets => (2, global_secrets),
            };
            table.map(|table| (index, format!("DROP TRIGGER IF EXISTS {name} ON {table}")))
        })
        .collect()
}
