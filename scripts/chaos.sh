#!/usr/bin/env bash
# Chaos check: submit JOBS jobs while killing (-9) and restarting workers at random and
# restarting RabbitMQ once, then check that every accepted job reached a terminal status.
#
#   scripts/chaos.sh [JOBS]        (default 2000; needs a local RabbitMQ and rabbitmqctl)
#
# It restarts the RabbitMQ application on this machine (rabbitmqctl stop_app/start_app):
# do not run it against a broker others are using. Exits non-zero if any accepted job is lost.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${1:-2000}
WORKERS=3
PORT=18090
export WARREN_NAMESPACE="chaos-$$"
export WARREN_HTTP_ADDR="127.0.0.1:$PORT"
export WARREN_SHUTDOWN_GRACE_SECS=2
export RUST_LOG=${RUST_LOG:-warn}
BASE="http://127.0.0.1:$PORT"
WORK=$(mktemp -d)
echo "namespace $WARREN_NAMESPACE, scratch $WORK"

cargo build --release --quiet --bin api-gateway --bin worker

./target/release/api-gateway >"$WORK/gateway.log" 2>&1 &
GATEWAY=$!
declare -a WORKER_PIDS=()
start_worker() {
    local port=$((PORT + 1 + RANDOM % 500))
    WARREN_METRICS_ADDR="127.0.0.1:$port" ./target/release/worker >>"$WORK/workers.log" 2>&1 &
    WORKER_PIDS+=($!)
}
cleanup() {
    kill -TERM "$GATEWAY" "${WORKER_PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    # Remove this run's queues (best effort; exchanges are cheap and left alone).
    rabbitmqctl list_queues -q name 2>/dev/null | grep "^$WARREN_NAMESPACE\." |
        while read -r queue; do rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
for _ in $(seq "$WORKERS"); do start_worker; done
until curl -sf "$BASE/readyz" >/dev/null; do sleep 0.2; done
# The job queues exist once a worker has declared them.
until curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/v1/jobs" -H 'content-type: application/json' \
    -d '{"type":"echo"}' | grep -q 202; do sleep 0.2; done

# Prints one line "<http status> <job id>", written at once so parallel submits never mix.
submit() {
    local i=$1 body out id
    if ((i % 2)); then body='{"type":"echo","payload":{"i":'"$i"'}}'
    else body='{"type":"sleep","payload":{"ms":'"$((RANDOM % 200))"'}}'; fi
    out=$(curl -s -m 10 -X POST "$BASE/v1/jobs" -H 'content-type: application/json' -d "$body" \
        -w ' %{http_code}') || out=" 000"
    id=$(sed -nE 's/.*"id":"([^"]+)".*/\1/p' <<<"$out")
    printf '%s %s\n' "${out##* }" "${id:--}"
}
export -f submit
export BASE

echo "submitting $JOBS jobs with chaos..."
seq "$JOBS" | xargs -P 8 -I{} bash -c 'submit {}' >>"$WORK/submits.txt" &
SUBMITTER=$!

restarted=0
kills=0
while kill -0 "$SUBMITTER" 2>/dev/null; do
    sleep "0.$((RANDOM % 9 + 1))"
    victim=$((RANDOM % ${#WORKER_PIDS[@]}))
    kill -9 "${WORKER_PIDS[$victim]}" 2>/dev/null || true
    unset 'WORKER_PIDS[victim]'
    WORKER_PIDS=("${WORKER_PIDS[@]}")
    kills=$((kills + 1))
    start_worker
    if ((restarted == 0 && kills == 5)); then
        echo "restarting RabbitMQ..."
        rabbitmqctl stop_app >/dev/null && rabbitmqctl start_app >/dev/null
        restarted=1
    fi
done
wait "$SUBMITTER" || true

awk '$1 == 202 { print $2 }' "$WORK/submits.txt" >"$WORK/ids.txt"
accepted=$(wc -l <"$WORK/ids.txt")
refused=$(awk '$1 != 202' "$WORK/submits.txt" | wc -l)
echo "accepted $accepted, refused $refused (503 while the broker was down), workers killed $kills, RabbitMQ restarted $restarted time(s)"

echo "waiting for every accepted job to finish..."
deadline=$((SECONDS + 300))
pending=$accepted
while ((SECONDS < deadline)); do
    : >"$WORK/statuses.txt"
    while read -r id; do
        curl -s -w '\n' "$BASE/v1/jobs/$id" | sed -nE 's/.*"status":"([a-z]+)".*/\1/p' >>"$WORK/statuses.txt"
    done <"$WORK/ids.txt"
    pending=$(grep -cvE '^(succeeded|failed|cancelled)$' "$WORK/statuses.txt" || true)
    ((pending == 0)) && break
    echo "  $pending not finished yet"
    sleep 2
done
echo "final: $(sort "$WORK/statuses.txt" | uniq -c | tr '\n' ' ')"
checked=$(wc -l <"$WORK/statuses.txt")
if ((checked != accepted)); then
    echo "could read only $checked of $accepted accepted jobs" >&2
    exit 1
fi
if ((pending > 0)); then
    echo "LOST: $pending accepted jobs never finished" >&2
    exit 1
fi
echo "OK: all $accepted accepted jobs are terminal; none lost"
