-- secretgate 0.1.0 -> 0.2.0 (ALTER EXTENSION secretgate UPDATE TO '0.2.0').
--
-- Released scripts are never edited: sql/released/secretgate--0.1.0.sql is the
-- full 0.1.0 script as shipped, and this file carries an installed 0.1.0 to
-- exactly what CREATE EXTENSION gives at 0.2.0. The black-box `upgrade` test
-- checks that (functions, triggers, tables, grants, configuration tables) and
-- that every 0.1.0 ciphertext still decrypts.
\echo Use "ALTER EXTENSION secretgate UPDATE TO '0.2.0'" to load this file. \quit

-- attach_gates creates triggers whose WHEN clauses bind operators by the
-- search_path in force: pinned (see finalize.sql).
ALTER FUNCTION secretgate.attach_gates(regclass, regclass, regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.detach_gates() SET search_path = pg_catalog, pg_temp;


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
BEGIN
    FOR created IN
        SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
    LOOP
        SELECT r.oid::pg_catalog.regclass::pg_catalog.text INTO target
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) t.tgrelid
          JOIN secretgate.attached_tables a
            ON t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY[a.workspaces, a.secrets, a.global_secrets]::pg_catalog.oid[])
          JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid
         WHERE t.oid OPERATOR(pg_catalog.=) created.objid
           AND f.pronamespace OPERATOR(pg_catalog.<>) 'secretgate'::pg_catalog.regnamespace
           AND NOT pg_catalog.pg_has_role(r.relowner, 'USAGE');
        IF target IS NOT NULL THEN
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

-- The gate keeps the forbidden key names in memory per backend from 0.2.0.
CREATE FUNCTION secretgate."registry_changed"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'registry_changed_wrapper';

-- Backends keep the forbidden key names in memory (the gate checks them on
-- every secret write); any change to the table makes them read it again.
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.forbidden_keys
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
