#!/usr/bin/env bash
# Checks the layer rule of extension/src/ (see extension/src/lib.rs): sql -> gates -> audit -> store -> pg.
# A module may use modules of its own layer or the layers below, never above,
# and no modules may use each other in a circle.
# Checks cli/src/ too: main.rs, the crate root, is the top; no other module
# uses it (or an item defined in it), and no modules use each other in a circle.
# Exits 1 on a violation in either.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys

def circles(edges):
    """Every circle of `edges` (module -> modules it uses), as text."""
    found, state = [], {}
    def visit(m, trail):
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                found.append("circle: " + " -> ".join(trail[trail.index(n):] + [n]))
            elif n not in state:
                visit(n, trail + [n])
        state[m] = 2
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found

failed = False
def report(what, bad, ok):
    global failed
    if bad:
        print(f"check-layers: {what}the layer rule is broken:")
        print("\n".join("  " + b for b in bad))
        failed = True
    else:
        print(ok)

# The extension.
LAYERS = ["pg", "store", "audit", "gates", "sql"]  # bottom to top
modules = {}                                        # "gates::byok" -> path
for layer in LAYERS:
    for name in sorted(os.listdir(os.path.join("extension", "src", layer))):
        if name.endswith(".rs") and name != "mod.rs":
            modules[f"{layer}::{name[:-3]}"] = os.path.join("extension", "src", layer, name)

edges = {m: set() for m in modules}
bad = []
for module, path in modules.items():
    layer = module.split("::")[0]
    text = open(path).read()
    # crate::a::b, crate::a::{b, c}, super::b
    used = set()
    for a, rest in re.findall(r"crate::(\w+)::(\{[^}]*\}|\w+)", text):
        names = re.findall(r"\w+", rest) if rest.startswith("{") else [rest]
        for b in names:
            if f"{a}::{b}" in modules:
                used.add(f"{a}::{b}")
            elif a in LAYERS:
                used.add(f"{a}::*")
    for b in re.findall(r"super::(\w+)", text):
        if f"{layer}::{b}" in modules:
            used.add(f"{layer}::{b}")
    for target in used:
        tl = target.split("::")[0]
        if LAYERS.index(tl) > LAYERS.index(layer):
            bad.append(f"{path}: {layer} uses {target}, a layer above it")
        if target in modules and target != module:
            edges[module].add(target)

bad += circles(edges)
report("", bad, f"check-layers: {len(modules)} modules in {len(LAYERS)} layers, imports point down, no circle")

# The tool: every file (or folder) under cli/src is one module, named by its
# stem; `crate::x` names module x, and any other `crate::` name is an item of
# the crate root. Comment lines are skipped, so a doc comment may name a path.

ROOT = os.path.join("cli", "src")
TOP = "main"                                        # the crate root
files = {}                                          # module -> its files
for dirpath, _, names in os.walk(ROOT):
    for name in sorted(names):
        if name.endswith(".rs"):
            path = os.path.join(dirpath, name)
            module = os.path.relpath(path, ROOT).split(os.sep)[0].removesuffix(".rs")
            files.setdefault(module, []).append(path)

def braced(text, start):
    """The text inside the braces that open at text[start], nested braces kept."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    return text[start + 1:]

def top_level_names(inside):
    """`db, failure::{one_line, Failure}, self` -> ["db", "failure", "self"]."""
    names, depth, part = [], 0, ""
    for ch in inside + ",":
        if ch == "," and depth == 0:
            m = re.match(r"\s*(\w+)", part)
            if m:
                names.append(m.group(1))
            part = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        part += ch
    return names

edges = {m: set() for m in files}
bad = []
for module, paths in sorted(files.items()):
    for path in paths:
        code = "\n".join(l for l in open(path).read().splitlines() if not l.lstrip().startswith("//"))
        for m in re.finditer(r"\bcrate::", code):
            rest = m.end()
            if code[rest:rest + 1] == "{":
                names = top_level_names(braced(code, rest))
            else:
                names = re.findall(r"^\w+", code[rest:])
            for name in names:
                if name == "self":
                    continue
                target = name if name in files and name != TOP else TOP
                if target == TOP and module != TOP:
                    bad.append(f"{path}: {module} uses crate::{name} of the crate root (main.rs), the top")
                elif target != module:
                    edges[module].add(target)

bad += circles(edges)
report("cli/src: ", bad, f"check-layers: cli/src: {len(files)} modules under main.rs, none uses the crate root, no circle")
sys.exit(1 if failed else 0)
PY
