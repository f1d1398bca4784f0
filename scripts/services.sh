#!/usr/bin/env bash
# What the tests and a local run need on this machine, started (or installed) if missing:
# RabbitMQ on 127.0.0.1:5672 (for the tests, with enough open files), PostgreSQL on 127.0.0.1:5432 with a `test` database, and
# Chromium's driver for the dashboard's browser test. Sourced by scripts/test.sh,
# scripts/run-local.sh and .ci/run; installing needs root and apt (Debian, Ubuntu), and where
# either is missing it says exactly what to install instead.

services_log() { printf '\n== %s\n' "$*"; }

port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || {
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
    }
}

# Starts the broker with a high open-files limit: RabbitMQ's production checklist asks for at
# least 65536, and with 1024 it wedges at a few hundred quorum queues. As root,
# `rabbitmq-server` goes through `su`, which resets the limit, so it is started as the rabbitmq
# user directly.
start_rabbitmq() {
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 \
        && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        (
            cd /var/lib/rabbitmq
            ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
            setpriv --reuid rabbitmq --regid rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
                /usr/lib/rabbitmq/bin/rabbitmq-server -detached
        ) || true
    else
        (ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; rabbitmq-server -detached) || true
    fi
}

ensure_rabbitmq() {
    if port_open 5672; then
        return
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if ! can_install; then
            echo "No RabbitMQ answers on 127.0.0.1:5672 and this script cannot install one (it needs" >&2
            echo "root and apt). Install RabbitMQ 3.10 or newer (Debian/Ubuntu: sudo apt-get install" >&2
            echo "rabbitmq-server; macOS: brew install rabbitmq) and start it, or run" >&2
            echo "'docker compose up rabbitmq', then run this again." >&2
            exit 1
        fi
        services_log "installing RabbitMQ"
        apt_install rabbitmq-server
    fi
    services_log "starting RabbitMQ"
    start_rabbitmq
    for _ in $(seq 1 90); do
        if port_open 5672; then
            # The port opens a little before the broker accepts work.
            timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not open 127.0.0.1:5672 within 90 s; see /var/log/rabbitmq/" >&2
    exit 1
}

# The open files the local RabbitMQ may use, as its file handle cache counts them (0 when it
# cannot be asked).
rabbitmq_file_limit() {
    timeout 30 rabbitmqctl -q eval \
        'proplists:get_value(total_limit, file_handle_cache:info([total_limit])).' 2>/dev/null \
        | tr -dc '0-9' || true
}

# A RabbitMQ started through `su` (what `rabbitmq-server -detached` does as root) gets 1024
# open files whatever the caller's ulimit, and stops accepting connections at about 300 quorum
# queues, which the test suite and the contract test go past: their clients then hang. As
# root, restart such a broker with more (`start_rabbitmq`); otherwise say what to do.
ensure_rabbitmq_files() {
    local limit
    limit=$(rabbitmq_file_limit)
    if [ -z "$limit" ] || [ "$limit" -ge 10000 ]; then
        return
    fi
    if [ "$(id -u)" != 0 ] || ! command -v rabbitmqctl >/dev/null 2>&1; then
        echo "RabbitMQ may use only $limit open files and stops accepting connections at about" >&2
        echo "300 quorum queues; restart it with a higher 'ulimit -n' (e.g. 65536)." >&2
        return
    fi
    services_log "restarting RabbitMQ with more open files (it had $limit)"
    # A broker out of file handles may not answer `stop`: then its VM is killed (its queues are
    # on disk, and the tests make their own).
    timeout 60 rabbitmqctl stop >/dev/null 2>&1 || pkill -KILL -u rabbitmq -f beam.smp || true
    for _ in $(seq 1 30); do
        port_open 5672 || break
        sleep 1
    done
    start_rabbitmq
    for _ in $(seq 1 90); do
        if port_open 5672; then
            timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
            echo "RabbitMQ may now use $(rabbitmq_file_limit) open files"
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not come back on 127.0.0.1:5672 within 90 s; see /var/log/rabbitmq/" >&2
    exit 1
}

TEST_DATABASE_URL=${WARREN_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}

ensure_postgres() {
    if ! command -v psql >/dev/null 2>&1 && can_install; then
        apt_install postgresql-client
    fi
    if ! port_open 5432; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            if ! can_install; then
                echo "No PostgreSQL answers on 127.0.0.1:5432 and this script cannot install one" >&2
                echo "(it needs root and apt). Install PostgreSQL 13 or newer, let user postgres in" >&2
                echo "from 127.0.0.1 without a password and create a database named test, or set" >&2
                echo "WARREN_TEST_DATABASE_URL to one you have." >&2
                exit 1
            fi
            services_log "installing PostgreSQL"
            apt_install postgresql
        fi
        services_log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
        for _ in $(seq 1 60); do
            port_open 5432 && break
            sleep 1
        done
    fi
    if ! psql "$TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1 && can_install; then
        # A fresh cluster: let loopback connections in without a password and create the
        # test database.
        services_log "preparing the test database"
        local version hba
        version=$(ls /etc/postgresql | head -1)
        hba=/etc/postgresql/$version/main/pg_hba.conf
        if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
            pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
        fi
        su postgres -c "createdb test" 2>/dev/null || true
    fi
    psql "$TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null || {
        echo "PostgreSQL is not usable at $TEST_DATABASE_URL" >&2
        exit 1
    }
}

ensure_browser() {
    # The dashboard's browser test drives headless Chromium through chromedriver (without it
    # the test says so and skips, unless WARREN_REQUIRE_BROWSER=1).
    if [ -x /usr/bin/chromedriver ] || [ -x /usr/lib/chromium/chromedriver ]; then
        return
    fi
    if can_install; then
        services_log "installing Chromium and chromedriver (the dashboard's browser test)"
        apt_install chromium chromium-driver
    fi
}
