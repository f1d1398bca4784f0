#!/usr/bin/env bash
# Generated clients work: the OpenAPI document a gateway serves validates with
# openapi-spec-validator (open and with keys on), openapi-python-client generates a client from
# it with its default settings, and that client submits a job and reads it back as succeeded
# against a real gateway and worker. Versions are pinned below; the tools go into a venv
# (target/client-venv).
#
# Needs RabbitMQ (WARREN_AMQP_URL) and python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

GENERATOR_VERSION=0.29.1
VALIDATOR_VERSION=0.7.2
RUFF_VERSION=0.17.6
VENV=${WARREN_CLIENT_VENV:-target/client-venv}
WORK=$(mktemp -d)

installed="$("$VENV/bin/openapi-python-client" --version 2>/dev/null || true) \
$("$VENV/bin/pip" show openapi-spec-validator 2>/dev/null || true) $("$VENV/bin/ruff" --version 2>/dev/null || true)"
if [[ $installed != *"version: $GENERATOR_VERSION"* || $installed != *"Version: $VALIDATOR_VERSION"* \
    || $installed != *"ruff $RUFF_VERSION"* ]]; then
    echo "== installing openapi-python-client $GENERATOR_VERSION and openapi-spec-validator $VALIDATOR_VERSION in $VENV"
    python3 -m venv "$VENV"
    # ruff is what the generator formats its output with by default.
    "$VENV/bin/pip" install --quiet "openapi-python-client==$GENERATOR_VERSION" \
        "openapi-spec-validator==$VALIDATOR_VERSION" "ruff==$RUFF_VERSION"
fi
cargo build --quiet --bin api-gateway --bin worker --bin warren-admin
VENV_BIN=$(cd "$VENV/bin" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
NAMESPACES=()
stop_processes() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_processes
    for namespace in "${NAMESPACES[@]}"; do
        WARREN_NAMESPACE=$namespace target/debug/warren-admin remove-namespace --force --types echo,sleep,fail,report.generate,user.get >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

export RUST_LOG=error,lapin=off
ADMIN_KEY="client-test-admin-key-$$-0123456789"
# Each mode gets a gateway and a worker in a namespace of its own: two in-memory gateways on
# one namespace would take each other's worker events.
start_stack() { # MODE PORT
    local namespace="client-test-$1-$$"
    NAMESPACES+=("$namespace")
    local keys=()
    [[ $1 == keys ]] && keys=(WARREN_ADMIN_KEY="$ADMIN_KEY")
    env WARREN_NAMESPACE="$namespace" WARREN_HTTP_ADDR="127.0.0.1:$2" "${keys[@]}" target/debug/api-gateway &
    PIDS+=($!)
    WARREN_NAMESPACE="$namespace" WARREN_METRICS_ADDR=127.0.0.1:0 target/debug/worker &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "FAIL: the $1 gateway never became ready"
    exit 1
}

for mode in open keys; do
    port=$(free_port)
    start_stack "$mode" "$port"
    echo "== $mode gateway: the served document validates"
    curl -sf "http://127.0.0.1:$port/openapi.json" >"$WORK/$mode.json"
    "$VENV/bin/openapi-spec-validator" "$WORK/$mode.json"
    echo "== $mode gateway: openapi-python-client generates a client (default settings)"
    # The generator formats its output with ruff, found on PATH.
    (cd "$WORK" && PATH="$VENV_BIN:$PATH" openapi-python-client generate --path "$mode.json" \
        --output-path "client-$mode" --meta none >"generate-$mode.log" 2>&1) || {
        cat "$WORK/generate-$mode.log"
        echo "FAIL: the generator refused the $mode document"
        exit 1
    }
    echo "== $mode gateway: the generated client submits a job and reads it back"
    (cd "$WORK" && mv "client-$mode" warren_client \
        && "$VENV_BIN/python" - "http://127.0.0.1:$port" "$mode" "$ADMIN_KEY" <<'PY'
import sys, time

from warren_client import AuthenticatedClient, Client
from warren_client.api.jobs import get_job, submit_job
from warren_client.models import SubmitRequest
from warren_client.models.job_status import JobStatus

base, mode, admin_key = sys.argv[1:4]
client = AuthenticatedClient(base_url=base, token=admin_key) if mode == "keys" else Client(base_url=base)
deadline = time.monotonic() + 30
body = SubmitRequest(type_="echo", payload={"from": "a generated client"})
while True:
    response = submit_job.sync_detailed(client=client, body=body)
    if response.status_code == 202:
        break
    # 422 until the worker has declared the echo queue.
    assert time.monotonic() < deadline, f"submit: {response.status_code} {response.content!r}"
    time.sleep(0.2)
job = response.parsed
while job.status != JobStatus.SUCCEEDED:
    assert time.monotonic() < deadline, f"job {job.id} is {job.status}"
    time.sleep(0.1)
    job = get_job.sync(id=str(job.id), client=client)
assert job.result == {"from": "a generated client"}, job.result
print(f"   ok: job {job.id} {job.status.value}, result {job.result}")
PY
    ) || { echo "FAIL: the generated client did not run a job on the $mode gateway"; exit 1; }
    rm -rf "$WORK/warren_client"
    stop_processes
done
echo "client test passed"
