#!/usr/bin/env bash
# Checks that what secretgate ships speaks for itself: no shipped file points a
# reader at something they cannot see. Refused, each with its file and line:
#   - the project's design notes named by their title, or a section of them
#     by its section sign and number;
#   - the domain notes and their numbered incidents;
#   - an issue number (the tracker is not part of the repository);
#   - a development event: a stop, a build or a machine called "this" (the
#     reader has no such stop, build or machine in front of them);
#   - a benchmark run of a named commit outside bench/ (measurement history
#     belongs in bench/, the user docs state the method and current figures).
# Say what the rule is instead of where it came from. Shipped files are the
# docs, the top-level pages, the benchmark reports, the scripts, contrib/, the
# container image's files (docker/), the tool, the core, the extension (its
# Rust, SQL and control file) and the manifests; the tests and the fuzz targets are not shipped. A few shipped
# files are frozen on purpose and exempt (the list below says why). Exits 1 on
# a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys

# What is scanned: these files, and every text file under these folders.
FILES = ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md", "CHANGELOG.md", "Cargo.toml", "core/Cargo.toml"]
FOLDERS = ["docs", "bench", "scripts", "contrib", "docker", "cli", "core/src", "core/benches", "extension", "migrations"]

# Frozen files: shipped, but never edited, so they keep what they say.
EXEMPT = [
    # The migrations: sqlx records the checksum of every applied migration,
    # and a changed byte makes `secretgate migrate run` refuse every database
    # that applied it. (The released extension scripts are checked: only
    # their comments ever needed rewording, which changes no installed object.)
    "migrations/",
]
SKIP_DIRS = {"target", ".git", "node_modules"}

# Spelled so that this script does not match itself.
RULES = [
    (re.compile(r"\bCONTRAC[T]\b"), "names the design notes, which are not part of the repository"),
    (re.compile("\u00a7" r"\s*\d"), "cites a section of a document that is not part of the repository"),
    (re.compile(r"\bDOMAI[N](\.md\b|\s+incidents?\b)"), "names the domain notes, which are not part of the repository"),
    (re.compile(r"\b[Ii]ssues?[-_ ]?#?\d+"), "cites an issue number (the tracker is not part of the repository)"),
    (re.compile(r"\bthi[s]\s+(stop|build)\b", re.I), "refers to a development event, not something the reader has"),
    (re.compile(r"\bfor\s+thi[s]\s+machine\b", re.I), "refers to the development machine"),
]
# Outside bench/: a benchmark run of one commit is measurement history.
BENCH_RUN = (re.compile(r"BENCH_RE[V]=[0-9a-f]{7,}"), "a benchmark run of one commit: history belongs in bench/")


def exempt(path):
    return any(path == e or (e.endswith("/") and path.startswith(e)) for e in EXEMPT)


def shipped():
    for f in FILES:
        if os.path.isfile(f):
            yield f
    for top in FOLDERS:
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(names):
                yield os.path.join(root, name)


findings, scanned = [], 0
for path in shipped():
    if exempt(path):
        continue
    try:
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data:
            continue  # binary (plots)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        continue
    scanned += 1
    rules = RULES if path.startswith("bench/") else RULES + [BENCH_RUN]
    for pattern, why in rules:
        if pattern.search(path):
            findings.append(f"{path}: its name {why}")
        # Over the whole text, so a phrase wrapped across two lines is found too.
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            shown = " ".join(m.group(0).split())
            findings.append(f"{path}:{line}: \"{shown}\" {why}")

if findings:
    print("check-shipped: shipped files refer to what a reader cannot see:")
    print("\n".join("  " + f for f in dict.fromkeys(findings)))
    print("Say what the rule is, in the project's own words, instead of where it came from.")
    sys.exit(1)
print(f"check-shipped: {scanned} shipped files, none refers to a document, issue or event outside the repository")
PY
