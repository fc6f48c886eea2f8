#!/usr/bin/env bash
# The standard benchmark: release build, then for each mail sink a pass
# with its own fresh database server (a new data directory, tuned as
# infra.sh starts it: a server still absorbing an earlier run's writes costs
# more per order) and the three services, then the load generator, open
# loop: first a ramp on the idle stack (+50/s every 10 s from 50/s until the
# end-to-end p99 passes 100 ms), then 30 s at 1,000 orders/s and 60 s at
# 1,700 orders/s (the budget's lines). The `maildev` pass is the stack as
# run.sh starts it; the `smtp-sink` pass (Postfix's sink, which accepts and
# discards) shows how much of the budget the mail sink takes. Each pass
# writes result.json, plot.png and summary.md (with CPU per process and the
# database's operations per order) under bench/results/<run>/<sink>/; the
# summaries go to bench/results/latest.md, the plots to latest.png (maildev)
# and latest-smtp-sink.png.
#
#   BENCH_STAGES=1000x30,1700x60   the fixed-rate stages (RATExSECONDS)
#   BENCH_RAMP=0                   skip the ramp
#   BENCH_RAMP_START=50 BENCH_RAMP_STEP=50
#   BENCH_SINKS=maildev,smtp-sink  the passes, in order
#   BENCH_MONGO_PORT=27018         where each pass's database server listens
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

RUN=bench_$(date -u +%Y%m%dT%H%M%SZ)
STAGES=${BENCH_STAGES:-1000x30,1700x60}
RAMP=${BENCH_RAMP:-1}
SINKS=${BENCH_SINKS:-maildev,smtp-sink}
BENCH_MONGO_PORT=${BENCH_MONGO_PORT:-27018}
SINK_PORT=2525
PIDS=()

# Stops this pass's services, database server and sink.
stop_pass() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
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
if [[ ,$SINKS, == *,smtp-sink,* ]] && [ ! -x /usr/sbin/smtp-sink ]; then
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

# run_pass SINK: one full load run against the stack sending mail to SINK.
run_pass() {
  local sink=$1 out="bench/results/$RUN/$1" namespace="$RUN-$1." smtp_port
  local -A watch
  step "Pass $sink: a fresh database server on $BENCH_MONGO_PORT, the services"
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
  [ "$RAMP" = 1 ] && ramp_args=(--ramp --ramp-start "${BENCH_RAMP_START:-50}" --ramp-step "${BENCH_RAMP_STEP:-50}")
  step "Pass $sink: load ($([ "$RAMP" = 1 ] && echo 'the ramp, then ')stages $STAGES)"
  local pass_status=0
  ./target/release/loadgen \
    --order-url "$ORDER_URL" --inventory-url "$INVENTORY_URL" \
    --namespace "$namespace" --stages "$STAGES" "${ramp_args[@]}" "${watch_args[@]}" \
    --mongodb-uri "$MONGODB_URI" --db-prefix "${RUN}_" \
    --out "$out" || pass_status=$?
  stop_pass
  # The load generator exits 1 when any request failed or any order was
  # left unfinished; refusals (503) past capacity count, so a run past
  # capacity still produces every result but exits 1.
  [ "$pass_status" = 0 ] || { note "pass $sink: loadgen exited $pass_status: some requests were refused or failed, or orders were left unfinished (see its summary)"; status=1; }
}

status=0
: >bench/results/latest.md.new
for sink in ${SINKS//,/ }; do
  run_pass "$sink"
  { echo "# Mail sink: $sink"; echo; cat "bench/results/$RUN/$sink/summary.md"; echo; } >>bench/results/latest.md.new
  case $sink in
    maildev) plot=bench/results/latest.png ;;
    *) plot=bench/results/latest-$sink.png ;;
  esac
  [ -f "bench/results/$RUN/$sink/plot.png" ] && cp "bench/results/$RUN/$sink/plot.png" "$plot"
done
mv bench/results/latest.md.new bench/results/latest.md
step "Done: bench/results/$RUN (summaries also in bench/results/latest.md)"
exit $status
