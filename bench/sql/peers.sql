-- Database "peers": secretgate and Supabase Vault side by side, in one
-- database. :secrets secrets in each, 20 per workspace (keys PEER_0..19 of
-- workspaces 1..:secrets/20); each value is 64 random hex characters, the
-- same value in both products. Vault's name for a secret is
-- '<workspace id>/<key>'. Workspace n has id lpad(to_hex(n), 32, '0')::uuid.
\set ON_ERROR_STOP on
\ir ../../migrations/20261122000001_workspace_tables.up.sql
CREATE EXTENSION supabase_vault;

-- The write tax's peer: the same table, foreign key included, no gates.
CREATE TABLE public.plain_secrets (LIKE public.workspace_secrets INCLUDING ALL);
ALTER TABLE public.plain_secrets ADD FOREIGN KEY (workspace_id) REFERENCES public.workspaces (id) ON DELETE CASCADE;

INSERT INTO public.workspaces (id, kind, status, runtime)
SELECT lpad(to_hex(n), 32, '0')::uuid, 'workspace', 'online', 'claude-code'
FROM generate_series(1, (:secrets + 19) / 20) n;

-- The secrets, with a second value for overwrites.
CREATE TABLE public.peer_secrets AS
SELECT i, ws, key, ws::text || '/' || key AS name,
       encode(sha256(convert_to(random()::text || i, 'UTF8')), 'hex') AS value,
       encode(sha256(convert_to(random()::text || -i, 'UTF8')), 'hex') AS value2
FROM (SELECT i, lpad(to_hex(1 + i / 20), 32, '0')::uuid AS ws, 'PEER_' || i % 20 AS key
      FROM generate_series(0, :secrets - 1) i) s;
ALTER TABLE public.peer_secrets ADD PRIMARY KEY (i);

-- Loaded through each product's own write function (an operator's call).
SELECT count(*) FROM (SELECT secretgate.set_secret(ws, key, value) FROM public.peer_secrets) s;
ALTER TABLE public.peer_secrets ADD COLUMN vault_id uuid;
UPDATE public.peer_secrets SET vault_id = vault.create_secret(value, name);

-- What the point reads and the overwrites call: every secret once, in random order.
CREATE TABLE public.peer_picks AS
SELECT row_number() OVER () AS n, * FROM (SELECT ws, key, name, vault_id, value, value2
                                          FROM public.peer_secrets ORDER BY random()) s;
-- New secrets: :writes keys no product has yet, in random workspaces.
CREATE TABLE public.peer_new AS
SELECT ws, 'NEW_' || i AS key, ws::text || '/NEW_' || i AS name, value
FROM (SELECT i, lpad(to_hex(1 + (i * 7919) % ((:secrets + 19) / 20)), 32, '0')::uuid AS ws,
             encode(sha256(convert_to(random()::text || i, 'UTF8')), 'hex') AS value
      FROM generate_series(1, :writes) i ORDER BY random()) s;
-- The write tax: the same rows (ciphertext as stored) under new keys, for a
-- raw INSERT into the attached table and into its unattached copy, which
-- holds the same rows as the attached one beforehand.
CREATE TABLE public.peer_raw AS
SELECT workspace_id, 'RAW_' || key AS key, encrypted_value, encryption_version
FROM public.workspace_secrets ORDER BY random();
INSERT INTO public.plain_secrets SELECT * FROM public.workspace_secrets;

-- The application role: what each product's documentation grants a service.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench_app;
GRANT EXECUTE ON FUNCTION secretgate.decrypt(bytea, integer, uuid, text) TO bench_app;
GRANT USAGE ON SCHEMA vault TO bench_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON vault.secrets TO bench_app;
GRANT SELECT ON vault.decrypted_secrets TO bench_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA vault TO bench_app;
VACUUM ANALYZE;
