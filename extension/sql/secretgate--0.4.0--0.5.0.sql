-- secretgate 0.4.0 -> 0.5.0
\echo Use "ALTER EXTENSION secretgate UPDATE TO '0.5.0'" to load this file. \quit

-- The agent role's comment says what membership means.
COMMENT ON ROLE secretgate_agent IS 'Members are agent callers for secretgate''s gates, whatever secretgate.caller says';

-- The role the audit writers' SQL runs as (they connect as the bootstrap
-- superuser, the one role sure to exist, and switch to it for every
-- statement): it may add and prune audit rows and record key checks, and
-- nothing else. NOLOGIN: no one connects as it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'secretgate_audit_writer') THEN
        BEGIN
            CREATE ROLE secretgate_audit_writer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's CREATE EXTENSION made it first
        END;
    END IF;
END $$;
COMMENT ON ROLE secretgate_audit_writer IS 'The role secretgate''s audit writers act as: adds and prunes rows of secretgate.audit_events, records key checks';
GRANT USAGE ON SCHEMA secretgate TO secretgate_audit_writer;
GRANT SELECT, INSERT, DELETE ON secretgate.audit_events TO secretgate_audit_writer;
GRANT SELECT, INSERT ON secretgate.key_checks TO secretgate_audit_writer;

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

-- Every secret's history: the ciphertext an overwrite or a delete of a row
-- in an attached secrets table replaced, under the same workspace and key
-- (the ciphertext is bound to them: it decrypts for nothing else). Never a
-- plaintext. Written and read only by secretgate's own code, as the
-- extension's owner; dumped with the database.
CREATE TABLE secretgate.secret_history (
    workspace_id       uuid,
    key                text NOT NULL,
    version            int NOT NULL,
    encrypted_value    bytea,
    encryption_version int,
    replaced_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    replaced_by        jsonb NOT NULL,
    reason             text NOT NULL CHECK (reason IN ('set', 'delete', 'rename', 'restore')),
    UNIQUE NULLS NOT DISTINCT (workspace_id, key, version)
);
CREATE INDEX secret_history_replaced_at ON secretgate.secret_history (replaced_at);
COMMENT ON TABLE secretgate.secret_history IS 'secretgate''s kept versions of secrets (ciphertexts an overwrite or delete replaced); never a plaintext';
REVOKE ALL ON secretgate.secret_history FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('secretgate.secret_history', '');
-- The audit writers prune kept versions past secretgate.history_retention.
GRANT SELECT, DELETE ON secretgate.secret_history TO secretgate_audit_writer;

CREATE FUNCTION secretgate."gate_history"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_history_wrapper';

CREATE FUNCTION secretgate."secret_versions"(
	"workspace_id" uuid,
	"key" TEXT
) RETURNS TABLE (
	"version" INT,
	"replaced_at" timestamp with time zone,
	"replaced_by" jsonb,
	"reason" TEXT,
	"state" TEXT
)
STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'secret_versions_wrapper';

CREATE FUNCTION secretgate."global_secret_versions"(
	"key" TEXT
) RETURNS TABLE (
	"version" INT,
	"replaced_at" timestamp with time zone,
	"replaced_by" jsonb,
	"reason" TEXT,
	"state" TEXT
)
STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'global_secret_versions_wrapper';

CREATE FUNCTION secretgate."restore_secret"(
	"workspace_id" uuid,
	"key" TEXT,
	"version" INT
) RETURNS void
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'restore_secret_wrapper';

CREATE FUNCTION secretgate."restore_global_secret"(
	"key" TEXT,
	"version" INT
) RETURNS void
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'restore_global_secret_wrapper';

CREATE FUNCTION secretgate."purge_history"(
	"workspace_id" uuid,
	"key" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'purge_history_wrapper';

REVOKE EXECUTE ON FUNCTION secretgate.secret_versions(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.global_secret_versions(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.restore_secret(uuid, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.restore_global_secret(text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.purge_history(uuid, text) FROM PUBLIC;

-- Tables attached before this version get the history triggers attach_gates
-- now creates (pinned search_path: their WHEN clauses bind pg_catalog's operators).
SET LOCAL search_path = pg_catalog, pg_temp;
DO $history$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT workspaces::pg_catalog.regclass::pg_catalog.text AS w, secrets::pg_catalog.regclass::pg_catalog.text AS s,
                    global_secrets::pg_catalog.regclass::pg_catalog.text AS g
               FROM secretgate.attached_tables
    LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER secretgate_history_update AFTER UPDATE ON %s FOR EACH ROW '
            'WHEN (OLD.encrypted_value IS DISTINCT FROM NEW.encrypted_value OR OLD.key IS DISTINCT FROM NEW.key '
            'OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id) '
            'EXECUTE FUNCTION secretgate.gate_history(''workspace'')', a.s);
        EXECUTE pg_catalog.format('CREATE TRIGGER secretgate_history_delete AFTER DELETE ON %s FOR EACH ROW '
            'EXECUTE FUNCTION secretgate.gate_history(''workspace'')', a.s);
        EXECUTE pg_catalog.format('CREATE TRIGGER secretgate_global_history_update AFTER UPDATE ON %s FOR EACH ROW '
            'WHEN (OLD.encrypted_value IS DISTINCT FROM NEW.encrypted_value OR OLD.key IS DISTINCT FROM NEW.key) '
            'EXECUTE FUNCTION secretgate.gate_history(''global'')', a.g);
        EXECUTE pg_catalog.format('CREATE TRIGGER secretgate_global_history_delete AFTER DELETE ON %s FOR EACH ROW '
            'EXECUTE FUNCTION secretgate.gate_history(''global'')', a.g);
        EXECUTE pg_catalog.format('CREATE TRIGGER secretgate_history_workspace_gone AFTER DELETE ON %s FOR EACH ROW '
            'EXECUTE FUNCTION secretgate.gate_history(''workspaces'')', a.w);
    END LOOP;
END
$history$;
