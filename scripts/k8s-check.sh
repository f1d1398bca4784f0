#!/usr/bin/env bash
# Checks the Kubernetes manifests offline: renders deploy/kubernetes with `kubectl kustomize`,
# validates every object strictly against the schemas of a current Kubernetes (the pinned
# kubernetes-validate, in target/k8s-venv), the KEDA objects against KEDA's CRD schemas
# (../shared/kubernetes/keda-crds/, skipped and said so where that folder is absent), checks
# that every WARREN_* variable the manifests set is one the binaries read, and that each
# ScaledObject trigger names a queue Warren declares (`<WARREN_NAMESPACE>.jobs[-high|-low].<type>`, a type the
# worker handles), that containers run as non-root with requests, and that the worker's grace
# period outlasts its drain.
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.37.0
VENV=${WARREN_K8S_VENV:-target/k8s-venv}
CRDS=${WARREN_KEDA_CRDS:-../shared/kubernetes/keda-crds}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

command -v kubectl >/dev/null || { echo "kubectl is not installed (it renders the kustomization)"; exit 1; }
installed=$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null || true)
if [[ $installed != *"Version: $VALIDATE_VERSION"* ]]; then
    echo "== installing kubernetes-validate $VALIDATE_VERSION in $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kubernetes-validate==$VALIDATE_VERSION" pyyaml jsonschema
fi

echo "== kubectl kustomize deploy/kubernetes"
kubectl kustomize deploy/kubernetes >"$WORK/rendered.yaml"
grep -c '^kind:' "$WORK/rendered.yaml" | xargs echo "   objects:"

echo "== every object against Kubernetes $KUBERNETES_VERSION, strictly"
# KEDA's kinds are not Kubernetes' own: they are checked against KEDA's CRDs below.
status=0
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$WORK/rendered.yaml" \
    >"$WORK/validate.log" 2>&1 || status=$?
grep -v "Couldn't find schema for kind \(ScaledObject\|TriggerAuthentication\)" "$WORK/validate.log" \
    >"$WORK/findings.log" || true
if [ "$status" != 0 ] || [ -s "$WORK/findings.log" ]; then
    cat "$WORK/findings.log"
    echo "FAIL: the manifests do not validate against Kubernetes $KUBERNETES_VERSION"
    exit 1
fi
echo "   ok"

cargo build --quiet --bin api-gateway --bin worker
target/debug/api-gateway --help >"$WORK/variables"
target/debug/worker --help >>"$WORK/variables"

"$VENV/bin/python" - "$WORK/rendered.yaml" "$WORK/variables" "$CRDS" <<'PY'
import pathlib, re, sys

import jsonschema, yaml

rendered, variables, crds = sys.argv[1:4]
objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
failures = []

print("== KEDA objects against KEDA's CRDs")
crd_dir = pathlib.Path(crds)
if crd_dir.is_dir():
    schemas = {}
    for path in crd_dir.glob("*.yaml"):
        crd = yaml.safe_load(open(path))
        for version in crd["spec"]["versions"]:
            schemas[(crd["spec"]["names"]["kind"], version["name"])] = version["schema"]["openAPIV3Schema"]
    for o in objects:
        group, _, version = o["apiVersion"].partition("/")
        if group != "keda.sh":
            continue
        schema = schemas.get((o["kind"], version))
        if schema is None:
            failures.append(f"no CRD schema for {o['kind']} {o['apiVersion']}")
            continue
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(o))
        for error in errors:
            failures.append(f"{o['kind']}/{o['metadata']['name']}: {error.message} at {list(error.path)}")
        print(f"   {o['kind']}/{o['metadata']['name']}: {'ok' if not errors else 'INVALID'}")
else:
    print(f"   SKIPPED: {crds} is absent, so the KEDA objects were not checked against KEDA's CRDs")

print("== WARREN_* variables are ones the binaries read")
known = set(re.findall(r"WARREN_[A-Z0-9_]+", open(variables).read()))
text = open(rendered).read()
used = set(re.findall(r"\bWARREN_[A-Z0-9_]+", text))
unknown = sorted(used - known)
for name in unknown:
    failures.append(f"{name} is set in the manifests but neither binary reads it")
print(f"   {len(used)} used, {len(unknown)} unknown")

print("== ScaledObject queues follow the topology")
config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "warren-config")
namespace = config["data"].get("WARREN_NAMESPACE", "warren")
types = config["data"].get("WARREN_WORKER_TYPES")
handled = types.split(",") if types else ["echo", "sleep", "report.generate", "user.get"]
for o in objects:
    if o["kind"] != "ScaledObject":
        continue
    for trigger in o["spec"]["triggers"]:
        queue = trigger["metadata"].get("queueName", "")
        job_type = None
        for level in ("jobs", "jobs-high", "jobs-low"):
            if queue.startswith(f"{namespace}.{level}."):
                job_type = queue[len(f"{namespace}.{level}."):]
        if job_type not in handled or trigger["metadata"].get("mode") != "QueueLength":
            failures.append(f"trigger on {queue!r} is not a QueueLength trigger on {namespace}.jobs[-high|-low].<a type the worker handles: {handled}>")
        else:
            print(f"   {queue}: ok")

print("== containers: non-root, requests, grace period")
grace = int(config["data"].get("WARREN_SHUTDOWN_GRACE_SECS", "30"))
for o in objects:
    if o["kind"] not in ("Deployment", "Job", "CronJob"):
        continue
    pod = o["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        if not security.get("runAsNonRoot"):
            failures.append(f"{o['metadata']['name']}/{c['name']} may run as root")
        if not c.get("resources", {}).get("requests"):
            failures.append(f"{o['metadata']['name']}/{c['name']} sets no resource requests")
    if pod.get("terminationGracePeriodSeconds", 30) <= grace:
        failures.append(f"{o['metadata']['name']}: terminationGracePeriodSeconds is not longer than WARREN_SHUTDOWN_GRACE_SECS ({grace})")
print("   checked")

if failures:
    print("FAIL:")
    for failure in failures:
        print(f"   {failure}")
    sys.exit(1)
print("kubernetes manifests ok")
PY
