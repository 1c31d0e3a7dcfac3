-- Database "bench": the platform's tables from the real migration (gated by
-- attach_gates), an ungated peer of the secrets table, and sgref: the same
-- tables guarded by the PL/pgSQL reference gates (plpgsql_gates.sql).
-- Workspace n has id lpad(to_hex(n), 32, '0')::uuid.
\set ON_ERROR_STOP on
\ir ../../migrations/20261122000001_workspace_tables.up.sql

-- The write tax's peer: the same table, foreign key included, no gates.
CREATE TABLE public.plain_secrets (LIKE public.workspace_secrets INCLUDING ALL);
ALTER TABLE public.plain_secrets ADD FOREIGN KEY (workspace_id) REFERENCES public.workspaces (id) ON DELETE CASCADE;
-- For context: what any per-row trigger costs, the same table with one empty PL/pgSQL BEFORE ROW trigger.
CREATE TABLE public.trigger_floor_secrets (LIKE public.workspace_secrets INCLUDING ALL);
ALTER TABLE public.trigger_floor_secrets ADD FOREIGN KEY (workspace_id) REFERENCES public.workspaces (id) ON DELETE CASCADE;
CREATE FUNCTION public.bench_empty_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER empty BEFORE INSERT ON public.trigger_floor_secrets FOR EACH ROW EXECUTE FUNCTION public.bench_empty_trigger();

CREATE SCHEMA sgref;
CREATE TABLE sgref.workspaces (LIKE public.workspaces INCLUDING ALL);
CREATE TABLE sgref.workspace_secrets (LIKE public.workspace_secrets INCLUDING ALL);
ALTER TABLE sgref.workspace_secrets ADD FOREIGN KEY (workspace_id) REFERENCES sgref.workspaces (id) ON DELETE CASCADE;
CREATE TABLE sgref.global_secrets (LIKE public.global_secrets INCLUDING ALL);
\ir ../plpgsql_gates.sql

-- Ordinary workspaces 1..1000; platform (concierge) workspaces 1000001..1001000,
-- each with a MODEL (registered again and again by the register comparison).
INSERT INTO public.workspaces (id, kind, status, runtime, model)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'workspace', 'online', 'claude-code', NULL FROM generate_series(1, 1000) n;
INSERT INTO public.workspaces (id, kind, status, runtime, model)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'platform', 'provisioning', 'claude-code', 'platform:concierge'
FROM generate_series(1000001, 1001000) n;
INSERT INTO sgref.workspaces SELECT * FROM public.workspaces;
INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT id, 'MODEL', secretgate.encrypt('anthropic:claude-opus-4-7', id, 'MODEL'), 1
FROM public.workspaces WHERE kind = 'platform';
INSERT INTO sgref.workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT workspace_id, key, encrypted_value, encryption_version FROM public.workspace_secrets;

GRANT USAGE ON SCHEMA sgref TO bench_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, sgref TO bench_app;
-- The BYOK-create script encrypts its credential in SQL; the reference gates decrypt with it.
GRANT EXECUTE ON FUNCTION secretgate.encrypt(text, uuid, text), secretgate.decrypt(bytea, integer, uuid, text) TO bench_app;
VACUUM ANALYZE;
