-- Reference gates in PL/pgSQL, for the benchmark's comparison only (never
-- installed by the extension). Same logic as the gates (extension/src/gates/
-- and the core's policy) and register_workspace, on a copy of the platform's
-- tables in schema sgref (same columns, keys and foreign key), sharing
-- secretgate's registry (providers, model_routes, forbidden_keys, liveness).
--
-- Deliberate differences, all forced by PL/pgSQL:
--  * AES-256-GCM comes from secretgate.decrypt (pgcrypto has no GCM), so the
--    crypto cost is the same on both sides; what differs is the gate logic.
--  * The tables are named statically (the extension looks them up in
--    secretgate.attached_tables on every call).
--  * A decrypt error that the Rust code turns into a reason (model_usable,
--    register's BYOK step) needs an EXCEPTION block here: a subtransaction.
--  * The outer role (SET ROLE level) is current_setting('role'), since
--    current_user inside SECURITY DEFINER is the owner.
-- Needs: CREATE EXTENSION secretgate (not attached to sgref) and the sgref tables.

CREATE SCHEMA IF NOT EXISTS sgref;

-- Really a member of secretgate_agent (superuser alone is not).
CREATE FUNCTION sgref.agent_member(r name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'secretgate_agent') THEN false
        WHEN NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = r), false)
            THEN pg_has_role(r, 'secretgate_agent', 'MEMBER')
        ELSE EXISTS (
            WITH RECURSIVE m(roleid) AS (
                SELECT a.roleid FROM pg_auth_members a JOIN pg_roles u ON u.oid = a.member WHERE u.rolname = r
                UNION SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.roleid)
            SELECT 1 FROM m JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'secretgate_agent')
    END
$$;

-- Caller::current(): the setting, the role membership, the outer role's name.
CREATE FUNCTION sgref.caller() RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting text := coalesce(current_setting('secretgate.caller', true), 'unset');
    outer_role name := CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END;
    via_role boolean := sgref.agent_member(outer_role) OR sgref.agent_member(session_user);
BEGIN
    RETURN jsonb_build_object('agent', via_role OR setting = 'agent', 'setting', setting,
                              'agent_role_member', via_role, 'role', outer_role);
END $$;

