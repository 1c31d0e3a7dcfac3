# secretgate's initialisation script, sourced by docker-entrypoint.sh on the
# first start (an empty data folder), after POSTGRES_DB exists and before the
# other scripts of /docker-entrypoint-initdb.d: the extension in POSTGRES_DB,
# and a first use of the keyring, so that a keyring the server cannot use
# (malformed: SG003) or a missing preload (55000) stops the initialisation.
docker_process_sql <<'EOSQL'
CREATE EXTENSION IF NOT EXISTS secretgate;
SELECT secretgate.current_key_version() AS secretgate_current_key_version;
EOSQL
