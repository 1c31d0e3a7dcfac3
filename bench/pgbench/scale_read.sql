-- read_secret of one existing secret (lookup and decrypt).
\set n random(1, :nws)
\set k random(0, 9)
SELECT secretgate.read_secret(lpad(to_hex(:n::bigint), 32, '0')::uuid, 'KEY_' || :k::int);
