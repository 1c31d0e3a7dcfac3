-- secretgate's own objects, created before the generated functions.
-- The schema comes from the control file (schema = secretgate, not relocatable).

-- Services in every language call these functions; table privileges decide
-- what each role may actually read or write.
GRANT USAGE ON SCHEMA secretgate TO PUBLIC;

-- The platform tables secretgate guards (recorded by attach_gates): one set per database.
CREATE TABLE secretgate.attached_tables (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    workspaces     regclass NOT NULL,
    secrets        regclass NOT NULL,
    global_secrets regclass NOT NULL,
    attached_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE secretgate.attached_tables IS 'The tables secretgate.attach_gates() validated and guards';
GRANT SELECT ON secretgate.attached_tables TO PUBLIC;
-- Kept by pg_dump, so a restored database is still attached.
SELECT pg_catalog.pg_extension_config_dump('secretgate.attached_tables', '');

-- The role whose members are always agent callers, whatever secretgate.caller says.
-- Roles are cluster-wide: CREATE EXTENSION in two databases at once may race here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'secretgate_agent') THEN
        BEGIN
            CREATE ROLE secretgate_agent NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's CREATE EXTENSION made it first
        END;
    END IF;
END $$;
COMMENT ON ROLE secretgate_agent IS 'Members are agent callers for secretgate''s gates, whatever secretgate.caller says';

-- Key names no one may write (deleting them stays allowed).
CREATE TABLE secretgate.forbidden_keys (
    key    text PRIMARY KEY,
    reason text NOT NULL
);
INSERT INTO secretgate.forbidden_keys (key, reason) VALUES
    ('MODEL_PROVIDER', 'legacy name of MODEL: its values were provider slugs or runtime names, not model ids; write MODEL');
GRANT SELECT ON secretgate.forbidden_keys TO PUBLIC;

-- The provider registry: which env-var names each provider accepts as a
-- credential, and which model-id prefixes route to it. DBAs may edit both.
CREATE TABLE secretgate.providers (
    name        text PRIMARY KEY,
    is_platform boolean NOT NULL DEFAULT false,
    auth_env    text[] NOT NULL DEFAULT '{}',
    base_url    text,
    auth_header text NOT NULL DEFAULT 'Authorization',
    auth_scheme text NOT NULL DEFAULT 'Bearer'
);
CREATE TABLE secretgate.model_routes (
    pattern  text NOT NULL,
    provider text NOT NULL REFERENCES secretgate.providers ON UPDATE CASCADE,
    runtime  text,
    UNIQUE NULLS NOT DISTINCT (pattern, runtime)
);
GRANT SELECT ON secretgate.providers, secretgate.model_routes TO PUBLIC;

INSERT INTO secretgate.providers (name, is_platform, auth_env, base_url, auth_header, auth_scheme) VALUES
    ('platform',   true,  '{}',                                            NULL,                                                'Authorization',  'Bearer'),
    ('anthropic',  false, '{ANTHROPIC_API_KEY,CLAUDE_CODE_OAUTH_TOKEN}',   'https://api.anthropic.com/v1',                      'x-api-key',      ''),
    ('openai',     false, '{OPENAI_API_KEY}',                              'https://api.openai.com/v1',                         'Authorization',  'Bearer'),
    ('minimax',    false, '{MINIMAX_API_KEY}',                             'https://api.minimax.io/v1',                         'Authorization',  'Bearer'),
    ('moonshot',   false, '{MOONSHOT_API_KEY,KIMI_API_KEY}',               'https://api.moonshot.ai/v1',                        'Authorization',  'Bearer'),
    ('zai',        false, '{ZAI_API_KEY}',                                 'https://api.z.ai/api/paas/v4',                      'Authorization',  'Bearer'),
    ('gemini',     false, '{GEMINI_API_KEY,GOOGLE_API_KEY}',               'https://generativelanguage.googleapis.com/v1beta',  'x-goog-api-key', ''),
    ('openrouter', false, '{OPENROUTER_API_KEY}',                          'https://openrouter.ai/api/v1',                      'Authorization',  'Bearer');

