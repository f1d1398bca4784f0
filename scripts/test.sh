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
ensure_rabbitmq_files
ensure_postgres
ensure_browser

services_log "cargo test --workspace --locked $*"
# cargo prints one "test result:" line per test binary, the last often a crate's empty doc-tests;
# their sum goes last, in the same form, so the log ends with what the whole suite did.
output=$(mktemp)
trap 'rm -f "$output"' EXIT
cargo test --workspace --locked "$@" | tee "$output"
echo
awk '/^test result:/ { n += 1; p += $4; f += $6; i += $8; m += $10; x += $12 }
    END { printf "all %d test binaries together:\ntest result: %s. %d passed; %d failed; %d ignored; %d measured; %d filtered out\n",
        n, (f == 0 ? "ok" : "FAILED"), p, f, i, m, x }' "$output"
