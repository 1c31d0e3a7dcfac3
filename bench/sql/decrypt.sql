-- Database "decrypt": :rows stored 64-byte plaintexts, each as a secretgate
-- ciphertext (AES-256-GCM, bound to its row), as pgcrypto aes-cbc with a random
-- IV, and (first :pgp_rows rows) as pgp_sym_encrypt with pgcrypto's defaults.
-- The pgcrypto key and passphrase are throwaway bench constants.
\set ON_ERROR_STOP on
CREATE EXTENSION secretgate;
CREATE EXTENSION pgcrypto;
CREATE TABLE dec (
    i int PRIMARY KEY, ws uuid NOT NULL, key text NOT NULL,
    gcm bytea NOT NULL, ver int NOT NULL, cbc bytea NOT NULL, iv bytea NOT NULL, pgp bytea);
INSERT INTO dec
SELECT i, ws, key, secretgate.encrypt(pt, ws, key), 1,
       encrypt_iv(convert_to(pt, 'UTF8'), decode(repeat('42', 32), 'hex'), iv, 'aes-cbc'), iv,
       CASE WHEN i <= :pgp_rows THEN pgp_sym_encrypt(pt, 'bench-passphrase') END
FROM (SELECT i, lpad(to_hex(1 + i % 1000), 32, '0')::uuid AS ws, 'KEY_' || i AS key,
             left(encode(sha512(int4send(i)), 'hex'), 64) AS pt, gen_random_bytes(16) AS iv
      FROM generate_series(1, :rows) i) s;
VACUUM ANALYZE dec;
