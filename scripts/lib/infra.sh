# Local infrastructure for run.sh, test.sh and bench.sh: installs what is
# missing and starts what is not already running. Sourced, not executed.
#
#   RabbitMQ   127.0.0.1:5672 (management UI on 15672), from apt; with
#              RABBITMQ_NODES=3, a cluster of three nodes on 5672-5674
#              (management on 15672-15674) with quorum queues
#   MongoDB    127.0.0.1:27017: a real `mongod` if installed, else secantusd-rs
#              (a MongoDB wire-compatible single-node server built with cargo;
#              the first build takes about 4 minutes)
#   MailDev    SMTP 127.0.0.1:1025, web UI and REST API on 1080, from npm
#
# A part that is already listening is reused and left running; a part this
# shell started is recorded in INFRA_STARTED and stopped by infra_down.

INFRA_ROOT="${INFRA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
RUN_DIR="${RUN_DIR:-$INFRA_ROOT/.run}"
LOG_DIR="$RUN_DIR/logs"
MONGO_PORT="${MONGO_PORT:-27017}"
SMTP_PORT="${SMTP_PORT:-1025}"
MAILDEV_WEB_PORT="${MAILDEV_WEB_PORT:-1080}"
SECANTUS_VERSION="0.5.3-beta.196"
# How long the database keeps a transaction nobody ends (its client was
# killed mid-transaction) before aborting it. Until then it holds the
# documents it wrote: a product every order reserves stops the saga. mongod's
# default, 60 s, equals the saga's deadline (SAGA_TIMEOUT_SECONDS), so one
# killed inventory instance could fail the orders queued behind its
# transaction; the services' transactions take milliseconds.
export TRANSACTION_LIFETIME_SECONDS=10
INFRA_STARTED=()

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for_port PORT NAME SECONDS LOGFILE [PID [HINT]]: fails early if PID
# dies; HINT is printed if it never listens.
wait_for_port() {
  local port=$1 name=$2 seconds=$3 log=$4 pid=${5:-} hint=${6:-} waited=0
  until port_open "$port"; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "---- last lines of $log ----" >&2
      tail -n 30 "$log" >&2 2>/dev/null
      fail "$name exited before listening on port $port (log: $log)"
    fi
    if (( waited >= seconds )); then
      echo "---- last lines of $log ----" >&2
      tail -n 30 "$log" >&2 2>/dev/null
      [ -z "$hint" ] || note "$hint" >&2
      fail "$name did not start listening on port $port within ${seconds}s (log: $log)"
    fi
    sleep 1
    waited=$((waited + 1))
    if (( waited % 10 == 0 )); then note "still waiting for $name (${waited}s)"; fi
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    fail "need root to run: $* (install it yourself, or run as root)"
  fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || fail "apt-get not found: install $* with your package manager"
  if [ -z "$APT_UPDATED" ]; then
    note "apt-get update"
    as_root apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || fail "apt-get update failed (see $LOG_DIR/apt.log)"
    APT_UPDATED=1
  fi
  note "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOG_DIR/apt.log" 2>&1 \
    || fail "apt-get install $* failed (see $LOG_DIR/apt.log)"
}

# secantusd-rs, the MongoDB-compatible server, unless it is installed.
install_secantus() {
  command -v secantusd-rs >/dev/null && return
  if ! command -v cmake >/dev/null || [ ! -f /usr/include/zlib.h ]; then apt_install cmake zlib1g-dev; fi
  note "cargo install secantus-mdb $SECANTUS_VERSION (about 4 minutes, once; log: $LOG_DIR/secantus-build.log)"
  cargo install secantus-mdb --version "$SECANTUS_VERSION" --ignore-rust-version --locked \
    >"$LOG_DIR/secantus-build.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/secantus-build.log" >&2; fail "building secantusd-rs failed"; }
}

install_missing() {
  mkdir -p "$LOG_DIR"
  step "Checking tools"
  command -v cargo >/dev/null || fail "cargo not found: install Rust (https://rustup.rs) first"
  if ! port_open 5672 && ! command -v rabbitmq-server >/dev/null; then
    apt_install rabbitmq-server
  fi
  if ! port_open "$MONGO_PORT" && ! command -v mongod >/dev/null; then
    install_secantus
  fi
  if ! port_open "$SMTP_PORT" && ! command -v maildev >/dev/null; then
    command -v npm >/dev/null || apt_install nodejs npm
    note "npm install -g maildev"
    as_root npm install -g maildev >"$LOG_DIR/npm.log" 2>&1 \
      || fail "npm install -g maildev failed (see $LOG_DIR/npm.log)"
  fi
  note "tools ready"
}

RABBITMQ_NODES="${RABBITMQ_NODES:-1}"
[[ $RABBITMQ_NODES =~ ^[1-9]$ ]] || fail "RABBITMQ_NODES must be a number from 1 to 9, not '$RABBITMQ_NODES'"
RABBITMQ_CLUSTER=orders

