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
cargo test --workspace --locked "$@"
