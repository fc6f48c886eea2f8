#!/usr/bin/env bash
# The standard benchmark: release build, then passes, each with its own
# fresh database server (a new data directory, tuned as infra.sh starts it:
# a server still absorbing an earlier run's writes costs more per order)
# and the three services, then the load generator, open loop: first a ramp
# on the idle stack (+50/s every 10 s from 50/s until the end-to-end p99
# passes 100 ms), then 20 s at 1,000 orders/s and 30 s at 1,700 orders/s
# (the budget's lines), every step and stage run BENCH_REPEATS times so the
# summary gives medians and spread. A pass is SINK or SINK@CORES: `maildev`
# is the stack as run.sh starts it; `smtp-sink` (Postfix's sink, which
# accepts and discards) shows how much the mail sink takes; `@1` pins the
# whole stack (services, database, RabbitMQ, the sink) to one core with
# taskset, so next to an unpinned pass the report says how the cost grows
# with cores. Each pass writes result.json, plot.png and summary.md (CPU
# and context switches per order per process, the database's operations
# per order) under bench/results/<run>/<pass>/; the summaries and a
# table comparing the passes go to bench/results/latest.md, the plots to
# latest.png (maildev) and latest-<pass>.png.
#
#   BENCH_PASSES=maildev,maildev@1,smtp-sink   the passes, in order
#   BENCH_REPEATS=3                runs of every ramp step and stage
#   BENCH_STAGES=1000x20,1700x30   the fixed-rate stages (RATExSECONDS)
#   BENCH_RAMP=0                   skip the ramp
#   BENCH_RAMP_START=50 BENCH_RAMP_STEP=50
#   BENCH_MONGO_PORT=27018         where each pass's database server listens
#   BENCH_PROFILE=1                instead of the ramp and stages, 40 s at
#                                  50 orders/s with `perf record` on every
#                                  process of the stack for 20 s of it: a
#                                  flame graph of each, flame-<process>.svg
#                                  (latest.* keep the last benchmark's)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

RUN=bench_$(date -u +%Y%m%dT%H%M%SZ)
STAGES=${BENCH_STAGES:-1000x20,1700x30}
RAMP=${BENCH_RAMP:-1}
REPEATS=${BENCH_REPEATS:-3}
PROFILE=${BENCH_PROFILE:-0}
if [ "$PROFILE" = 1 ]; then
  STAGES=50x40 RAMP=0 REPEATS=1
fi
PASSES=${BENCH_PASSES:-maildev,maildev@1,smtp-sink}
[ -n "${BENCH_SINKS:-}" ] && fail "BENCH_SINKS is now BENCH_PASSES (SINK or SINK@CORES, e.g. maildev,maildev@1)"
BENCH_MONGO_PORT=${BENCH_MONGO_PORT:-27018}
SINK_PORT=2525
PIDS=()

ALL_CPUS=0-$(($(nproc) - 1))
SHARED_PIDS=()  # RabbitMQ and MailDev outlive a pass: unpinned after each

# Stops this pass's services, database server and sink.
stop_pass() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  for pid in "${SHARED_PIDS[@]}"; do taskset -a -cp "$ALL_CPUS" "$pid" >/dev/null 2>&1 || true; done
  SHARED_PIDS=()
}
cleanup() {
  stop_pass
  rm -rf "$RUN_DIR/bench-db"
  infra_down
}
trap cleanup EXIT

infra_up
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  note "installing fonts-dejavu-core for the plot"
  apt_install fonts-dejavu-core
fi
if [ "$PROFILE" = 1 ]; then
  command -v perf >/dev/null || { note "installing linux-perf for the profiles"; apt_install linux-perf; }
  if ! command -v inferno-flamegraph >/dev/null; then
    note "installing inferno for the flame graphs (a minute or two)"
    cargo install inferno --locked --quiet
  fi
fi
if [[ ,$PASSES, == *,smtp-sink[,@]* ]] && [ ! -x /usr/sbin/smtp-sink ]; then
  note "installing postfix for smtp-sink (its mail system is not used)"
  apt_install postfix
fi

step "Building in release mode (minutes on a cold cache)"
source scripts/lib/registry.sh
packages=()
for service in $(registry_names); do packages+=(-p "$service-service"); done
cargo build --release --locked "${packages[@]}" -p loadgen