start_rabbitmq() {
  if ((RABBITMQ_NODES > 1)); then
    start_rabbitmq_cluster
    return
  fi
  if port_open 5672; then
    note "RabbitMQ already running on 5672: reusing it"
    return
  fi
  note "starting RabbitMQ (log: $LOG_DIR/rabbitmq.log)"
  as_root rabbitmq-plugins enable --offline rabbitmq_management >>"$LOG_DIR/rabbitmq.log" 2>&1 || true
  # RabbitMQ wants a file handle per queue at boot and crawls without them.
  # Debian's wrapper starts it through su, whose PAM session puts the soft
  # limit back to 1024; the env file is sourced after that, so raise it there.
  # Erlang runs a scheduler thread per core by default; beside the database
  # and the services on the same machine, half the cores is enough (on 2
  # cores, one scheduler cut RabbitMQ's CPU per order by a fifth at 50
  # orders/s and saturated, and a third of its context switches:
  # bench/BUDGET.md, "Wakeups per order").
  local env_file="$RUN_DIR/rabbitmq-env.conf" schedulers=$((($(nproc) + 1) / 2))
  cat >"$env_file" <<ENV
[ -f /etc/rabbitmq/rabbitmq-env.conf ] && . /etc/rabbitmq/rabbitmq-env.conf
ulimit -n "\$(ulimit -Hn)"
SERVER_ADDITIONAL_ERL_ARGS="\${SERVER_ADDITIONAL_ERL_ARGS:-} +S $schedulers:$schedulers"
ENV
  chmod 644 "$env_file"
  # Crash dumps land in the working directory; keep them with the logs.
  (cd "$LOG_DIR" && as_root nohup env RABBITMQ_CONF_ENV_FILE="$env_file" rabbitmq-server \
    >>"$LOG_DIR/rabbitmq.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/rabbitmq.pid")
  wait_for_port 5672 RabbitMQ 180 "$LOG_DIR/rabbitmq.log" "$(cat "$RUN_DIR/rabbitmq.pid")" \
    "RabbitMQ's own log is under /var/log/rabbitmq/. A broker holding thousands of durable queues (left by old test runs) boots slowly: list them with 'rabbitmqctl list_queues name', or reset it with 'rabbitmqctl stop_app; rabbitmqctl reset; rabbitmqctl start_app' if nothing in it matters."
  INFRA_STARTED+=(rabbitmq)
}

# A cluster of RABBITMQ_NODES nodes on 5672 and up (scripts/lib/rabbitmq-cluster.sh;
# its data in /var/lib/rabbitmq/clusters/orders/ survives a stop), and the
# services told of every node and to make their queues quorum queues,
# unless RABBITMQ_URL or AMQP_QUEUE_TYPE say otherwise.
start_rabbitmq_cluster() {
  local last=$((5672 + RABBITMQ_NODES - 1)) port urls=()
  for port in $(seq 5672 "$last"); do
    port_open "$port" && fail "RABBITMQ_NODES=$RABBITMQ_NODES starts a cluster on ports 5672-$last, but something listens on $port already (a single RabbitMQ? stop it with: rabbitmqctl stop)"
    urls+=("amqp://guest:guest@127.0.0.1:$port/%2f")
  done
  note "starting a RabbitMQ cluster of $RABBITMQ_NODES nodes (logs: /var/lib/rabbitmq/clusters/$RABBITMQ_CLUSTER/node-*/log/)"
  bash "$(dirname "${BASH_SOURCE[0]}")/rabbitmq-cluster.sh" start "$RABBITMQ_CLUSTER" 5672 "$RABBITMQ_NODES" \
    || fail "the RabbitMQ cluster did not start"
  INFRA_STARTED+=(rabbitmq-cluster)
  export RABBITMQ_URL="${RABBITMQ_URL:-$(IFS=,; echo "${urls[*]}")}"
  export AMQP_QUEUE_TYPE="${AMQP_QUEUE_TYPE:-quorum}"
}

start_mongodb() {
  if port_open "$MONGO_PORT"; then
    note "MongoDB already running on $MONGO_PORT: reusing it"
    warn_about_transaction_lifetime "$MONGO_PORT"
    return
  fi
  mkdir -p "$RUN_DIR/mongodb"
  if command -v mongod >/dev/null; then
    note "starting mongod as a single-node replica set (log: $LOG_DIR/mongodb.log)"
    nohup mongod --dbpath "$RUN_DIR/mongodb" --port "$MONGO_PORT" --bind_ip 127.0.0.1 --replSet rs0 \
      --setParameter "transactionLifetimeLimitSeconds=$TRANSACTION_LIFETIME_SECONDS" \
      >>"$LOG_DIR/mongodb.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/mongodb.pid"
    wait_for_port "$MONGO_PORT" mongod 60 "$LOG_DIR/mongodb.log" "$(cat "$RUN_DIR/mongodb.pid")"
    if command -v mongosh >/dev/null; then
      mongosh --quiet --port "$MONGO_PORT" --eval \
        'try { rs.status() } catch (e) { rs.initiate({_id: "rs0", members: [{_id: 0, host: "127.0.0.1:'"$MONGO_PORT"'"}]}) }' \
        >>"$LOG_DIR/mongodb.log" 2>&1
    else
      note "mongosh not found: run rs.initiate() once yourself (transactions need a replica set)"
    fi
  else
    note "starting secantusd-rs (log: $LOG_DIR/mongodb.log, data: $RUN_DIR/mongodb)"
    start_secantus "$MONGO_PORT" "$RUN_DIR/mongodb" "$LOG_DIR/mongodb.log" "$RUN_DIR/mongodb.pid"
  fi
  INFRA_STARTED+=(mongodb)
}

