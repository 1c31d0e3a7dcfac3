-- The quickstart's tour. Secret values are made inside the server, so no
-- value ever appears in a statement's text (Postgres logs failed statements).
\set VERBOSITY verbose
\pset footer off
\echo '== a workspace and its credential, encrypted at rest with AES-256-GCM'
\echo '   (one transaction: a BYOK workspace needs its credential at commit)'
BEGIN;
INSERT INTO workspaces (id, kind, runtime, model)
VALUES ('7b0e9d8a-0000-4000-8000-000000000001', 'workspace', 'claude-code', 'anthropic:claude-opus-4-7')
ON CONFLICT (id) DO NOTHING;
SELECT secretgate.set_secret('7b0e9d8a-0000-4000-8000-000000000001', 'ANTHROPIC_API_KEY',
                             'sk-ant-demo-' || substr(md5(random()::text), 1, 12));
COMMIT;
SELECT key, encryption_version, length(encrypted_value) AS ciphertext_bytes FROM workspace_secrets;

\echo '== read it back; a missing key is NULL, never an error'
SELECT left(secretgate.read_secret('7b0e9d8a-0000-4000-8000-000000000001', 'ANTHROPIC_API_KEY'), 12) || '…' AS value_prefix,
       secretgate.read_secret('7b0e9d8a-0000-4000-8000-000000000001', 'LLM_PROVIDER') IS NULL AS llm_provider_unset;

\echo '== a ciphertext copied to another key name does not decrypt: SG001, not "unset"'
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT workspace_id, 'LLM_PROVIDER', encrypted_value, encryption_version FROM workspace_secrets
WHERE key = 'ANTHROPIC_API_KEY'
ON CONFLICT DO NOTHING;
SELECT secretgate.read_secret('7b0e9d8a-0000-4000-8000-000000000001', 'LLM_PROVIDER');
SELECT * FROM secretgate.try_read_secret('7b0e9d8a-0000-4000-8000-000000000001', 'LLM_PROVIDER');
SELECT * FROM secretgate.verify_secrets();
DELETE FROM workspace_secrets WHERE key = 'LLM_PROVIDER';
