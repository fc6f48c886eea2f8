#!/usr/bin/env bash
# Starts everything: RabbitMQ, MongoDB and MailDev (installing what is
# missing), then the services of services/registry.txt, and keeps them
# running: a service that exits is started again after 1 s, 2 s, 4 s, 8 s.
# One that crashes 5 times within a minute, or exits over a bad
# configuration (status 64), is left stopped with a message saying so; the
# others and the infrastructure keep running. Ctrl-C or SIGTERM stops what
# this script started; infrastructure that was already running is left
# alone. Data lives in .run/ (MongoDB) and RabbitMQ's own data directory, so
# it survives a restart.
#
# Knobs, so that a second stack (a test, say) runs beside the usual one:
#   <NAME>_PORT              a service's port (ORDER_PORT, INVENTORY_PORT,
#                            ...) [the registry's: 3001, 3002, ...]
#   BUILD_PROFILE            release, debug (builds fast, runs slow) or a
#                            custom cargo profile [release]
#   MONGODB_DATABASE_PREFIX  put before each service's database name [empty]
#   RUN_DIR                  logs, pid files, MongoDB data [.run]
#   REPLICAS                 instances of each service [1]; past 1, nginx
#                            (installed if missing) listens on the services'
#                            ports and spreads requests over the instances,
#                            with nginx/nginx.conf.template
#   INSTANCE_PORT_BASE       with REPLICAS > 1, instance i (1-9) of the k-th
#                            service of the registry (k from 0) listens on
#                            BASE+10k+i [13000]
#   RABBITMQ_NODES           RabbitMQ nodes [1]; past 1, a cluster on
#                            5672 and up with quorum queues, the services
#                            told of every node (docs/deploying.md)
#   RABBITMQ_URL             a broker of your own, which every service logs
#                            in to as given [unset: the local one, each
#                            service as its own user (rabbitmq/users.sh)]
# The services' own variables (AMQP_NAMESPACE, AMQP_QUEUE_EXPIRES_MS,
# RUST_LOG, ...: see docs/configuration.md) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
source scripts/lib/secrets.sh
source scripts/lib/registry.sh

# A random admin token and JWT secret of this run directory (made once), unless
# set: nothing known to everyone guards the admin routes, even here.
load_dev_secrets
# Set before infra_up, which gives the local broker's address otherwise.
OWN_BROKER=${RABBITMQ_URL:+yes}
export ADMIN_EMAIL="${ADMIN_EMAIL:-admin@example.com}"
export RUST_LOG="${RUST_LOG:-info}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"
MONGODB_DATABASE_PREFIX="${MONGODB_DATABASE_PREFIX:-}"
REPLICAS="${REPLICAS:-1}"
INSTANCE_PORT_BASE="${INSTANCE_PORT_BASE:-13000}"
[[ $REPLICAS =~ ^[1-9]$ ]] || fail "REPLICAS must be a number from 1 to 9, not '$REPLICAS'"
[[ $INSTANCE_PORT_BASE =~ ^[0-9]+$ ]] || fail "INSTANCE_PORT_BASE must be a number, not '$INSTANCE_PORT_BASE'"
# Each service of the registry, "name:port": on <NAME>_PORT if set, else on
# the registry's port. Every service reaches the others where this script
# runs them, as <NAME>_URL (the order service asks the inventory, its
# history and admin console reach them all), and the console links to
# their Swagger UIs (<NAME>_DOCS_URL) and to MailDev.
SERVICES=()
while read -r name registry_port database; do
  port_var=$(port_variable "$name")
  port=${!port_var:-$registry_port}
  [[ $port =~ ^[0-9]+$ ]] || fail "$port_var must be a number, not '$port'"
  printf -v "$port_var" '%s' "$port" # for nginx/render.sh and the summary
  SERVICES+=("$name:$port")
  url_var=$(url_variable "$name")
  export "$url_var=http://127.0.0.1:$port"
  docs_var="${name^^}_DOCS_URL"
  export "$docs_var=${!docs_var:-http://127.0.0.1:$port/docs}"
  printf -v "DATABASE_${name^^}" '%s' "$database"
done < <(registry_lines)
export MAILDEV_UI_URL="${MAILDEV_UI_URL:-http://127.0.0.1:$MAILDEV_WEB_PORT}"
# A service that crashes this often within the window stays stopped.
RESTART_LIMIT=5
RESTART_WINDOW=60
# A service's exit status over a bad configuration: a restart would fail the
# same way (see shared/src/config.rs).
EX_USAGE=64
BIN_DIR="$RUN_DIR/bin"
SUPERVISORS=()
NGINX_PID=""
if ((REPLICAS > 1)); then
  # nginx is the only proxy in front of them: its X-Forwarded-For names the
  # client for rate limits and logs.
  export TRUSTED_PROXIES="${TRUSTED_PROXIES:-127.0.0.1}"
