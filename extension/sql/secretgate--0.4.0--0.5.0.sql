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
