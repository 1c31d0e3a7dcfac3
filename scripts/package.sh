#!/usr/bin/env bash
# Debian packages of secretgate, written to target/packages/:
#   postgresql-N-secretgate_<version>_amd64.deb   the extension for PostgreSQL N (Debian's layout,
#                                                 Depends: postgresql-N), every released version's
#                                                 full script and every upgrade script included
#   secretgate-cli_<version>_amd64.deb            /usr/bin/secretgate, its man pages and completions
#
#   scripts/package.sh              every supported major (15, 16, 17, 18) and the tool
#   scripts/package.sh --pg 15      one major (repeatable) and the tool
#   scripts/package.sh --no-cli     the extension packages only
#   scripts/package.sh --rev REV --pg 15 --no-cli
#                                   the extension as it was at commit REV (its own version
#                                   number; the package-upgrade test installs it first)
# Release builds. lintian runs on every package: an error fails the script
# (none are kept today; list any that ever are in docs/packaging.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/pg-majors.sh
export PGRX_HOME="$ROOT/pgrx-config"

majors=() cli=1 rev=
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) majors+=("$2"); shift 2 ;;
        --no-cli) cli=0; shift ;;
        --rev) rev=$2; shift 2 ;;
        *) echo "usage: scripts/package.sh [--pg N]... [--no-cli] [--rev REV]" >&2; exit 2 ;;
    esac
