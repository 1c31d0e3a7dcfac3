-- Point read of one secret by name: secretgate.read_secret (database "peers").
\set n random(1, :nws)
\set k random(0, 19)
SELECT secretgate.read_secret(lpad(to_hex(:n::bigint), 32, '0')::uuid, 'PEER_' || :k::int);
