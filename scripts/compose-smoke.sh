#!/usr/bin/env bash
# Smoke test of the compose stack, as a new user runs it: build the images, start RabbitMQ,
# PostgreSQL, the gateway and two workers, and check, in order:
#   1. the gateway becomes ready;
#   2. an echo job submitted over HTTP succeeds;
#   3. the article's flow: POST /generate-report -> /report-status -> the CSV;
#   4. the RabbitMQ management UI answers with the configured credentials (and refuses others);
#   5. scaled to 3 workers, the echo queue has 3 consumers;
#   6. after the stack is stopped and started again, the job is still there (PostgreSQL volume);
# then take everything down with its volumes (also on failure). Prints what it checked; exits
# non-zero at the first failure, saying which.
#
# Host ports default to compose's (8080, 5672, 15672, 15692); each one that is taken (e.g. by a
# local RabbitMQ) is moved to a free port. Needs Docker with Compose (v2 `docker compose` or
# v1 `docker-compose`), curl and jq.
#
#   scripts/compose-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
for tool in curl jq; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker info >/dev/null 2>&1 || fail "no Docker engine answers (is dockerd running?)"

project="warren-smoke-$$"
compose() { "${compose_cmd[@]}" -p "$project" "$@"; }

port_taken() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pick_port() { # VARIABLE DEFAULT
    local current=${!1:-$2}
    if port_taken "$current"; then
        current=$(free_port)
        echo "   port $2 is taken: $1=$current"
    fi
    export "$1=$current"
}

cleanup() {
    local status=$?
    step "taking the stack down with its volumes"
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    [ "$status" -eq 0 ] && printf '\nall compose smoke checks passed\n'
}
trap cleanup EXIT

step "host ports"
pick_port GATEWAY_PORT 8080
pick_port RABBITMQ_PORT 5672
pick_port RABBITMQ_UI_PORT 15672
pick_port RABBITMQ_METRICS_PORT 15692
gateway="http://127.0.0.1:$GATEWAY_PORT"
management="http://127.0.0.1:$RABBITMQ_UI_PORT"
user=${RABBITMQ_USER:-warren}
password=${RABBITMQ_PASSWORD:-warren-dev}
ok "gateway $GATEWAY_PORT, amqp $RABBITMQ_PORT, management $RABBITMQ_UI_PORT, metrics $RABBITMQ_METRICS_PORT"

step "open-files limit for RabbitMQ"
if [ -z "${RABBITMQ_NOFILE:-}" ]; then
    rabbit_image=$(grep -oE 'image: *rabbitmq\S*' docker-compose.yml | awk '{print $2}')
    engine_max=$(docker run --rm --entrypoint sh "$rabbit_image" -c 'ulimit -Hn' 2>/dev/null || echo unknown)
    if [[ "$engine_max" =~ ^[0-9]+$ ]] && [ "$engine_max" -lt 65536 ]; then
        echo "   WARNING: this Docker engine grants containers at most $engine_max open files, below"
        echo "   the 65536 RabbitMQ's production checklist asks for (raise dockerd's LimitNOFILE);"
        echo "   running with RABBITMQ_NOFILE=$engine_max"
        export RABBITMQ_NOFILE=$engine_max
    fi
fi
ok "RabbitMQ asks for ${RABBITMQ_NOFILE:-65536} open files"

step "building the images"
started=$SECONDS
compose build || fail "the images did not build"
ok "built in $((SECONDS - started)) s"

# Polls COMMAND until it succeeds or SECONDS_ pass.
wait_until() { # SECONDS_ DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
    ok "$what"
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$gateway/readyz")" = 200 ]; }

step "starting the stack"
started=$SECONDS
compose up -d || fail "docker compose up failed"
wait_until 180 "gateway ready after $((SECONDS - started)) s" ready ||
    fail "the gateway was not ready within 180 s: $(curl -s "$gateway/readyz"); see '${compose_cmd[*]} -p $project logs'"

limit=$(compose exec -T rabbitmq sh -c 'ulimit -n' | tr -d '\r') || fail "cannot read RabbitMQ's open-files limit"
[ "$limit" = "${RABBITMQ_NOFILE:-65536}" ] || fail "RabbitMQ runs with $limit open files, expected ${RABBITMQ_NOFILE:-65536}"
ok "RabbitMQ runs with $limit open files"

