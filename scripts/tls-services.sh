#!/usr/bin/env bash
# A RabbitMQ that speaks only AMQPS and a PostgreSQL that refuses unencrypted connections, both
# with certificates from a CA made here, beside the machine's own services, for the TLS tests
# and for trying TLS by hand. Uses Debian's rabbitmq-server and PostgreSQL and openssl; run as
# root.
#
#   scripts/tls-services.sh up      make the CA and certificates, start both
#   scripts/tls-services.sh down    stop both and delete everything
#
# Settings: WARREN_TLS_DIR (default /tmp/warren-tls), WARREN_TLS_AMQPS_PORT (default 5681),
# WARREN_TLS_PG_PORT (default 5442), WARREN_TLS_DIST_PORT (RabbitMQ's Erlang distribution port,
# default the AMQPS port + 20000), WARREN_TLS_NODE (RabbitMQ node name, default
# warrentls@localhost). WARREN_TLS_PLAIN_PORT, when set, also opens a plaintext AMQP listener
# there and lets PostgreSQL take unencrypted connections: the same servers with and without
# TLS, for measuring what TLS costs (BENCHMARKS.md). `up` prints the variables to use, e.g.:
#   WARREN_AMQP_URL=amqps://guest:guest@localhost:5681/%2f WARREN_TLS_CA_FILE=/tmp/warren-tls/ca.pem
#   WARREN_DATABASE_URL=postgresql://postgres@localhost:5442/postgres?sslmode=verify-full
# The server certificates name `localhost` only (not 127.0.0.1), so connecting by address shows
# a host-name refusal.
set -euo pipefail

dir=${WARREN_TLS_DIR:-/tmp/warren-tls}
amqps_port=${WARREN_TLS_AMQPS_PORT:-5681}
pg_port=${WARREN_TLS_PG_PORT:-5442}
dist_port=${WARREN_TLS_DIST_PORT:-$((amqps_port + 20000))}
node=${WARREN_TLS_NODE:-warrentls@localhost}
plain_port=${WARREN_TLS_PLAIN_PORT:-}

die() {
    echo "tls-services: $*" >&2
    exit 1
}

pg_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$found" ] || die "PostgreSQL's server binaries are not installed (apt-get install postgresql)"
    echo "$found"
}

make_certificates() {
    mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Warren test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
    # A second CA nobody trusts, for the refusal tests.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Untrusted CA" \
        -keyout "$dir/other-ca.key" -out "$dir/other-ca.pem" 2>/dev/null
    chmod 644 "$dir"/*.pem
}

start_postgres() {
    local bin data="$dir/pg"
    bin=$(pg_bin)
    mkdir -p "$data" "$dir/pgsock"
    touch "$dir/pg.log"
    cp "$dir/server.pem" "$dir/pg-server.pem"
    cp "$dir/server.key" "$dir/pg-server.key"
    chown -R postgres:postgres "$dir/pg" "$dir/pgsock" "$dir/pg.log" "$dir/pg-server.pem" "$dir/pg-server.key"
    chmod 600 "$dir/pg-server.key"
    su postgres -s /bin/sh -c "$bin/initdb -D '$data' -U postgres --auth=trust >/dev/null"
    cat >>"$data/postgresql.conf" <<EOF
port = $pg_port
listen_addresses = 'localhost'
unix_socket_directories = '$dir/pgsock'
ssl = on
ssl_cert_file = '$dir/pg-server.pem'
ssl_key_file = '$dir/pg-server.key'
EOF
    local nossl=reject
    [ -z "$plain_port" ] || nossl=trust
    cat >"$data/pg_hba.conf" <<EOF
hostssl all all 127.0.0.1/32 trust
hostssl all all ::1/128 trust
hostnossl all all 127.0.0.1/32 $nossl
hostnossl all all ::1/128 $nossl
local all all trust
EOF
    chmod 755 "$dir"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$data' -l '$dir/pg.log' -w start >/dev/null" \
        || die "PostgreSQL did not start on port $pg_port; its log ($dir/pg.log) ends:
$(tail -n 15 "$dir/pg.log" 2>/dev/null)"
}

start_rabbitmq() {
    local home="$dir/rabbit"
    mkdir -p "$home/mnesia" "$home/log"
    local tcp="listeners.tcp = none"
    [ -z "$plain_port" ] || tcp="listeners.tcp.default = 127.0.0.1:$plain_port"
    cat >"$home/rabbitmq.conf" <<EOF
$tcp
listeners.ssl.default = 127.0.0.1:$amqps_port
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/rabbit-server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
EOF
    cp "$dir/server.key" "$dir/rabbit-server.key"
    echo '[].' >"$home/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$home" "$dir/rabbit-server.key"
    (
        ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
        cd "$home"
        RABBITMQ_NODENAME=$node \
            RABBITMQ_DIST_PORT=$dist_port \
            RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" \
            RABBITMQ_MNESIA_BASE="$home/mnesia" \
            RABBITMQ_LOG_BASE="$home/log" \
            RABBITMQ_PID_FILE="$home/pid" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$home/enabled_plugins" \
            setpriv --reuid rabbitmq --regid rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
            /usr/lib/rabbitmq/bin/rabbitmq-server -detached
    )
    local deadline=$((SECONDS + 120))
    until rabbitmqctl -q -n "$node" await_startup >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "RabbitMQ node $node did not start on port $amqps_port; its log ($home/log) ends:
$(tail -n 15 "$home"/log/*.log 2>/dev/null)"
        sleep 1
    done
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root (it starts servers as the postgres and rabbitmq users)"
    command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed"
    down >/dev/null 2>&1 || true
    make_certificates
    start_postgres
    start_rabbitmq
    echo "WARREN_AMQP_URL=amqps://guest:guest@localhost:$amqps_port/%2f"
    echo "WARREN_TLS_CA_FILE=$dir/ca.pem"
    echo "WARREN_DATABASE_URL=postgresql://postgres@localhost:$pg_port/postgres?sslmode=verify-full"
}

down() {
    if [ -d "$dir/rabbit" ]; then
        rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
        if [ -f "$dir/rabbit/pid" ]; then
            kill -9 "$(cat "$dir/rabbit/pid")" 2>/dev/null || true
        fi
    fi
    if [ -d "$dir/pg" ]; then
        su postgres -s /bin/sh -c "$(pg_bin)/pg_ctl -D '$dir/pg' -m immediate stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    *) die "usage: $0 up|down" ;;
esac
