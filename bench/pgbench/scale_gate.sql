-- One secret UPDATE through the gates, as an agent caller (kind lookup, forbidden key lookup).
\set n random(1, :nws)
\set k random(0, 9)
UPDATE public.workspace_secrets SET encryption_version = 1 WHERE workspace_id = lpad(to_hex(:n::bigint), 32, '0')::uuid AND key = 'KEY_' || :k::int;
