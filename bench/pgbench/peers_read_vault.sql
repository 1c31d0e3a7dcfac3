-- Point read of one secret by name: Supabase Vault's decrypted_secrets view (database "peers").
\set n random(1, :nws)
\set k random(0, 19)
SELECT decrypted_secret FROM vault.decrypted_secrets
WHERE name = lpad(to_hex(:n::bigint), 32, '0')::uuid::text || '/PEER_' || :k::int;
