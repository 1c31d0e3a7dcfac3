#!/usr/bin/env python3
"""secretgate's benchmark suite (docs/performance.md). Run it through scripts/bench.sh,
which builds the release extension, prepares the private PostgreSQL tree and
this venv, then calls:  bench.py [all | write_tax bulk decrypt plpgsql scale refusal peers | profile NAME]

Every comparison measures a subject and its peer in the same run (pgbench
scripts mixed in one run, or the two statements alternated), repeated RUNS
times; figures are the median over runs with min-max spread, ratios are
computed per run.
"""

import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PGROOT = ROOT / "target" / "bench-pg"
# scripts/bench.sh --pg N sets these for another major than Debian's 15.
MAJOR = os.environ.get("BENCH_PG_MAJOR", "15")
BIN = Path(os.environ.get("BENCH_PG_BIN", PGROOT / "usr" / "lib" / "postgresql" / "15" / "bin"))
SERVER = os.environ.get("BENCH_PG_SERVER", "Debian's PostgreSQL 15 (`target/bench-pg/usr/...`, relocatable)")
CLUSTER = Path(os.environ.get("BENCH_CLUSTER", PGROOT / ("cluster" if MAJOR == "15" else f"cluster-pg{MAJOR}")))  # another one lets a profile run beside a suite run
WORK = CLUSTER.with_name(CLUSTER.name + "-work")
PORT = int(os.environ.get("BENCH_PORT", "54391"))
QUICK = os.environ.get("BENCH_QUICK") == "1"

RUNS = int(os.environ.get("BENCH_RUNS", "3" if QUICK else "5"))
DURATION = int(os.environ.get("BENCH_DURATION", "3" if QUICK else "8"))  # seconds per pgbench run
BULK_ROWS = int(os.environ.get("BENCH_BULK_ROWS", 100_000 if QUICK else 1_000_000))
DECRYPT_ROWS = int(os.environ.get("BENCH_DECRYPT_ROWS", 100_000 if QUICK else 1_000_000))
PGP_ROWS = 1_000 if QUICK else 10_000
SCALE = {"small": (100, 10), "large": (10_000 if QUICK else 100_000, 10)}  # workspaces, secrets each
# peers: secrets in each product (20 per workspace), and the secrets written per write run.
PEER_SECRETS = int(os.environ.get("BENCH_PEER_SECRETS", 20_000))
PEER_WRITES = int(os.environ.get("BENCH_PEER_WRITES", 10_000))
# scripts/bench.sh sets this once it has built and installed Supabase Vault (for `peers`).
VAULT_READY = os.environ.get("BENCH_VAULT_READY") == "1"

COMPARISONS = ["write_tax", "bulk", "decrypt", "plpgsql", "scale", "refusal", "history", "peers"]
DATABASES = {
    "write_tax": ["bench"],
    "plpgsql": ["bench"],
    "bulk": ["bulk", "bulk_nofk"],
    "decrypt": ["decrypt"],
    "scale": ["scale_small", "scale_large"],
    "refusal": ["bench"],
    "history": ["bench"],
    "peers": ["peers"],
}

