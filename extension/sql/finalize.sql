-- Privileges on the generated functions, after they exist.

-- Attaching decides what is guarded: a superuser's or the tables' owner's
-- call. Any role may call them; the code refuses (42501) a role that is
-- neither a superuser nor the owner of all three tables. (Revoked, then
-- granted: the same privileges, spelled as the 0.3.0 -> 0.4.0 update leaves them.)
REVOKE EXECUTE ON FUNCTION secretgate.attach_gates(regclass, regclass, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.detach_gates() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION secretgate.attach_gates(regclass, regclass, regclass) TO PUBLIC;
GRANT EXECUTE ON FUNCTION secretgate.detach_gates() TO PUBLIC;
ALTER FUNCTION secretgate.attach_check(regclass, regclass, regclass) SET search_path = pg_catalog, pg_temp;
-- CREATE TRIGGER binds the operators of its WHEN clauses (NEW.kind = 'platform',
-- IS DISTINCT FROM) by the search_path in force: pinned, so a schema put
-- before pg_catalog cannot swap them for its own and switch the gates off.
-- (The table arguments are resolved before the function runs, on the caller's path.)
ALTER FUNCTION secretgate.attach_gates(regclass, regclass, regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.detach_gates() SET search_path = pg_catalog, pg_temp;

-- encrypt/decrypt work on any bytes handed to them, outside table privileges:
-- an oracle for whoever holds a copied ciphertext. Grant them deliberately.
REVOKE EXECUTE ON FUNCTION secretgate.encrypt(text, uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.decrypt(bytea, integer, uuid, text) FROM PUBLIC;

-- The gates run as the extension's owner with a pinned search_path, so a
-- writer's privileges or search_path cannot change what they see; who the
-- caller is comes from the session (SET ROLE level), not from the owner.
-- The two per-row secret gates (gate_secret_write, gate_global_secret_write)
-- run as the invoker instead, and switch to the owner with the pinned path
-- in code around the only SQL they run (a cold cache, a MODEL value), as
-- PostgreSQL's own foreign-key triggers do: SECURITY DEFINER's context would
-- be set up and torn down on every row written.
ALTER FUNCTION secretgate.gate_platform_identity() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_model_removed() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_secrets_truncate() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_workspace_write() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_byok() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_byok_model() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Verdicts are written only through record_liveness, by roles granted it.
ALTER FUNCTION secretgate.record_liveness(uuid, text, integer, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION secretgate.record_liveness(uuid, text, integer, text) FROM PUBLIC;

-- Maintenance rewrites every row: the DBA's (or the deploy pipeline's) call.
REVOKE EXECUTE ON FUNCTION secretgate.rename_secret_key(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.reencrypt(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.reencrypt_skipping(integer) FROM PUBLIC;
-- Key versions and their row counts: the DBA's view (secretgate keyring check).
REVOKE EXECUTE ON FUNCTION secretgate.key_check_status() FROM PUBLIC;
-- History: which versions are kept, restoring one, purging them: the DBA's
-- (or an operator's) call, granted deliberately; never an agent's.
REVOKE EXECUTE ON FUNCTION secretgate.secret_versions(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.global_secret_versions(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.restore_secret(uuid, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.restore_global_secret(text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.purge_history(uuid, text) FROM PUBLIC;

-- A trigger on an attached table runs inside every write to it: a BEFORE
-- trigger that sorts after secretgate's could rewrite a row the gate has
-- already checked (another workspace_id, another value). Only the table's
-- owner (or a member of the owning role, or a superuser) may add one; a
-- TRIGGER privilege granted to anyone else is refused at CREATE TRIGGER.
CREATE FUNCTION secretgate.guard_attached_triggers() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $guard$
DECLARE
    created record;
    target text;
    owned boolean;
BEGIN
    FOR created IN
        SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
    LOOP
        SELECT r.oid::pg_catalog.regclass::pg_catalog.text, pg_catalog.pg_has_role(r.relowner, 'USAGE')
          INTO target, owned
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) t.tgrelid
          JOIN secretgate.attached_tables a
            ON t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY[a.workspaces, a.secrets, a.global_secrets]::pg_catalog.oid[])
          JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid
         WHERE t.oid OPERATOR(pg_catalog.=) created.objid
           AND f.pronamespace OPERATOR(pg_catalog.<>) 'secretgate'::pg_catalog.regnamespace;
        CONTINUE WHEN target IS NULL;
        -- The gates of this table need the preloaded library, and so does
        -- this guard: without it, audit_status() raises 55000 with the fix.
        PERFORM FROM secretgate.audit_status();
        IF NOT owned THEN
            RAISE EXCEPTION 'secretgate: only the owner of % may add triggers to it', target
                USING ERRCODE = '42501',
                      DETAIL = 'A trigger on a table secretgate guards runs inside every write to it and could change a row after the gates checked it.',
                      HINT = 'Ask the table''s owner to create the trigger, or revoke TRIGGER on the table.';
        END IF;
    END LOOP;
END
$guard$;

CREATE EVENT TRIGGER secretgate_guard_attached_triggers ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION secretgate.guard_attached_triggers();

-- Backends keep the forbidden key names in memory (the gate checks them on
-- every secret write); any change to the table makes them read it again.
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.forbidden_keys
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();

-- Every change to the registry (providers, routes, forbidden keys, header forms,
-- external runtimes) is an administrative event of the audit trail, recorded at commit.
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.providers
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.model_routes
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.credential_auth
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.external_runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();

-- Dropping an attached table (DROP TABLE, DROP SCHEMA ... CASCADE, DROP
-- OWNED) detaches the gates in the same transaction, with its audit event:
-- the database is never left attached to a table that is gone. Runs as the
-- extension's owner, whoever drops: detach_gates drops the remaining
-- tables' triggers as each table's owner.
CREATE FUNCTION secretgate.detach_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $detach$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() d, secretgate.attached_tables a
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.objsubid OPERATOR(pg_catalog.=) 0
           AND d.objid OPERATOR(pg_catalog.=) ANY (ARRAY[a.workspaces, a.secrets, a.global_secrets]::pg_catalog.oid[]))
    THEN
        PERFORM secretgate.detach_gates();
    END IF;
END
$detach$;
REVOKE EXECUTE ON FUNCTION secretgate.detach_dropped() FROM PUBLIC;

CREATE EVENT TRIGGER secretgate_detach_dropped ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION secretgate.detach_dropped();
