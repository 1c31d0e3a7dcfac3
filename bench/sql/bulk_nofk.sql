-- Database "bulk_nofk": the platform's tables without the secrets table's
-- foreign key, gated: the gate alone, against Postgres' own check alone.
\set ON_ERROR_STOP on
CREATE TABLE public.workspaces (
    id uuid PRIMARY KEY, kind text NOT NULL, status text NOT NULL DEFAULT 'provisioning',
    runtime text, model text, created_at timestamptz DEFAULT now());
CREATE TABLE public.workspace_secrets (
    workspace_id uuid NOT NULL, key text NOT NULL, encrypted_value bytea NOT NULL,
    encryption_version int NOT NULL, updated_at timestamptz DEFAULT now(), PRIMARY KEY (workspace_id, key));
CREATE TABLE public.global_secrets (
    key text PRIMARY KEY, encrypted_value bytea NOT NULL, encryption_version int NOT NULL, updated_at timestamptz DEFAULT now());
CREATE EXTENSION secretgate;
SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets');
INSERT INTO public.workspaces (id, kind, status, runtime)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'workspace', 'online', 'claude-code' FROM generate_series(1, 1000) n;
VACUUM ANALYZE;
