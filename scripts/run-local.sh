#!/usr/bin/env bash
# Runs Warren without Docker against a RabbitMQ on this machine: one api-gateway and one worker,
# both stopped together by Ctrl-C. Every WARREN_* variable set in the environment applies to both.
# When no RabbitMQ answers on 127.0.0.1:5672 (and WARREN_AMQP_URL is not set), it starts the
# installed one, installs one with apt where run as root, or says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
if [ -z "${WARREN_AMQP_URL:-}" ]; then
    ensure_rabbitmq
fi

cargo build --release --bin api-gateway --bin worker

./target/release/api-gateway &
gateway=$!
./target/release/worker &
worker=$!

stop() {
    kill -TERM "$gateway" "$worker" 2>/dev/null || true
    wait "$gateway" "$worker" 2>/dev/null || true
}
trap stop INT TERM EXIT
# Stop both as soon as either exits (e.g. a bad WARREN_* value).
wait -n "$gateway" "$worker"