-- Failure::raise for a refusal: the audit line (server log only), then the ERROR.
CREATE FUNCTION sgref.refuse(code text, word text, reason text, detail jsonb, event text, caller jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d jsonb := jsonb_build_object('code', word, 'sqlstate', code, 'reason', reason) || detail;
BEGIN
    IF event IS NOT NULL THEN
        RAISE LOG 'secretgate audit: %', d || jsonb_build_object('event', event, 'caller', caller);
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = word || ': ' || reason, DETAIL = d::text;
END $$;

CREATE FUNCTION sgref.scope_detail(scope uuid) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN scope IS NULL THEN jsonb_build_object('scope', 'global')
                ELSE jsonb_build_object('workspace_id', scope::text) END
$$;

-- secrets::open: a row must have both columns; decrypt raises SG001/SG002/SG003.
CREATE FUNCTION sgref.open(blob bytea, version int, scope uuid, k text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF blob IS NULL OR version IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SG001',
            MESSAGE = 'DECRYPT_FAILED: the stored row has a NULL encrypted_value or encryption_version';
    END IF;
    RETURN secretgate.decrypt(blob, version, scope, k);
END $$;

-- gates::check_secret_write: self-write (SG101/SG106), forbidden keys (SG105), MODEL values (SG107).
CREATE FUNCTION sgref.check_secret_write(op text, scope uuid, k text, value text, caller jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ws_kind text;
    why text;
    event text := CASE WHEN op = 'DELETE' THEN 'secret.delete.refused' ELSE 'secret.set.refused' END;
BEGIN
    IF (caller ->> 'agent')::boolean AND scope IS NOT NULL THEN
        SELECT coalesce(kind, '') INTO ws_kind FROM sgref.workspaces WHERE id = scope;
        IF NOT FOUND THEN
            IF op <> 'DELETE' THEN
                PERFORM sgref.refuse('SG106', 'WORKSPACE_KIND_UNKNOWN',
                    'the target workspace does not exist or cannot be read, so an agent''s write is refused',
                    sgref.scope_detail(scope) || jsonb_build_object('key', k), event, caller);
            END IF;
        ELSIF ws_kind = 'platform' THEN
            PERFORM sgref.refuse('SG101', 'CONCIERGE_SELF_WRITE_BLOCKED',
                'an agent caller may not write the secrets of a platform (concierge) workspace',
                sgref.scope_detail(scope) || jsonb_build_object('key', k), event, caller);
        END IF;
    END IF;
    IF op = 'DELETE' THEN
        RETURN;
    END IF;
    SELECT reason INTO why FROM secretgate.forbidden_keys WHERE key = k;
    IF FOUND THEN
        PERFORM sgref.refuse('SG105', 'FORBIDDEN_SECRET_KEY', format('the key name %s may not be written: %s', k, why),
            sgref.scope_detail(scope) || jsonb_build_object('key', k), event, caller);
    END IF;
    IF k = 'MODEL' AND value IS NOT NULL AND EXISTS (SELECT 1 FROM secretgate.providers WHERE name = value) THEN
        PERFORM sgref.refuse('SG107', 'INVALID_MODEL_ID',
            'MODEL must be a model id (such as anthropic:claude-opus-4-7), not a provider name',
            sgref.scope_detail(scope) || jsonb_build_object('key', k, 'provider', value), event, caller);
    END IF;
END $$;

-- triggers::gate_secret_write: a NULL workspace_id names no workspace (the nil uuid).
CREATE FUNCTION sgref.gate_secret_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller jsonb := sgref.caller();
    nil constant uuid := '00000000-0000-0000-0000-000000000000';
    new_scope uuid;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_scope := coalesce(NEW.workspace_id, nil);
    END IF;
    IF TG_OP <> 'INSERT' AND new_scope IS DISTINCT FROM coalesce(OLD.workspace_id, nil) THEN
        -- Deleting a row, or moving it away, is a write to the workspace it leaves.
        PERFORM sgref.check_secret_write('DELETE', coalesce(OLD.workspace_id, nil), coalesce(OLD.key, ''), NULL, caller);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    PERFORM sgref.check_secret_write(TG_OP, new_scope, coalesce(NEW.key, ''),
        CASE WHEN NEW.key = 'MODEL' THEN sgref.open(NEW.encrypted_value, NEW.encryption_version, new_scope, 'MODEL') END,
        caller);
    RETURN NEW;
END $$;

CREATE FUNCTION sgref.gate_global_secret_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller jsonb := sgref.caller();
BEGIN
    PERFORM sgref.check_secret_write(TG_OP, NULL, coalesce(NEW.key, ''),
        CASE WHEN NEW.key = 'MODEL' THEN sgref.open(NEW.encrypted_value, NEW.encryption_version, NULL, 'MODEL') END,
        caller);
    RETURN NEW;
END $$;

-- gates::check_workspace_write: an agent may not delete a platform workspace
-- nor change whether a workspace is one (SG101).
CREATE FUNCTION sgref.gate_workspace_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller jsonb := sgref.caller();
BEGIN
    IF (caller ->> 'agent')::boolean THEN
        IF TG_OP = 'DELETE' AND OLD.kind = 'platform' THEN
            PERFORM sgref.refuse('SG101', 'CONCIERGE_SELF_WRITE_BLOCKED',
                'an agent caller may not delete a platform (concierge) workspace or its secrets',
                sgref.scope_detail(OLD.id), 'workspace.delete.refused', caller);
        ELSIF TG_OP = 'UPDATE' AND NEW.kind IS DISTINCT FROM OLD.kind
              AND (OLD.kind = 'platform' OR NEW.kind = 'platform') THEN
            PERFORM sgref.refuse('SG101', 'CONCIERGE_SELF_WRITE_BLOCKED',
                'an agent caller may not change whether a workspace is a platform (concierge) workspace',
                sgref.scope_detail(OLD.id), 'workspace.kind.refused', caller);
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

-- gates::model_usable: 'usable', 'unusable' (missing or empty), or the SQLSTATE
-- of the decrypt error. Locks the row under REPEATABLE READ and SERIALIZABLE.
CREATE FUNCTION sgref.model_state(ws uuid) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    blob bytea;
    version int;
    value text;
BEGIN
    IF current_setting('transaction_isolation') IN ('repeatable read', 'serializable') THEN
        SELECT encrypted_value, encryption_version INTO blob, version
          FROM sgref.workspace_secrets WHERE workspace_id = ws AND key = 'MODEL' FOR SHARE;
    ELSE
        SELECT encrypted_value, encryption_version INTO blob, version
          FROM sgref.workspace_secrets WHERE workspace_id = ws AND key = 'MODEL';
    END IF;
    IF NOT FOUND THEN
        RETURN 'unusable';
    END IF;
    BEGIN
        value := sgref.open(blob, version, ws, 'MODEL');
    EXCEPTION WHEN SQLSTATE 'SG001' OR SQLSTATE 'SG002' OR SQLSTATE 'SG003' THEN
        RETURN SQLSTATE;
    END;
    RETURN CASE WHEN value <> '' THEN 'usable' ELSE 'unusable' END;
END $$;

CREATE FUNCTION sgref.code_word(sqlstate text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE sqlstate WHEN 'SG001' THEN 'DECRYPT_FAILED' WHEN 'SG002' THEN 'UNKNOWN_KEY_VERSION'
                         ELSE 'KEYRING_UNAVAILABLE' END
$$;

-- gates::check_platform_identity: platform + online needs a usable MODEL (SG102).
CREATE FUNCTION sgref.check_platform_identity(ws uuid, caller jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ws_kind text;
    ws_status text;
    state text;
BEGIN
    IF ws IS NULL THEN
        RETURN;
    END IF;
    SELECT kind, status INTO ws_kind, ws_status FROM sgref.workspaces WHERE id = ws FOR SHARE;
    IF NOT FOUND OR ws_kind IS DISTINCT FROM 'platform' OR ws_status IS DISTINCT FROM 'online' THEN
        RETURN;
    END IF;
    state := sgref.model_state(ws);
    IF state = 'usable' THEN
        RETURN;
    END IF;
    PERFORM sgref.refuse('SG102', 'PLATFORM_AGENT_IDENTITY_GATE',
        CASE WHEN state = 'unusable'
             THEN 'a platform workspace may not be online without a usable MODEL (missing or empty)'
             ELSE format('a platform workspace may not be online without a usable MODEL; its MODEL cannot be read (%s %s)',
                         state, sgref.code_word(state)) END,
        sgref.scope_detail(ws) || jsonb_build_object('key', 'MODEL'), 'workspace.online.refused', caller);
END $$;

CREATE FUNCTION sgref.gate_platform_identity() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sgref.check_platform_identity(NEW.id, sgref.caller());
    RETURN NULL;
END $$;

CREATE FUNCTION sgref.gate_model_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sgref.check_platform_identity(OLD.workspace_id, sgref.caller());
    RETURN NULL;
END $$;

-- byok::evaluate: 'exempt', 'satisfied', 'missing' or 'dead', with the provider.
-- A candidate credential that does not decrypt raises its own error (fail closed).
CREATE FUNCTION sgref.byok_evaluate(ws uuid, ws_kind text, ws_runtime text, ws_model text,
                                    OUT outcome text, OUT provider text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
    k text;
    scope uuid;
    blob bytea;
    version int;
    usable int := 0;
    dead int := 0;
    transient text[] := '{}';
    verdict text;
BEGIN
    IF ws_kind = 'external' THEN
        outcome := 'exempt';
        RETURN;
    END IF;
    SELECT pr.name, pr.is_platform, pr.auth_env INTO p
      FROM secretgate.providers pr WHERE pr.name = secretgate.resolve_provider(ws_runtime, ws_model);
    IF NOT FOUND THEN
        IF ws_model IS NOT NULL THEN
            RAISE NOTICE 'secretgate: no provider route matches model "%"; treating the workspace as platform-managed', ws_model;
        END IF;
        outcome := 'exempt';
        RETURN;
    END IF;
    provider := p.name;
    IF p.is_platform THEN
        outcome := 'exempt';
        RETURN;
    END IF;
    FOREACH k IN ARRAY p.auth_env LOOP
        CONTINUE WHEN k IS NULL;
        scope := ws;
        SELECT s.encrypted_value, s.encryption_version INTO blob, version
          FROM sgref.workspace_secrets s WHERE s.workspace_id = ws AND s.key = k;
        IF NOT FOUND THEN
            scope := NULL;
            SELECT g.encrypted_value, g.encryption_version INTO blob, version
              FROM sgref.global_secrets g WHERE g.key = k;
            CONTINUE WHEN NOT FOUND;
        END IF;
        CONTINUE WHEN sgref.open(blob, version, scope, k) = '';
        usable := usable + 1;
        SELECT l.verdict INTO verdict FROM secretgate.liveness l
         WHERE l.workspace_id IS NOT DISTINCT FROM scope AND l.key = k
           AND l.ciphertext_sha256 = sha256(coalesce(blob, ''));
        IF verdict = 'dead' THEN
            dead := dead + 1;
        ELSIF verdict = 'transient' THEN
            transient := transient || k;
        END IF;
    END LOOP;
    IF usable = 0 THEN
        outcome := 'missing';
    ELSIF dead = usable THEN
        outcome := 'dead';
    ELSE
        IF cardinality(transient) > 0 THEN
            RAISE WARNING 'secretgate: BYOK credential(s) % of workspace % got no answer at the last probe (transient); allowed',
                array_to_string(transient, ', '), ws;
        END IF;
        outcome := 'satisfied';
    END IF;
END $$;

-- byok::check_at_commit: SG103/SG104 for the workspace re-read at commit.
CREATE FUNCTION sgref.check_byok_at_commit(ws uuid, caller jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
    e record;
BEGIN
    SELECT kind, runtime, model INTO w FROM sgref.workspaces WHERE id = ws;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    e := sgref.byok_evaluate(ws, w.kind, w.runtime, w.model);
    IF e.outcome = 'missing' THEN
        PERFORM sgref.refuse('SG103', 'MISSING_BYOK_CREDENTIAL',
            format('no usable credential that provider %s accepts, at workspace or global scope', e.provider),
            jsonb_build_object('workspace_id', ws::text, 'provider', e.provider), 'workspace.byok.refused', caller);
    ELSIF e.outcome = 'dead' THEN
        PERFORM sgref.refuse('SG104', 'BYOK_CREDENTIAL_INVALID',
            format('every usable credential for provider %s was refused by it (401/403) at the last probe', e.provider),
            jsonb_build_object('workspace_id', ws::text, 'provider', e.provider), 'workspace.byok.refused', caller);
    END IF;
END $$;

CREATE FUNCTION sgref.gate_byok() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.id IS NOT NULL THEN
        PERFORM sgref.check_byok_at_commit(NEW.id, sgref.caller());
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION sgref.gate_secrets_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sgref.workspaces WHERE kind = 'platform' AND status = 'online') THEN
        PERFORM sgref.refuse('SG102', 'PLATFORM_AGENT_IDENTITY_GATE',
            'TRUNCATE would leave online platform workspaces without a MODEL', '{}', 'secret.truncate.refused',
            sgref.caller());
    END IF;
    RETURN NULL;
END $$;

-- concierge::register_workspace: online, or failed + NOTIFY + audit without raising.
CREATE FUNCTION sgref.register_workspace(workspace_id uuid, OUT status text, OUT code text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller jsonb := sgref.caller();
    ws_kind text;
    state text;
    w record;
    e record;
    refusal text;
    reason text;
BEGIN
    IF workspace_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'secretgate: workspace_id must not be NULL';
    END IF;
    SELECT kind INTO ws_kind FROM sgref.workspaces WHERE id = workspace_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SG106', MESSAGE = 'WORKSPACE_KIND_UNKNOWN: no workspace with this id',
            DETAIL = jsonb_build_object('code', 'WORKSPACE_KIND_UNKNOWN', 'sqlstate', 'SG106',
                                        'reason', 'no workspace with this id', 'workspace_id', workspace_id::text)::text;
    END IF;
    IF ws_kind = 'platform' THEN
        state := sgref.model_state(workspace_id);
        IF state = 'unusable' THEN
            refusal := 'PLATFORM_AGENT_IDENTITY_GATE';
            reason := 'a platform workspace cannot register without a usable MODEL (missing or empty)';
        ELSIF state <> 'usable' THEN
            refusal := 'PLATFORM_AGENT_IDENTITY_GATE';
            reason := format('a platform workspace cannot register: its MODEL cannot be read (%s %s)', state, sgref.code_word(state));
        END IF;
    END IF;
    IF refusal IS NULL THEN
        SELECT kind, runtime, model INTO w FROM sgref.workspaces WHERE id = workspace_id;
        IF FOUND THEN
            BEGIN
                e := sgref.byok_evaluate(workspace_id, w.kind, w.runtime, w.model);
                IF e.outcome = 'missing' THEN
                    refusal := 'MISSING_BYOK_CREDENTIAL';
                    reason := format('no usable credential that provider %s accepts, at workspace or global scope', e.provider);
                ELSIF e.outcome = 'dead' THEN
                    refusal := 'BYOK_CREDENTIAL_INVALID';
                    reason := format('every usable credential for provider %s was refused by it (401/403) at the last probe', e.provider);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                refusal := 'MISSING_BYOK_CREDENTIAL';
                reason := 'a candidate BYOK credential cannot be decrypted';
            END;
        END IF;
    END IF;
    IF refusal IS NULL THEN
        UPDATE sgref.workspaces SET status = 'online' WHERE id = workspace_id;
        status := 'online';
        RETURN;
    END IF;
    UPDATE sgref.workspaces SET status = 'failed' WHERE id = workspace_id;
    PERFORM pg_notify('secretgate_events', jsonb_build_object('event', 'WORKSPACE_PROVISION_FAILED', 'code', refusal,
                                                              'workspace_id', workspace_id::text)::text);
    RAISE LOG 'secretgate audit: %', jsonb_build_object('event', 'workspace.register.refused', 'code', refusal,
        'sqlstate', CASE refusal WHEN 'PLATFORM_AGENT_IDENTITY_GATE' THEN 'SG102'
                                 WHEN 'MISSING_BYOK_CREDENTIAL' THEN 'SG103' ELSE 'SG104' END,
        'reason', reason, 'workspace_id', workspace_id::text, 'caller', caller)
        || CASE WHEN refusal = 'PLATFORM_AGENT_IDENTITY_GATE' THEN '{"key": "MODEL"}'::jsonb ELSE '{}' END;
    status := 'failed';
    code := refusal;
END $$;

-- The same triggers attach_gates creates (src/triggers.rs TRIGGERS), on sgref's tables.
CREATE TRIGGER secretgate_secret_write BEFORE INSERT OR UPDATE OR DELETE ON sgref.workspace_secrets
    FOR EACH ROW EXECUTE FUNCTION sgref.gate_secret_write();
CREATE TRIGGER secretgate_global_secret_write BEFORE INSERT OR UPDATE ON sgref.global_secrets
    FOR EACH ROW EXECUTE FUNCTION sgref.gate_global_secret_write();
CREATE TRIGGER secretgate_workspace_write BEFORE UPDATE OF kind OR DELETE ON sgref.workspaces
    FOR EACH ROW EXECUTE FUNCTION sgref.gate_workspace_write();
CREATE CONSTRAINT TRIGGER secretgate_platform_identity AFTER INSERT OR UPDATE ON sgref.workspaces
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.kind = 'platform' AND NEW.status = 'online') EXECUTE FUNCTION sgref.gate_platform_identity();
CREATE CONSTRAINT TRIGGER secretgate_byok_insert AFTER INSERT ON sgref.workspaces
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.kind IS DISTINCT FROM 'external') EXECUTE FUNCTION sgref.gate_byok();
CREATE CONSTRAINT TRIGGER secretgate_byok_update AFTER UPDATE ON sgref.workspaces
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.kind IS DISTINCT FROM 'external' AND ((NEW.status = 'online' AND OLD.status IS DISTINCT FROM 'online')
          OR NEW.model IS DISTINCT FROM OLD.model OR NEW.runtime IS DISTINCT FROM OLD.runtime
          OR NEW.kind IS DISTINCT FROM OLD.kind))
    EXECUTE FUNCTION sgref.gate_byok();
CREATE CONSTRAINT TRIGGER secretgate_model_removed AFTER UPDATE OR DELETE ON sgref.workspace_secrets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION sgref.gate_model_removed();
CREATE TRIGGER secretgate_secrets_truncate BEFORE TRUNCATE ON sgref.workspace_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION sgref.gate_secrets_truncate();
