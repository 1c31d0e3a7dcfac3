-- secretgate 0.3.0 -> 0.4.0
\echo Use "ALTER EXTENSION secretgate UPDATE TO '0.4.0'" to load this file. \quit

-- The two per-row secret gates run as the invoker; they switch to the
-- extension's owner, with search_path pinned, in code around the SQL they run.
ALTER FUNCTION secretgate.gate_secret_write() SECURITY INVOKER;
ALTER FUNCTION secretgate.gate_global_secret_write() SECURITY INVOKER;

-- Liveness verdicts are kept per provider: two providers that accept the
-- same key name no longer overwrite each other's verdict. A verdict recorded
-- before is kept for every provider that accepts its key name (a dead key
-- stays dead for each of them until the next probe); one whose key name no
-- provider accepts stays, with no provider.
ALTER TABLE secretgate.liveness DROP CONSTRAINT liveness_workspace_id_key_key;
ALTER TABLE secretgate.liveness ADD COLUMN provider text;
INSERT INTO secretgate.liveness (workspace_id, key, ciphertext_sha256, verdict, http_status, checked_at, provider)
SELECT l.workspace_id, l.key, l.ciphertext_sha256, l.verdict, l.http_status, l.checked_at, p.name
  FROM secretgate.liveness l JOIN secretgate.providers p ON l.key = ANY (p.auth_env)
 WHERE l.provider IS NULL;
DELETE FROM secretgate.liveness l WHERE l.provider IS NULL
   AND EXISTS (SELECT 1 FROM secretgate.providers p WHERE l.key = ANY (p.auth_env));
ALTER TABLE secretgate.liveness ADD UNIQUE NULLS NOT DISTINCT (workspace_id, key, provider);

