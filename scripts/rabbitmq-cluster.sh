#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster beside an existing broker, for tests and for trying a node
# loss by hand. Uses Debian's rabbitmq-server; each node has its own name (warren1@localhost,
# ...), AMQP port (5701, 5702, 5703 by default), distribution port, data and log directories
# (owned by the rabbitmq user), and no plugins, so nothing clashes with the broker on 5672.
#
#   scripts/rabbitmq-cluster.sh up          start the three nodes and cluster them
#   scripts/rabbitmq-cluster.sh kill N      kill -9 node N (1, 2 or 3)
#   scripts/rabbitmq-cluster.sh start N     start node N again (it rejoins the cluster)
#   scripts/rabbitmq-cluster.sh status      cluster status, as node 1 sees it
#   scripts/rabbitmq-cluster.sh queues N    the queues as node N sees them: name, type, durable,
#                                           ready, unacked, consumers (tab-separated)
#   scripts/rabbitmq-cluster.sh urls        the WARREN_AMQP_URL for all three nodes
#   scripts/rabbitmq-cluster.sh down        stop the nodes and delete their data
#
# Settings: WARREN_CLUSTER_DIR (default /tmp/warren-rabbitmq-cluster), WARREN_CLUSTER_PORT
# (first AMQP port, default 5701; each node's Erlang distribution port is its AMQP port +
# 20000), WARREN_CLUSTER_NAME (node name prefix, default warren), so a test's cluster and
# one started by hand do not meet. Run as root.
set -euo pipefail

dir=${WARREN_CLUSTER_DIR:-/tmp/warren-rabbitmq-cluster}
first_port=${WARREN_CLUSTER_PORT:-5701}
prefix=${WARREN_CLUSTER_NAME:-warren}
nodes=(1 2 3)

die() {
    echo "rabbitmq-cluster: $*" >&2
    exit 1
}

command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
id rabbitmq >/dev/null 2>&1 || die "there is no rabbitmq user (install Debian's rabbitmq-server)"

name() { echo "$prefix$1@localhost"; }
port() { echo $((first_port + $1 - 1)); }

ctl() { # NODE ARGS...
    local node=$1
    shift
    rabbitmqctl -q -n "$(name "$node")" "$@"
}

start_node() {
    local n=$1 home="$dir/$1"
    mkdir -p "$home/mnesia" "$home/log"
    printf 'listeners.tcp.local = 127.0.0.1:%s\nconsumer_timeout = 1800000\n' "$(port "$n")" >"$home/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
    # The production checklist asks for 65536 open files; take what this machine allows.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    RABBITMQ_NODENAME=$(name "$n") \
        RABBITMQ_NODE_PORT=$(port "$n") \
        RABBITMQ_DIST_PORT=$(($(port "$n") + 20000)) \
        RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" \
        RABBITMQ_MNESIA_BASE="$home/mnesia" \
        RABBITMQ_LOG_BASE="$home/log" \
        RABBITMQ_PID_FILE="$home/pid" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        rabbitmq-server -detached
    # await_startup fails at once until the node has registered; try until it answers.
    local deadline=$((SECONDS + 120))
    until ctl "$n" await_startup >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "node $(name "$n") did not start within 120 s; see $home/log"
        sleep 1
    done
}

kill_node() {
    local n=$1 pid
    pid=$(cat "$dir/$n/pid" 2>/dev/null || true)
    [ -n "$pid" ] || pid=$(ctl "$n" eval 'os:getpid().' | tr -d '"')
    [ -n "$pid" ] || die "cannot find the process of node $n"
    kill -9 "$pid"
    echo "killed $(name "$n") (pid $pid)"
}

case ${1:-} in
up)
    [ ! -d "$dir" ] || die "$dir exists: run '$0 down' first"
    for n in "${nodes[@]}"; do
        start_node "$n"
        if [ "$n" != 1 ]; then
            ctl "$n" stop_app
            ctl "$n" reset
            ctl "$n" join_cluster "$(name 1)"
            ctl "$n" start_app
        fi
        echo "node $(name "$n") up on 127.0.0.1:$(port "$n")"
    done
    echo "WARREN_AMQP_URL=$("$0" urls)"
    ;;
kill)
    [[ ${2:-} =~ ^[123]$ ]] || die "usage: $0 kill 1|2|3"
    kill_node "$2"
    ;;
start)
    [[ ${2:-} =~ ^[123]$ ]] || die "usage: $0 start 1|2|3"
    start_node "$2"
    echo "node $(name "$2") up again on 127.0.0.1:$(port "$2")"
    ;;
status)
    ctl 1 cluster_status
    ;;
queues)
    [[ ${2:-} =~ ^[123]$ ]] || die "usage: $0 queues 1|2|3"
    ctl "$2" list_queues --no-table-headers name type durable messages_ready \
        messages_unacknowledged consumers
    ;;
urls)
    urls=()
    for n in "${nodes[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f")
    done
    (IFS=,; echo "${urls[*]}")
    ;;
down)
    for n in "${nodes[@]}"; do
        if [ -f "$dir/$n/pid" ]; then
            kill -9 "$(cat "$dir/$n/pid")" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
    echo "cluster removed"
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
