#!/usr/bin/env bash
# Starts everything: RabbitMQ, MongoDB and MailDev (installing what is
# missing), then the three services in release mode. Ctrl-C or SIGTERM stops
# what this script started; infrastructure that was already running is left
# alone. Data lives in .run/ (MongoDB) and RabbitMQ's own data directory, so
# it survives a restart.
#
# Knobs, so that a second stack (a test, say) runs beside the usual one:
#   ORDER_PORT, INVENTORY_PORT, NOTIFICATION_PORT   [3001, 3002, 3003]
#   BUILD_PROFILE            release, debug (builds fast, runs slow) or a
#                            custom cargo profile [release]
#   MONGODB_DATABASE_PREFIX  put before each service's database name [empty]
#   RUN_DIR                  logs, MongoDB data [.run]
# The services' own variables (AMQP_NAMESPACE, AMQP_QUEUE_EXPIRES_MS,
# RUST_LOG, ...: see the README) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"
export ADMIN_EMAIL="${ADMIN_EMAIL:-admin@example.com}"
export RUST_LOG="${RUST_LOG:-info}"
ORDER_PORT="${ORDER_PORT:-3001}"
INVENTORY_PORT="${INVENTORY_PORT:-3002}"
NOTIFICATION_PORT="${NOTIFICATION_PORT:-3003}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"
MONGODB_DATABASE_PREFIX="${MONGODB_DATABASE_PREFIX:-}"
# The order service asks this script's inventory service, wherever it listens.
export INVENTORY_URL="http://127.0.0.1:$INVENTORY_PORT"
SERVICES=("order:$ORDER_PORT" "inventory:$INVENTORY_PORT" "notification:$NOTIFICATION_PORT")
SERVICE_PIDS=()

for port in "$ORDER_PORT" "$INVENTORY_PORT" "$NOTIFICATION_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] || fail "ORDER_PORT, INVENTORY_PORT and NOTIFICATION_PORT must be numbers, not '$port'"
done
# Cargo's name for the profile whose output goes to target/debug.
CARGO_PROFILE=$BUILD_PROFILE
if [ "$BUILD_PROFILE" = debug ]; then CARGO_PROFILE=dev; fi
if [ -n "${MONGODB_DATABASE:-}" ]; then
  fail "MONGODB_DATABASE would give all three services one database: set MONGODB_DATABASE_PREFIX instead"
fi

stop_all() {
  trap - INT TERM EXIT
  step "Stopping"
  if [ ${#SERVICE_PIDS[@]} -gt 0 ]; then
    kill -TERM "${SERVICE_PIDS[@]}" 2>/dev/null || true
    wait "${SERVICE_PIDS[@]}" 2>/dev/null || true
  fi
  infra_down
  note "stopped"
}
trap stop_all EXIT
trap 'stop_all; exit 0' INT TERM

infra_up
command -v curl >/dev/null || apt_install curl

step "Building the services ($BUILD_PROFILE; the first release build takes a few minutes)"
# -p, not --bin: --bin resolves features for the whole workspace, which
# would compile the e2e crate's fail points into the binaries run here.
cargo build --profile "$CARGO_PROFILE" -p order-service -p inventory-service -p notification-service

step "Starting the services (logs in $LOG_DIR)"
for entry in "${SERVICES[@]}"; do
  name=${entry%%:*} port=${entry##*:}
  if port_open "$port"; then fail "port $port is taken: is another $name-service running?"; fi
  PORT=$port MONGODB_DATABASE="$MONGODB_DATABASE_PREFIX${name}_service" \
    nohup "${CARGO_TARGET_DIR:-target}/$BUILD_PROFILE/$name-service" >>"$LOG_DIR/$name-service.log" 2>&1 </dev/null &
  SERVICE_PIDS+=($!)
done
for entry in "${SERVICES[@]}"; do
  name=${entry%%:*} port=${entry##*:}
  waited=0
  until curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
    sleep 1
    waited=$((waited + 1))
    if (( waited >= 60 )); then
      tail -n 20 "$LOG_DIR/$name-service.log" >&2
      fail "$name-service is not ready after 60s (log: $LOG_DIR/$name-service.log)"
    fi
  done
  note "$name-service ready on $port"
done

# Demo products, the first time only (the sku is unique, so a rerun is a 409).
if [ "$(curl -fsS "$INVENTORY_URL/api/products/category/demo" | grep -c productId || true)" -eq 0 ]; then
  step "Seeding demo products"
  for product in \
    '{"sku":"DEMO-MUG","name":"Coffee mug","category":"demo","price":12.50,"stock":100,"lowStockThreshold":10}' \
    '{"sku":"DEMO-TEE","name":"T-shirt","category":"demo","price":19.99,"stock":50,"lowStockThreshold":5}' \
    '{"sku":"DEMO-CAP","name":"Cap","category":"demo","price":9.00,"stock":10,"lowStockThreshold":3}'; do
    curl -fsS -o /dev/null -X POST "$INVENTORY_URL/api/products" \
      -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$product" \
      || note "could not seed $product"
  done
  note "seeded 3 products in category demo"
fi

cat <<INFO

  Order service         http://127.0.0.1:$ORDER_PORT/docs   (Swagger UI)
  Inventory service     http://127.0.0.1:$INVENTORY_PORT/docs
  Notification service  http://127.0.0.1:$NOTIFICATION_PORT/docs
  RabbitMQ management   http://127.0.0.1:15672       (guest / guest)
  MailDev (emails)      http://127.0.0.1:$MAILDEV_WEB_PORT
  Admin token           $ADMIN_TOKEN

  Try:  curl -s $INVENTORY_URL/api/products/category/demo
  Ctrl-C stops everything this script started.

INFO
wait -n "${SERVICE_PIDS[@]}" || true
note "a service exited; see $LOG_DIR"