SERVER_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{dir}'
shared_preload_libraries = 'secretgate'
secretgate.keyring_file = '{dir}/keyring.json'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = off
autovacuum = off
jit = off
max_parallel_workers_per_gather = 0
log_min_messages = warning
"""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)


def as_postgres(cmd, **kw):
    return run(["runuser", "-u", "postgres", "--", *cmd], **kw)


# ---------------------------------------------------------------- the cluster


def start_cluster(extra_conf="", vault=False):
    stop_cluster()
    shutil.rmtree(CLUSTER, ignore_errors=True)
    CLUSTER.mkdir(parents=True)
    shutil.chown(CLUSTER, "postgres", "postgres")
    WORK.mkdir(parents=True, exist_ok=True)
    if vault:
        # Supabase Vault, preloaded beside secretgate, reads its root key at startup from a script that
        # prints 64 hex characters: a fresh random key, in the work dir (removed at teardown).
        script = WORK / "vault-getkey.sh"
        script.unlink(missing_ok=True)
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(f"#!/bin/sh\necho {os.urandom(32).hex()}\n")
        shutil.chown(script, "postgres", "postgres")
        extra_conf = f"shared_preload_libraries = 'secretgate,supabase_vault'\nvault.getkey_script = '{script}'\n" \
            + extra_conf
    as_postgres([BIN / "initdb", "-D", CLUSTER / "data", "-U", "postgres", "-A", "trust", "--no-sync"])
    # A fresh keyring: version 1, 32 random bytes, mode 0600, owned by the server's user.
    keyring = CLUSTER / "keyring.json"
    fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"current_version": 1, "keys": {"1": base64.b64encode(os.urandom(32)).decode()}}, f)
    shutil.chown(keyring, "postgres", "postgres")
    with open(CLUSTER / "data" / "postgresql.conf", "a") as f:
        f.write(SERVER_CONF.format(port=PORT, dir=CLUSTER) + extra_conf)
    as_postgres([BIN / "pg_ctl", "-D", CLUSTER / "data", "-l", CLUSTER / "server.log", "-w", "start"])
    sql("postgres", "CREATE ROLE bench_app LOGIN")


def stop_cluster():
    if (CLUSTER / "data" / "postmaster.pid").exists():
        subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(CLUSTER / "data"),
                        "-m", "fast", "-w", "stop"], capture_output=True)


def teardown():
    stop_cluster()
    shutil.rmtree(CLUSTER, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)


def connect(db, user="postgres"):
    return psycopg.connect(host="127.0.0.1", port=PORT, user=user, dbname=db, autocommit=True)


def sql(db, statement, params=None):
    with connect(db) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else None


def psql_file(db, path, **variables):
    cmd = [BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", db]
    for k, v in variables.items():
        cmd += ["-v", f"{k}={v}"]
    run(cmd + ["-f", path])


def setup_databases(names):
    wanted = []
    for name in names:
        for db in DATABASES[name]:
            if db not in wanted:
                wanted.append(db)
    for db in wanted:
        t = time.monotonic()
        sql("postgres", f"CREATE DATABASE {db}")
        if db == "bench":
            psql_file(db, BENCH / "sql" / "bench.sql")
        elif db == "bulk":
            psql_file(db, BENCH / "sql" / "bulk.sql")
        elif db == "bulk_nofk":
            psql_file(db, BENCH / "sql" / "bulk_nofk.sql")
        elif db == "decrypt":
            psql_file(db, BENCH / "sql" / "decrypt.sql", rows=DECRYPT_ROWS, pgp_rows=PGP_ROWS)
        elif db == "peers":
            psql_file(db, BENCH / "sql" / "peers.sql", secrets=PEER_SECRETS, writes=PEER_WRITES)
        elif db.startswith("scale_"):
            workspaces, per_ws = SCALE[db.removeprefix("scale_")]
            psql_file(db, BENCH / "sql" / "scale.sql", workspaces=workspaces, per_ws=per_ws)
        log(f"database {db} ready ({time.monotonic() - t:.0f} s)")


# ---------------------------------------------------------------- measuring


def pgbench(db, scripts, clients=1, duration=None, caller="unset", defines=None):
    """One pgbench run with the scripts mixed (equal weights). Returns, per
    script, the list of transaction latencies in microseconds."""
    duration = duration or DURATION
    tag = f"pgb{time.monotonic_ns()}"
    for old in WORK.glob("pgb*"):
        old.unlink()
    cmd = [BIN / "pgbench", "-h", "127.0.0.1", "-p", PORT, "-U", "bench_app", "-n", "-M", "prepared",
           "-c", clients, "-j", clients, "-T", duration, "-l", "--log-prefix", WORK / tag]
    for s in scripts:
        cmd += ["-f", f"{BENCH / 'pgbench' / s}@1"]
    for k, v in (defines or {}).items():
        cmd += ["-D", f"{k}={v}"]
    env = dict(os.environ, PGOPTIONS=f"-c secretgate.caller={caller}")
    proc = subprocess.run([str(c) for c in cmd + [db]], text=True, capture_output=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    latencies = [[] for _ in scripts]
    for path in WORK.glob(f"{tag}*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            # client_id transaction_no time_us script_no epoch epoch_us
            latencies[int(fields[3])].append(int(fields[2]))
        path.unlink()
    if any(not l for l in latencies):
        raise RuntimeError(f"pgbench ran no transaction for a script:\n{proc.stdout}")
    return latencies


def backend_cpu(pid):
    """CPU seconds a backend has run so far: /proc/<pid>/schedstat (ns), else utime + stime."""
    try:
        return int(open(f"/proc/{pid}/schedstat").read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(conn, statement):
    """Runs one statement; returns the backend's CPU seconds for it (what the
    figures use: robust to other load on a shared machine) and records wall time."""
    pid = conn.info.backend_pid
    cpu, start = backend_cpu(pid), time.perf_counter()
    conn.execute(statement)
    wall = time.perf_counter() - start
    used = backend_cpu(pid) - cpu
    WALL.append((statement[:40], wall, used))
    return used


WALL = []


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def figure(fid, title, unit, subject, peer, subject_runs, peer_runs, target, note="", ratio_runs=None):
    ratios = ratio_runs or [s / p for s, p in zip(subject_runs, peer_runs)]
    ratio = spread(ratios)
    return {
        "id": fid, "title": title, "unit": unit, "subject": subject, "peer": peer,
        "subject_stats": spread(subject_runs), "peer_stats": spread(peer_runs),
        "ratio": ratio, "target": target, "pass": target is None or ratio["median"] <= target, "note": note,
    }


def med(values):
    return statistics.median(values)


def bench_write_tax():
    figures = []
    scripts = ["insert_gated.sql", "insert_plain.sql", "insert_trigger_floor.sql"]
    for clients in (1, 2):
        pgbench("bench", scripts, clients, 2, caller="agent")  # warm-up
        gated, plain, floor = [], [], []
        for i in range(RUNS):
            g, p, f = pgbench("bench", scripts, clients, caller="agent")
            gated.append(med(g))
            plain.append(med(p))
            floor.append(med(f))
            log(f"write_tax c={clients} run {i + 1}: gated {gated[-1]} us, ungated {plain[-1]} us, "
                f"empty trigger {floor[-1]} us")
        figures.append(figure(
            f"write_tax_c{clients}", f"Write tax, concurrency {clients}: single-row secret INSERT", "µs/txn",
            "gated (public.workspace_secrets)", "no gates (same table, same FK)", gated, plain, 1.05,
            "median per-transaction latency of each script in a mixed pgbench run (-M prepared), agent caller"))
        figures.append(figure(
            f"trigger_floor_c{clients}", f"Context, concurrency {clients}: the same INSERT with one empty "
            "PL/pgSQL BEFORE ROW trigger", "µs/txn", "empty trigger (public.trigger_floor_secrets)",
            "no gates (same table, same FK)", floor, plain, None,
            "informational: what any per-row trigger costs in the same run (pgbench latencies are whole µs)"))
    figures += bench_write_rows()
    return figures


REFUSAL_LOOP = ("DO $$ BEGIN FOR i IN 1..{n} LOOP BEGIN PERFORM secretgate.set_global_secret({key}, 'bench'); "
                "EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$")


def bench_refusal():
    """A refusal's cost to the refusing session (its audit line, and from
    0.4.0 its queued audit record) against the same block raising an
    unaudited error. Run it on two builds (BENCH_REV) to compare the audit
    queue with the log line alone."""
    figures = []
    # 1. Backend CPU per refusal: robust to other load on the machine. A
    #    batch fits the default queue; the writer drains it between batches.
    n = 1000
    conn = connect("bench")
    conn.autocommit = True
    timed(conn, REFUSAL_LOOP.format(n=n, key="'MODEL_PROVIDER'"))  # warm-up
    refused, peer = [], []
    for i in range(RUNS * 3):
        time.sleep(0.3)
        refused.append(timed(conn, REFUSAL_LOOP.format(n=n, key="'MODEL_PROVIDER'")) / n * 1e6)
        peer.append(timed(conn, REFUSAL_LOOP.format(n=n, key="NULL")) / n * 1e6)
        log(f"refusal cpu run {i + 1}: refused {refused[-1]:.1f} us, unaudited error {peer[-1]:.1f} us")
    conn.close()
    figures.append(figure(
        "refusal_cpu", "Refusal cost: backend CPU per SG105 refusal caught in PL/pgSQL", "µs CPU",
        "refusal (audited)", "the same loop, an unaudited 22004", refused, peer, None,
        "informational: the refusing backend's CPU per refusal, batches of 1,000; compare the subject across "
        "builds (BENCH_REV) for the audit queue's cost over the log line alone"))
    # 2. Latency under pgbench, separate runs alternated (a refusal's record
    #    keeps an audit writer busy in the background: not charged to the peer).
    pgbench("bench", ["refusal.sql"], 1, 2)  # warm-up
    refused, peer = [], []
    for i in range(RUNS):
        refused.append(statistics.mean(pgbench("bench", ["refusal.sql"], 1)[0]))
        peer.append(statistics.mean(pgbench("bench", ["refusal_peer.sql"], 1)[0]))
        log(f"refusal run {i + 1}: refused {refused[-1]:.1f} us, unaudited error {peer[-1]:.1f} us")
    figures.append(figure(
        "refusal", "Refusal latency: SG105 caught in a DO block", "µs/txn", "refusal (audited)",
        "the same block, an unaudited 22004", refused, peer, None,
        "informational: mean per-transaction latency (writer's work included, on a shared machine)"))
    return figures


def bench_write_rows():
    """The gate's CPU per row without per-statement costs or latency rounding:
    an agent's multi-row INSERT … SELECT into each of the three tables."""
    rows = 20_000 if QUICK else 200_000
    tables = {"gated": "public.workspace_secrets", "plain": "public.plain_secrets",
              "floor": "public.trigger_floor_secrets"}
    per_row = {k: [] for k in tables}
    with connect("bench") as conn:
        conn.execute("SET secretgate.caller = 'agent'")
        for i in range(RUNS):
            for name, table in tables.items():
                conn.execute(f"TRUNCATE {table}")
                used = timed(conn, BULK_SQL.format(table=table, rows=rows))
                per_row[name].append(used / rows * 1e6)
            log(f"write_rows run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} us/row" for k, v in per_row.items()))
        for table in tables.values():
            conn.execute(f"TRUNCATE {table}")
    return [
        figure("write_rows", f"An agent's {rows:,}-row INSERT … SELECT, backend CPU per row: gated vs no gates",
               "µs CPU/row", "gated (public.workspace_secrets)", "no gates (same table, same FK)",
               per_row["gated"], per_row["plain"], None,
               "informational: the gate's own cost per row (a kind lookup for each), without the per-statement "
               "costs of a single-row INSERT"),
        figure("write_rows_floor", f"Context: the same {rows:,}-row INSERT with one empty PL/pgSQL BEFORE ROW "
               "trigger", "µs CPU/row", "empty trigger (public.trigger_floor_secrets)",
               "no gates (same table, same FK)", per_row["floor"], per_row["plain"], None,
               "informational: what any per-row trigger costs"),
    ]


BULK_SQL = ("INSERT INTO {table} (workspace_id, key, encrypted_value, encryption_version) "
            "SELECT lpad(to_hex(1 + i % 1000), 32, '0')::uuid, 'BULK_' || i, decode(repeat('5a', 92), 'hex'), 1 "
            "FROM generate_series(1, {rows}) i")


def bench_bulk():
    variants = [
        ("gates+FK", "bulk", "public.workspace_secrets"),
        ("FK only", "bulk", "public.fk_secrets"),
        ("gates only", "bulk_nofk", "public.workspace_secrets"),
    ]
    conns = {db: connect(db) for db in ("bulk", "bulk_nofk")}
    times = {name: [] for name, _, _ in variants}
    for i in range(RUNS):
        order = variants[i % 3:] + variants[:i % 3]
        for name, db, table in order:
            conn = conns[db]
            conn.execute(f"TRUNCATE {table}")
            conn.execute("CHECKPOINT")
            times[name].append(timed(conn, BULK_SQL.format(table=table, rows=BULK_ROWS)))
            log(f"bulk run {i + 1}: {name} {times[name][-1]:.2f} s CPU ({WALL[-1][1]:.2f} s wall)")
    for name, db, table in variants:
        conns[db].execute(f"TRUNCATE {table}")
    for c in conns.values():
        c.close()
    n = f"{BULK_ROWS:,}"
    return [
        figure("bulk_gate_vs_fk", f"Bulk {n}-row INSERT … SELECT: the gate alone vs the native FK alone", "s CPU",
               "gates, no FK", "FK, no gates", times["gates only"], times["FK only"], 1.0,
               "the target's ratio: secretgate's check against Postgres' own check, each the only check on its table"),
        figure("bulk_real_vs_fk", f"Bulk {n}-row INSERT … SELECT: the real table (gates + FK) vs FK only", "s CPU",
               "gates + FK (migration schema)", "FK only", times["gates+FK"], times["FK only"], None,
               "informational: what a bulk load into the real schema pays on top of the FK"),
    ]


