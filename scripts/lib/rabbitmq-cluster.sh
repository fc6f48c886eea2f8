#!/usr/bin/env bash
# A RabbitMQ cluster of N nodes on this machine, for run.sh
# (RABBITMQ_NODES=3) and the fault-injection suite's cluster row. Each node
# is a RabbitMQ of its own (Debian's rabbitmq-server, run as the rabbitmq
# user, so they share its Erlang cookie) with its own node name, ports and
# data directory; the second and later nodes join the first.
#
#   rabbitmq-cluster.sh start NAME BASE_PORT N   start N nodes and cluster them
#   rabbitmq-cluster.sh kill NAME I              SIGKILL node I (1..N)
#   rabbitmq-cluster.sh restart NAME BASE_PORT I start node I again: it rejoins
#   rabbitmq-cluster.sh status NAME              the first node's cluster_status
#   rabbitmq-cluster.sh running NAME I           how many nodes node I sees running
#   rabbitmq-cluster.sh stop NAME N              stop every node, the first last
#   rabbitmq-cluster.sh destroy NAME N           stop every node, delete the data
#
# A cluster stopped with its data starts again with it: its nodes boot
# together, since each waits for the others it last saw running.
#
# Node I is NAME-I@<short hostname>, with AMQP on BASE_PORT+I-1 and, as
# RabbitMQ numbers them by default, its management API 10000 and its
# inter-node port 20000 above that. Data and logs live in
# /var/lib/rabbitmq/clusters/NAME/ (the rabbitmq user's own directory: a
# checkout under a private home may be out of its reach).
set -euo pipefail

HOST=$(hostname -s)
BASE_DIR=/var/lib/rabbitmq/clusters

say() { printf '    %s\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
node() { echo "$1-$2@$HOST"; }
ctl() { as_root timeout 120 rabbitmqctl "$@"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_node NAME BASE_PORT I: starts node I in the background.
start_node() {
  local name=$1 base=$2 i=$3
  local dir="$BASE_DIR/$name" port=$(($2 + $3 - 1))
  local node_dir="$dir/node-$i"
  port_open "$port" && die "port $port is taken: node $i of $name cannot listen there"
  as_root install -d -o rabbitmq -g rabbitmq "$dir" "$node_dir" "$node_dir/log"
  # Management on its usual offset. A node booting with no data of its own
  # finds the first node and joins it (the first finds only itself); one
  # that has data rejoins the cluster it knows.
  as_root tee "$node_dir/rabbitmq.conf" >/dev/null <<CONF
management.tcp.port = $((port + 10000))
management.tcp.ip = 127.0.0.1
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(node "$name" 1)
CONF
  # Half the cores' worth of schedulers each, as infra.sh gives the single
  # broker, and every file handle allowed (see start_rabbitmq there).
  as_root tee "$node_dir/rabbitmq-env.conf" >/dev/null <<ENV
ulimit -n "\$(ulimit -Hn)"
SERVER_ADDITIONAL_ERL_ARGS="+S $((($(nproc) + 1) / 2)):$((($(nproc) + 1) / 2))"
ENV
  as_root rabbitmq-plugins enable --offline rabbitmq_management >/dev/null 2>&1 || true
  (cd /var/lib/rabbitmq && as_root nohup env \
    RABBITMQ_CONF_ENV_FILE="$node_dir/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node "$name" "$i")" \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$((port + 20000))" \
    RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf" \
    RABBITMQ_MNESIA_BASE="$node_dir/mnesia" \
    RABBITMQ_LOG_BASE="$node_dir/log" \
    RABBITMQ_PID_FILE="$node_dir/pid" \
    rabbitmq-server &) >>"$node_dir/log/stdout.log" 2>&1 </dev/null
}

# wait_node NAME BASE_PORT I: until node I's application runs.
wait_node() {
  local name=$1 port=$(($2 + $3 - 1)) i=$3 waited=0
  until port_open "$port"; do
    ((waited < 180)) || die "node $i of $name did not listen on $port within 180 s (logs: $BASE_DIR/$name/node-$i/log/)"
    sleep 1
    waited=$((waited + 1))
    ((waited % 15)) || say "still waiting for $(node "$name" "$i") (${waited}s)"
  done
}

case ${1:-} in
  start)
    name=$2 base=$3 count=$4
    [[ $count =~ ^[1-9]$ ]] || die "the number of nodes must be 1 to 9, not '$count'"
    if as_root test -d "$BASE_DIR/$name/node-1/mnesia"; then
      # A cluster stopped before: every node at once.
      for i in $(seq 1 "$count"); do start_node "$name" "$base" "$i"; done
    else
      # A new one: the first node alone, then the others, which join it as
      # they boot.
      start_node "$name" "$base" 1
      wait_node "$name" "$base" 1
      for i in $(seq 2 "$count"); do start_node "$name" "$base" "$i"; done
    fi
    for i in $(seq 1 "$count"); do wait_node "$name" "$base" "$i"; done
    running=$(bash "$0" running "$name" 1)
    [ "$running" = "$count" ] || die "only $running of $count nodes of $name are in the cluster (logs: $BASE_DIR/$name/node-*/log/)"
    say "RabbitMQ cluster $name: $count nodes, AMQP on $base..$((base + count - 1)), management on $((base + 10000))..$((base + 10000 + count - 1)) (data and logs: $BASE_DIR/$name/)"
    ;;
  kill)
    name=$2 i=$3
    pid=$(as_root cat "$BASE_DIR/$name/node-$i/pid")
    as_root kill -KILL "$pid"
    # The node's Erlang port helpers go with it.
    while as_root kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    ;;
  restart)
    name=$2 base=$3 i=$4
    start_node "$name" "$base" "$i"
    wait_node "$name" "$base" "$i"
    ctl -n "$(node "$name" "$i")" await_startup >/dev/null
    ;;
  status)
    ctl -n "$(node "$2" 1)" cluster_status
    ;;
  running)
    ctl -n "$(node "$2" "$3")" eval 'length(rabbit_nodes:all_running()).'
    ;;
  stop | destroy)
    name=$2 count=$3
    for i in $(seq "$count" -1 1); do
      ctl -n "$(node "$name" "$i")" stop >/dev/null 2>&1 || true
    done
    if [ "$1" = destroy ]; then as_root rm -rf "${BASE_DIR:?}/$name"; fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 64
    ;;
esac
