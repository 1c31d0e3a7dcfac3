-- The quickstart's tour: each gate refusing, with its SQLSTATE and JSON DETAIL.
-- Run by scripts/quickstart.sh against a migrated database:
--   psql "$URL" -X -q -v ON_ERROR_STOP=0 -f scripts/tour.sql
-- The refusals are expected: the script goes on after each one.
--
-- No secret value appears in a statement's text (Postgres logs the text of a
-- failed statement): credentials are made inside the server, and a MODEL is
-- taken from the workspace row. Applications pass values as bind parameters.
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\set SHOW_CONTEXT never
\pset footer off
\set concierge 7b0e9d8a-0000-4000-8000-000000000001
\set byok 7b0e9d8a-0000-4000-8000-000000000002

-- Run again, the tour starts over.
DELETE FROM workspaces WHERE id IN (:'concierge', :'byok');

\echo
\echo '== A concierge (kind platform, routed to the platform proxy) and its LLM_PROVIDER pin, encrypted at rest'
INSERT INTO workspaces (id, kind, runtime, model) VALUES (:'concierge', 'platform', 'claude-code', 'platform:default');
SELECT secretgate.ensure_concierge_provider(:'concierge') AS llm_provider;
SELECT key, encryption_version, length(encrypted_value) AS ciphertext_bytes
FROM workspace_secrets WHERE workspace_id = :'concierge';
\echo '   read back: a value, and a key with no row ("unset", never an error)'
SELECT secretgate.read_secret(:'concierge', 'LLM_PROVIDER') AS llm_provider;
SELECT * FROM secretgate.try_read_secret(:'concierge', 'MODEL');

\echo
\echo '== 1. An agent writing its concierge''s secret: SG101 CONCIERGE_SELF_WRITE_BLOCKED'
\echo '   (the service sets secretgate.caller = agent for the request; through set_secret ...)'
BEGIN;
SET LOCAL secretgate.caller = 'agent';
SELECT secretgate.set_secret(:'concierge', 'ANTHROPIC_API_KEY', 'sk-ant-demo-' || substr(md5(random()::text), 1, 12));
ROLLBACK;
\echo '   (... or with plain SQL: the trigger refuses the same way)'
BEGIN;
SET LOCAL secretgate.caller = 'agent';
DELETE FROM workspace_secrets WHERE workspace_id = :'concierge' AND key = 'LLM_PROVIDER';
ROLLBACK;

\echo
\echo '== 2. A concierge set online without a MODEL: SG102 PLATFORM_AGENT_IDENTITY_GATE at COMMIT'
BEGIN;
UPDATE workspaces SET status = 'online' WHERE id = :'concierge';
\echo '   (the UPDATE passes; the check runs at COMMIT)'
COMMIT;
\echo '   register_workspace does not raise: it marks the workspace failed, notifies, and the failure commits'
LISTEN secretgate_events;
SELECT * FROM secretgate.register_workspace(:'concierge');
SELECT status FROM workspaces WHERE id = :'concierge';
\echo '   with its MODEL set, it registers online'
SELECT 'MODEL set' AS secret FROM secretgate.set_secret(:'concierge', 'MODEL', (SELECT model FROM workspaces WHERE id = :'concierge'));
SELECT * FROM secretgate.register_workspace(:'concierge');
UNLISTEN secretgate_events;

\echo
\echo '== 3. A BYOK workspace created without a key its provider accepts: SG103 MISSING_BYOK_CREDENTIAL at COMMIT'
SELECT secretgate.resolve_provider('claude-code', 'anthropic:claude-opus-4-7') AS provider,
       (SELECT auth_env FROM secretgate.providers WHERE name = 'anthropic') AS accepted_keys;
\echo '   (an OPENAI_API_KEY is a usable key, but not one anthropic accepts)'
BEGIN;
INSERT INTO workspaces (id, kind, runtime, model) VALUES (:'byok', 'workspace', 'claude-code', 'anthropic:claude-opus-4-7');
SELECT 'OPENAI_API_KEY set' AS secret FROM secretgate.set_secret(:'byok', 'OPENAI_API_KEY', 'sk-demo-' || substr(md5(random()::text), 1, 12));
COMMIT;
\echo '   created with its ANTHROPIC_API_KEY in the same transaction: commits'
BEGIN;
INSERT INTO workspaces (id, kind, runtime, model) VALUES (:'byok', 'workspace', 'claude-code', 'anthropic:claude-opus-4-7');
SELECT 'ANTHROPIC_API_KEY set' AS secret FROM secretgate.set_secret(:'byok', 'ANTHROPIC_API_KEY', 'sk-ant-demo-' || substr(md5(random()::text), 1, 12));
COMMIT;
SELECT id, kind, status, model FROM workspaces WHERE id = :'byok';

\echo
\echo '== 4. Writing the legacy key name MODEL_PROVIDER: SG105 FORBIDDEN_SECRET_KEY'
SELECT secretgate.set_secret(:'byok', 'MODEL_PROVIDER', (SELECT model FROM workspaces WHERE id = :'byok'));

\echo
\echo '== 5. A provider name as MODEL (a slug, not a model id): SG107 INVALID_MODEL_ID'
SELECT secretgate.set_secret(w.id, 'MODEL', secretgate.resolve_provider(w.runtime, w.model))
FROM workspaces w WHERE w.id = :'byok';

\echo
\echo '== 6. A ciphertext copied to another key name does not decrypt: SG001 DECRYPT_FAILED, never "unset"'
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT workspace_id, 'LLM_PROVIDER', encrypted_value, encryption_version
FROM workspace_secrets WHERE workspace_id = :'byok' AND key = 'ANTHROPIC_API_KEY';
\echo '   read_secret raises'
SELECT secretgate.read_secret(:'byok', 'LLM_PROVIDER');
\echo '   try_read_secret returns the error as data'
SELECT * FROM secretgate.try_read_secret(:'byok', 'LLM_PROVIDER');
\echo '   verify_secrets lists every row, and this one as an error'
SELECT * FROM secretgate.verify_secrets() WHERE workspace_id IN (:'concierge', :'byok');
DELETE FROM workspace_secrets WHERE workspace_id = :'byok' AND key = 'LLM_PROVIDER';
\echo '   the delete kept the bad copy as a version of LLM_PROVIDER (history); purge it'
SELECT secretgate.purge_history(:'byok', 'LLM_PROVIDER') AS versions_purged;

\echo
\echo '== Every refusal above also wrote one "secretgate audit:" line (no value) to the server log.'