DECRYPT_SQL = {
    # octet_length for every function: length() of a text counts its characters (a scan of the value,
    # 14% of the secretgate query), while length() of decrypt_iv's bytea result costs nothing.
    "secretgate": "SELECT sum(octet_length(secretgate.decrypt(gcm, ver, ws, key))) FROM dec",
    "decrypt_iv": "SELECT sum(octet_length(decrypt_iv(cbc, decode(repeat('42', 32), 'hex'), iv, 'aes-cbc'))) FROM dec",
    "pgp_sym_decrypt": "SELECT sum(octet_length(pgp_sym_decrypt(pgp, 'bench-passphrase'))) FROM dec WHERE i <= {pgp}",
    "scan": "SELECT sum(octet_length(gcm)) FROM dec",
}


def bench_decrypt(floor):
    conn = connect("decrypt")
    rows = {"secretgate": DECRYPT_ROWS, "decrypt_iv": DECRYPT_ROWS, "pgp_sym_decrypt": PGP_ROWS, "scan": DECRYPT_ROWS}
    sqls = {k: v.format(pgp=PGP_ROWS) for k, v in DECRYPT_SQL.items()}
    for s in sqls.values():  # warm-up: caches, keyring, first-call setup
        conn.execute(s)
    per_row = {k: [] for k in sqls}
    names = list(sqls)
    for i in range(RUNS):
        for name in names[i % 4:] + names[:i % 4]:
            per_row[name].append(timed(conn, sqls[name]) / rows[name] * 1e9)
        log(f"decrypt run {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} ns/row" for k, v in per_row.items()))
    conn.close()
    figures = [
        figure("decrypt_vs_cbc", f"Decrypt {DECRYPT_ROWS:,} stored 64-byte secrets: secretgate.decrypt vs decrypt_iv",
               "ns/row", "secretgate.decrypt (AES-256-GCM, authenticated)", "pgcrypto decrypt_iv (aes-cbc)",
               per_row["secretgate"], per_row["decrypt_iv"], 0.5,
               "backend CPU time of the whole query / rows (scan + function call + aggregate)"),
        figure("decrypt_vs_pgp", "Decrypt: secretgate.decrypt vs pgp_sym_decrypt, per row", "ns/row",
               "secretgate.decrypt", f"pgp_sym_decrypt (pgcrypto defaults, first {PGP_ROWS:,} rows)",
               per_row["secretgate"], per_row["pgp_sym_decrypt"], 0.01,
               f"pgp_sym_decrypt runs its S2K key derivation per row, so it is timed over {PGP_ROWS:,} rows"),
    ]
    if floor:
        samples = floor["samples"]
        figures.append(figure(
            "decrypt_vs_floor", "Decrypt: in-server per row vs the pure core in-process (Criterion)", "ns/row",
            "secretgate.decrypt in the server", "secretgate-core Keyring::decrypt in-process",
            per_row["secretgate"], [min(samples)] * RUNS, 3.0,
            f"floor: the fastest of {len(samples)} Criterion samples, {min(samples):.0f} ns (median "
            f"{floor['median']:.0f}, max {max(samples):.0f}): Criterion times wall clock, which other load on "
            f"the machine inflates, while the in-server figure is CPU time; the in-server figure includes the scan "
            f"(scan alone: median {med(per_row['scan']):.0f} ns/row)"))
    figures.append(figure(
        "decrypt_scan", "Decrypt: the scan alone (sum(octet_length(ciphertext))), for context", "ns/row",
        "scan only", "secretgate.decrypt query", per_row["scan"], per_row["secretgate"], None,
        "informational: the share of the per-row figure that is not decryption"))
    return figures


REFERENCE_CASES = [
    # (caller, statements, expected SQLSTATE): each must be refused alike by both implementations.
    ("agent", ["INSERT INTO {s}.workspace_secrets VALUES (lpad(to_hex(1000001), 32, '0')::uuid, 'X', '\\x00', 1)"], "SG101"),
    ("agent", ["INSERT INTO {s}.workspace_secrets VALUES (gen_random_uuid(), 'X', '\\x00', 1)"], "SG106"),
    ("unset", ["INSERT INTO {s}.workspace_secrets VALUES (lpad(to_hex(1), 32, '0')::uuid, 'MODEL_PROVIDER', '\\x00', 1)"], "SG105"),
    ("unset", ["INSERT INTO {s}.workspace_secrets VALUES (lpad(to_hex(1), 32, '0')::uuid, 'MODEL', "
               "secretgate.encrypt('openai', lpad(to_hex(1), 32, '0')::uuid, 'MODEL'), 1)"], "SG107"),
    ("unset", ["INSERT INTO {s}.workspaces (id, kind, model) VALUES (gen_random_uuid(), 'workspace', 'gpt-5')"], "SG103"),
    ("unset", ["DELETE FROM {s}.workspace_secrets WHERE workspace_id = lpad(to_hex(1000002), 32, '0')::uuid AND key = 'MODEL'",
               "UPDATE {s}.workspaces SET status = 'online' WHERE id = lpad(to_hex(1000002), 32, '0')::uuid"], "SG102"),
]


def check_reference():
    """The PL/pgSQL reference must refuse what secretgate refuses, with the same SQLSTATE."""
    for caller, statements, want in REFERENCE_CASES:
        for schema in ("public", "sgref"):
            with psycopg.connect(host="127.0.0.1", port=PORT, user="bench_app", dbname="bench",
                                 options=f"-c secretgate.caller={caller}") as conn:
                got = None
                try:
                    with conn.transaction():
                        for st in statements:
                            conn.execute(st.format(s=schema))
                except psycopg.Error as e:
                    got = e.sqlstate
                if got != want:
                    raise RuntimeError(f"{schema}: {statements[0][:60]}... gave {got}, expected {want}")
    log(f"PL/pgSQL reference refuses like secretgate ({len(REFERENCE_CASES)} cases, same SQLSTATEs)")


def bench_plpgsql():
    pairs = [
        ("self_write", "Self-write gate: agent INSERT of a secret (ordinary workspace)", "insert_gated.sql",
         "insert_plpgsql.sql", "agent"),
        ("register", "register_workspace of a platform workspace (+ deferred identity/BYOK checks at commit)",
         "register_rust.sql", "register_plpgsql.sql", "unset"),
        ("byok_create", "BYOK create: workspace + credential in one transaction, BYOK gate at commit",
         "byok_rust.sql", "byok_plpgsql.sql", "unset"),
    ]
    check_reference()
    figures = []
    for fid, title, rust, plpgsql, caller in pairs:
        pgbench("bench", [rust, plpgsql], 1, 2, caller=caller)  # warm-up
        r_runs, p_runs = [], []
        for i in range(RUNS):
            r, p = pgbench("bench", [rust, plpgsql], 1, caller=caller)
            r_runs.append(med(r))
            p_runs.append(med(p))
            log(f"plpgsql {fid} run {i + 1}: secretgate {r_runs[-1]} us, PL/pgSQL {p_runs[-1]} us")
        figures.append(figure(f"plpgsql_{fid}", title, "µs/txn", "secretgate (Rust)", "PL/pgSQL reference",
                              r_runs, p_runs, 0.7,
                              "median transaction latency, scripts mixed in one pgbench run, 1 client "
                              "(time ratio = inverse throughput ratio)"))
    return figures


def bench_scale():
    runs = {(size, s): [] for size in SCALE for s in ("gate", "read")}
    for size in SCALE:
        pgbench(f"scale_{size}", ["scale_gate.sql", "scale_read.sql"], 1, 2, caller="agent",
                defines={"nws": SCALE[size][0]})
    for i in range(RUNS):
        sizes = list(SCALE) if i % 2 == 0 else list(reversed(SCALE))
        for size in sizes:
            g, r = pgbench(f"scale_{size}", ["scale_gate.sql", "scale_read.sql"], 1, caller="agent",
                           defines={"nws": SCALE[size][0]})
            runs[(size, "gate")].append(med(g))
            runs[(size, "read")].append(med(r))
            log(f"scale run {i + 1} {size}: gate {med(g)} us, read_secret {med(r)} us")
    (sw, sp), (lw, lp) = SCALE["small"], SCALE["large"]
    label = lambda w, p: f"{w * p:,} secrets / {w:,} workspaces"
    return [
        figure("scale_gate", "Scale: gated secret UPDATE (agent caller)", "µs/txn", label(lw, lp), label(sw, sp),
               runs[("large", "gate")], runs[("small", "gate")], 1.2, "median latency, 1 client, runs alternated"),
        figure("scale_read", "Scale: read_secret", "µs/txn", label(lw, lp), label(sw, sp),
               runs[("large", "read")], runs[("small", "read")], 1.2, "median latency, 1 client, runs alternated"),
    ]


