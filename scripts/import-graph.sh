#!/usr/bin/env bash
# Prints which of a crate's own modules each module uses (`use crate::…`, `crate::x::` paths),
# and any cycle between two modules. Usage: scripts/import-graph.sh worker/src [shared/src ...]
set -euo pipefail
for dir in "${@:-worker/src}"; do
    echo "== $dir"
    python3 - "$dir" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
mods = {}
for path in sorted(root.glob("*.rs")):
    name = path.stem
    text = "\n".join(l for l in path.read_text().splitlines() if not l.strip().startswith("//"))
    text = text.split("#[cfg(test)]")[0]
    deps = set(re.findall(r"crate::([a-z_]+)", text))
    for group in re.findall(r"use crate::\{(.*?)\};", text, re.S):
        deps |= set(re.findall(r"(?:^|[,{\s])([a-z_]+)(?=::|\s*[,}]|$)", group))
    known = {p.stem for p in root.glob("*.rs")} | {p.name for p in root.iterdir() if p.is_dir()}
    mods[name] = sorted(d for d in deps if d in known and d != name)
for name, deps in mods.items():
    print(f"{name} -> {' '.join(deps)}")
cycles = {tuple(sorted((a, b))) for a, ds in mods.items() for b in ds if a in mods.get(b, [])}
print("cycles:", ", ".join(f"{a} <-> {b}" for a, b in sorted(cycles)) or "none")
PY
done
