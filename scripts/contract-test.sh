#!/usr/bin/env bash
# The contract test: schemathesis (pinned, in a venv) against a gateway and a worker built
# from this tree, once per store (memory, then PostgreSQL) and mode (open, then keys on: the
# document each gateway serves differs, and each must be true of its gateway). Settings:
# schemathesis.toml. Any finding, a gateway that is not ready afterwards, or a 5xx fails it.
#
#   scripts/contract-test.sh                   # both stores, both modes
#   scripts/contract-test.sh memory            # one store, both modes
#   scripts/contract-test.sh postgres:keys     # one store, one mode
#
# Needs RabbitMQ (WARREN_AMQP_URL), PostgreSQL (WARREN_CONTRACT_DATABASE_URL) and python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${WARREN_CONTRACT_VENV:-target/contract-venv}
DATABASE_URL=${WARREN_CONTRACT_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}
STORES=("${@:-memory postgres}")
read -r -a STORES <<< "${STORES[*]}"

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION in $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet --bin api-gateway --bin worker --bin warren-admin

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
NAMESPACE=""
SCHEMA=""
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    if [[ -n $NAMESPACE ]]; then
        WARREN_NAMESPACE=$NAMESPACE target/debug/warren-admin remove-namespace --force \
            --types echo,sleep,fail,report.generate,user.get >/dev/null || true
        NAMESPACE=""
    fi
    if [[ -n $SCHEMA ]]; then
        psql -q "$DATABASE_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null || true
        SCHEMA=""
    fi
}
trap cleanup EXIT

ADMIN_KEY="contract-test-admin-key-$$-0123456789"
RUNS=()
for run in "${STORES[@]}"; do
    case $run in
        *:*) RUNS+=("$run") ;;
        *) RUNS+=("$run:open" "$run:keys") ;;
    esac
done
for run in "${RUNS[@]}"; do
    store=${run%%:*}
    mode=${run#*:}
    echo "== contract test, $store store, $mode"
    NAMESPACE="contract-$store-$mode-$$"
    port=$(free_port)
    export WARREN_NAMESPACE=$NAMESPACE RUST_LOG=error,lapin=off
    gateway_env=(WARREN_HTTP_ADDR="127.0.0.1:$port"
        WARREN_WEBHOOK_SECRET="whsec_Y29udHJhY3QtdGVzdC1vbmx5LXNlY3JldC0xMjM0"
        WARREN_WEBHOOK_ALLOW_PRIVATE=true WARREN_WEBHOOK_TIMEOUT_MS=500
        # Long polls (`?wait=`, `Prefer: wait`) on jobs that never finish are cut to this,
        # as documented, so none outlasts schemathesis' request timeout.
        WARREN_MAX_WAIT_SECS=2)
    auth=()
    if [[ $mode == keys ]]; then
        # Keys on, as a production gateway runs: schemathesis sends the operator's key, and
        # checks that a missing or made-up key is refused with 401.
        gateway_env+=(WARREN_ADMIN_KEY="$ADMIN_KEY")
        auth=(--header "Authorization: Bearer $ADMIN_KEY")
    fi
    if [[ $store == postgres ]]; then
        SCHEMA="contract_${mode}_$$"
        psql -q "$DATABASE_URL" -c "CREATE SCHEMA $SCHEMA" >/dev/null
        gateway_env+=(WARREN_DATABASE_URL="$DATABASE_URL?options=-csearch_path%3D$SCHEMA")
    fi
    env "${gateway_env[@]}" target/debug/api-gateway &
    PIDS+=($!)
    WARREN_METRICS_ADDR=127.0.0.1:0 target/debug/worker &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "FAIL: the gateway never became ready"; exit 1; }
    started=$(date +%s)
    # Flow settings last: a generated PATCH may pause or cap the very types the other
    # operations need a worker for (`GET /users/{id}` would then rightly answer 504).
    "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --no-color \
        --wait-for-schema 10 --seed 1 --exclude-path '/v1/queues/{type}' "${auth[@]}"
    "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --no-color \
        --wait-for-schema 10 --seed 1 --include-path '/v1/queues/{type}' "${auth[@]}"
    echo "   schemathesis took $(( $(date +%s) - started )) s"
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "FAIL: the gateway is not ready after the run"; exit 1; }
    echo "   ok: the gateway is ready after the run"
    cleanup
done
echo "contract test passed"