INSERT INTO secretgate.model_routes (pattern, provider, runtime) VALUES
    ('platform:',   'platform',   NULL),
    ('anthropic:',  'anthropic',  NULL),
    ('claude-',     'anthropic',  NULL),
    ('openai:',     'openai',     NULL),
    ('gpt-',        'openai',     NULL),
    ('o1',          'openai',     NULL),
    ('o3',          'openai',     NULL),
    ('o4-',         'openai',     NULL),
    ('minimax:',    'minimax',    NULL),
    ('MiniMax-',    'minimax',    NULL),
    ('moonshot:',   'moonshot',   NULL),
    ('kimi:',       'moonshot',   NULL),
    ('kimi-',       'moonshot',   NULL),
    ('zai:',        'zai',        NULL),
    ('glm-',        'zai',        NULL),
    ('gemini:',     'gemini',     NULL),
    ('gemini-',     'gemini',     NULL),
    ('google:',     'gemini',     NULL),
    ('openrouter:', 'openrouter', NULL);

-- Runtimes whose workspaces are external agents (exempt from BYOK, as
-- kind = 'external' is): for platforms that mark external agents by runtime.
CREATE TABLE secretgate.external_runtimes (
    runtime text PRIMARY KEY
);
INSERT INTO secretgate.external_runtimes (runtime) VALUES ('external');
GRANT SELECT ON secretgate.external_runtimes TO PUBLIC;

-- Liveness verdicts from probes, each bound to the SHA-256 of the
-- credential's ciphertext at the time: a rotated credential starts clean.
CREATE TABLE secretgate.liveness (
    workspace_id      uuid,            -- NULL = the global credential
    key               text NOT NULL,
    ciphertext_sha256 bytea NOT NULL,
    verdict           text NOT NULL CHECK (verdict IN ('ok', 'dead', 'transient')),
    http_status       int NOT NULL,
    checked_at        timestamptz NOT NULL DEFAULT now(),
    provider          text,            -- the provider that gave it; NULL: no provider accepts the key name
    UNIQUE NULLS NOT DISTINCT (workspace_id, key, provider)
);
GRANT SELECT ON secretgate.liveness TO PUBLIC;

-- The header form of a credential key name, overriding its provider's
-- auth_header/auth_scheme: an OAuth token goes as a bearer token where the
-- provider's API key goes in its own header.
CREATE TABLE secretgate.credential_auth (
    key         text PRIMARY KEY,
    auth_header text NOT NULL,
    auth_scheme text NOT NULL
);
INSERT INTO secretgate.credential_auth (key, auth_header, auth_scheme) VALUES
    ('CLAUDE_CODE_OAUTH_TOKEN', 'Authorization', 'Bearer');
GRANT SELECT ON secretgate.credential_auth TO PUBLIC;

-- pg_dump keeps the DBA's registry edits and the verdicts. CREATE EXTENSION
-- re-seeds the defaults before the dumped rows are restored, so an INSERT
-- naming an existing row replaces it: an edited default comes back edited
-- instead of failing the restore with a duplicate key.
CREATE FUNCTION secretgate.registry_upsert() RETURNS trigger
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
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.providers
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.model_routes
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.forbidden_keys
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.credential_auth
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();
CREATE TRIGGER registry_upsert BEFORE INSERT ON secretgate.external_runtimes
    FOR EACH ROW EXECUTE FUNCTION secretgate.registry_upsert();

SELECT pg_catalog.pg_extension_config_dump('secretgate.providers', '');
SELECT pg_catalog.pg_extension_config_dump('secretgate.model_routes', '');
SELECT pg_catalog.pg_extension_config_dump('secretgate.forbidden_keys', '');
SELECT pg_catalog.pg_extension_config_dump('secretgate.liveness', '');
SELECT pg_catalog.pg_extension_config_dump('secretgate.credential_auth', '');
SELECT pg_catalog.pg_extension_config_dump('secretgate.external_runtimes', '');

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