# The loadgen signs each customer's orders with JWT_SECRET, as clients would.
source scripts/lib/secrets.sh
load_dev_secrets
# The limiter stays on, out of the way of one client sending thousands/s.
export RATE_LIMIT_PER_SECOND=1000000
export RUST_LOG=${RUST_LOG:-warn} LOG_FORMAT=json
# Each service 100 above its registry port (3101, 3102, ...), beside a
# run.sh stack, and each reaches the others there (<NAME>_URL).
bench_port() { echo $(($(registry_port "$1") + 100)); }
for service in $(registry_names); do
  export "$(url_variable "$service")=http://127.0.0.1:$(bench_port "$service")"
done
export MONGODB_URI="mongodb://127.0.0.1:$BENCH_MONGO_PORT"
# Each run's queues are its own; the broker drops them an hour after it ends.
export AMQP_QUEUE_EXPIRES_MS=3600000

# run_pass SINK[@CORES]: one full load run against the stack sending mail
# to SINK, pinned to the first CORES cores if given.
run_pass() {
  local pass=$1 sink=${1%@*} cores="" out="bench/results/$RUN/$1" namespace="$RUN-${1/@/-}." smtp_port
  [[ $pass == *@* ]] && cores=${pass#*@}
  if [ -n "$cores" ]; then
    [[ $cores =~ ^[1-9][0-9]*$ ]] && [ "$cores" -le "$(nproc)" ] \
      || fail "pass $pass: @CORES must be a number of cores from 1 to $(nproc)"
  fi
  local -A watch
  step "Pass $pass: a fresh database server on $BENCH_MONGO_PORT, the services"
  port_open "$BENCH_MONGO_PORT" && fail "port $BENCH_MONGO_PORT is in use: set BENCH_MONGO_PORT"
  rm -rf "$RUN_DIR/bench-db"
  start_secantus "$BENCH_MONGO_PORT" "$RUN_DIR/bench-db" "$LOG_DIR/bench-mongodb.log" "$RUN_DIR/bench-mongodb.pid"
  PIDS+=("$(cat "$RUN_DIR/bench-mongodb.pid")")
  watch[mongodb]=$(cat "$RUN_DIR/bench-mongodb.pid")
  watch[rabbitmq]=$(pgrep -o beam.smp)
  case $sink in
    maildev)
      smtp_port=$SMTP_PORT
      watch[maildev]=$(pgrep -o -f maildev)
      ;;
    smtp-sink)
      port_open "$SINK_PORT" && fail "port $SINK_PORT is in use"
      /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 >>"$LOG_DIR/bench-smtp-sink.log" 2>&1 </dev/null &
      PIDS+=($!)
      watch[smtp-sink]=$!
      wait_for_port "$SINK_PORT" smtp-sink 10 "$LOG_DIR/bench-smtp-sink.log" "$!"
      smtp_port=$SINK_PORT
      ;;
    *) fail "unknown sink $sink (maildev or smtp-sink)" ;;
  esac
  local service port
  for service in $(registry_names); do
    port=$(bench_port "$service")
    # Otherwise the wait below would take whatever listens there for ours.
    port_open "$port" && fail "port $port is in use: stop what listens there (a run.sh or an earlier bench?)"
    PORT=$port MONGODB_DATABASE="${RUN}_$service" AMQP_NAMESPACE=$namespace SMTP_PORT=$smtp_port \
      nohup "./target/release/$service-service" >>"$LOG_DIR/bench-$service.log" 2>&1 </dev/null &
    PIDS+=($!)
    watch[$service-service]=$!
    wait_for_port "$port" "$service-service" 30 "$LOG_DIR/bench-$service.log" "$!"
    until curl -fs "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.2; done
    note "$service-service ready on $port (pid $!)"
  done

  local watch_args=() name ramp_args=()
  for name in "${!watch[@]}"; do watch_args+=(--watch "$name=${watch[$name]}"); done
  if [ -n "$cores" ]; then
    # Every thread of every process of the stack; threads started later
    # inherit it. The load generator stays free, as clients would be.
    for name in "${!watch[@]}"; do
      taskset -a -cp "0-$((cores - 1))" "${watch[$name]}" >/dev/null
    done
    SHARED_PIDS=("${watch[rabbitmq]}")
    [ "$sink" = maildev ] && SHARED_PIDS+=("${watch[maildev]}")
    note "the stack is pinned to CPUs 0-$((cores - 1))"
  fi
  [ "$RAMP" = 1 ] && ramp_args=(--ramp --ramp-start "${BENCH_RAMP_START:-50}" --ramp-step "${BENCH_RAMP_STEP:-50}")
  step "Pass $pass: load ($([ "$RAMP" = 1 ] && echo 'the ramp, then ')stages $STAGES, each run $REPEATS times)"
  local pass_status=0 loadgen
  ./target/release/loadgen \
    --order-url "$ORDER_URL" --inventory-url "$INVENTORY_URL" \
    --namespace "$namespace" --stages "$STAGES" --repeats "$REPEATS" "${ramp_args[@]}" "${watch_args[@]}" \
    --mongodb-uri "$MONGODB_URI" --db-prefix "${RUN}_" \
    --out "$out" &
  loadgen=$!
  [ "$PROFILE" = 1 ] && record_profiles "$out" watch
  wait "$loadgen" || pass_status=$?
  stop_pass
  # After the load, so that drawing them costs the measured stage nothing.
  [ "$PROFILE" = 1 ] && draw_profiles "$out"
  # The load generator exits 1 when any request failed or any order was
  # left unfinished; refusals (503) past capacity count, so a run past
  # capacity still produces every result but exits 1.
  [ "$pass_status" = 0 ] || { note "pass $pass: loadgen exited $pass_status: some requests were refused or failed, or orders were left unfinished (see its summary)"; status=1; }
}

