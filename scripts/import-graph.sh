#!/usr/bin/env bash
# Prints which of a crate's own top-level modules each top-level module uses (`use crate::…`,
# `crate::x::` paths; a module is `x.rs` or the directory `x/` with everything in it), and
# every import cycle among them. Exits 1 if there is a cycle, so CI can hold the layers to one
# direction. Usage: scripts/import-graph.sh [api-gateway/src worker/src shared/src ...]
set -euo pipefail
status=0
for dir in "${@:-api-gateway/src worker/src shared/src}"; do
    for root in $dir; do
        echo "== $root"
        python3 - "$root" <<'PY' || status=1
import pathlib, re, sys

root = pathlib.Path(sys.argv[1])
ROOTS = {"lib", "main"}


def sources(module):
    """The text of a top-level module: comments and `#[cfg(test)]` parts left out."""
    files = []
    if (root / f"{module}.rs").exists():
        files.append(root / f"{module}.rs")
    if (root / module).is_dir():
        files += sorted((root / module).rglob("*.rs"))
    texts = []
    for path in files:
        lines = [l for l in path.read_text().splitlines() if not l.strip().startswith("//")]
        texts.append("\n".join(lines).split("#[cfg(test)]")[0])
    return "\n".join(texts)


def first_segments(tree):
    """The first path segment of every item in a `use crate::<tree>` tree."""
    tree = tree.strip()
    if not tree.startswith("{"):
        match = re.match(r"[a-z_][a-z0-9_]*", tree)
        return {match.group(0)} if match else set()
    names, depth, start = set(), 0, True
    for index, char in enumerate(tree):
        if char == "{":
            depth += 1
            start = depth == 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 1:
            start = True
        elif start and depth == 1 and not char.isspace():
            match = re.match(r"[a-z_][a-z0-9_]*", tree[index:])
            if match:
                names.add(match.group(0))
            start = False
    return names


modules = sorted(
    {p.stem for p in root.glob("*.rs")} | {p.name for p in root.iterdir() if p.is_dir()}
)
modules = [m for m in modules if m not in ROOTS and m != "bin"]
graph = {}
for module in modules:
    text = sources(module)
    deps = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
    for tree in re.findall(r"use crate::(\{.*?\});", text, re.S):
        deps |= first_segments(tree)
    graph[module] = sorted(d for d in deps if d in modules and d != module)
for module, deps in graph.items():
    print(f"{module} -> {' '.join(deps)}")

# Every cycle, as the strongly connected components with more than one module (Tarjan).
index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]


def visit(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    on_stack.add(node)
    for nxt in graph[node]:
        if nxt not in index:
            visit(nxt)
            low[node] = min(low[node], low[nxt])
        elif nxt in on_stack:
            low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
        component = []
        while True:
            top = stack.pop()
            on_stack.discard(top)
            component.append(top)
            if top == node:
                break
        if len(component) > 1:
            components.append(sorted(component))


sys.setrecursionlimit(10_000)
for node in graph:
    if node not in index:
        visit(node)
if components:
    print("cycles:", "; ".join(" <-> ".join(c) for c in components))
    sys.exit(1)
print("cycles: none")
PY
    done
done
exit "$status"
