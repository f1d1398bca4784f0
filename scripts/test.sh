#!/usr/bin/env bash
# The README's test command: starts (or installs) what the suite needs, then runs it.
#
#   scripts/test.sh                      # every test of every crate
#   scripts/test.sh -p warren-gateway    # arguments go to `cargo test`
#
# Needs Rust (stable). RabbitMQ and PostgreSQL are started if installed, and installed with
# apt where run as root on Debian or Ubuntu; elsewhere it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

ensure_rabbitmq
ensure_postgres
ensure_browser

services_log "cargo test --workspace --locked $*"
# cargo prints one "test result:" line per test binary, the last often a crate's empty doc-tests;
# the sum goes last, as one line (and to $WARREN_TEST_SUMMARY when set: .ci/run repeats it at its end).
output=$(mktemp)
trap 'rm -f "$output"' EXIT
cargo test --workspace --locked "$@" | tee "$output"
summary=$(awk '/^test result:/ { p += $4; f += $6; s += $8 }
    END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$output")
echo "$summary"
if [[ -n ${WARREN_TEST_SUMMARY:-} ]]; then echo "$summary" > "$WARREN_TEST_SUMMARY"; fi