# ---------------------------------------------------------------- side by side with Supabase Vault

PEER_SQL = {
    # Point read of one secret by name, per row over the picks (every secret once, random order).
    "read": {
        "secretgate": "SELECT count(x) FROM (SELECT secretgate.read_secret(ws, key) x FROM public.peer_picks) s",
        "vault": "SELECT count((SELECT decrypted_secret FROM vault.decrypted_secrets d WHERE d.name = p.name)) "
                 "FROM public.peer_picks p",
    },
    # Decrypt every secret in a scan.
    "bulk": {
        "secretgate": "SELECT count(secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key)) "
                      "FROM public.workspace_secrets",
        "vault": "SELECT count(decrypted_secret) FROM vault.decrypted_secrets",
    },
    # Write a secret under a new name.
    "new": {
        "secretgate": "SELECT count(*) FROM (SELECT secretgate.set_secret(ws, key, value) FROM public.peer_new{limit}) s",
        "vault": "SELECT count(*) FROM (SELECT vault.create_secret(value, name) FROM public.peer_new{limit}) s",
    },
    # Overwrite an existing secret with a new value.
    "overwrite": {
        "secretgate": "SELECT count(*) FROM (SELECT secretgate.set_secret(ws, key, {col}) FROM public.peer_picks "
                      "WHERE n <= {rows}) s",
        "vault": "SELECT count(*) FROM (SELECT vault.update_secret(vault_id, {col}) FROM public.peer_picks "
                 "WHERE n <= {rows}) s",
    },
    # The write tax: the same rows, a raw INSERT into the attached table and into its unattached copy.
    "raw": {
        "secretgate": "INSERT INTO public.workspace_secrets (workspace_id, key, encrypted_value, encryption_version) "
                      "SELECT * FROM public.peer_raw{limit}",
        "plain": "INSERT INTO public.plain_secrets (workspace_id, key, encrypted_value, encryption_version) "
                 "SELECT * FROM public.peer_raw{limit}",
    },
}
PEER_CONTEXT_SQL = "SELECT count(name) FROM public.peer_picks"  # the picks' scan alone, for context
# What the peers section of the report shows, in this order: (figure id, operation).
PEER_ROWS = [
    ("peers_read", "point read of one secret by name"),
    ("peers_read_pgbench", "point read, one call per pgbench transaction (latency)"),
    ("peers_write_new", "write one secret under a new name"),
    ("peers_write_overwrite", "overwrite one existing secret"),
    ("peers_bulk", "decrypt every secret in a scan (per row)"),
    ("peers_write_tax", "raw INSERT into the attached table vs an unattached copy (the Vault column: the unattached copy)"),
]
PEERS = {}  # what the report shows beside the figures: the plans of the read and scan statements