# warn_about_transaction_lifetime PORT: a server this script did not start
# may keep a killed service's transaction (and what it holds) for longer
# than the saga waits; says so, and how to change it. Silent when the server
# will not say (a user without the right to ask).
warn_about_transaction_lifetime() {
  local lifetime
  lifetime=$(python3 "$(dirname "${BASH_SOURCE[0]}")/mongo_parameter.py" "$1" \
    transactionLifetimeLimitSeconds 2>/dev/null) || return 0
  if [ -n "$lifetime" ] && ((lifetime > TRANSACTION_LIFETIME_SECONDS)); then
    warn "the MongoDB on $1 keeps an abandoned transaction ${lifetime}s: a service killed mid-transaction would stall the orders behind it that long (the saga's deadline is ${SAGA_TIMEOUT_SECONDS:-60} s). Lower it with: db.adminCommand({setParameter: 1, transactionLifetimeLimitSeconds: $TRANSACTION_LIFETIME_SECONDS})"
  fi
}

# start_secantus PORT DATA_DIR LOG PIDFILE: secantusd-rs tuned for this
# workload (bench/BUDGET.md measures each choice):
# - no oplog: it only feeds change streams and point-in-time restore, which
#   nothing here uses, and writing it roughly doubled the cost of a write.
#   Committed writes stay as durable as before (the WiredTiger log).
# - its default 4G cache instead of 1G: fewer evictions under load.
# - a transaction left open lives TRANSACTION_LIFETIME_SECONDS, set once it
#   listens (it has no flag for it).
start_secantus() {
  local port=$1 dir=$2 log=$3 pidfile=$4
  mkdir -p "$dir"
  SECANTUS_DISABLE_OPLOG=1 nohup secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_for_port "$port" secantusd-rs 60 "$log" "$(cat "$pidfile")"
  python3 "$(dirname "${BASH_SOURCE[0]}")/mongo_parameter.py" "$port" \
    transactionLifetimeLimitSeconds "$TRANSACTION_LIFETIME_SECONDS" >>"$log" 2>&1 \
    || { tail -n 5 "$log" >&2; fail "could not set transactionLifetimeLimitSeconds on secantusd-rs"; }
}

start_maildev() {
  if port_open "$SMTP_PORT"; then
    note "an SMTP server already runs on $SMTP_PORT: reusing it"
    return
  fi
  note "starting MailDev (log: $LOG_DIR/maildev.log)"
  nohup maildev --smtp "$SMTP_PORT" --web "$MAILDEV_WEB_PORT" --ip 127.0.0.1 --web-ip 127.0.0.1 \
    --max-emails 100000 >>"$LOG_DIR/maildev.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/maildev.pid"
  wait_for_port "$SMTP_PORT" MailDev 30 "$LOG_DIR/maildev.log" "$(cat "$RUN_DIR/maildev.pid")"
  wait_for_port "$MAILDEV_WEB_PORT" "MailDev web" 30 "$LOG_DIR/maildev.log"
  INFRA_STARTED+=(maildev)
}

infra_up() {
  install_missing
  step "Starting infrastructure"
  start_rabbitmq
  start_mongodb
  start_maildev
}

# Stops only what infra_up started in this shell.
infra_down() {
  local part
  for part in "${INFRA_STARTED[@]}"; do
    case $part in
      rabbitmq)
        note "stopping RabbitMQ"
        timeout 60 rabbitmqctl stop >/dev/null 2>&1 || true
        ;;
      rabbitmq-cluster)
        note "stopping the RabbitMQ cluster"
        bash "$(dirname "${BASH_SOURCE[0]}")/rabbitmq-cluster.sh" stop "$RABBITMQ_CLUSTER" "$RABBITMQ_NODES" || true
        ;;
      mongodb | maildev)
        note "stopping $part"
        if [ -f "$RUN_DIR/$part.pid" ]; then kill "$(cat "$RUN_DIR/$part.pid")" 2>/dev/null; fi
        rm -f "$RUN_DIR/$part.pid"
        ;;
    esac
  done
  INFRA_STARTED=()
}
