//! In-server tests (`cargo pgrx test pg15`). Each runs in its own
//! transaction, rolled back afterwards. The keyring is the known-answer
//! vectors' keyring, written to the path `postgresql_conf_options` names.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    const VECTORS: &str = include_str!("../../tests/vectors/aes256gcm.json");
    const KEYRING_PATH: &str = "/tmp/secretgate-pgtest-keyring.json";
    const WS: &str = "6f1c2d3e-4b5a-4798-8a7b-0c1d2e3f4a5b";
    const OTHER_WS: &str = "00000000-0000-4000-8000-000000000002";

    extension_sql!(
        r#"
        -- The SQLSTATE a statement raises, or NULL if it succeeds.
        CREATE FUNCTION tests.sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            EXECUTE stmt;
            RETURN NULL;
        EXCEPTION WHEN OTHERS THEN
            RETURN SQLSTATE;
        END $$;
        "#,
        name = "sqlstate_of"
    );

    fn vectors() -> serde_json::Value {
        serde_json::from_str(VECTORS).expect("vectors parse")
    }

    /// Writes the vectors' keyring (0600, by rename so concurrent tests never see half a file).
    fn ensure_keyring() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = vectors()["keyring"].to_string();
        if std::fs::read_to_string(KEYRING_PATH).ok().as_deref() == Some(json.as_str()) {
            return;
        }
        let tmp = format!("{KEYRING_PATH}.{}", std::process::id());
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).unwrap();
        f.write_all(json.as_bytes()).unwrap();
        drop(f);
        std::fs::rename(&tmp, KEYRING_PATH).unwrap();
    }

    fn sqlstate_of(stmt: &str) -> Option<String> {
        Spi::get_one_with_args::<String>("SELECT tests.sqlstate_of($1)", &[stmt.into()]).unwrap()
    }

    fn run(sql: &str) {
        Spi::run(sql).unwrap();
    }

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    /// The platform's tables as the migrations make them, attached.
    fn attached_tables() {
        ensure_keyring();
        run("CREATE TABLE public.workspaces (id uuid PRIMARY KEY, kind text NOT NULL, status text NOT NULL DEFAULT 'provisioning', runtime text, model text)");
        run("CREATE TABLE public.workspace_secrets (workspace_id uuid REFERENCES public.workspaces ON DELETE CASCADE, key text, \
             encrypted_value bytea NOT NULL, encryption_version int NOT NULL, PRIMARY KEY (workspace_id, key))");
        run("CREATE TABLE public.global_secrets (key text PRIMARY KEY, encrypted_value bytea NOT NULL, encryption_version int NOT NULL)");
        run("SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')");
        run(&format!(
            "INSERT INTO public.workspaces (id, kind) VALUES ('{WS}', 'workspace'), ('{OTHER_WS}', 'workspace')"
        ));
    }

    #[pg_test]
    fn vectors_decrypt_in_the_server_as_in_the_core() {
        ensure_keyring();
        let v = vectors();
        for vector in v["vectors"].as_array().unwrap() {
            let scope = vector["scope"].as_str().unwrap();
            let ws = if scope == "global" { "NULL".to_string() } else { format!("'{scope}'::uuid") };
            let got = Spi::get_one_with_args::<String>(
                &format!("SELECT secretgate.decrypt(decode($1, 'hex'), $2, {ws}, $3)"),
                &[
                    vector["ciphertext_hex"].as_str().unwrap().into(),
                    (vector["key_version"].as_i64().unwrap() as i32).into(),
                    vector["key_name"].as_str().unwrap().into(),
                ],
            )
            .unwrap();
            assert_eq!(got.as_deref(), vector["plaintext"].as_str(), "vector {scope}/{}", vector["key_name"]);
        }
    }

    #[pg_test]
    fn server_ciphertexts_open_in_the_core_with_the_current_version() {
        ensure_keyring();
        let blob =
            Spi::get_one::<Vec<u8>>(&format!("SELECT secretgate.encrypt('hello', '{WS}', 'MODEL')")).unwrap().unwrap();
        let keyring = secretgate_core::Keyring::parse(vectors()["keyring"].to_string().as_bytes()).unwrap();
        let scope = secretgate_core::Scope::Workspace(secretgate_core::uuid::Uuid::parse_str(WS).unwrap());
        assert_eq!(keyring.decrypt(&blob, 2, scope, "MODEL").unwrap(), "hello");
        assert_eq!(Spi::get_one::<i32>("SELECT secretgate.current_key_version()").unwrap(), Some(2));
        assert_eq!(Spi::get_one::<Vec<u8>>("SELECT secretgate.encrypt(NULL, NULL, 'MODEL')").unwrap(), None);
        assert_eq!(sqlstate_of("SELECT secretgate.encrypt('x', NULL, NULL)").as_deref(), Some("22004"));
    }

    #[pg_test]
    fn read_distinguishes_value_unset_and_each_error() {
        attached_tables();
        run(&format!("SELECT secretgate.set_secret('{WS}', 'LLM_PROVIDER', 'anthropic:claude-opus-4-7')"));
        assert_eq!(
            text(&format!("SELECT secretgate.read_secret('{WS}', 'LLM_PROVIDER')")).as_deref(),
            Some("anthropic:claude-opus-4-7")
        );
        assert_eq!(text(&format!("SELECT secretgate.read_secret('{WS}', 'NOPE')")), None);

        // Upsert replaces the value.
        run(&format!("SELECT secretgate.set_secret('{WS}', 'LLM_PROVIDER', 'openai:gpt-5')"));
        assert_eq!(
            text(&format!("SELECT secretgate.read_secret('{WS}', 'LLM_PROVIDER')")).as_deref(),
            Some("openai:gpt-5")
        );

        // A flipped byte: SG001, never NULL.
        run("UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 14, get_byte(encrypted_value, 14) # 1)");
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'LLM_PROVIDER')")).as_deref(),
            Some("SG001")
        );
        let row = Spi::get_three::<String, String, String>(&format!(
            "SELECT * FROM secretgate.try_read_secret('{WS}', 'LLM_PROVIDER')"
        ))
        .unwrap();
        assert_eq!(row, (Some("error".into()), None, Some("SG001".into())));

        // Truncated: SG001.
        run("UPDATE public.workspace_secrets SET encrypted_value = substring(encrypted_value from 1 for 20)");
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'LLM_PROVIDER')")).as_deref(),
            Some("SG001")
        );

        // A version the keyring lacks: SG002.
        run(&format!("SELECT secretgate.set_secret('{WS}', 'LLM_PROVIDER', 'openai:gpt-5')"));
        run("UPDATE public.workspace_secrets SET encryption_version = 9");
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'LLM_PROVIDER')")).as_deref(),
            Some("SG002")
        );
        let row = Spi::get_three::<String, String, String>(&format!(
            "SELECT * FROM secretgate.try_read_secret('{WS}', 'LLM_PROVIDER')"
        ))
        .unwrap();
        assert_eq!(row, (Some("error".into()), None, Some("SG002".into())));

        let row = Spi::get_three::<String, String, String>(&format!(
            "SELECT * FROM secretgate.try_read_secret('{WS}', 'NOPE')"
        ))
        .unwrap();
        assert_eq!(row, (Some("unset".into()), None, None));
        assert_eq!(sqlstate_of("SELECT secretgate.read_secret(NULL, 'LLM_PROVIDER')").as_deref(), Some("22004"));
    }

    #[pg_test]
    fn a_ciphertext_copied_to_another_row_does_not_open() {
        attached_tables();
        run(&format!("SELECT secretgate.set_secret('{WS}', 'ANTHROPIC_API_KEY', 'sk-ant-pgtest')"));
        run(&format!(
            "INSERT INTO public.workspace_secrets SELECT '{OTHER_WS}', key, encrypted_value, encryption_version FROM public.workspace_secrets"
        ));
        run(&format!(
            "INSERT INTO public.workspace_secrets SELECT workspace_id, 'OPENAI_API_KEY', encrypted_value, encryption_version \
             FROM public.workspace_secrets WHERE workspace_id = '{WS}'"
        ));
        run("INSERT INTO public.global_secrets SELECT key, encrypted_value, encryption_version FROM public.workspace_secrets LIMIT 1");
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.read_secret('{OTHER_WS}', 'ANTHROPIC_API_KEY')")).as_deref(),
            Some("SG001")
        );
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'OPENAI_API_KEY')")).as_deref(),
            Some("SG001")
        );
        assert_eq!(sqlstate_of("SELECT secretgate.read_global_secret('ANTHROPIC_API_KEY')").as_deref(), Some("SG001"));
        assert_eq!(
            text(&format!("SELECT secretgate.read_secret('{WS}', 'ANTHROPIC_API_KEY')")).as_deref(),
            Some("sk-ant-pgtest")
        );

        let errors = Spi::get_one::<i64>(
            "SELECT count(*) FROM secretgate.verify_secrets() WHERE state = 'error' AND error_code = 'SG001'",
        )
        .unwrap();
        let ok = Spi::get_one::<i64>("SELECT count(*) FROM secretgate.verify_secrets() WHERE state = 'ok'").unwrap();
        assert_eq!((errors, ok), (Some(3), Some(1)));
    }

    #[pg_test]
    fn global_secrets_round_trip() {
        attached_tables();
        run("SELECT secretgate.set_global_secret('OPENAI_API_KEY', 'sk-global')");
        assert_eq!(text("SELECT secretgate.read_global_secret('OPENAI_API_KEY')").as_deref(), Some("sk-global"));
        assert_eq!(text("SELECT secretgate.read_global_secret('MISSING')"), None);
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT workspace_id IS NULL FROM secretgate.verify_secrets() WHERE key = 'OPENAI_API_KEY'"
            )
            .unwrap(),
            Some(true)
        );
    }

    #[pg_test]
    fn functions_need_attached_tables() {
        ensure_keyring();
        assert_eq!(sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'MODEL')")).as_deref(), Some("55000"));
        assert_eq!(sqlstate_of("SELECT secretgate.set_global_secret('K', 'v')").as_deref(), Some("55000"));
    }

    #[pg_test]
    fn attach_gates_validates_columns_and_keys() {
        attached_tables();
        // Same tables again: a no-op.
        assert_eq!(sqlstate_of("SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets')"), None);
        run("CREATE TABLE public.ws_missing (id uuid PRIMARY KEY, kind text, status text)");
        run("CREATE TABLE public.ws_mistyped (id uuid PRIMARY KEY, kind text, status text, runtime text, model int)");
        run("CREATE TABLE public.secrets_nokey (workspace_id uuid, key text, encrypted_value bytea, encryption_version int)");
        run("CREATE TABLE public.ws_extra (id uuid PRIMARY KEY, kind text, status text, runtime text, model text, extra jsonb)");
        // Other tables while attached: refused until detached.
        assert_eq!(
            sqlstate_of("SELECT secretgate.attach_gates('public.ws_extra', 'public.workspace_secrets', 'public.global_secrets')").as_deref(),
            Some("55000")
        );
        run("SELECT secretgate.detach_gates()");
        for (stmt, want) in [
            ("SELECT secretgate.attach_gates('public.ws_missing', 'public.workspace_secrets', 'public.global_secrets')", "42703"),
            ("SELECT secretgate.attach_gates('public.ws_mistyped', 'public.workspace_secrets', 'public.global_secrets')", "42804"),
            ("SELECT secretgate.attach_gates('public.workspaces', 'public.secrets_nokey', 'public.global_secrets')", "42P10"),
            ("SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.ws_extra')", "42703"),
        ] {
            assert_eq!(sqlstate_of(stmt).as_deref(), Some(want), "{stmt}");
        }
        // Labels: an enum status, a domain kind, a varchar runtime, no model column.
        run("CREATE TYPE public.ws_state AS ENUM ('provisioning', 'online', 'hibernating')");
        run("CREATE DOMAIN public.ws_kind AS varchar(20)");
        run("CREATE TABLE public.ws_labels (id uuid PRIMARY KEY, kind public.ws_kind, status public.ws_state, runtime varchar)");
        let problems = Spi::get_one::<i64>(
            "SELECT count(*) FROM secretgate.attach_check('public.ws_labels', 'public.workspace_secrets', 'public.global_secrets')",
        );
        assert_eq!(problems, Ok(Some(0)));
        let problems = Spi::get_one::<i64>(
            "SELECT count(*) FROM secretgate.attach_check('public.ws_mistyped', 'public.secrets_nokey', 'public.global_secrets')",
        );
        assert_eq!(problems, Ok(Some(2)), "attach_check lists every problem");
        // Extra columns are fine.
        assert_eq!(sqlstate_of("SELECT secretgate.attach_gates('public.ws_extra', 'public.workspace_secrets', 'public.global_secrets')"), None);
    }

    #[pg_test]
    fn direct_kind_read_takes_text_like_kinds_and_leaves_enums_to_sql() {
        use crate::pg::index_read::text_by_uuid_key;
        run("CREATE DOMAIN public.kind_d AS text");
        run("CREATE TYPE public.kind_e AS ENUM ('workspace', 'platform')");
        run("CREATE TABLE public.k_domain (id uuid PRIMARY KEY, kind public.kind_d)");
        run("CREATE TABLE public.k_varchar (id uuid PRIMARY KEY, kind varchar(16))");
        run("CREATE TABLE public.k_enum (id uuid PRIMARY KEY, kind public.kind_e)");
        for t in ["k_domain", "k_varchar", "k_enum"] {
            run(&format!("INSERT INTO public.{t} VALUES ('{WS}', 'platform')"));
        }
        let oid =
            |t: &str| Spi::get_one::<pg_sys::Oid>(&format!("SELECT 'public.{t}'::regclass::oid")).unwrap().unwrap();
        let key = *secretgate_core::uuid::Uuid::parse_str(WS).unwrap().as_bytes();
        assert_eq!(text_by_uuid_key(oid("k_domain"), c"id", c"kind", &key), Some(Some("platform".to_string())));
        assert_eq!(text_by_uuid_key(oid("k_varchar"), c"id", c"kind", &key), Some(Some("platform".to_string())));
        assert_eq!(text_by_uuid_key(oid("k_enum"), c"id", c"kind", &key), None, "an enum kind goes through SQL");
    }

    #[pg_test]
    fn refusals_carry_code_word_and_json_detail_without_the_value() {
        attached_tables();
        run(&format!("SELECT secretgate.set_secret('{WS}', 'ANTHROPIC_API_KEY', 'very-recognizable-plaintext')"));
        run("UPDATE public.workspace_secrets SET encrypted_value = set_byte(encrypted_value, 13, get_byte(encrypted_value, 13) # 1)");
        run("CREATE FUNCTION tests.error_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE m text; d text;
             BEGIN EXECUTE stmt; RETURN NULL;
             EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
                 RETURN m || E'\\n' || d; END $$");
        let shown =
            text(&format!("SELECT tests.error_of($$SELECT secretgate.read_secret('{WS}', 'ANTHROPIC_API_KEY')$$)"))
                .unwrap();
        let (message, detail) = shown.split_once('\n').unwrap();
        assert!(message.starts_with("DECRYPT_FAILED: "), "{message}");
        let detail: serde_json::Value = serde_json::from_str(detail).unwrap();
        assert_eq!(detail["code"], "DECRYPT_FAILED");
        assert_eq!(detail["workspace_id"], WS);
        assert_eq!(detail["key"], "ANTHROPIC_API_KEY");
        assert!(!shown.contains("very-recognizable"));
    }

    #[pg_test]
    fn caller_setting_and_role_membership_make_agents_but_superuser_alone_does_not() {
        use crate::gates::caller::Caller;
        assert!(!Caller::current().agent, "a superuser with no setting is not an agent");
        run("SET LOCAL secretgate.caller = 'operator'");
        assert!(!Caller::current().agent);
        run("SET LOCAL secretgate.caller = 'agent'");
        assert!(Caller::current().agent);
        run("SET LOCAL secretgate.caller = 'unset'");
        assert_eq!(sqlstate_of("SET LOCAL secretgate.caller = 'agnet'").as_deref(), Some("22023"));
        // A member of secretgate_agent stays an agent whatever the setting says.
        run("CREATE ROLE sg_pgtest_agent IN ROLE secretgate_agent");
        run("SET LOCAL ROLE sg_pgtest_agent");
        run("SET LOCAL secretgate.caller = 'operator'");
        let caller = Caller::current();
        run("RESET ROLE");
        assert!(caller.agent && caller.via_role);
    }

    #[pg_test]
    fn resolve_provider_prefers_the_runtime_route_then_the_longest_prefix() {
        // The SQL function and the subquery the gates use must agree on every case.
        let resolve = |runtime: Option<&str>, model: &str| {
            let function = Spi::get_one_with_args::<String>(
                "SELECT secretgate.resolve_provider($1, $2)",
                &[runtime.into(), model.into()],
            )
            .unwrap();
            let inlined = Spi::get_one_with_args::<String>(
                &format!("SELECT {}", crate::store::registry::ROUTED_PROVIDER),
                &[runtime.into(), model.into()],
            )
            .unwrap();
            assert_eq!(
                function, inlined,
                "resolve_provider and registry::ROUTED_PROVIDER disagree for ({runtime:?}, {model:?})"
            );
            function
        };
        assert_eq!(resolve(None, "anthropic:claude-opus-4-7").as_deref(), Some("anthropic"));
        assert_eq!(resolve(None, "claude-sonnet-4").as_deref(), Some("anthropic"));
        assert_eq!(resolve(Some("codex"), "gpt-5").as_deref(), Some("openai"));
        assert_eq!(resolve(None, "mystery-model"), None);
        run(
            "INSERT INTO secretgate.providers (name, auth_env) VALUES ('anthropic-oauth', '{CLAUDE_CODE_OAUTH_TOKEN}')",
        );
        run("INSERT INTO secretgate.model_routes VALUES ('anthropic:claude-opus', 'openrouter', NULL), ('anthropic:', 'anthropic-oauth', 'claude-code')");
        // Longest prefix among routes for any runtime…
        assert_eq!(resolve(None, "anthropic:claude-opus-4-7").as_deref(), Some("openrouter"));
        // …but a route naming the runtime wins.
        assert_eq!(resolve(Some("claude-code"), "anthropic:claude-opus-4-7").as_deref(), Some("anthropic-oauth"));
    }

    #[pg_test]
    fn reencrypt_moves_old_versions_and_carries_verdicts() {
        attached_tables();
        // Rows written under version 1 (the keyring's current version is 2).
        let keyring = secretgate_core::Keyring::parse(vectors()["keyring"].to_string().as_bytes()).unwrap();
        let ws = secretgate_core::Scope::Workspace(secretgate_core::uuid::Uuid::parse_str(WS).unwrap());
        for (i, key) in ["OPENAI_API_KEY", "LLM_PROVIDER", "OTHER"].iter().enumerate() {
            let blob =
                keyring.encrypt_with_nonce(1, [i as u8 + 40; 12], format!("value-{key}").as_bytes(), ws, key).unwrap();
            Spi::run_with_args(
                &format!("INSERT INTO public.workspace_secrets VALUES ('{WS}', $1, $2, 1)"),
                &[(*key).into(), blob.as_slice().into()],
            )
            .unwrap();
        }
        let global =
            keyring.encrypt_with_nonce(1, [9; 12], b"global-value", secretgate_core::Scope::Global, "G").unwrap();
        Spi::run_with_args("INSERT INTO public.global_secrets VALUES ('G', $1, 1)", &[global.as_slice().into()])
            .unwrap();
        assert_eq!(
            text(&format!("SELECT secretgate.record_liveness('{WS}', 'OPENAI_API_KEY', 503)")).as_deref(),
            Some("transient")
        );

        assert_eq!(Spi::get_one::<i64>("SELECT secretgate.reencrypt(2)").unwrap(), Some(2));
        assert_eq!(Spi::get_one::<i64>("SELECT secretgate.reencrypt(100)").unwrap(), Some(2));
        assert_eq!(Spi::get_one::<i64>("SELECT secretgate.reencrypt(100)").unwrap(), Some(0));
        let old = Spi::get_one::<i64>(
            "SELECT (SELECT count(*) FROM public.workspace_secrets WHERE encryption_version <> 2) \
                  + (SELECT count(*) FROM public.global_secrets WHERE encryption_version <> 2)",
        )
        .unwrap();
        assert_eq!(old, Some(0));
        for key in ["OPENAI_API_KEY", "LLM_PROVIDER", "OTHER"] {
            let got = text(&format!("SELECT secretgate.read_secret('{WS}', '{key}')"));
            assert_eq!(got, Some(format!("value-{key}")));
        }
        assert_eq!(text("SELECT secretgate.read_global_secret('G')").as_deref(), Some("global-value"));
        // The verdict followed the credential to its new ciphertext.
        let carried = Spi::get_one::<bool>(&format!(
            "SELECT l.ciphertext_sha256 = sha256(s.encrypted_value) FROM secretgate.liveness l \
             JOIN public.workspace_secrets s ON s.workspace_id = l.workspace_id AND s.key = l.key \
             WHERE l.workspace_id = '{WS}' AND l.key = 'OPENAI_API_KEY'"
        ))
        .unwrap();
        assert_eq!(carried, Some(true));
        assert_eq!(sqlstate_of("SELECT secretgate.reencrypt(0)").as_deref(), Some("22023"));
    }

    #[pg_test]
    fn the_kind_read_through_the_index_agrees_with_sql_or_steps_aside() {
        use crate::pg::index_read::{text_by_uuid_key, UUID_BTREE_FAM_OID};
        let catalog = Spi::get_one::<pg_sys::Oid>(
            "SELECT oid FROM pg_opfamily WHERE opfname = 'uuid_ops' AND opfmethod = (SELECT oid FROM pg_am WHERE amname = 'btree')",
        )
        .unwrap();
        assert_eq!(catalog, Some(UUID_BTREE_FAM_OID));
        let oid =
            |table: &str| Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{table}'::regclass::oid")).unwrap().unwrap();
        // A dropped column before the ones read, so attribute numbers are not positions by name.
        run("CREATE TABLE tests.ws (gone int, id uuid PRIMARY KEY, kind text)");
        run("ALTER TABLE tests.ws DROP COLUMN gone");
        run(&format!("INSERT INTO tests.ws VALUES ('{WS}', 'platform'), ('{OTHER_WS}', NULL)"));
        let read = |table: &str, key: &str| text_by_uuid_key(oid(table), c"id", c"kind", &id(key));
        assert_eq!(read("tests.ws", WS), Some(Some("platform".into())));
        assert_eq!(read("tests.ws", OTHER_WS), Some(Some(String::new())), "a NULL kind reads as empty, as through SQL");
        assert_eq!(read("tests.ws", "00000000-0000-4000-8000-0000000000ff"), Some(None));
        // Rows this transaction wrote are seen, as SPI sees them.
        run(&format!("UPDATE tests.ws SET kind = 'workspace' WHERE id = '{WS}'"));
        assert_eq!(read("tests.ws", WS), Some(Some("workspace".into())));
        // Shapes it does not handle: the caller goes through SPI.
        run("CREATE TABLE tests.ws_unique (id uuid UNIQUE NOT NULL, kind text)");
        run("CREATE TABLE tests.ws_pair (id uuid, n int, kind text, PRIMARY KEY (id, n))");
        run("CREATE TABLE tests.ws_parted (id uuid PRIMARY KEY, kind text) PARTITION BY HASH (id)");
        run("CREATE TABLE tests.ws_parted_0 PARTITION OF tests.ws_parted FOR VALUES WITH (MODULUS 1, REMAINDER 0)");
        // (A varchar, domain or enum kind: see direct_kind_read_takes_text_like_kinds_and_leaves_enums_to_sql.)
        for table in ["tests.ws_unique", "tests.ws_pair", "tests.ws_parted"] {
            assert_eq!(read(table, WS), None, "{table}");
        }
    }

    /// A uuid's 16 bytes, as the direct kind read takes its key.
    fn id(text: &str) -> [u8; 16] {
        secretgate_core::uuid::Uuid::parse_str(text).unwrap().into_bytes()
    }

    #[pg_test]
    fn an_agent_writing_a_workspace_and_its_secret_in_one_statement_is_gated_on_that_row() {
        attached_tables();
        run("SET LOCAL secretgate.caller = 'agent'");
        let write = |kind: &str, id: &str| {
            sqlstate_of(&format!(
                "WITH w AS (INSERT INTO public.workspaces (id, kind) VALUES ('{id}', '{kind}') RETURNING id) \
                 INSERT INTO public.workspace_secrets SELECT id, 'OPENAI_API_KEY', '\\x00', 1 FROM w"
            ))
        };
        assert_eq!(write("workspace", "00000000-0000-4000-8000-0000000000a1"), None);
        assert_eq!(write("platform", "00000000-0000-4000-8000-0000000000a2").as_deref(), Some("SG101"));
    }

    #[pg_test]
    fn the_row_gates_sql_runs_under_the_pinned_search_path_and_the_callers_comes_back() {
        run("SET LOCAL search_path = public, tests");
        run("CREATE ROLE sg_pgtest_writer");
        run("SET LOCAL ROLE sg_pgtest_writer");
        let inside = crate::pg::spi::as_owner(|client| {
            client
                .select("SELECT current_setting('search_path'), current_user::text", None, &[])?
                .first()
                .get_two::<String, String>()
        })
        .unwrap();
        let owner = text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'secretgate'");
        assert_eq!(inside, (Some("pg_catalog, pg_temp".to_string()), owner));
        assert_eq!(text("SELECT current_user::text").as_deref(), Some("sg_pgtest_writer"));
        run("RESET ROLE");
        assert_eq!(text("SHOW search_path").as_deref(), Some("public, tests"));
    }

    #[pg_test]
    fn a_remembered_row_place_is_used_only_while_it_holds_that_visible_row() {
        use crate::pg::index_read::{remember, text_by_uuid_key};
        use pgrx::itemptr::item_pointer_set_all;
        run("CREATE TABLE tests.places (id uuid PRIMARY KEY, kind text)");
        run(&format!("INSERT INTO tests.places VALUES ('{WS}', 'platform'), ('{OTHER_WS}', 'workspace')"));
        let table = Spi::get_one::<pg_sys::Oid>("SELECT 'tests.places'::regclass::oid").unwrap().unwrap();
        let read = |key: &str| text_by_uuid_key(table, c"id", c"kind", &id(key));
        let place = |key: &str| {
            Spi::get_one::<pg_sys::ItemPointerData>(&format!("SELECT ctid FROM tests.places WHERE id = '{key}'"))
                .unwrap()
                .unwrap()
        };
        // Index scans of the primary key in this transaction: whether the read used the place.
        let scans =
            || Spi::get_one::<i64>("SELECT pg_stat_get_xact_numscans('tests.places_pkey'::regclass)").unwrap().unwrap();
        let read_counting = |key: &str| {
            let before = scans();
            let value = read(key);
            (value, scans() - before)
        };
        assert_eq!(read_counting(WS), (Some(Some("platform".into())), 1), "the first read searches the index");
        assert_eq!(read_counting(WS), (Some(Some("platform".into())), 0), "the next one fetches the remembered place");
        // The place holds another row: its id differs, so the index answers.
        remember(table, &id(WS), Some(place(OTHER_WS)));
        assert_eq!(read_counting(WS), (Some(Some("platform".into())), 1));
        // A block past the end of the table: not read, the index answers.
        let mut beyond = place(WS);
        item_pointer_set_all(&mut beyond, 1000, 1);
        remember(table, &id(WS), Some(beyond));
        assert_eq!(read_counting(WS), (Some(Some("platform".into())), 1));
        // The remembered version is no longer visible: updated, then deleted.
        run(&format!("UPDATE tests.places SET kind = 'workspace' WHERE id = '{WS}'"));
        assert_eq!(read_counting(WS), (Some(Some("workspace".into())), 1));
        run(&format!("DELETE FROM tests.places WHERE id = '{WS}'"));
        assert_eq!(read_counting(WS), (Some(None), 1));
        assert_eq!(read_counting(WS), (Some(None), 1), "no place is remembered for a row that is not there");
    }

    /// The row as SQL sees it (ciphertext and version), for comparing with the direct read.
    fn row_by_sql(table: &str, ws: Option<&str>, key: &str) -> Option<(Option<Vec<u8>>, Option<i32>)> {
        let filter = match ws {
            Some(ws) => format!("workspace_id = '{ws}' AND key = '{key}'"),
            None => format!("key = '{key}'"),
        };
        Spi::connect(|c| {
            let t = c.select(
                &format!("SELECT encrypted_value, encryption_version FROM {table} WHERE {filter}"),
                None,
                &[],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let row = t.first();
            Ok(Some((row.get(1)?, row.get(2)?)))
        })
        .unwrap()
    }

    #[pg_test]
    fn the_direct_secret_read_answers_what_sql_would_through_every_change() {
        use crate::pg::secret_read::{secret_row, TEXT_BTREE_FAM_OID};
        let catalog = Spi::get_one::<pg_sys::Oid>(
            "SELECT oid FROM pg_opfamily WHERE opfname = 'text_ops' AND opfmethod = (SELECT oid FROM pg_am WHERE amname = 'btree')",
        )
        .unwrap();
        assert_eq!(catalog, Some(TEXT_BTREE_FAM_OID));
        attached_tables();
        let oid = |t: &str| Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{t}'::regclass::oid")).unwrap().unwrap();
        let (secrets, global) = (oid("public.workspace_secrets"), oid("public.global_secrets"));
        let ws = id(WS);
        let scans = || {
            Spi::get_one::<i64>("SELECT pg_stat_get_xact_numscans('public.workspace_secrets_pkey'::regclass)")
                .unwrap()
                .unwrap()
        };
        let read = |key: &str| {
            let before = scans();
            let direct = secret_row(secrets, Some(&ws), key).expect("the plain table is read directly");
            let searched = scans() - before;
            assert_eq!(direct, row_by_sql("public.workspace_secrets", Some(WS), key), "{key}");
            (direct.is_some(), searched)
        };
        assert_eq!(read("A"), (false, 1), "no row: unset");
        run(&format!("SELECT secretgate.set_secret('{WS}', 'A', 'one')"));
        assert_eq!(read("A"), (true, 1), "a row written in this transaction is seen");
        assert_eq!(read("A"), (true, 0), "its place is remembered");
        run(&format!("SELECT secretgate.set_secret('{WS}', 'A', 'two')"));
        assert_eq!(read("A"), (true, 1), "overwritten: the old place holds an invisible version");
        assert_eq!(text(&format!("SELECT secretgate.read_secret('{WS}', 'A')")).as_deref(), Some("two"));
        // Same key, other workspace: never the remembered row of another.
        assert_eq!(secret_row(secrets, Some(&id(OTHER_WS)), "A"), Some(None));
        run(&format!("DELETE FROM public.workspace_secrets WHERE workspace_id = '{WS}' AND key = 'A'"));
        assert_eq!(read("A"), (false, 1), "deleted: unset again");
        run("SELECT secretgate.set_global_secret('G', 'g')");
        assert_eq!(secret_row(global, None, "G"), Some(row_by_sql("public.global_secrets", None, "G")));
        assert!(secret_row(global, None, "G").unwrap().is_some());
        // A rewrite gives every row a new place.
        run(&format!("SELECT secretgate.set_secret('{WS}', 'B', 'b')"));
        assert_eq!(read("B"), (true, 1));
        run("TRUNCATE public.global_secrets");
        run("ALTER TABLE public.workspace_secrets ALTER COLUMN encryption_version TYPE int");
        run("CLUSTER public.workspace_secrets USING workspace_secrets_pkey");
        assert!(read("B").0);
        assert_eq!(secret_row(global, None, "G"), Some(None));
    }

    #[pg_test]
    fn the_direct_secret_read_steps_aside_where_sql_could_answer_otherwise() {
        use crate::pg::secret_read::secret_row;
        attached_tables();
        run(&format!("SELECT secretgate.set_secret('{WS}', 'A', 'one')"));
        let secrets = Spi::get_one::<pg_sys::Oid>("SELECT 'public.workspace_secrets'::regclass::oid").unwrap().unwrap();
        let direct = || secret_row(secrets, Some(&id(WS)), "A");
        assert!(matches!(direct(), Some(Some(_))));
        // Row-level security: Postgres decides, through SQL.
        run("ALTER TABLE public.workspace_secrets ENABLE ROW LEVEL SECURITY");
        run("ALTER TABLE public.workspace_secrets FORCE ROW LEVEL SECURITY");
        assert_eq!(direct(), None);
        run("ALTER TABLE public.workspace_secrets NO FORCE ROW LEVEL SECURITY");
        run("ALTER TABLE public.workspace_secrets DISABLE ROW LEVEL SECURITY");
        assert!(matches!(direct(), Some(Some(_))));
        // A role without SELECT: SQL raises its 42501.
        run("CREATE ROLE sg_pgtest_noread");
        run("GRANT USAGE ON SCHEMA secretgate, tests TO sg_pgtest_noread");
        run("SET LOCAL ROLE sg_pgtest_noread");
        assert_eq!(direct(), None);
        assert_eq!(sqlstate_of(&format!("SELECT secretgate.read_secret('{WS}', 'A')")).as_deref(), Some("42501"));
        run("RESET ROLE");
        // No unique index on exactly (workspace_id, key): a lookup could find two rows.
        run("ALTER TABLE public.workspace_secrets DROP CONSTRAINT workspace_secrets_pkey");
        run("CREATE INDEX ws_nonunique ON public.workspace_secrets (workspace_id, key)");
        assert_eq!(direct(), None);
        run("CREATE UNIQUE INDEX ws_partial ON public.workspace_secrets (workspace_id, key) WHERE key <> 'Z'");
        assert_eq!(direct(), None, "a partial index does not cover every row");
        run("CREATE UNIQUE INDEX ws_unique ON public.workspace_secrets (workspace_id, key)");
        assert!(matches!(direct(), Some(Some(_))));
        // A case-insensitive key column (where the server has ICU): `=` is not byte equality.
        let icu = sqlstate_of(
            "CREATE COLLATION tests.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
        );
        if icu.is_none() {
            run("CREATE TABLE tests.ci_secrets (workspace_id uuid, key text COLLATE tests.ci, \
                 encrypted_value bytea, encryption_version int, PRIMARY KEY (workspace_id, key))");
            run(&format!("INSERT INTO tests.ci_secrets VALUES ('{WS}', 'A', '\\x00', 1)"));
            let ci = Spi::get_one::<pg_sys::Oid>("SELECT 'tests.ci_secrets'::regclass::oid").unwrap().unwrap();
            assert_eq!(secret_row(ci, Some(&id(WS)), "a"), None);
        }
        // Inheritance children: SQL reads their rows too.
        assert!(matches!(direct(), Some(Some(_))));
        run("CREATE TABLE tests.child_secrets () INHERITS (public.workspace_secrets)");
        assert_eq!(direct(), None);
        // The switch turns the direct read off.
        run("SET LOCAL secretgate.direct_index_read = off");
        assert_eq!(direct(), None);
    }

    /// The kept versions of a secret: (version, reason, state), newest first.
    fn kept(ws: &str, key: &str) -> Vec<(i32, String, String)> {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for row in c.select(
                &format!("SELECT version, reason, state FROM secretgate.secret_versions('{ws}', '{key}')"),
                None,
                &[],
            )? {
                out.push((row.get::<i32>(1)?.unwrap(), row.get::<String>(2)?.unwrap(), row.get::<String>(3)?.unwrap()));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap()
    }

    #[pg_test]
    fn overwrites_and_deletes_are_kept_and_restored_through_the_gates() {
        attached_tables();
        let read = |key: &str| text(&format!("SELECT secretgate.read_secret('{WS}', '{key}')"));
        run(&format!("SELECT secretgate.set_secret('{WS}', 'OPENAI_API_KEY', 'first')"));
        assert!(kept(WS, "OPENAI_API_KEY").is_empty(), "a first write replaces nothing");
        run(&format!("SELECT secretgate.set_secret('{WS}', 'OPENAI_API_KEY', 'second')"));
        // A service's own SQL is kept too.
        run(&format!(
            "UPDATE public.workspace_secrets SET encrypted_value = secretgate.encrypt('third', workspace_id, key) \
              WHERE workspace_id = '{WS}' AND key = 'OPENAI_API_KEY'"
        ));
        run(&format!("DELETE FROM public.workspace_secrets WHERE workspace_id = '{WS}' AND key = 'OPENAI_API_KEY'"));
        let s = |v: &str| v.to_string();
        assert_eq!(
            kept(WS, "OPENAI_API_KEY"),
            vec![(3, s("delete"), s("ok")), (2, s("set"), s("ok")), (1, s("set"), s("ok"))]
        );
        assert_eq!(read("OPENAI_API_KEY"), None);
        run(&format!("SELECT secretgate.restore_secret('{WS}', 'OPENAI_API_KEY', 1)"));
        assert_eq!(read("OPENAI_API_KEY").as_deref(), Some("first"), "a deleted secret comes back");
        run(&format!("SELECT secretgate.restore_secret('{WS}', 'OPENAI_API_KEY', 2)"));
        assert_eq!(read("OPENAI_API_KEY").as_deref(), Some("second"), "an overwritten one too");
        assert_eq!(kept(WS, "OPENAI_API_KEY")[0], (4, s("restore"), s("ok")), "the restore is kept in turn");
        assert_eq!(
            sqlstate_of(&format!("SELECT secretgate.restore_secret('{WS}', 'OPENAI_API_KEY', 99)")).as_deref(),
            Some("P0002")
        );
        // History never holds a plaintext.
        let plain = Spi::get_one::<i64>(
            "SELECT count(*) FROM secretgate.secret_history WHERE position('first'::bytea IN encrypted_value) > 0 \
                OR position('second'::bytea IN encrypted_value) > 0",
        );
        assert_eq!(plain, Ok(Some(0)));
        // A re-encryption keeps nothing; a rename keeps the old name's value as `rename`.
        run("SELECT secretgate.reencrypt(100)");
        assert_eq!(kept(WS, "OPENAI_API_KEY").len(), 4);
        run("SELECT secretgate.rename_secret_key('OPENAI_API_KEY', 'OPENAI_KEY')");
        assert_eq!(kept(WS, "OPENAI_API_KEY")[0].1, "rename");
        assert_eq!(text(&format!("SELECT secretgate.read_secret('{WS}', 'OPENAI_KEY')")).as_deref(), Some("second"));
        // Global secrets have their history too.
        run("SELECT secretgate.set_global_secret('G', 'g1')");
        run("SELECT secretgate.set_global_secret('G', 'g2')");
        run("SELECT secretgate.restore_global_secret('G', 1)");
        assert_eq!(text("SELECT secretgate.read_global_secret('G')").as_deref(), Some("g1"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM secretgate.global_secret_versions('G')"), Ok(Some(2)));
    }

    #[pg_test]
    fn history_keeps_its_count_purges_and_goes_with_its_workspace() {
        attached_tables();
        run("SET LOCAL secretgate.history_keep = 2");
        for v in ["a", "b", "c", "d"] {
            run(&format!("SELECT secretgate.set_secret('{WS}', 'K', '{v}')"));
        }
        let versions: Vec<i32> = kept(WS, "K").into_iter().map(|k| k.0).collect();
        assert_eq!(versions, vec![3, 2], "only the newest two are kept");
        run("SET LOCAL secretgate.history_keep = 0");
        run(&format!("SELECT secretgate.set_secret('{WS}', 'K', 'e')"));
        assert_eq!(kept(WS, "K").len(), 2, "0 keeps nothing new");
        run("RESET secretgate.history_keep");
        run(&format!("SELECT secretgate.set_secret('{OTHER_WS}', 'K', 'x')"));
        run(&format!("SELECT secretgate.set_secret('{OTHER_WS}', 'K', 'y')"));
        assert_eq!(Spi::get_one::<i64>(&format!("SELECT secretgate.purge_history('{WS}', 'K')")), Ok(Some(2)));
        assert!(kept(WS, "K").is_empty());
        assert_eq!(kept(OTHER_WS, "K").len(), 1, "another workspace's history stays");
        // A workspace deleted (its secrets cascade): no history of it is left.
        run(&format!("DELETE FROM public.workspaces WHERE id = '{OTHER_WS}'"));
        let left = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM secretgate.secret_history WHERE workspace_id = '{OTHER_WS}'"
        ));
        assert_eq!(left, Ok(Some(0)));
    }

    #[pg_test]
    fn an_agent_restoring_its_concierges_secret_is_refused_and_nothing_changes() {
        attached_tables();
        run(&format!("UPDATE public.workspaces SET kind = 'platform' WHERE id = '{WS}'"));
        run(&format!("SELECT secretgate.set_secret('{WS}', 'ANTHROPIC_API_KEY', 'one')"));
        run(&format!("SELECT secretgate.set_secret('{WS}', 'ANTHROPIC_API_KEY', 'two')"));
        run("SET LOCAL secretgate.caller = 'agent'");
        let refused = sqlstate_of(&format!("SELECT secretgate.restore_secret('{WS}', 'ANTHROPIC_API_KEY', 1)"));
        assert_eq!(refused.as_deref(), Some("SG101"));
        run("SET LOCAL secretgate.caller = 'operator'");
        assert_eq!(kept(WS, "ANTHROPIC_API_KEY").len(), 1);
        assert_eq!(
            text(&format!("SELECT secretgate.read_secret('{WS}', 'ANTHROPIC_API_KEY')")).as_deref(),
            Some("two")
        );
    }

    #[pg_test]
    fn sql_routing_agrees_with_the_core_rule_on_generated_tables() {
        use secretgate_core::policy::{route, Route};
        // A small deterministic generator: patterns over {a,b}, three providers, two runtimes.
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let word = |len: u64, next: &mut dyn FnMut(u64) -> u64| -> String {
            (0..len).map(|_| if next(2) == 0 { 'a' } else { 'b' }).collect()
        };
        for (i, name) in ["p", "q", "r"].iter().enumerate() {
            run(&format!("INSERT INTO secretgate.providers (name, auth_env) VALUES ('gen-{name}', '{{K{i}}}')"));
        }
        for round in 0..12 {
            run("DELETE FROM secretgate.model_routes WHERE provider LIKE 'gen-%'");
            let mut table = Vec::new();
            for _ in 0..(1 + next(6)) {
                let len = next(4);
                let pattern = format!("g{}", word(len, &mut next));
                let provider = format!("gen-{}", ["p", "q", "r"][next(3) as usize]);
                let runtime = match next(3) {
                    0 => Some("x".to_string()),
                    1 => Some("y".to_string()),
                    _ => None,
                };
                // The registry allows one route per (pattern, runtime).
                if table.iter().any(|r: &Route| r.pattern == pattern && r.runtime == runtime) {
                    continue;
                }
                Spi::run_with_args(
                    "INSERT INTO secretgate.model_routes (pattern, provider, runtime) VALUES ($1, $2, $3)",
                    &[pattern.as_str().into(), provider.as_str().into(), runtime.as_deref().into()],
                )
                .unwrap();
                table.push(Route { pattern, provider, runtime });
            }
            for _ in 0..20 {
                let len = next(5);
                let model = format!("g{}", word(len, &mut next));
                let runtime = ["x", "y", "z"].get(next(4) as usize).copied();
                let sql = Spi::get_one_with_args::<String>(
                    "SELECT secretgate.resolve_provider($1, $2)",
                    &[runtime.into(), model.as_str().into()],
                )
                .unwrap();
                let inlined = Spi::get_one_with_args::<String>(
                    &format!("SELECT {}", crate::store::registry::ROUTED_PROVIDER),
                    &[runtime.into(), model.as_str().into()],
                )
                .unwrap();
                let core = route(&table, runtime, &model).map(str::to_string);
                assert_eq!(sql, core, "round {round}: SQL and core routing disagree for ({runtime:?}, {model:?})");
                assert_eq!(inlined, core, "round {round}: the kept plan and core routing disagree");
            }
        }
    }

    #[pg_test]
    fn the_direct_index_read_has_an_off_switch_and_the_sql_path_answers_the_same() {
        use crate::pg::index_read::text_by_uuid_key;
        attached_tables();
        run(&format!("UPDATE public.workspaces SET kind = 'platform' WHERE id = '{WS}'"));
        let table = Spi::get_one::<pg_sys::Oid>("SELECT 'public.workspaces'::regclass::oid").unwrap().unwrap();
        assert_eq!(text_by_uuid_key(table, c"id", c"kind", &id(WS)), Some(Some("platform".to_string())));
        run("SET LOCAL secretgate.direct_index_read = off");
        assert_eq!(text_by_uuid_key(table, c"id", c"kind", &id(WS)), None, "off: the direct read must not answer");
        // The gate still reads the kind (through SQL) and refuses an agent's write.
        run("SET LOCAL secretgate.caller = 'agent'");
        let refused = sqlstate_of(&format!(
            "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES ('{WS}', 'K', '\\x00', 1)"
        ));
        assert_eq!(refused.as_deref(), Some("SG101"));
        run("RESET secretgate.caller");
        run("RESET secretgate.direct_index_read");
    }
}
