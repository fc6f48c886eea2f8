#!/usr/bin/env bash
# The standard benchmark: release build, the three services on fresh
# databases, then the load generator, open loop: first a ramp on the idle
# stack (+50/s every 10 s from 50/s until the end-to-end p99 passes 100 ms),
# then 30 s at 1,000 orders/s and 60 s at 1,700 orders/s (the budget's
# lines). Writes result.json, plot.png and summary.md (with CPU per process
# and the database's operations per order) under bench/results/<run>/ and
# copies the summary and plot to bench/results/latest.{md,png}.
#
#   BENCH_STAGES=1000x30,1700x60   the fixed-rate stages (RATExSECONDS)
#   BENCH_RAMP=0                   skip the ramp
#   BENCH_RAMP_START=50 BENCH_RAMP_STEP=50
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

RUN=bench_$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/results/$RUN
STAGES=${BENCH_STAGES:-1000x30,1700x60}
RAMP=${BENCH_RAMP:-1}
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  infra_down
}
trap cleanup EXIT

infra_up
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  note "installing fonts-dejavu-core for the plot"
  apt_install fonts-dejavu-core
fi

step "Building in release mode (minutes on a cold cache)"
cargo build --release --locked -p order-service -p inventory-service -p notification-service -p loadgen

step "Starting the services on fresh databases ($RUN)"
export AMQP_NAMESPACE="$RUN." ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token}
# Each run's queues are its own; the broker drops them an hour after it ends.
export AMQP_QUEUE_EXPIRES_MS=3600000
# The limiter stays on, out of the way of one client sending thousands/s.
export RATE_LIMIT_PER_SECOND=1000000 RUST_LOG=${RUST_LOG:-warn} LOG_FORMAT=json
export INVENTORY_URL=http://127.0.0.1:3102
declare -A WATCH
for service in inventory order notification; do
  case $service in inventory) port=3102 ;; order) port=3101 ;; notification) port=3103 ;; esac
  # Otherwise the wait below would take whatever listens there for ours.
  port_open "$port" && fail "port $port is in use: stop what listens there (a run.sh or an earlier bench?)"
  PORT=$port MONGODB_DATABASE="${RUN}_$service" nohup "./target/release/$service-service" \
    >>"$LOG_DIR/bench-$service.log" 2>&1 </dev/null &
  PIDS+=($!)
  WATCH[$service-service]=$!
  wait_for_port "$port" "$service-service" 30 "$LOG_DIR/bench-$service.log" "$!"
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.2; done
  note "$service-service ready on $port (pid $!)"
done

watch_args=()
for name in "${!WATCH[@]}"; do watch_args+=(--watch "$name=${WATCH[$name]}"); done
for spec in "rabbitmq=beam.smp" "mongodb=secantusd-rs|mongod " "maildev=maildev"; do
  pid=$(pgrep -o -f "${spec#*=}" || true)
  [ -n "$pid" ] && watch_args+=(--watch "${spec%%=*}=$pid")
done

step "Load ($([ "$RAMP" = 1 ] && echo 'the ramp, then ')stages $STAGES)"
ramp_args=()
[ "$RAMP" = 1 ] && ramp_args=(--ramp --ramp-start "${BENCH_RAMP_START:-50}" --ramp-step "${BENCH_RAMP_STEP:-50}")
status=0
./target/release/loadgen \
  --order-url http://127.0.0.1:3101 --inventory-url http://127.0.0.1:3102 \
  --namespace "$RUN." --stages "$STAGES" "${ramp_args[@]}" "${watch_args[@]}" \
  --mongodb-uri "mongodb://127.0.0.1:$MONGO_PORT" --db-prefix "${RUN}_" \
  --out "$OUT" || status=$?

cp "$OUT/summary.md" bench/results/latest.md
[ -f "$OUT/plot.png" ] && cp "$OUT/plot.png" bench/results/latest.png
step "Done: $OUT (summary also in bench/results/latest.md)"
# The load generator exits 1 when any request failed or any order was left
# unfinished; refusals (503) past capacity count, so a run past capacity
# still produces every result but exits 1.
[ "$status" = 0 ] || note "loadgen exited $status: some requests were refused or failed, or orders were left unfinished (see the summary)"
exit $status
