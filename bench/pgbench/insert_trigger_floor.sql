-- One secret INSERT into public.trigger_floor_secrets: no gates, one empty PL/pgSQL BEFORE ROW trigger.
\set n random(1, 1000)
\set k random(1, 9000000000000000000)
INSERT INTO public.trigger_floor_secrets (workspace_id, key, encrypted_value, encryption_version)
VALUES (lpad(to_hex(:n::bigint), 32, '0')::uuid, 'BENCH_' || :k::bigint, decode(repeat('5a', 92), 'hex'), 1);
