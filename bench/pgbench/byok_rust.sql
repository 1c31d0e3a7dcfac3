-- Create a BYOK workspace (model claude-opus-4-7 routes to anthropic; no "provider:" literal, since pgbench would read ":name" inside it as a variable) and its credential in one
-- transaction; at commit the BYOK gate finds, decrypts and checks the credential.
\set n random(2000000, 9000000000000000000)
BEGIN;
INSERT INTO public.workspaces (id, kind, status, runtime, model)
VALUES (lpad(to_hex(:n::bigint), 32, '0')::uuid, 'workspace', 'provisioning', 'claude-code', 'claude-opus-4-7');
INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
VALUES (lpad(to_hex(:n::bigint), 32, '0')::uuid, 'ANTHROPIC_API_KEY', secretgate.encrypt('sk-bench-' || :n::bigint, lpad(to_hex(:n::bigint), 32, '0')::uuid, 'ANTHROPIC_API_KEY'), 1);
END;
