#!/usr/bin/env bash
# Checks the layer rule of extension/src/ (see extension/src/lib.rs): sql -> gates -> audit -> store -> pg.
# A module may use modules of its own layer or the layers below, never above,
# and no modules may use each other in a circle. Exits 1 on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys

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

# circles among modules
state = {}
def visit(m, trail):
    state[m] = 1
    for n in sorted(edges[m]):
        if state.get(n) == 1:
            bad.append("circle: " + " -> ".join(trail[trail.index(n):] + [n]))
        elif n not in state:
            visit(n, trail + [n])
    state[m] = 2
for m in sorted(modules):
    if m not in state:
        visit(m, [m])

if bad:
    print("check-layers: the layer rule is broken:")
    print("\n".join("  " + b for b in bad))
    sys.exit(1)
print(f"check-layers: {len(modules)} modules in {len(LAYERS)} layers, imports point down, no circle")
PY