# record_profiles OUT WATCH: from 10 s into the load, 20 s of `perf
# record` (DWARF call stacks, 199 Hz) on every process named in the
# associative array WATCH, as OUT/perf-<process>.data.
record_profiles() {
  local out=$1 name perfs=()
  local -n procs=$2
  mkdir -p "$out"
  sleep 10
  note "recording profiles for 20 s"
  for name in "${!procs[@]}"; do
    perf record -q -F 199 --call-graph dwarf,16384 -p "${procs[$name]}" -o "$out/perf-$name.data" \
      -- sleep 20 >>"$LOG_DIR/bench-perf.log" 2>&1 &
    perfs+=($!)
  done
  wait "${perfs[@]}" || true
}

# draw_profiles OUT: a flame graph of each OUT/perf-<process>.data, as
# OUT/flame-<process>.svg (the recordings, hundreds of MB, are dropped).
draw_profiles() {
  local out=$1 data name
  note "drawing the flame graphs (a minute or two)"
  for data in "$out"/perf-*.data; do
    name=$(basename "$data" .data)
    name=${name#perf-}
    perf script -i "$data" 2>>"$LOG_DIR/bench-perf.log" | inferno-collapse-perf 2>>"$LOG_DIR/bench-perf.log" \
      | inferno-flamegraph --title "$name at 50 orders/s" >"$out/flame-$name.svg" 2>>"$LOG_DIR/bench-perf.log" \
      || note "no flame graph for $name (see $LOG_DIR/bench-perf.log)"
    rm -f "$data"
  done
  note "flame graphs: $out/flame-*.svg"
}

status=0
: >bench/results/latest.md.new
for pass in ${PASSES//,/ }; do
  run_pass "$pass"
  { echo "# Pass: $pass"; echo; cat "bench/results/$RUN/$pass/summary.md"; echo; } >>bench/results/latest.md.new
  case $pass in
    maildev) plot=bench/results/latest.png ;;
    *) plot=bench/results/latest-${pass/@/-}.png ;;
  esac
  # A profile run is not the benchmark: the latest figures stay.
  [ "$PROFILE" != 1 ] && [ -f "bench/results/$RUN/$pass/plot.png" ] && cp "bench/results/$RUN/$pass/plot.png" "$plot"
done
if [ "$PROFILE" != 1 ]; then
  { python3 scripts/lib/bench_passes.py "bench/results/$RUN" ${PASSES//,/ }; echo; cat bench/results/latest.md.new; } >bench/results/latest.md
fi
rm bench/results/latest.md.new
step "Done: bench/results/$RUN (summaries also in bench/results/latest.md)"
exit $status