DROP FUNCTION secretgate.record_liveness(uuid, text, integer);
CREATE FUNCTION secretgate."record_liveness"(
	"workspace_id" uuid,
	"key" TEXT,
	"http_status" INT,
	"provider" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'record_liveness_by_provider_wrapper';
ALTER FUNCTION secretgate.record_liveness(uuid, text, integer, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION secretgate.record_liveness(uuid, text, integer, text) FROM PUBLIC;

CREATE FUNCTION secretgate."byok_credentials"() RETURNS TABLE (
	"workspace_id" uuid,
	"provider" TEXT,
	"key" TEXT,
	"scope" TEXT
)
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'byok_credentials_wrapper';

-- The header form of a credential key name, overriding its provider's.
CREATE TABLE secretgate.credential_auth (
    key         text PRIMARY KEY,
    auth_header text NOT NULL,
    auth_scheme text NOT NULL
);
INSERT INTO secretgate.credential_auth (key, auth_header, auth_scheme) VALUES
    ('CLAUDE_CODE_OAUTH_TOKEN', 'Authorization', 'Bearer');
GRANT SELECT ON secretgate.credential_auth TO PUBLIC;
CREATE OR REPLACE FUNCTION secretgate.registry_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'providers' THEN
        UPDATE secretgate.providers
           SET is_platform = NEW.is_platform, auth_env = NEW.auth_env, base_url = NEW.base_url,
               auth_header = NEW.auth_header, auth_scheme = NEW.auth_scheme
         WHERE name = NEW.name;
    ELSIF TG_TABLE_NAME = 'model_routes' THEN
        UPDATE secretgate.model_routes SET provider = NEW.provider
         WHERE pattern = NEW.pattern AND runtime IS NOT DISTINCT FROM NEW.runtime;
    ELSIF TG_TABLE_NAME = 'credential_auth' THEN
        UPDATE secretgate.credential_auth SET auth_header = NEW.auth_header, auth_scheme = NEW.auth_scheme
         WHERE key = NEW.key;
    ELSE
        UPDATE secretgate.forbidden_keys SET reason = NEW.reason WHERE key = NEW.key;
    END IF;
    IF FOUND THEN
        RETURN NULL;  -- the existing row now holds the inserted values
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.credential_auth
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
SELECT pg_catalog.pg_extension_config_dump('secretgate.credential_auth', '');

-- ---------------------------------------------------------------------------
-- Adoption by a live platform: label-typed kind/status, a model
-- that is the MODEL secret, external runtimes, owners attach, attach_check.

CREATE TABLE secretgate.external_runtimes (
    runtime text PRIMARY KEY
);
INSERT INTO secretgate.external_runtimes (runtime) VALUES ('external');
GRANT SELECT ON secretgate.external_runtimes TO PUBLIC;
CREATE OR REPLACE FUNCTION secretgate.registry_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'providers' THEN
        UPDATE secretgate.providers
           SET is_platform = NEW.is_platform, auth_env = NEW.auth_env, base_url = NEW.base_url,
               auth_header = NEW.auth_header, auth_scheme = NEW.auth_scheme
         WHERE name = NEW.name;
    ELSIF TG_TABLE_NAME = 'model_routes' THEN
        UPDATE secretgate.model_routes SET provider = NEW.provider
         WHERE pattern = NEW.pattern AND runtime IS NOT DISTINCT FROM NEW.runtime;
    ELSIF TG_TABLE_NAME = 'credential_auth' THEN
        UPDATE secretgate.credential_auth SET auth_header = NEW.auth_header, auth_scheme = NEW.auth_scheme
         WHERE key = NEW.key;
    ELSIF TG_TABLE_NAME = 'external_runtimes' THEN
        PERFORM FROM secretgate.external_runtimes WHERE runtime = NEW.runtime;
    ELSE
        UPDATE secretgate.forbidden_keys SET reason = NEW.reason WHERE key = NEW.key;
    END IF;
    IF FOUND THEN
        RETURN NULL;  -- the existing row now holds the inserted values
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.external_runtimes
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
SELECT pg_catalog.pg_extension_config_dump('secretgate.external_runtimes', '');

CREATE FUNCTION secretgate."gate_byok_model"() RETURNS TRIGGER LANGUAGE c AS 'MODULE_PATHNAME', 'gate_byok_model_wrapper';
ALTER FUNCTION secretgate.gate_byok_model() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

GRANT EXECUTE ON FUNCTION secretgate.attach_gates(regclass, regclass, regclass) TO PUBLIC;
GRANT EXECUTE ON FUNCTION secretgate.detach_gates() TO PUBLIC;

CREATE FUNCTION secretgate."attach_check"(
	"workspaces" regclass,
	"secrets" regclass,
	"global_secrets" regclass
) RETURNS TABLE (
	"relation" TEXT,
	"sqlstate" TEXT,
	"problem" TEXT
)
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'attach_check_wrapper';
ALTER FUNCTION secretgate.attach_check(regclass, regclass, regclass) SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION secretgate."adoption_rows"(
	"secrets" regclass,
	"global_secrets" regclass
) RETURNS TABLE (
	"encryption_version" INT,
	"format" TEXT,
	"rows" bigint,
	"unreadable" bigint
)
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'adoption_rows_wrapper';

CREATE FUNCTION secretgate."key_formats"() RETURNS TABLE (
	"version" INT,
	"format" TEXT,
	"is_current" bool
)
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_formats_wrapper';

-- ---------------------------------------------------------------------------
-- Keys from a KMS, and a wrong key told apart from a corrupt row.
-- Existing databases get their key check values on first use: the first
-- time a version encrypts, or one of its rows decrypts, after this update
-- (ALTER EXTENSION runs without the server's keyring in hand).
-- Key check values: a keyed hash of a fixed label under each key
-- version, recorded when the version is first used in this database, so a
-- server given another key under a known version answers SG004 instead of
-- SG001 on every row. Written only by the extension (as its owner); it
-- reveals nothing about a key. Kept by pg_dump: it travels with the secrets.
CREATE TABLE secretgate.key_checks (
    version     int PRIMARY KEY,
    check_value bytea NOT NULL,
    first_used  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE secretgate.key_checks IS 'Key check values: HMAC-SHA256 of a fixed label under each key version first used here';
REVOKE ALL ON secretgate.key_checks FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('secretgate.key_checks', '');

CREATE FUNCTION secretgate."key_check_status"() RETURNS TABLE (
	"version" INT,
	"status" TEXT,
	"secrets" bigint,
	"is_current" bool,
	"first_used" timestamp with time zone
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_check_status_wrapper';
REVOKE EXECUTE ON FUNCTION secretgate.key_check_status() FROM PUBLIC;
-- secretgate rotate moves every readable row and leaves the others where they are.
CREATE FUNCTION secretgate."reencrypt_skipping"(
	"batch_size" INT
) RETURNS TABLE (
	"moved" bigint,
	"skipped" bigint
)
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'reencrypt_skipping_wrapper';
REVOKE EXECUTE ON FUNCTION secretgate.reencrypt_skipping(integer) FROM PUBLIC;
-- The audit trail (secretgate.audit_events, secretgate_auditor, audit_status).

-- The audit trail: one row per refusal and per administrative
-- event, written by secretgate's background writers outside the refusing
-- transaction (so a rollback keeps it). Never a value, ciphertext or key.
CREATE TABLE secretgate.audit_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL,
    event            text NOT NULL,
    code             text,
    sqlstate         text,
    reason           text,
    workspace_id     uuid,
    key              text,
    provider         text,
    caller           jsonb,
    backend_pid      int,
    transaction_id   xid8,
    application_name text
);
CREATE INDEX audit_events_at ON secretgate.audit_events (at);
COMMENT ON TABLE secretgate.audit_events IS 'secretgate''s audit trail: refusals and administrative events, written by its background writers';
-- Readable by the owner and members of secretgate_auditor; written only by
-- the extension's writers (an ordinary role's INSERT, UPDATE, DELETE or
-- TRUNCATE fails with 42501).
REVOKE ALL ON secretgate.audit_events FROM PUBLIC;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'secretgate_auditor') THEN
        BEGIN
            CREATE ROLE secretgate_auditor NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's CREATE EXTENSION made it first
        END;
    END IF;
END $$;
COMMENT ON ROLE secretgate_auditor IS 'Members may read secretgate.audit_events';
GRANT SELECT ON secretgate.audit_events TO secretgate_auditor;

CREATE FUNCTION secretgate."audit_status"() RETURNS TABLE (
	"queued" bigint,
	"written" bigint,
	"dropped" bigint,
	"skipped" bigint,
	"last_error" TEXT,
	"queue_size" INT
)
VOLATILE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'audit_status_wrapper';

-- Every change to the registry (providers, routes, forbidden keys, header
-- forms) is an administrative event of the audit trail, recorded at commit.
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.providers
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.model_routes
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.credential_auth
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();

-- ---------------------------------------------------------------------------
-- The external runtimes are part of the registry: a change to them is an
-- administrative event of the audit trail too (as in a fresh install).
CREATE TRIGGER registry_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secretgate.external_runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION secretgate.registry_changed();

-- ---------------------------------------------------------------------------
-- Without shared_preload_libraries every secretgate function raises 55000:
-- resolve_provider becomes the C function over the gates' own routing rule
-- (one definition instead of two), and the trigger guard checks too.
CREATE OR REPLACE FUNCTION secretgate."resolve_provider"("runtime" TEXT, "model" TEXT) RETURNS TEXT
STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'resolve_provider_wrapper';

CREATE OR REPLACE FUNCTION secretgate.guard_attached_triggers() RETURNS event_trigger
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
