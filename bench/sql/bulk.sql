-- Database "bulk": the real schema (gates + foreign key) and the peer with only the foreign key.
\set ON_ERROR_STOP on
\ir ../../migrations/20261122000001_workspace_tables.up.sql
CREATE TABLE public.fk_secrets (LIKE public.workspace_secrets INCLUDING ALL);
ALTER TABLE public.fk_secrets ADD FOREIGN KEY (workspace_id) REFERENCES public.workspaces (id) ON DELETE CASCADE;
INSERT INTO public.workspaces (id, kind, status, runtime)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'workspace', 'online', 'claude-code' FROM generate_series(1, 1000) n;
VACUUM ANALYZE;
