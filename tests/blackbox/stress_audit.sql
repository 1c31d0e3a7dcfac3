-- The stress test's own history of what committed (tests/blackbox/stress.rs).
-- Every row here is written by a trigger inside the transaction it describes,
-- so it exists exactly when that transaction committed. Nothing here holds a
-- value: only ids, key names, kinds, statuses and booleans.

CREATE SCHEMA stress;
GRANT USAGE ON SCHEMA stress TO PUBLIC;

-- Whether a role is, directly or through other roles, a member of
-- secretgate_agent. Unlike pg_has_role, being superuser does not count.
CREATE FUNCTION stress.agent_member(r name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE up(oid) AS (
        SELECT oid FROM pg_roles WHERE rolname = r
        UNION
        SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid
    )
    SELECT EXISTS (SELECT 1 FROM up JOIN pg_roles g ON g.oid = up.oid WHERE g.rolname = 'secretgate_agent')
$$;

-- Whether the writer is an agent caller (CONTRACT §6 "Caller"), decided
-- independently of the extension: the setting, or the session or current role.
CREATE FUNCTION stress.writer_is_agent() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(current_setting('secretgate.caller', true) = 'agent', false)
        OR stress.agent_member(session_user) OR stress.agent_member(current_user)
$$;

-- A stored value is usable: it decrypts and is not empty (decrypt errors raise).
CREATE FUNCTION stress.usable(blob bytea, version int, ws uuid, k text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce(secretgate.decrypt(blob, version, ws, k) <> '', false);
END $$;

-- The workspace's MODEL is usable right now (as this statement sees it).
CREATE FUNCTION stress.model_usable(ws uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    blob bytea;
    ver int;
BEGIN
    SELECT s.encrypted_value, s.encryption_version INTO blob, ver
      FROM public.workspace_secrets s WHERE s.workspace_id = ws AND s.key = 'MODEL';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN stress.usable(blob, ver, ws, 'MODEL');
END $$;

-- The BYOK rule re-implemented: among the provider's auth_env names, the
-- workspace's own row, else the global one; usable = decrypts, non-empty;
-- alive = usable and its current ciphertext carries no 'dead' verdict.
CREATE FUNCTION stress.cred_state(ws uuid, prov text, OUT usable boolean, OUT alive boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    blob bytea;
    ver int;
    scope uuid;
    verdict text;
BEGIN
    usable := false;
    alive := false;
    FOR k IN SELECT unnest(p.auth_env) FROM secretgate.providers p WHERE p.name = prov LOOP
        SELECT s.encrypted_value, s.encryption_version INTO blob, ver
          FROM public.workspace_secrets s WHERE s.workspace_id = ws AND s.key = k;
        IF FOUND THEN
            scope := ws;
        ELSE
            SELECT g.encrypted_value, g.encryption_version INTO blob, ver FROM public.global_secrets g WHERE g.key = k;
            IF NOT FOUND THEN
                CONTINUE;
            END IF;
            scope := NULL;
        END IF;
        IF stress.usable(blob, ver, scope, k) THEN
            usable := true;
            SELECT l.verdict INTO verdict FROM secretgate.liveness l
             WHERE l.workspace_id IS NOT DISTINCT FROM scope AND l.key = k AND l.ciphertext_sha256 = sha256(blob);
            IF NOT FOUND OR verdict <> 'dead' THEN
                alive := true;
            END IF;
        END IF;
    END LOOP;
END $$;

-- 1. Every write to a workspace secret, seen twice: by a BEFORE trigger that
-- runs before the gate (aaa_ sorts before secretgate_) and by an AFTER
-- trigger, each recording the writer and the workspace's kind at that moment.
CREATE TABLE stress.secret_audit (
    id             bigserial PRIMARY KEY,
    txid           bigint NOT NULL DEFAULT txid_current(),
    phase          text NOT NULL,
    op             text NOT NULL,
    workspace_id   uuid,
    key            text,
    session_role   name NOT NULL,
    current_role_  name NOT NULL,
    caller_setting text,
    agent          boolean NOT NULL,
    kind           text
);
GRANT INSERT ON stress.secret_audit TO PUBLIC;

CREATE FUNCTION stress.audit_secret() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    k text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    SELECT w.kind INTO k FROM public.workspaces w WHERE w.id = r.workspace_id;
    INSERT INTO stress.secret_audit (phase, op, workspace_id, key, session_role, current_role_, caller_setting, agent, kind)
    VALUES (TG_ARGV[0], TG_OP, r.workspace_id, r.key, session_user, current_user,
            current_setting('secretgate.caller', true), stress.writer_is_agent(), k);
    RETURN r;
END $$;

CREATE TRIGGER aaa_stress_secret_before BEFORE INSERT OR UPDATE OR DELETE ON public.workspace_secrets
    FOR EACH ROW EXECUTE FUNCTION stress.audit_secret('before');
CREATE TRIGGER zzz_stress_secret_after AFTER INSERT OR UPDATE OR DELETE ON public.workspace_secrets
    FOR EACH ROW EXECUTE FUNCTION stress.audit_secret('after');

-- 2. Workspace deletions and kind changes, with the writer.
CREATE TABLE stress.workspace_audit (
    id           bigserial PRIMARY KEY,
    txid         bigint NOT NULL DEFAULT txid_current(),
    op           text NOT NULL,
    workspace_id uuid,
    old_kind     text,
    new_kind     text,
    agent        boolean NOT NULL
);
GRANT INSERT ON stress.workspace_audit TO PUBLIC;

CREATE FUNCTION stress.audit_workspace() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO stress.workspace_audit (op, workspace_id, old_kind, new_kind, agent)
    VALUES (TG_OP, OLD.id, OLD.kind, CASE WHEN TG_OP = 'UPDATE' THEN NEW.kind END, stress.writer_is_agent());
    RETURN NULL;
END $$;

CREATE TRIGGER zzz_stress_workspace AFTER UPDATE OF kind OR DELETE ON public.workspaces
    FOR EACH ROW EXECUTE FUNCTION stress.audit_workspace();

-- 3. At commit, for each event the BYOK gate answers (a workspace inserted,
-- set online, or given another model/runtime) and for every platform
-- workspace online at commit: the credential and MODEL state, read by a
-- deferred trigger that fires before the gates (aaa_) and one after (zzz_).
CREATE TABLE stress.commit_audit (
    id                   bigserial PRIMARY KEY,
    txid                 bigint NOT NULL DEFAULT txid_current(),
    phase                text NOT NULL,
    event                text NOT NULL,
    workspace_id         uuid NOT NULL,
    kind                 text,
    status               text,
    provider             text,
    cred_usable          boolean,
    cred_alive           boolean,
    cred_present_ext     boolean,
    model_usable         boolean
);

CREATE FUNCTION stress.audit_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ws uuid;
    ev text := '';
    byok boolean := false;
    w record;
    prov text;
    plat boolean;
    c_ext boolean;
    c_usable boolean;
    c_alive boolean;
    mu boolean;
BEGIN
    IF TG_TABLE_NAME = 'workspaces' THEN
        ws := NEW.id;
        IF TG_OP = 'INSERT' THEN
            ev := 'insert';
            byok := true;
        ELSE
            IF NEW.status = 'online' AND OLD.status IS DISTINCT FROM 'online' THEN
                ev := ev || 'online ';
                byok := true;
            END IF;
            IF NEW.model IS DISTINCT FROM OLD.model OR NEW.runtime IS DISTINCT FROM OLD.runtime THEN
                ev := ev || 'model ';
                byok := true;
            END IF;
            IF NEW.kind IS DISTINCT FROM OLD.kind THEN
                ev := ev || 'kind ';
            END IF;
            ev := coalesce(nullif(rtrim(ev), ''), 'update');
        END IF;
    ELSE
        ws := OLD.workspace_id;
        ev := 'model_removed';
    END IF;
    SELECT x.kind, x.status, x.runtime, x.model INTO w FROM public.workspaces x WHERE x.id = ws;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF byok AND w.kind <> 'external' THEN
        prov := secretgate.resolve_provider(w.runtime, w.model);
        SELECT p.is_platform INTO plat FROM secretgate.providers p WHERE p.name = prov;
        IF prov IS NOT NULL AND NOT plat THEN
            -- One statement, one snapshot: the extension's answer and ours must agree.
            SELECT secretgate.byok_credential_present(ws, prov), s.usable, s.alive INTO c_ext, c_usable, c_alive
              FROM stress.cred_state(ws, prov) s;
        END IF;
    END IF;
    IF w.kind = 'platform' AND w.status = 'online' THEN
        mu := stress.model_usable(ws);
    END IF;
    IF c_usable IS NOT NULL OR mu IS NOT NULL THEN
        INSERT INTO stress.commit_audit (phase, event, workspace_id, kind, status, provider, cred_usable, cred_alive, cred_present_ext, model_usable)
        VALUES (TG_ARGV[0], ev, ws, w.kind, w.status, prov, c_usable, c_alive, c_ext, mu);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER aaa_stress_commit AFTER INSERT OR UPDATE ON public.workspaces
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stress.audit_commit('a');
CREATE CONSTRAINT TRIGGER zzz_stress_commit AFTER INSERT OR UPDATE ON public.workspaces
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stress.audit_commit('z');
CREATE CONSTRAINT TRIGGER aaa_stress_model_commit AFTER UPDATE OR DELETE ON public.workspace_secrets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION stress.audit_commit('a');
CREATE CONSTRAINT TRIGGER zzz_stress_model_commit AFTER UPDATE OR DELETE ON public.workspace_secrets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.key = 'MODEL') EXECUTE FUNCTION stress.audit_commit('z');

-- 4. The full history of what the platform-identity invariant depends on:
-- each workspace row's kind and status (or its deletion) and whether its
-- MODEL is usable, per write, with the writing transaction's id. Replayed in
-- commit-timestamp order (track_commit_timestamp), it gives the invariant's
-- value after every committed transaction, not just at the end.
CREATE TABLE stress.history (
    seq          bigserial PRIMARY KEY,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    workspace_id uuid NOT NULL,
    what         text NOT NULL,      -- 'workspace' | 'model'
    kind         text,
    status       text,
    gone         boolean NOT NULL DEFAULT false,
    model_usable boolean
);

CREATE FUNCTION stress.record_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'workspaces' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO stress.history (workspace_id, what, kind, status, gone) VALUES (OLD.id, 'workspace', OLD.kind, OLD.status, true);
        ELSE
            INSERT INTO stress.history (workspace_id, what, kind, status) VALUES (NEW.id, 'workspace', NEW.kind, NEW.status);
        END IF;
        RETURN NULL;
    END IF;
    -- A MODEL row left (deleted, renamed or moved away).
    IF TG_OP <> 'INSERT' AND OLD.key = 'MODEL'
       AND (TG_OP = 'DELETE' OR NEW.key <> 'MODEL' OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id) THEN
        INSERT INTO stress.history (workspace_id, what, model_usable) VALUES (OLD.workspace_id, 'model', false);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.key = 'MODEL' THEN
        INSERT INTO stress.history (workspace_id, what, model_usable)
        VALUES (NEW.workspace_id, 'model', stress.usable(NEW.encrypted_value, NEW.encryption_version, NEW.workspace_id, 'MODEL'));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER zzz_stress_history AFTER INSERT OR UPDATE OR DELETE ON public.workspaces
    FOR EACH ROW EXECUTE FUNCTION stress.record_history();
CREATE TRIGGER zzz_stress_history AFTER INSERT OR UPDATE OR DELETE ON public.workspace_secrets
    FOR EACH ROW EXECUTE FUNCTION stress.record_history();

GRANT USAGE ON ALL SEQUENCES IN SCHEMA stress TO PUBLIC;