step "an echo job succeeds"
# A worker may still be declaring its queues when the gateway is ready (then: 422, no queue
# for the type), so the first submit is retried for a while.
submit_echo() {
    response=$(curl -s -w '\n%{http_code}' -X POST "$gateway/v1/jobs" \
        -H 'content-type: application/json' -d '{"type": "echo", "payload": {"smoke": true}}')
    code=${response##*$'\n'}
    body=${response%$'\n'*}
    [ "$code" = 202 ]
}
wait_until 60 "an echo job accepted" submit_echo ||
    fail "submitting an echo job failed: $code $body"
id=$(jq -r .id <<<"$body")
job_status() { curl -sf "$gateway/v1/jobs/$id?wait=10" | jq -r .status; }
status=$(job_status) || status=unreachable
[ "$status" = succeeded ] || fail "echo job $id ended $status, expected succeeded"
ok "job $id succeeded"

step "the article's report flow"
report=$(curl -sf -X POST "$gateway/generate-report" -H 'content-type: application/json' \
    -d '{"type": "monthly"}' | jq -r .jobId) || fail "POST /generate-report failed"
report_done() { [ "$(curl -sf "$gateway/report-status/$report" | jq -r .status)" = completed ]; }
wait_until 30 "report $report completed" report_done || fail "report $report did not complete within 30 s"
curl -sf "$gateway/reports/$report.csv" | head -1 | grep -q '^day,' || fail "the report is not a CSV"
ok "the CSV downloads"

step "the dashboard"
page=$(curl -sf "$gateway/ui") || fail "GET /ui failed"
grep -q 'src="/ui/app.js"' <<<"$page" || fail "/ui is not the dashboard"
grep -q "localhost:$RABBITMQ_UI_PORT/" <<<"$page" || fail "/ui does not link the management UI"
curl -sf "$gateway/ui/app.js" >/dev/null || fail "GET /ui/app.js failed"
[ "$(curl -sf "$gateway/v1/queues" | jq -r '.broker_answered')" = true ] ||
    fail "GET /v1/queues did not read RabbitMQ's numbers"
ok "/ui serves the dashboard (linking the management UI), /v1/queues reads the broker"

step "the RabbitMQ management UI"
code=$(curl -s -o /dev/null -w '%{http_code}' -u "$user:$password" "$management/api/overview")
[ "$code" = 200 ] || fail "the management API answered $code to the configured credentials"
code=$(curl -s -o /dev/null -w '%{http_code}' -u "$user:wrong" "$management/api/overview")
[ "$code" = 401 ] || fail "the management API answered $code to a wrong password"
ok "answers $user with the configured password, refuses a wrong one"

step "warren-admin (in the gateway image) refuses to remove the running namespace"
out=$(compose exec -T gateway warren-admin remove-namespace --management-url http://rabbitmq:15672 2>&1) &&
    fail "warren-admin removed the namespace of a running stack: $out"
grep -q "consumer(s)" <<<"$out" || fail "warren-admin failed for another reason: $out"
ok "refused, listing through the management API: ${out#warren-admin: }"

step "scaling to 3 workers"
compose up -d --no-recreate --scale worker=3 || fail "scaling to 3 workers failed"
consumers() { [ "$(curl -sf -u "$user:$password" "$management/api/queues/%2f/warren.jobs.echo" | jq .consumers)" = 3 ]; }
wait_until 90 "warren.jobs.echo has 3 consumers" consumers ||
    fail "warren.jobs.echo does not have 3 consumers after 90 s"

step "the job survives a restart of the stack"
compose stop || fail "docker compose stop failed"
compose up -d --no-recreate --scale worker=3 || fail "docker compose up after the stop failed"
wait_until 180 "gateway ready again" ready || fail "the gateway was not ready again within 180 s"
status=$(job_status) || status=unreachable
[ "$status" = succeeded ] || fail "after the restart, job $id is '$status', expected succeeded"
ok "job $id is still succeeded"
