-- Databases "scale_small" / "scale_large": :workspaces workspaces with
-- :per_ws secrets each (KEY_0..), loaded with triggers off, then gated.
\set ON_ERROR_STOP on
\ir ../../migrations/20261122000001_workspace_tables.up.sql
SET session_replication_role = replica;
INSERT INTO public.workspaces (id, kind, status, runtime)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'workspace', 'online', 'claude-code' FROM generate_series(1, :workspaces) n;
INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT ws, key, secretgate.encrypt(md5(ws::text || key), ws, key), 1
FROM (SELECT lpad(to_hex(n), 32, '0')::uuid AS ws, 'KEY_' || k AS key
      FROM generate_series(1, :workspaces) n, generate_series(0, :per_ws - 1) k) s;
RESET session_replication_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench_app;
VACUUM ANALYZE;
