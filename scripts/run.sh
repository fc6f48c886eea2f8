#!/usr/bin/env bash
# Starts everything: RabbitMQ, MongoDB and MailDev (installing what is
# missing), then the three services in release mode. Ctrl-C or SIGTERM stops
# what this script started; infrastructure that was already running is left
# alone. Data lives in .run/ (MongoDB) and RabbitMQ's own data directory, so
# it survives a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"
export ADMIN_EMAIL="${ADMIN_EMAIL:-admin@example.com}"
export RUST_LOG="${RUST_LOG:-info}"
SERVICES=(order:3001 inventory:3002 notification:3003)
SERVICE_PIDS=()

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

step "Building the services (release; the first build takes a few minutes)"
# -p, not --bin: --bin resolves features for the whole workspace, which
# would compile the e2e crate's fail points into the binaries run here.
cargo build --release -p order-service -p inventory-service -p notification-service

step "Starting the services (logs in $LOG_DIR)"
for entry in "${SERVICES[@]}"; do
  name=${entry%%:*} port=${entry##*:}
  if port_open "$port"; then fail "port $port is taken: is another $name-service running?"; fi
  PORT=$port nohup "./target/release/$name-service" >>"$LOG_DIR/$name-service.log" 2>&1 </dev/null &
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
if [ "$(curl -fsS http://127.0.0.1:3002/api/products/category/demo | grep -c productId || true)" -eq 0 ]; then
  step "Seeding demo products"
  for product in \
    '{"sku":"DEMO-MUG","name":"Coffee mug","category":"demo","price":12.50,"stock":100,"lowStockThreshold":10}' \
    '{"sku":"DEMO-TEE","name":"T-shirt","category":"demo","price":19.99,"stock":50,"lowStockThreshold":5}' \
    '{"sku":"DEMO-CAP","name":"Cap","category":"demo","price":9.00,"stock":10,"lowStockThreshold":3}'; do
    curl -fsS -o /dev/null -X POST http://127.0.0.1:3002/api/products \
      -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$product" \
      || note "could not seed $product"
  done
  note "seeded 3 products in category demo"
fi

cat <<INFO

  Order service         http://127.0.0.1:3001/docs   (Swagger UI)
  Inventory service     http://127.0.0.1:3002/docs
  Notification service  http://127.0.0.1:3003/docs
  RabbitMQ management   http://127.0.0.1:15672       (guest / guest)
  MailDev (emails)      http://127.0.0.1:1080
  Admin token           $ADMIN_TOKEN

  Try:  curl -s http://127.0.0.1:3002/api/products/category/demo
  Ctrl-C stops everything this script started.

INFO
wait -n "${SERVICE_PIDS[@]}" || true
note "a service exited; see $LOG_DIR"