fi

# The instances of a service: "label:port" each. One instance is the service
# itself on its port; several are labelled NAME-service-I on internal ports.
instances() {
  local name=$1 port=$2 offset i
  if ((REPLICAS == 1)); then
    echo "$name-service:$port"
    return
  fi
  # Ten ports for each service, in the registry's order.
  offset=0
  for entry in "${SERVICES[@]}"; do
    [ "${entry%%:*}" = "$name" ] && break
    offset=$((offset + 10))
  done
  for ((i = 1; i <= REPLICAS; i++)); do
    echo "$name-service-$i:$((INSTANCE_PORT_BASE + offset + i))"
  done
}

# Cargo's name for the profile whose output goes to target/debug.
CARGO_PROFILE=$BUILD_PROFILE
if [ "$BUILD_PROFILE" = debug ]; then CARGO_PROFILE=dev; fi
if [ -n "${MONGODB_DATABASE:-}" ]; then
  fail "MONGODB_DATABASE would give all the services one database: set MONGODB_DATABASE_PREFIX instead"
fi

# shellcheck disable=SC2317 # reached through the traps
stop_all() {
  trap - INT TERM EXIT
  step "Stopping"
  if [ ${#SUPERVISORS[@]} -gt 0 ]; then
    # Each supervisor stops its service, or its pending restart, and waits.
    kill -TERM "${SUPERVISORS[@]}" 2>/dev/null || true
    wait "${SUPERVISORS[@]}" 2>/dev/null || true
  fi
  if [ -n "$NGINX_PID" ]; then
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
  fi
  infra_down
  note "stopped"
}
trap stop_all EXIT
trap 'stop_all; exit 0' INT TERM

ready() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/ready" 2>/dev/null; }

# How a process ended, from the status `wait` gave for it.
exit_reason() {
  if (($1 > 128)); then
    echo "was killed by SIG$(kill -l "$(($1 - 128))")"
  else
    echo "exited with status $1"
  fi
}

# supervise NAME LABEL PORT, in the background: runs NAME-service on PORT
# and starts it again whenever it exits, until run.sh stops (SIGTERM, or
# Ctrl-C) or it gives the service up. LABEL names it in messages, its log
# ($LOG_DIR/LABEL.log) and its pid file ($RUN_DIR/LABEL.pid, while it runs).
supervise() {
  local name=$1 service=$2 port=$3
  local log="$LOG_DIR/$service.log" pidfile="$RUN_DIR/$service.pid"
  local child="" pid status delay at crash restarts=0 crashes=() recent=()
  set +e # every exit status is handled here
  # TERM from run.sh; INT straight from the terminal's Ctrl-C, which
  # reaches the whole process group.
  trap stop_supervised INT TERM
  while true; do
    database_var="DATABASE_${name^^}"
    PORT=$port MONGODB_DATABASE="$MONGODB_DATABASE_PREFIX${!database_var}" RABBITMQ_URL="$(broker_url "$name")" \
      nohup "$BIN_DIR/$name-service" >>"$log" 2>&1 </dev/null &
    child=$!
    echo "$child" >"$pidfile"
    # 2>/dev/null hides bash's own "Killed ..." notice; the warning below
    # says more.
    {
      if ((restarts > 0)); then
        note "$service restarted (pid $child)"
        until ready "$port" || ! kill -0 "$child"; do sleep 1; done
        if kill -0 "$child"; then note "$service ready again on port $port"; fi
      fi
      wait "$child"
    } 2>/dev/null
    status=$? pid=$child child=""

    # A clean exit is a stop someone asked for (Ctrl-C reaches the whole
    # process group, services included; or a kill -TERM): not a crash.
    if ((status == 0)); then
      break
    fi
    if ((status == EX_USAGE)); then
      warn "$service (pid $pid) $(exit_reason $status), a bad configuration: not restarting it, it would fail the same way. The other services keep running. From its log ($log):"
      note "$(tail -n 1 "$log")" >&2
      break
    fi
    crashes+=("$EPOCHSECONDS")
    recent=()
    for crash in "${crashes[@]}"; do
      if ((crash > EPOCHSECONDS - RESTART_WINDOW)); then recent+=("$crash"); fi
    done
    crashes=("${recent[@]}")
    if ((${#crashes[@]} >= RESTART_LIMIT)); then
      warn "$service (pid $pid) $(exit_reason $status), its ${#crashes[@]}th crash within ${RESTART_WINDOW}s: giving up, it stays stopped. The other services keep running; read its log ($log), fix the cause, then stop and start run.sh."
      echo "---- last lines of $log ----" >&2
      tail -n 10 "$log" >&2
      break
    fi
    delay=$((1 << (${#crashes[@]} - 1)))
    printf -v at '%(%H:%M:%S)T' "$((EPOCHSECONDS + delay))"
    warn "$service (pid $pid) $(exit_reason $status); restarting it in ${delay}s, at $at (crash ${#crashes[@]} of $RESTART_LIMIT allowed within ${RESTART_WINDOW}s; log: $log)"
    # In the background, so that a signal cuts it short.
    sleep "$delay" &
    wait $!
    restarts=$((restarts + 1))
  done
  rm -f "$pidfile"
}

# supervise's trap (run.sh is stopping): stops the service, or the backoff
# sleep. $! also covers a service started an instant before the trap ran,
# before child= was assigned.
# shellcheck disable=SC2317 # reached through the trap
stop_supervised() {
  # shellcheck disable=SC2086 # empty ones must vanish
  kill -TERM ${child:-} ${!:-} 2>/dev/null
  # shellcheck disable=SC2086
  wait ${child:-} 2>/dev/null
  rm -f "$pidfile"
  exit 0
}

infra_up
command -v curl >/dev/null || apt_install curl

# Each service logs in to the local broker as a user of its own, allowed
# only its own queues and events, and takes an event only from the user of
# the service it claims to come from (docs/security.md, "Broker
# identities"). A broker given in RABBITMQ_URL is used as given.
BROKER_USERS=""
if [ -z "$OWN_BROKER" ]; then
  step "Giving each service its own RabbitMQ user"
  load_broker_passwords
  if bash rabbitmq/users.sh >>"$LOG_DIR/rabbitmq-users.log" 2>&1; then
    sources=()
    # Under AMQP_NAMESPACE, users.sh names them <namespace><name>.
    for name in $(registry_names); do sources+=("$name-service=${AMQP_NAMESPACE:-}$name"); done
    export AMQP_SOURCE_USERS="${AMQP_SOURCE_USERS:-$(IFS=,; echo "${sources[*]}")}"
    BROKER_USERS=$(registry_names | sed "s/^/${AMQP_NAMESPACE:-}/" | paste -sd, -)
    note "broker users $BROKER_USERS (passwords in $DEV_SECRETS)"
  else
    warn "could not make the services' broker users: $(tail -n 1 "$LOG_DIR/rabbitmq-users.log"). They share RabbitMQ's guest account instead."
  fi
fi

# broker_url NAME: RABBITMQ_URL (or the local broker) with every node's
# login replaced by NAME's broker user, once it has one.
broker_url() {
  local url=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} node nodes=() logins=() password_var
  [ -n "$BROKER_USERS" ] || { echo "$url"; return; }
  password_var="RABBITMQ_${1^^}_PASSWORD"
  IFS=, read -ra nodes <<<"$url"
  for node in "${nodes[@]}"; do
    node=${node#amqp://}
    logins+=("amqp://${AMQP_NAMESPACE:-}$1:${!password_var}@${node#*@}")
  done
  (IFS=,; echo "${logins[*]}")
}

step "Building the services ($BUILD_PROFILE; the first release build takes a few minutes)"
# -p, not --bin: --bin resolves features for the whole workspace, which
# would compile the e2e crate's fail points into the binaries run here.
packages=()
for entry in "${SERVICES[@]}"; do packages+=(-p "${entry%%:*}-service"); done
cargo build --profile "$CARGO_PROFILE" "${packages[@]}"
# Restarts run the binaries built now, even if cargo rebuilds meanwhile (a
# cargo test, another checkout sharing CARGO_TARGET_DIR): cargo replaces its
# file, and the hard link keeps this one.
mkdir -p "$BIN_DIR"
for entry in "${SERVICES[@]}"; do
  binary="${CARGO_TARGET_DIR:-target}/$BUILD_PROFILE/${entry%%:*}-service"
  ln -f "$binary" "$BIN_DIR/" 2>/dev/null || cp -f "$binary" "$BIN_DIR/"
done

step "Starting the services (logs in $LOG_DIR)"
INSTANCES=()
for entry in "${SERVICES[@]}"; do
  while read -r instance; do INSTANCES+=("${entry%%:*}:$instance"); done < <(instances "${entry%%:*}" "${entry##*:}")
done
for entry in "${INSTANCES[@]}"; do
  IFS=: read -r name label port <<<"$entry"
  if port_open "$port"; then fail "port $port is taken: is another $label running?"; fi
done
if ((REPLICAS > 1)); then
  for entry in "${SERVICES[@]}"; do
    port=${entry##*:}
    if port_open "$port"; then fail "port $port is taken (nginx's, for ${entry%%:*}): is another stack running?"; fi
  done
fi
for entry in "${INSTANCES[@]}"; do
  IFS=: read -r name label port <<<"$entry"
  supervise "$name" "$label" "$port" &
  SUPERVISORS+=("$!")
done
for i in "${!INSTANCES[@]}"; do
  IFS=: read -r name label port <<<"${INSTANCES[$i]}"
  waited=0
  until ready "$port"; do
    # Its supervisor has said why.
    kill -0 "${SUPERVISORS[$i]}" 2>/dev/null || fail "$label could not start: stopping everything (log: $LOG_DIR/$label.log)"
    sleep 1
    waited=$((waited + 1))
    if ((waited >= 60)); then
      tail -n 20 "$LOG_DIR/$label.log" >&2
      fail "$label is not ready after 60s (log: $LOG_DIR/$label.log)"
    fi
  done
  note "$label ready on $port"
done

if ((REPLICAS > 1)); then
  step "Starting nginx in front of $REPLICAS instances of each service"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  mkdir -p "$RUN_DIR/nginx"
  # The template's placeholders filled in (nginx/render.sh, which
  # scripts/check-deploy.sh checks with `nginx -t` the same way).
  source nginx/render.sh
  render_nginx_conf nginx/nginx.conf.template "$PWD/nginx" "${INSTANCES[@]}" >"$RUN_DIR/nginx.conf"
  "$NGINX" -t -q -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR/nginx" >>"$LOG_DIR/nginx-error.log" 2>&1 \
    || { tail -n 5 "$LOG_DIR/nginx-error.log" >&2; fail "nginx rejected $RUN_DIR/nginx.conf (made from nginx/nginx.conf.template)"; }
  "$NGINX" -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR/nginx" >>"$LOG_DIR/nginx-error.log" 2>&1 </dev/null &
  NGINX_PID=$!
  for entry in "${SERVICES[@]}"; do
    wait_for_port "${entry##*:}" nginx 30 "$LOG_DIR/nginx-error.log" "$NGINX_PID"
    waited=0
    until ready "${entry##*:}"; do
      sleep 0.2
      waited=$((waited + 1))
      ((waited < 150)) || fail "nginx on ${entry##*:} does not answer /ready after 30s (log: $LOG_DIR/nginx-error.log)"
    done
  done
  note "nginx on the services' ports, ${SERVICES[*]} (config: $RUN_DIR/nginx.conf)"
fi

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

echo
echo "  Admin console         http://127.0.0.1:$ORDER_PORT/admin/   (asks for the admin token)"
for entry in "${SERVICES[@]}"; do
  printf '  %-21s http://127.0.0.1:%s/docs   (Swagger UI)\n' "${entry%%:*} service" "${entry##*:}"
done
cat <<INFO
  RabbitMQ management   http://127.0.0.1:15672       (guest / guest)$([ -n "$BROKER_USERS" ] && echo "
  RabbitMQ users        $BROKER_USERS, one per service (passwords in $DEV_SECRETS)")$( ((RABBITMQ_NODES > 1)) && echo "
  RabbitMQ cluster      $RABBITMQ_NODES nodes, AMQP on 5672-$((5671 + RABBITMQ_NODES)), quorum queues")
  MailDev (emails)      http://127.0.0.1:$MAILDEV_WEB_PORT
  Admin token           $ADMIN_TOKEN   (scripts/token.sh --admin)
  Token of customer c1  $(mint_token c1)
                        (scripts/token.sh CUSTOMER_ID makes another; valid for a day)

  Try:  curl -s $INVENTORY_URL/api/products/category/demo
  Instances of each service: $REPLICAS$( ((REPLICAS > 1)) && echo " (behind nginx)")
  A service that crashes is restarted. Ctrl-C stops everything this script started.

INFO
# A supervisor returns only when it gives up its service.
wait "${SUPERVISORS[@]}" || true
warn "no service is left running (logs in $LOG_DIR)"
exit 1