def bench_peers():
    """secretgate and Supabase Vault in the same database of the same server:
    each operation timed for both in every run, the order alternated."""
    app = connect("peers", user="bench_app")
    app.execute("SET secretgate.caller = 'agent'")  # the full self-write gate on secretgate's writes
    admin = connect("peers")
    n, w = PEER_SECRETS, PEER_WRITES
    counts = admin.execute("SELECT (SELECT count(*) FROM public.workspace_secrets), "
                           "(SELECT count(*) FROM vault.secrets)").fetchone()
    if counts != (n, n):
        raise RuntimeError(f"peers: expected {n} secrets in each product, found {counts}")
    PEERS["plans"] = {
        f"{op}, {prod}": "\n".join(r[0] for r in admin.execute("EXPLAIN (COSTS OFF) " + PEER_SQL[op][prod]))
        for op in ("read", "bulk") for prod in ("secretgate", "vault")}
    # Both products must return the same plaintexts.
    mismatch = admin.execute(
        "SELECT count(*) FROM public.peer_picks p WHERE secretgate.read_secret(p.ws, p.key) IS DISTINCT FROM "
        "(SELECT decrypted_secret FROM vault.decrypted_secrets d WHERE d.name = p.name) "
        "OR secretgate.read_secret(p.ws, p.key) IS DISTINCT FROM p.value").fetchone()[0]
    if mismatch:
        raise RuntimeError(f"peers: {mismatch} secrets read back differently")

    def vacuum():
        for table in ("public.workspace_secrets", "public.plain_secrets", "vault.secrets"):
            admin.execute(f"VACUUM {table}")

    def alternate(i, products):
        return products if i % 2 == 0 else list(reversed(products))

    def per_call(used, rows):
        return used / rows * 1e6

    figures, walls = [], {}

    def record(op, prod, used, rows, runs):
        runs[prod].append(per_call(used, rows))
        walls.setdefault((op, prod), []).append(WALL[-1][1] / rows * 1e6)

    def wall_note(op, products):
        return "wall clock per call (median): " + ", ".join(
            f"{p} {fmt(med(walls[(op, p)]))} µs" for p in products)

    # 1. Point reads and the bulk decrypt: a warm-up pass, then RUNS runs, the products alternated.
    for op in ("read", "bulk"):
        for s in PEER_SQL[op].values():
            app.execute(s)
    app.execute(PEER_CONTEXT_SQL)
    reads = {"secretgate": [], "vault": []}
    bulk = {"secretgate": [], "vault": []}
    context = []
    for i in range(RUNS):
        for prod in alternate(i, ["secretgate", "vault"]):
            record("read", prod, timed(app, PEER_SQL["read"][prod]), n, reads)
            record("bulk", prod, timed(app, PEER_SQL["bulk"][prod]), n, bulk)
        context.append(per_call(timed(app, PEER_CONTEXT_SQL), n))
        log(f"peers run {i + 1}: read secretgate {reads['secretgate'][-1]:.2f} µs, Vault {reads['vault'][-1]:.2f} µs; "
            f"bulk secretgate {bulk['secretgate'][-1]:.2f} µs/row, Vault {bulk['vault'][-1]:.2f} µs/row")
    figures.append(figure(
        "peers_read", f"Point read of one secret by name, per call ({n:,} different secrets in one statement)",
        "µs CPU/call", "secretgate.read_secret(workspace_id, key)",
        "Vault: decrypted_secrets WHERE name = …", reads["secretgate"], reads["vault"], 0.5,
        f"backend CPU of the statement / {n:,} rows, each a different secret in random order; the picks' scan "
        f"alone is {fmt(med(context))} µs/row of both; " + wall_note("read", ["secretgate", "vault"])))
    figures.append(figure(
        "peers_bulk", f"Decrypt every secret in a scan ({n:,} secrets), per row", "µs CPU/row",
        "secretgate.decrypt over workspace_secrets", "Vault: count(decrypted_secret) FROM decrypted_secrets",
        bulk["secretgate"], bulk["vault"], 0.2,
        f"backend CPU of the statement / {n:,} rows; " + wall_note("bulk", ["secretgate", "vault"])))

    # 2. The same point read under pgbench, one call per transaction, the two scripts mixed in one run.
    defines = {"nws": (n + 19) // 20}
    scripts = ["peers_read_secretgate.sql", "peers_read_vault.sql"]
    pgbench("peers", scripts, 1, 2, caller="agent", defines=defines)  # warm-up
    pg_runs = {"secretgate": [], "vault": []}
    for i in range(RUNS):
        sg, v = pgbench("peers", scripts, 1, caller="agent", defines=defines)
        pg_runs["secretgate"].append(med(sg))
        pg_runs["vault"].append(med(v))
        log(f"peers pgbench run {i + 1}: read secretgate {med(sg)} us, Vault {med(v)} us")
    figures.append(figure(
        "peers_read_pgbench", "Point read of one secret by name, one call per transaction (pgbench)", "µs/txn",
        "secretgate.read_secret", "Vault: decrypted_secrets WHERE name = …", pg_runs["secretgate"], pg_runs["vault"],
        None, "informational: median transaction latency (wall clock, client round trip included), the two "
              "scripts mixed in one pgbench run, 1 client, -M prepared"))

    # 3. Writes: new names, then overwrites, each statement writing PEER_WRITES secrets.
    def drop_new():
        admin.execute("DELETE FROM public.workspace_secrets WHERE key LIKE 'NEW\\_%'")
        admin.execute("DELETE FROM vault.secrets WHERE name LIKE '%/NEW\\_%'")
        vacuum()

    for s in PEER_SQL["new"].values():  # warm-up
        app.execute(s.format(limit=" LIMIT 500"))
    drop_new()
    new = {"secretgate": [], "vault": []}
    for i in range(RUNS):
        for prod in alternate(i, ["secretgate", "vault"]):
            record("new", prod, timed(app, PEER_SQL["new"][prod].format(limit="")), w, new)
        got = admin.execute("SELECT (SELECT count(*) FROM public.workspace_secrets WHERE key LIKE 'NEW\\_%'), "
                            "(SELECT count(*) FROM vault.secrets WHERE name LIKE '%/NEW\\_%')").fetchone()
        if got != (w, w):
            raise RuntimeError(f"peers: a write run stored {got} new secrets, expected {w} in each")
        drop_new()
        log(f"peers write run {i + 1}: new secretgate {new['secretgate'][-1]:.2f} µs, Vault {new['vault'][-1]:.2f} µs")
    figures.append(figure(
        "peers_write_new", f"Write one secret under a new name, per call ({w:,} in one statement)", "µs CPU/call",
        "secretgate.set_secret (agent caller: every gate)", "Vault: vault.create_secret(secret, name)",
        new["secretgate"], new["vault"], 0.5,
        f"backend CPU of the statement / {w:,} calls; the new rows are deleted and both tables vacuumed between "
        f"runs; " + wall_note("new", ["secretgate", "vault"])))

    for s in PEER_SQL["overwrite"].values():  # warm-up
        app.execute(s.format(col="value2", rows=500))
    vacuum()
    over = {"secretgate": [], "vault": []}
    for i in range(RUNS):
        col = "value" if i % 2 == 0 else "value2"  # every call changes the value
        for prod in alternate(i, ["secretgate", "vault"]):
            record("overwrite", prod, timed(app, PEER_SQL["overwrite"][prod].format(col=col, rows=w)), w, over)
        vacuum()
        log(f"peers write run {i + 1}: overwrite secretgate {over['secretgate'][-1]:.2f} µs, "
            f"Vault {over['vault'][-1]:.2f} µs")
    figures.append(figure(
        "peers_write_overwrite", f"Overwrite one existing secret, per call ({w:,} in one statement)", "µs CPU/call",
        "secretgate.set_secret on an existing key", "Vault: vault.update_secret(id, secret)",
        over["secretgate"], over["vault"], 0.5,
        f"backend CPU of the statement / {w:,} calls, each a different secret; both tables vacuumed between runs; "
        + wall_note("overwrite", ["secretgate", "vault"])))

    # 4. The write tax: the same rows, a raw INSERT into the attached table and into its unattached copy.
    def drop_raw():
        admin.execute("DELETE FROM public.workspace_secrets WHERE key LIKE 'RAW\\_%'")
        admin.execute("DELETE FROM public.plain_secrets WHERE key LIKE 'RAW\\_%'")
        vacuum()

    for s in PEER_SQL["raw"].values():  # warm-up
        app.execute(s.format(limit=" LIMIT 500"))
    drop_raw()
    raw = {"secretgate": [], "plain": []}
    for i in range(RUNS):
        for prod in alternate(i, ["secretgate", "plain"]):
            record("raw", prod, timed(app, PEER_SQL["raw"][prod].format(limit="")), n, raw)
        drop_raw()
        log(f"peers write tax run {i + 1}: gated {raw['secretgate'][-1]:.2f} µs/row, plain {raw['plain'][-1]:.2f} µs/row")
    figures.append(figure(
        "peers_write_tax", f"Raw INSERT of {n:,} secrets' rows: the attached table vs an unattached copy, per row",
        "µs CPU/row", "gated (public.workspace_secrets, agent caller)", "no gates (public.plain_secrets, same FK)",
        raw["secretgate"], raw["plain"], 1.10,
        f"backend CPU of one INSERT … SELECT of the same {n:,} rows (ciphertext as stored) / rows; both tables "
        f"hold the same {n:,} rows beforehand; " + wall_note("raw", ["secretgate", "plain"])))
    app.close()
    admin.close()
    return figures


HISTORY_ROWS = 10_000  # 1,000 workspaces x 10 keys
HISTORY_OVERWRITE = ("SELECT count(*) FROM (SELECT secretgate.set_secret(w.id, 'H_' || k, md5(w.id::text || k || {run})) "
                     "FROM public.workspaces w, generate_series(1, 10) k WHERE w.kind = 'workspace') s")
HISTORY_READ = ("SELECT count(secretgate.read_secret(w.id, 'H_' || k)) "
                "FROM public.workspaces w, generate_series(1, 10) k WHERE w.kind = 'workspace'")


def bench_history():
    """What history and read audit cost: overwrites with history kept
    (secretgate.history_keep = 10) against none kept (0), and point reads with
    secretgate.audit_reads = all against off. As the superuser (both settings
    are superuser-only), each figure the backend CPU of one statement per run."""
    conn = connect("bench")
    conn.execute(HISTORY_OVERWRITE.format(run=0))  # the 10,000 secrets, then a warm-up
    kept, unkept, audited, unaudited = [], [], [], []
    for i in range(RUNS):
        for keep in (["10", "0"] if i % 2 == 0 else ["0", "10"]):
            conn.execute(f"SET secretgate.history_keep = {keep}")
            used = timed(conn, HISTORY_OVERWRITE.format(run=2 * i + (keep == "0") + 1))
            (kept if keep == "10" else unkept).append(used / HISTORY_ROWS * 1e6)
        conn.execute("VACUUM public.workspace_secrets")
        conn.execute("SELECT secretgate.purge_history(id) FROM public.workspaces WHERE kind = 'workspace'")
        for mode in (["all", "off"] if i % 2 == 0 else ["off", "all"]):
            conn.execute(f"SET secretgate.audit_reads = '{mode}'")
            used = timed(conn, HISTORY_READ)
            (audited if mode == "all" else unaudited).append(used / HISTORY_ROWS * 1e6)
        log(f"history run {i + 1}: overwrite kept {kept[-1]:.2f} µs, not kept {unkept[-1]:.2f} µs; "
            f"read audited {audited[-1]:.2f} µs, not {unaudited[-1]:.2f} µs")
    conn.execute("RESET secretgate.history_keep")
    conn.execute("RESET secretgate.audit_reads")
    conn.close()
    return [
        figure("history_overwrite", "Overwrite with history kept vs none kept, per call", "µs CPU/call",
               "set_secret, history_keep = 10", "set_secret, history_keep = 0", kept, unkept, 1.3,
               f"backend CPU of one statement of {HISTORY_ROWS:,} overwrites / calls, each a different secret; "
               "the kept versions purged between runs"),
        figure("history_read_audit", "Point read with every read audited vs none", "µs CPU/call",
               "read_secret, audit_reads = all", "read_secret, audit_reads = off", audited, unaudited, 1.15,
               f"backend CPU of one statement of {HISTORY_ROWS:,} reads / calls (the audit writers' own work "
               "is in other processes)"),
    ]


def gate_plans():
    """The plans of the statements the gates and read_secret run, as auto_explain logs them."""
    logfile = CLUSTER / "server.log"
    offset = logfile.stat().st_size
    ws = "00000000-0000-0000-0000-00000000002a"
    with connect("scale_large") as conn:
        for s in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                  "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_analyze = on",
                  "SET auto_explain.log_timing = off", "SET auto_explain.log_level = 'warning'",
                  "SET secretgate.caller = 'agent'"):
            conn.execute(s)
        conn.execute("UPDATE public.workspace_secrets SET encryption_version = 1 WHERE workspace_id = %s AND key = %s",
                      (ws, "KEY_3"))
        conn.execute("SELECT secretgate.read_secret(%s, %s)", (ws, "KEY_3"))
    time.sleep(0.5)
    with open(logfile, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    plans = []
    for block in re.split(r"\n(?=\S)", text):
        if "Query Text:" in block:
            plans.append("\n".join(line.strip("\t") for line in block.splitlines()))
    return plans


def criterion_floor():
    """The in-process floor: runs the Criterion bench, reads its samples."""
    env = dict(os.environ)
    cmd = ["cargo", "bench", "-p", "secretgate-core", "--bench", "decrypt", "--",
           "--warm-up-time", "2", "--measurement-time", "3" if QUICK else "6", "decrypt_64B"]
    run(cmd, cwd=ROOT, env=env)
    base = ROOT / "target" / "criterion" / "decrypt_64B" / "new"
    estimates = json.loads((base / "estimates.json").read_text())
    sample = json.loads((base / "sample.json").read_text())
    per_iter = [t / n for t, n in zip(sample["times"], sample["iters"])]
    return {"median": estimates["median"]["point_estimate"], "samples": per_iter}


# ---------------------------------------------------------------- profiling


def profile(name, seconds=20):
    """perf (cpu-clock sampling) on the one backend of a 1-client pgbench run."""
    scripts = {
        "write_tax": (["insert_gated.sql"], "bench", "agent", {}),
        "self_write": (["insert_gated.sql"], "bench", "agent", {}),
        "register": (["register_rust.sql"], "bench", "unset", {}),
        "byok_create": (["byok_rust.sql"], "bench", "unset", {}),
        "scale_read": (["scale_read.sql"], "scale_large", "agent", {"nws": SCALE["large"][0]}),
        "scale_mix": (["scale_gate.sql", "scale_read.sql"], "scale_large", "agent", {"nws": SCALE["large"][0]}),
        "bulk": (None, "bulk_nofk", "unset", {}),
        "decrypt": (None, "decrypt", "unset", {}),
    }[name]
    files, db, caller, defines = scripts
    out = WORK / f"perf-{name}.data"
    if files is None:
        conn = connect(db)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        if name == "bulk":
            conn.execute("TRUNCATE public.workspace_secrets")
            conn.execute(BULK_SQL.format(table="public.workspace_secrets", rows=200_000))
        else:
            for _ in range(5):
                conn.execute(DECRYPT_SQL["secretgate"])
        perf.send_signal(2)
        perf.wait()
        conn.close()
    else:
        cmd = [BIN / "pgbench", "-h", "127.0.0.1", "-p", PORT, "-U", "bench_app", "-n", "-M", "prepared",
               "-c", 1, "-j", 1, "-T", seconds]
        for f in files:
            cmd += ["-f", BENCH / "pgbench" / f]
        for k, v in defines.items():
            cmd += ["-D", f"{k}={v}"]
        env = dict(os.environ, PGOPTIONS=f"-c secretgate.caller={caller}")
        bench = subprocess.Popen([str(c) for c in cmd + [db]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pid = None
        for _ in range(50):
            time.sleep(0.1)
            rows = sql(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' AND usename = 'bench_app'")
            if rows:
                pid = rows[0][0]
                break
        if pid is None:
            bench.kill()
            raise RuntimeError("no pgbench backend found")
        time.sleep(1)
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(seconds - 3)
        perf.send_signal(2)
        perf.wait()
        bench.wait()
    flat = run(["perf", "report", "-i", out, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none",
                "--percent-limit", "0.7"]).stdout
    children = run(["perf", "report", "-i", out, "--children", "--sort", "symbol", "--stdio", "-g", "none",
                    "--percent-limit", "4"]).stdout
    db_stats = ""
    try:
        sql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = sql(db, "SELECT calls, plans, round(mean_plan_time::numeric * 1000, 1), round(mean_exec_time::numeric * 1000, 1), "
                       "toplevel, left(regexp_replace(query, '\\s+', ' ', 'g'), 150) FROM pg_stat_statements "
                       "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                       "ORDER BY total_plan_time + total_exec_time DESC LIMIT 15")
        db_stats = "calls | plans | µs per plan | µs per execution | top level | statement\n" + "\n".join(
            " | ".join(str(c) for c in r) for r in rows)
    except psycopg.Error as e:
        db_stats = f"(pg_stat_statements unavailable: {e.sqlstate})"
    strip = lambda t: "\n".join(l for l in t.splitlines() if l.strip() and not l.startswith("#"))
    text = f"## {name}: self time (top symbols)\n\n```\n{strip(flat)}\n```\n\n" \
           f"## {name}: inclusive time (children)\n\n```\n{strip(children)}\n```\n\n" \
           f"## {name}: statements by total time (pg_stat_statements, track = all, nested SPI included)\n\n" \
           f"```\n{db_stats}\n```\n"
    dest = ROOT / "target" / "bench-results" / f"profile-{name}.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    # The raw samples too, for `perf report -i … -S <symbol>` after the cluster is gone.
    shutil.copy(out, dest.with_name(f"perf-{name}.data"))
    print(text)
    log(f"profile written to {dest} (samples: perf-{name}.data beside it)")


# ---------------------------------------------------------------- the report


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(), "os": platform.platform(),
    }


def versions():
    def out(cmd, **kw):
        try:
            return run(cmd, **kw).stdout.strip()
        except Exception:  # a missing tool is reported, not fatal
            return "?"
    import matplotlib
    rev = os.environ.get("BENCH_BUILT_REV") or out(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT)
    return {
        "postgres": out([BIN / "postgres", "--version"]),
        "rustc": out(["rustc", "--version"]),
        "secretgate": rev,
        "source": os.environ.get("BENCH_SOURCE", "working tree"),
        "pgrx": "0.18.0",
        "pgbench": out([BIN / "pgbench", "--version"]),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "matplotlib": matplotlib.__version__,
        "vault": os.environ.get("BENCH_VAULT_VERSION") if VAULT_READY else None,
        "vault_source": os.environ.get("BENCH_VAULT_SOURCE", "?"),
        "sodium": os.environ.get("BENCH_VAULT_SODIUM", "?"),
    }


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def plots(figures, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    outdir.mkdir(parents=True, exist_ok=True)
    for f in figures:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        labels = [f["subject"], f["peer"]]
        stats = [f["subject_stats"], f["peer_stats"]]
        meds = [s["median"] for s in stats]
        err = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
        ax.barh(range(2), meds, xerr=err, color=["#c0392b", "#7f8c8d"], capsize=5)
        for i, s in enumerate(stats):
            for v in s["runs"]:
                ax.plot(v, i, "k.", ms=4)
        ax.set_yticks(range(2), [l if len(l) < 40 else l[:38] + "…" for l in labels], fontsize=8)
        ax.set_xlabel(f["unit"] + " (bar: median, whiskers: min–max, dots: runs)", fontsize=8)
        tgt = f"target ≤ {f['target']}" if f["target"] is not None else "informational"
        ax.set_title(textwrap.fill(f["title"], 80) + f"\nratio {fmt(f['ratio']['median'])} ({tgt})", fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / f"{f['id']}.png", dpi=110)
        plt.close(fig)
    targeted = [f for f in figures if f["target"] is not None]
    if targeted:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(targeted) + 1.2))
        for i, f in enumerate(targeted):
            r = f["ratio"]
            color = "#27ae60" if f["pass"] else "#c0392b"
            ax.plot([r["min"], r["max"]], [i, i], color=color, lw=2)
            ax.plot(r["median"] / f["target"] * 0 + r["median"], i, "o", color=color)
            ax.plot(f["target"], i, "|", color="k", ms=14, mew=2)
        ax.set_xscale("log")
        ax.set_yticks(range(len(targeted)), [f["id"] for f in targeted], fontsize=8)
        ax.set_xlabel("ratio (dot: median, line: min–max over runs, bar: target); log scale", fontsize=8)
        ax.set_title("Every targeted ratio against its target (green: PASS, red: MISS)", fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / "ratios.png", dpi=110)
        plt.close(fig)


METHOD = """\
- A private copy of {server} with the
  **release** build of secretgate installed into it; one throwaway cluster run by the `postgres` OS user on
  127.0.0.1:{port}, `shared_preload_libraries = {preload}`, a freshly generated 0600 keyring; torn down at
  the end. Server settings: `shared_buffers = 1GB`, `synchronous_commit = off` (measures CPU cost, not the
  VM's fsync), `autovacuum = off` (explicit `VACUUM ANALYZE` after loading), `jit = off`,
  `max_parallel_workers_per_gather = 0` (every query on one core).
- Bulk and decrypt figures are the server backend's CPU time for the statement (`/proc/<pid>/schedstat`,
  nanoseconds on CPU), which other processes on the shared machine do not inflate; wall times are in
  `report.json`. pgbench figures are wall-clock latencies.
- Each comparison measures the subject and its peer **in the same run**: pgbench scripts mixed in one run
  (`-M prepared`, equal weights, per-transaction log `-l`, latency per script), or the two statements
  alternated in rotating order. {runs} runs per figure ({duration} s per pgbench run, after a 2 s warm-up
  run); a figure is the median over runs of the per-run median latency (or time per row), with min–max
  over runs; the ratio is computed per run, and its median is compared with the target.
- pgbench connects as `bench_app` (not a superuser). `secretgate.caller` is set per connection
  (`PGOPTIONS`): `agent` for the writes (the full self-write gate: workspace kind lookup, forbidden keys),
  unset for register, BYOK-create and the bulk loads (an operator or migration).
- Workspace *n* has id `lpad(to_hex(n), 32, '0')::uuid`; ciphertext filler and test values are generated
  in SQL, never real secrets.
- The machine is shared with other work (2 cores): the load average before and after is recorded above;
  pgbench itself shares the cores with the server.
"""

DETAILS = {
    "write_tax": "`bench/pgbench/insert_gated.sql` vs `insert_plain.sql`: the same INSERT into "
                 "`public.workspace_secrets` (attached, gates + FK) and `public.plain_secrets` (same columns, "
                 "same primary key and FK, no triggers), agent caller, random workspace of 1,000, fresh key; "
                 "mixed in the same run, `insert_trigger_floor.sql` into a third copy with one empty PL/pgSQL "
                 "BEFORE ROW trigger, for context. Then, as CPU per row without per-statement costs or latency "
                 "rounding, an agent's multi-row `INSERT … SELECT` (the bulk statement) into each of the three.",
    "bulk": "`INSERT … SELECT` of {rows} rows from `generate_series` (1,000 workspaces), into an empty table "
            "(TRUNCATE + CHECKPOINT before each), three variants rotated: the migration schema (gates + FK), "
            "a copy with only the FK (database `bulk`), and a gated table without the FK (database `bulk_nofk`).",
    "decrypt": "`bench/sql/decrypt.sql`: {rows} rows, plaintext 64 ASCII bytes; one aggregate query per "
               "function over the whole table (`sum(octet_length(f(…)))`: `length` of a text would count its "
               "characters, which `length` of `decrypt_iv`'s bytea does not), rotated; `pgp_sym_decrypt` over the first "
               "{pgp} rows. Floor: `core/benches/decrypt.rs` (Criterion, `Keyring::decrypt` of the same "
               "shape: 64-byte plaintext, workspace scope, associated data, UTF-8 check).",
    "plpgsql": "`bench/plpgsql_gates.sql`: the same gates written in PL/pgSQL on `sgref.*` (same tables, same "
               "triggers, same registry), vs secretgate on `public.*`, scripts mixed in one run.",
    "history": "As the superuser: one statement overwriting 10,000 secrets (1,000 workspaces x 10 keys) "
               "with `set_secret`, `secretgate.history_keep` 10 against 0, alternated; one statement reading "
               "them with `read_secret`, `secretgate.audit_reads` all against off.",
    "refusal": "`refusal.sql` (an SG105 refusal of `set_global_secret`, caught in a `DO` block) and "
               "`refusal_peer.sql` (the same block raising an unaudited 22004), one client, in alternated runs; "
               "mean latency. Run it on two builds (`BENCH_REV`) to compare the audit queue with the log line "
               "alone.",
    "scale": "Databases `scale_small` ({small}) and `scale_large` ({large}), loaded with triggers off then "
             "gated; `scale_gate.sql` (an agent UPDATE of one secret through the gate) and `scale_read.sql` "
             "(`read_secret` of one secret) mixed in one run per database, the two databases alternated.",
    "peers": "`bench/sql/peers.sql`: secretgate and Supabase Vault in the same database `peers` of the same "
             "server (both preloaded), {peer_secrets} secrets in each with the same values (64 random hex "
             "characters; 20 per workspace); measured as `bench_app` with the grants each product documents for a "
             "service, secretgate's writes as an agent caller (every gate). Each operation is one statement per "
             "product calling it once per row, timed as the backend's CPU for the statement / rows, after a "
             "warm-up pass, the two products alternated in each run; details in the section on Vault below.",
}


def peers_table(figures):
    """operation | secretgate µs | Vault µs | ratio | target | met: the peers figures as one table."""
    by_id = {f["id"]: f for f in figures}
    lines = ["| operation | secretgate µs | Vault µs | ratio (secretgate / Vault) | target | |",
             "| --- | --- | --- | --- | --- | --- |"]
    for fid, operation in PEER_ROWS:
        f = by_id.get(fid)
        if f is None:
            continue
        s, p, r = f["subject_stats"], f["peer_stats"], f["ratio"]
        verdict = "–" if f["target"] is None else ("met" if f["pass"] else "**missed**")
        lines.append(f"| {operation} | {fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])}) "
                     f"| {fmt(p['median'])} ({fmt(p['min'])}–{fmt(p['max'])}) "
                     f"| {fmt(r['median'])} ({fmt(r['min'])}–{fmt(r['max'])}) "
                     f"| {'≤ ' + format(f['target'], '.2f') if f['target'] is not None else 'informational'} "
                     f"| {verdict} |")
    return lines


def peers_section(figures, info):
    v = info["versions"]
    n, w = PEER_SECRETS, PEER_WRITES
    lines = ["", "## Side by side with Supabase Vault", "",
             f"Server: {SERVER}. Supabase Vault {v.get('vault') or '?'} (its control file's "
             f"`default_version`), built from {v['vault_source']} with {v['sodium']}; secretgate `{v['secretgate']}`. "
             f"Both preloaded in the same server (`shared_preload_libraries = 'secretgate,supabase_vault'`, "
             f"`vault.getkey_script` a script printing a fresh random 64-hex-character root key), both in the same "
             f"database, {n:,} secrets in each holding the same values (64 random hex characters).", "",
             "Each figure: median over runs, min–max over runs in brackets, µs per call (per row for the scan and "
             "the write tax); the ratio is computed per run. The last row's Vault column is the unattached copy "
             "of secretgate's table (Vault has no gated table); its target is ≤ 1.10.", ""]
    lines += peers_table(figures)
    lines += ["", "How each figure is measured (backend CPU of the statement, `/proc/<pid>/schedstat`, divided by "
              f"the rows; wall-clock figures in each figure's note; {RUNS} runs, the products' order alternated "
              "run by run, after a warm-up pass of every statement):", "",
              f"- **point read**: `public.peer_picks` holds every secret once in random order ({n:,} rows); "
              f"secretgate `{PEER_SQL['read']['secretgate']}` vs Vault `{PEER_SQL['read']['vault']}` (the subquery "
              "runs once per row, an index scan of Vault's unique index on `name`). Each returns the secret's "
              "plaintext; before timing, every secret is checked to read back the same in both.",
              "- **point read, pgbench**: `bench/pgbench/peers_read_secretgate.sql` and `peers_read_vault.sql` "
              "(a random workspace and key, the name computed in SQL) mixed in one run, 1 client, `-M prepared`, "
              f"{DURATION} s per run: wall-clock latency with the client's round trip.",
              f"- **write, new name**: {w:,} calls in one statement, `{PEER_SQL['new']['secretgate'].format(limit='')}` "
              f"vs `{PEER_SQL['new']['vault'].format(limit='')}` (`public.peer_new`: {w:,} names neither product "
              "has); the new rows are deleted and both tables vacuumed between runs.",
              f"- **overwrite**: {w:,} different existing secrets, `set_secret` on an existing key vs "
              "`vault.update_secret(vault_id, new value)` (Vault overwrites by id; the ids were captured at load "
              "time), the value changed by every call; both tables vacuumed between runs.",
              f"- **bulk decrypt**: `{PEER_SQL['bulk']['secretgate']}` vs `{PEER_SQL['bulk']['vault']}`, {n:,} rows "
              "each.",
              f"- **write tax**: `{PEER_SQL['raw']['secretgate'].format(limit='')}` vs the same into "
              "`public.plain_secrets` (same columns, keys and foreign key, no triggers), both holding the same "
              f"{n:,} rows beforehand; the {n:,} rows inserted (secretgate's stored rows under new keys) are "
              "deleted and the tables vacuumed after each run.",
              "- secretgate's calls run as `bench_app` with `secretgate.caller = 'agent'` (the full self-write "
              "gate: the workspace's kind read, forbidden keys); Vault's as the same role, granted what a "
              "service is granted (usage on `vault`, its view, its functions).",
              "", "Plans of the read and scan statements (`EXPLAIN (COSTS OFF)`):", ""]
    for name, plan in PEERS.get("plans", {}).items():
        lines += [f"{name}:", "", "```", plan, "```", ""]
    return lines


def write_report(figures, selected, info, plans, path, plotdir, elapsed, loads):
    lines = ["# secretgate benchmark report", ""]
    command = "scripts/bench.sh" + ("" if MAJOR == "15" else f" --pg {MAJOR}") \
        + ("" if selected == COMPARISONS else " " + " ".join(selected))
    lines.append(f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}`"
                 + (" (quick mode: `BENCH_QUICK=1`)" if QUICK else "")
                 + f"; suite run time {elapsed / 60:.1f} min.")
    m, v = info["machine"], info["versions"]
    lines += ["", "## Machine", "",
              f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; kernel {m['kernel']} ({m['os']})",
              f"- load average before / after: {loads[0]} / {loads[1]}",
              "", "## Versions", "",
              f"- secretgate: `{v['secretgate']}` ({v['source']}), release build, pgrx {v['pgrx']}",
              f"- {v['postgres']}; {v['pgbench']}", f"- {v['rustc']}",
              f"- Python {v['python']}, psycopg {v['psycopg']}, matplotlib {v['matplotlib']}"]
    if v.get("vault"):
        lines.append(f"- Supabase Vault {v['vault']} (from its control file), built from {v['vault_source']}, "
                     f"with {v['sodium']}")
    lines += [
              "", "## Method", "", METHOD.format(port=PORT, runs=RUNS, duration=DURATION, server=SERVER,
                                          preload="'secretgate,supabase_vault'" if "peers" in selected else "'secretgate'"), ""]
    for name in selected:
        lines.append(f"- **{name}**: " + DETAILS[name].format(
            rows=f"{BULK_ROWS:,}" if name == "bulk" else f"{DECRYPT_ROWS:,}", pgp=f"{PGP_ROWS:,}",
            small=f"{SCALE['small'][0]:,} workspaces × {SCALE['small'][1]}",
            large=f"{SCALE['large'][0]:,} workspaces × {SCALE['large'][1]}", peer_secrets=f"{PEER_SECRETS:,}"))
    lines += ["", "## Results", "",
              "| figure | subject | peer | ratio (median, min–max) | target | |",
              "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        s, p, r = f["subject_stats"], f["peer_stats"], f["ratio"]
        verdict = "–" if f["target"] is None else ("PASS" if f["pass"] else "**MISS**")
        lines.append(
            f"| {f['title']} | {f['subject']}: {fmt(s['median'])} {f['unit']} ({fmt(s['min'])}–{fmt(s['max'])}) "
            f"| {f['peer']}: {fmt(p['median'])} {f['unit']} ({fmt(p['min'])}–{fmt(p['max'])}) "
            f"| {fmt(r['median'])} ({fmt(r['min'])}–{fmt(r['max'])}) "
            f"| {'≤ ' + str(f['target']) if f['target'] is not None else 'informational'} | {verdict} |")
    lines += ["", "Notes:", ""]
    for f in figures:
        if f["note"]:
            lines.append(f"- `{f['id']}`: {f['note']}.")
    if any(f["id"].startswith("peers_") for f in figures):
        lines += peers_section(figures, info)
    rel = os.path.relpath(plotdir, path.parent)
    lines += ["", "## Plots", "", f"![ratios]({rel}/ratios.png)", ""]
    for f in figures:
        lines.append(f"![{f['id']}]({rel}/{f['id']}.png)")
    if plans:
        lines += ["", "## Query plans the gates and read_secret use (auto_explain, 1,000,000 secrets)", "",
                  "One agent `UPDATE` of a secret and one `read_secret` in `scale_large`, with "
                  "`auto_explain.log_nested_statements` (every statement the gate runs through SPI). The "
                  "workspace's kind, which the gate reads for every agent write, has no plan here: it is read "
                  "without SQL, through the workspaces table's primary-key index or at the row's remembered "
                  "place (`src/index_read.rs`); the attached tables and forbidden keys are read once per "
                  "backend:", ""]
        for p in plans:
            lines += ["```", p.strip(), "```", ""]
    lines += ["", "## Raw runs", "", "```json",
              json.dumps({f["id"]: {"subject": f["subject_stats"]["runs"], "peer": f["peer_stats"]["runs"],
                                    "ratio": f["ratio"]["runs"]} for f in figures}, indent=1), "```", ""]
    path.write_text("\n".join(lines))


def main(argv):
    if argv[:1] == ["replot"]:  # re-render the plots of a report from its .json
        report = Path(argv[1]) if len(argv) > 1 else BENCH / "report.md"
        data = json.loads(report.with_suffix(".json").read_text())
        plots(data["figures"], BENCH / "plots" if report == BENCH / "report.md" else report.parent / f"plots-{report.stem[7:]}")
        return
    if argv[:1] == ["profile"]:
        name = argv[1] if len(argv) > 1 else "write_tax"
        db_for = {"bulk": "bulk", "decrypt": "decrypt", "scale_read": "scale", "scale_mix": "scale"}.get(name, "write_tax")
        # pg_stat_statements, profile only: what each nested SPI statement costs to plan and run.
        start_cluster("shared_preload_libraries = 'secretgate,pg_stat_statements'\n"
                      "pg_stat_statements.track = all\npg_stat_statements.track_planning = on\n")
        try:
            setup_databases([db_for])
            profile(name)
        finally:
            teardown()
        return
    selected = [a for a in argv if a != "all"] or list(COMPARISONS)
    for a in selected:
        if a not in COMPARISONS:
            sys.exit(f"unknown comparison {a!r}; choose from: all {' '.join(COMPARISONS)} | profile NAME")
    selected = [c for c in COMPARISONS if c in selected]
    if "peers" in selected and not VAULT_READY:
        if "peers" in argv:
            sys.exit("the peers comparison needs Supabase Vault built and installed: run it through scripts/bench.sh")
        log("Supabase Vault is not installed here: the peers comparison is left out")
        selected.remove("peers")
    sharedir = run([BIN / "pg_config", "--sharedir"]).stdout.strip()
    if "decrypt" in selected and not Path(sharedir, "extension", "pgcrypto.control").exists():
        sys.exit(f"the decrypt comparison needs pgcrypto, which PostgreSQL {MAJOR} here was built without; "
                 "choose from: write_tax bulk plpgsql scale")
    started = time.monotonic()
    loads = [" ".join(open("/proc/loadavg").read().split()[:3])]
    floor = None
    if "decrypt" in selected:
        log("Criterion: the in-process floor")
        floor = criterion_floor()
        log(f"floor: median {floor['median']:.1f} ns")
    info = {"machine": machine(), "versions": versions()}
    figures, plans = [], []
    start_cluster(vault="peers" in selected)
    try:
        setup_databases(selected)
        for name in selected:
            log(f"--- {name}")
            if name == "write_tax":
                figures += bench_write_tax()
            elif name == "bulk":
                figures += bench_bulk()
            elif name == "decrypt":
                figures += bench_decrypt(floor)
            elif name == "plpgsql":
                figures += bench_plpgsql()
            elif name == "scale":
                figures += bench_scale()
                plans = gate_plans()
            elif name == "refusal":
                figures += bench_refusal()
            elif name == "history":
                figures += bench_history()
            elif name == "peers":
                figures += bench_peers()
    finally:
        teardown()
    loads.append(" ".join(open("/proc/loadavg").read().split()[:3]))
    # bench/report.md is the 15 suite's; another major's report goes with the partial ones.
    full = selected == COMPARISONS and not QUICK and os.environ.get("BENCH_REPORT") != "results" and MAJOR == "15"
    if full:
        report, plotdir = BENCH / "report.md", BENCH / "plots"
    else:
        tag = ("" if MAJOR == "15" else f"pg{MAJOR}-") + "-".join(selected) + ("-quick" if QUICK else "")
        report = ROOT / "target" / "bench-results" / f"report-{tag}.md"
        plotdir = report.parent / f"plots-{tag}"
    report.parent.mkdir(parents=True, exist_ok=True)
    plots(figures, plotdir)
    elapsed = time.monotonic() - started
    write_report(figures, selected, info, plans, report, plotdir, elapsed, loads)
    (report.parent / (report.stem + ".json")).write_text(json.dumps({"figures": figures, "statements_wall_cpu": WALL}, indent=1))
    log(f"report: {report} ({elapsed / 60:.1f} min)")
    for f in figures:
        verdict = "–" if f["target"] is None else ("PASS" if f["pass"] else "MISS")
        print(f"{f['id']:22} ratio {fmt(f['ratio']['median']):>8} target {str(f['target']):>5} {verdict}")
    if "peers" in selected:
        print("\nSide by side with Supabase Vault (µs; median, min–max over runs):")
        print("\n".join(peers_table(figures)))


if __name__ == "__main__":
    main(sys.argv[1:])