done
[ ${#majors[@]} -gt 0 ] || majors=("${SUPPORTED_MAJORS[@]}")

# The source to package: the working tree, or a commit exported with git archive,
# built in its own target folder in the cache ($SECRETGATE_CACHE/package-rev):
# a commit's package never changes, so a fresh clone reuses it.
src=$ROOT out="$ROOT/target/packages"
if [ -n "$rev" ]; then
    [ "$cli" = 0 ] || { echo "package: --rev packages the extension only: add --no-cli" >&2; exit 2; }
    rev=$(git rev-parse --short=12 "$rev")
    src="$SECRETGATE_CACHE/package-rev/$rev/src" out="$SECRETGATE_CACHE/package-rev/$rev/packages"
    if [ ! -f "$src/Cargo.toml" ]; then
        rm -rf "$src.tmp" && mkdir -p "$src.tmp" && git archive "$rev" | tar -x -C "$src.tmp" && mv "$src.tmp" "$src"
    fi
    missing=()
    for n in "${majors[@]}"; do
        ls "$out"/postgresql-"$n"-secretgate_*.deb >/dev/null 2>&1 || missing+=("$n")
    done
    [ ${#missing[@]} -gt 0 ] || { echo "packages of $rev (cached): $out"; exit 0; }
    majors=("${missing[@]}")
    export CARGO_TARGET_DIR="$SECRETGATE_CACHE/package-rev/build"
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
work="$out/work"
mkdir -p "$out"
command -v lintian >/dev/null && command -v dpkg-shlibdeps >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian dpkg-dev >/dev/null
}


# The shared-library dependencies of the ELF files given, as a Depends value.
shlib_depends() {
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/debian"
    printf 'Source: secretgate\n\nPackage: secretgate\nArchitecture: any\n' >"$tmp/debian/control"
    local files=()
    for f in "$@"; do files+=("$(realpath "$f")"); done
    (cd "$tmp" && dpkg-shlibdeps -O "${files[@]}" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$tmp"
}

# The files every package carries: copyright (the PostgreSQL Licence, as in LICENSE)
# and a Debian changelog.
doc_files() {
    local root=$1 name=$2 doc="$1/usr/share/doc/$2"
    install -d "$doc"
    cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: secretgate
Comment: Built from the secretgate source tree by scripts/package.sh.

Files: *
Copyright: 2026 The secretgate contributors
License: PostgreSQL

License: PostgreSQL
 Permission to use, copy, modify, and distribute this software and its
 documentation for any purpose, without fee, and without a written agreement
 is hereby granted, provided that the above copyright notice and this
 paragraph and the following two paragraphs appear in all copies.
 .
 IN NO EVENT SHALL THE SECRETGATE CONTRIBUTORS BE LIABLE TO ANY PARTY FOR
 DIRECT, INDIRECT, SPECIAL, INCIDENTAL, OR CONSEQUENTIAL DAMAGES, INCLUDING
 LOST PROFITS, ARISING OUT OF THE USE OF THIS SOFTWARE AND ITS
 DOCUMENTATION, EVEN IF THE SECRETGATE CONTRIBUTORS HAVE BEEN ADVISED OF THE
 POSSIBILITY OF SUCH DAMAGE.
 .
 THE SECRETGATE CONTRIBUTORS SPECIFICALLY DISCLAIM ANY WARRANTIES,
 INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY
 AND FITNESS FOR A PARTICULAR PURPOSE. THE SOFTWARE PROVIDED HEREUNDER IS
 ON AN "AS IS" BASIS, AND THE SECRETGATE CONTRIBUTORS HAVE NO OBLIGATIONS TO
 PROVIDE MAINTENANCE, SUPPORT, UPDATES, ENHANCEMENTS, OR MODIFICATIONS.
EOF
    printf '%s (%s) unstable; urgency=medium\n\n  * secretgate %s, built by scripts/package.sh.\n\n -- secretgate developers <dev@secretgate.dev>  %s\n' \
        "$name" "$version" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")" \
        | gzip -9n >"$doc/changelog.gz"
}

# Builds one .deb from a staged root and its control fields.
build_deb() {
    local root=$1 name=$2 depends=$3 section=$4 description=$5
    doc_files "$root" "$name"
    find "$root" -type d -exec chmod 0755 {} +
    install -d "$root/DEBIAN"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: secretgate developers <dev@secretgate.dev>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Section: $section
Priority: optional
Homepage: https://github.com/secretgate/secretgate
Description: $description
EOF
    local deb="$out/${name}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    echo "package: $deb"
}

for n in "${majors[@]}"; do
    # The server it is built against: Debian's 15, or the project's own 16, 17 and 18 (set up if missing).
    pg_config=$(pg_config_of "$n")
    [ -x "$pg_config" ] || scripts/setup.sh --pg "$n" >/dev/null
    write_pgrx_config
    stage="$work/pg$n-build"
    rm -rf "$stage"
    (cd "$src" && cargo pgrx package -p secretgate --pg-config "$pg_config" --no-default-features \
        --features "pg$n" --out-dir "$stage")
    name="postgresql-$n-secretgate"
    root="$work/$name"
    rm -rf "$root"
    # Debian's layout for major N, whatever the building server's own paths are.
    lib="$root/usr/lib/postgresql/$n/lib" ext="$root/usr/share/postgresql/$n/extension"
    install -d "$lib" "$ext"
    install -m 0644 "$stage$("$pg_config" --pkglibdir)/secretgate.so" "$lib/"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib/secretgate.so"
    install -m 0644 "$stage$("$pg_config" --sharedir)/extension/"secretgate* "$ext/"
    for released in "$src"/extension/sql/released "$src"/sql/released; do
        [ ! -d "$released" ] || install -m 0644 "$released"/secretgate--*.sql "$ext/"
    done
    build_deb "$root" "$name" "postgresql-$n, $(shlib_depends "$lib/secretgate.so")" database \
        "encrypted workspace secrets and safety gates for PostgreSQL $n
 secretgate keeps an agent platform's per-workspace secrets encrypted at rest
 (AES-256-GCM, bound to their row) and enforces the gates around them inside
 the database: self-writes, platform identity, bring-your-own-key presence,
 forbidden key names. Needs shared_preload_libraries = 'secretgate' and a
 keyring (see /usr/share/doc/secretgate-cli and the project's docs/)."
done

if [ "$cli" = 1 ]; then
    cargo build --release -p secretgate-cli
    name=secretgate-cli
    root="$work/$name"
    rm -rf "$root"
    install -d "$root/usr/bin" "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
        "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
    install -m 0755 target/release/secretgate "$root/usr/bin/secretgate"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/secretgate"
    manual="$work/manual"
    rm -rf "$manual"
    target/release/secretgate generate-manual --out "$manual"
    for page in "$manual"/man/*.1; do gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"; done
    chmod 0644 "$root"/usr/share/man/man1/*
    install -m 0644 "$manual/completions/secretgate.bash" "$root/usr/share/bash-completion/completions/secretgate"
    install -m 0644 "$manual/completions/_secretgate" "$root/usr/share/zsh/vendor-completions/_secretgate"
    install -m 0644 "$manual/completions/secretgate.fish" "$root/usr/share/fish/vendor_completions.d/secretgate.fish"
    # The keyring_command examples, to copy and adapt (not run from here).
    install -d "$root/usr/share/doc/$name/examples/keyring"
    install -m 0644 contrib/keyring/*.sh "$root/usr/share/doc/$name/examples/keyring/"
    build_deb "$root" "$name" "$(shlib_depends "$root/usr/bin/secretgate")" database \
        "command-line tool for secretgate: migrations, rotation, verification
 secretgate's tool applies the embedded schema migrations (creating the
 tables, the extension and attaching the gates), re-encrypts every secret
 under the current key version, verifies that every secret decrypts, and
 probes bring-your-own-key credentials against their providers."
fi

# lintian: an error fails the script; warnings are printed.
status=0
for deb in "$out"/*_"$version"_"$arch".deb; do
    report=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v "^running with root privileges" || true)
    [ -z "$report" ] || printf '%s\n' "$report"
    if grep -q '^E:' <<<"$report"; then status=1; fi
done
[ "$status" = 0 ] || { echo "package: lintian reports errors" >&2; exit 1; }
echo "packages: $out"
