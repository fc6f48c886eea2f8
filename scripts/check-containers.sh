#!/usr/bin/env bash
# The Dockerfile and both compose files, built and run for real with podman
# on a machine without a Docker engine or an image registry:
#
#   1. installs podman, runc and debootstrap (apt) and podman-compose (PyPI,
#      pinned, in $RUN_DIR/venv-containers), and configures podman for this
#      kind of machine in $RUN_DIR/containers/containers.conf (runc,
#      cgroupfs, explicit ulimits), through CONTAINERS_CONF: nothing global
#      is changed;
#   2. makes stand-ins for the base images the files name, once (kept until
#      their Containerfile in scripts/containers/ changes), tagged with the
#      official names so the files stay exactly what users run:
#      debian:bookworm-slim (debootstrap), rust:1.95-bookworm (Debian's C
#      compilers and this machine's Rust 1.95), rabbitmq:3.13-management
#      (Debian's rabbitmq-server), nginx:1.28-alpine (Debian's nginx),
#      mongo:7 and mongo:7.0 (secantusd-rs, the MongoDB-compatible server
#      the scripts run) and maildev/maildev (npm's MailDev);
#   3. dev: runs docker-compose.yml with podman-compose, plus
#      scripts/containers/compose.dev.yml (what the MongoDB stand-in needs,
#      nothing else), the project's image built from its Dockerfile
#      unchanged: the README's first order through the published ports
#      (127.0.0.1 only) must end CONFIRMED with its email in MailDev;
#   4. prod: runs docker-compose.prod.yml the same way, with secrets made
#      for the run and scripts/containers/compose.prod.yml (one MongoDB
#      member instead of the replica set, the only part that cannot run
#      here): compose refuses to start without its secrets; two replicas of
#      each service behind nginx (TLS), both answering; the three-node
#      RabbitMQ cluster with quorum queues; every container's healthcheck
#      passing; a first order CONFIRMED with its email; then a service
#      container killed: it is restarted and orders go on.
#   Each stack is removed afterwards, volumes included.
#
# Each compose file publishes the usual ports (3001-3003, 15672, 1080, and
# 5672 and 27017 for dev, 9001-9003 for prod, on 127.0.0.1): stop
# ./scripts/run.sh and the local infrastructure first.
# The first run takes about 25 minutes (the stand-ins, then a release build
# of the workspace inside the build container, whose cargo cache is kept);
# later runs about 10 (the workspace's own crates rebuilt and linked, the
# two stacks started). podman 4.3 runs no healthchecks without systemd, and
# podman-compose then ignores `condition: service_healthy`: the services
# start beside their infrastructure and wait for it themselves, which this
# run shows they do; the healthchecks are run here by hand instead.
#
#   bash scripts/check-containers.sh            # both files
#   bash scripts/check-containers.sh dev|prod   # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
source scripts/lib/registry.sh
source nginx/render.sh
source scripts/lib/secrets.sh

PODMAN_COMPOSE_VERSION=1.6.0
DIR="$RUN_DIR/containers"
VENV="$RUN_DIR/venv-containers"
STANDINS=scripts/containers
mkdir -p "$DIR" "$LOG_DIR"
export CONTAINERS_CONF="$DIR/containers.conf"

WHICH=("$@")
((${#WHICH[@]})) || WHICH=(dev prod)
for which in "${WHICH[@]}"; do
  [[ $which == dev || $which == prod ]] || fail "usage: scripts/check-containers.sh [dev] [prod] (not '$which')"
done

# ---------------------------------------------------------------- tools

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  [ -x /usr/sbin/runc ] || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
  if [ "$("$VENV/bin/podman-compose" --version 2>/dev/null | grep -o 'podman-compose version [0-9.]*' | awk '{print $3}')" != "$PODMAN_COMPOSE_VERSION" ]; then
    python3 -m venv "$VENV" >/dev/null 2>&1 || { apt_install python3-venv && python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >"$LOG_DIR/podman-compose-install.log" 2>&1 \
      || fail "pip install podman-compose failed (see $LOG_DIR/podman-compose-install.log)"
  fi
  # The MongoDB stand-in is the server the scripts run.
  install_secantus
  # crun, the default runtime, refuses this machine's hybrid cgroups, and
  # setrlimit to podman's default limits is not permitted here.
  cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[engine.runtimes]
runc = ["/usr/sbin/runc"]
CONF
  note "podman $(podman --version | awk '{print $3}'), podman-compose $PODMAN_COMPOSE_VERSION, runc"
}

# ---------------------------------------------------------------- stand-ins

# The stamp of a stand-in: its Containerfile and whatever else goes in.
stamp() { cat "$@" | sha256sum | cut -c1-16; }

# fresh IMAGE STAMP: whether IMAGE exists, made from this STAMP.
fresh() {
  [ "$(podman image inspect --format '{{ index .Labels "saga.stand-in" }}' "$1" 2>/dev/null)" = "$2" ]
}

# build_standin [--build-arg NAME=VALUE]... IMAGE CONTAINERFILE CONTEXT
# [FILES...]: builds IMAGE unless it is fresh; the build arguments and
# FILES (besides the Containerfile) enter its stamp.
build_standin() {
  local build_args=()
  while [ "$1" = --build-arg ]; do
    build_args+=("$1" "$2")
    shift 2
  done
  local image=$1 file=$2 context=$3 label log
  shift 3
  log="$LOG_DIR/standin-$(basename "${image//:/-}").log"
  # Every stand-in is made FROM the Debian one: a new base, a new stand-in.
  label=$(stamp "$file" "$@" <(podman image inspect --format '{{.Id}}' docker.io/library/debian:bookworm-slim) \
    <(echo "${build_args[@]}"))
  if fresh "$image" "$label"; then
    note "$image: stand-in up to date"
    return
  fi
  note "$image: building the stand-in (log: $log)"
  podman build --network=host "${build_args[@]}" --label "saga.stand-in=$label" -f "$file" -t "$image" "$context" \
    >"$log" 2>&1 || { tail -n 20 "$log" >&2; fail "could not build the stand-in $image"; }
}

# The machine's own certificate authorities (an egress proxy that inspects
# TLS, say), for the stand-ins: Debian's ca-certificates, which the images
# install, then trusts them, and builds reach crates.io and npm as this
# machine does. The project's Dockerfile is unchanged.
EXTRA_CAS=(/usr/local/share/ca-certificates/*.crt)
[ -e "${EXTRA_CAS[0]}" ] || EXTRA_CAS=()

# slim ROOT: what makes the official debian:*-slim images slim, in ROOT:
# apt keeps no package caches and dpkg installs no documentation, manual
# pages or translations (debuerreotype's settings), so that images built
# on the stand-in weigh what they would on the official one.
slim() {
  cat >"$1/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::Languages "none";' >"$1/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$1/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$1/etc/apt/apt.conf.d/docker-autoremove-suggests"
  cat >"$1/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
DPKG
  find "$1/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$1"/usr/share/{man,groff,info,lintian,linda,locale}/*
}

debian_base() {
  local image=docker.io/library/debian:bookworm-slim label
  label="debootstrap-bookworm-minbase-slim-$( ((${#EXTRA_CAS[@]})) && stamp "${EXTRA_CAS[@]}")"
  if fresh "$image" "$label"; then
    note "$image: stand-in up to date"
    return
  fi
  note "$image: debootstrap bookworm (about 2 minutes)"
  local root="$DIR/rootfs-bookworm"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$LOG_DIR/debootstrap.log" 2>&1 \
    || fail "debootstrap failed (see $LOG_DIR/debootstrap.log)"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  slim "$root"
  if ((${#EXTRA_CAS[@]})); then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "${EXTRA_CAS[@]}" "$root/usr/local/share/ca-certificates/"
  fi
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' --change "LABEL saga.stand-in=$label" - "$image" \
    >>"$LOG_DIR/debootstrap.log" 2>&1 || fail "podman import failed (see $LOG_DIR/debootstrap.log)"
  rm -rf "$root"
}

standins() {
  debian_base
  build_standin docker.io/library/rabbitmq:3.13-management "$STANDINS/rabbitmq.Containerfile" "$STANDINS" \
    "$STANDINS/rabbitmq-entrypoint.sh"
  build_standin docker.io/library/nginx:1.28-alpine "$STANDINS/nginx.Containerfile" "$STANDINS"
  # docker-compose.yml takes the latest MailDev, the production file 2.1.0.
  build_standin --build-arg MAILDEV_VERSION=2.2.1 docker.io/maildev/maildev:latest \
    "$STANDINS/maildev.Containerfile" "$STANDINS"
  build_standin --build-arg MAILDEV_VERSION=2.1.0 docker.io/maildev/maildev:2.1.0 \
    "$STANDINS/maildev.Containerfile" "$STANDINS"
  # The server the scripts run, and what stands in for mongosh.
  local context="$DIR/mongo-context" file
  mkdir -p "$context"
  for file in "$(command -v secantusd-rs)" "$STANDINS/mongo-entrypoint.sh" "$STANDINS/mongo-users.py"; do
    cp -f "$file" "$context/"
  done
  build_standin docker.io/library/mongo:7 "$STANDINS/mongo.Containerfile" "$context" "$context"/*
  podman tag docker.io/library/mongo:7 docker.io/library/mongo:7.0
  # This machine's Rust (rustup's active toolchain), without its docs.
  local toolchain
  toolchain=$(rustc --print sysroot)
  context="$DIR/rust-context"
  if [ "$(cat "$context/sysroot" 2>/dev/null)" != "$toolchain $(rustc --version)" ]; then
    rm -rf "$context" && mkdir -p "$context/toolchain"
    cp -a "$toolchain"/{bin,lib,libexec,etc} "$context/toolchain/"
    echo "$toolchain $(rustc --version)" >"$context/sysroot"
  fi
  build_standin docker.io/library/rust:1.95-bookworm "$STANDINS/rust.Containerfile" "$context" "$context/sysroot"
}

# ---------------------------------------------------------------- helpers

# The stack of the run: the compose file users run, podman-compose's
# arguments for it (the file, its override, ...), the project's name.
COMPOSE_FILE=""
COMPOSE_ARGS=()
PROJECT=""
compose() {
  "$VENV/bin/podman-compose" -p "$PROJECT" "${COMPOSE_ARGS[@]}" "$@"
}

# The services' ports (services/registry.txt), which both files publish.
mapfile -t SERVICE_PORTS < <(registry_lines | cut -d' ' -f2)

# retry SECONDS COMMAND...: COMMAND once a second until it succeeds; false
# if it has not within SECONDS.
retry() {
  local limit=$1 waited=0
  shift
  until "$@"; do
    ((waited < limit)) || return 1
    sleep 1
    waited=$((waited + 1))
  done
}

port_closed() { ! port_open "$1"; }

# ports_free PORT...: each closed within 30 s (infrastructure just told to
# stop may take a moment).
ports_free() {
  local port
  for port in "$@"; do
    retry 30 port_closed "$port" \
      || fail "port $port is taken: $COMPOSE_FILE publishes it (stop ./scripts/run.sh and the local infrastructure first)"
  done
}

# up LOG [ARGS...]: builds the image (reaching crates.io as the machine
# does; the docker format keeps the Dockerfile's HEALTHCHECK, which OCI
# images drop) and starts the stack (ARGS go to `up`).
up() {
  local started=$SECONDS log=$1
  shift
  step "$COMPOSE_FILE: building the image and starting the stack (log: $log)"
  compose --podman-build-args='--network=host --format docker' up -d --build "$@" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; fail "podman-compose up failed (see $log)"; }
  note "up in $((SECONDS - started)) s"
}

# wait_ready SECONDS WHAT CURL_ARGS...: until curl answers 2xx.
wait_ready() {
  local limit=$1 what=$2
  shift 2
  retry "$limit" curl -fsS -m 2 -o /dev/null "$@" 2>/dev/null \
    || { compose logs --tail 20 >&2 || true; fail "$what did not answer within $limit s"; }
}

json() { python3 -c 'import json,sys; print(json.load(sys.stdin)'"$1"')'; }

# order_status ORDER_URL TOKEN CURL_ARGS...
order_status() {
  local url=$1 token=$2
  shift 2
  curl -fsS "$@" "$url" -H "Authorization: Bearer $token" | json '["status"]'
}
settled() { [ "$(order_status "$@")" != PENDING ]; }

# has_email MAILDEV_URL ADDRESS: MailDev holds an email to ADDRESS.
has_email() { curl -fsS "$1/email" | grep -q "$2"; }

# first_order ORDERS_URL PRODUCTS_URL MAILDEV_URL CURL_ARGS...: the README's
# first order (a product made with the admin token, then ordered by
# customer c1) must end CONFIRMED with its email in MailDev.
first_order() {
  local orders=$1 products=$2 maildev=$3 token product order status email="c1-$RANDOM@example.com"
  shift 3
  token=$(mint_token c1)
  product=$(curl -fsS "$@" -X POST "$products" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"sku":"CHECK-'"$RANDOM"'","name":"Mug","category":"demo","price":12.50,"stock":10,"lowStockThreshold":1}' \
    | json '["productId"]')
  order=$(curl -fsS "$@" -X POST "$orders" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d '{"customerId":"c1","customerEmail":"'"$email"'","items":[{"productId":"'"$product"'","quantity":2}]}' \
    | json '["orderId"]')
  retry 60 settled "$orders/$order" "$token" "$@" || true
  status=$(order_status "$orders/$order" "$token" "$@")
  [ "$status" = CONFIRMED ] || fail "order $order ended $status, not CONFIRMED"
  retry 30 has_email "$maildev" "$email" || fail "no email to $email in MailDev"
  note "order $order CONFIRMED, its email in MailDev"
}

# stack_containers [PODMAN_PS_ARGS...]: the names of the stack's containers
# (running ones only, unless given -a).
stack_containers() { podman ps "$@" --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'; }

# teardown [FAILED]: keeps every container's log in
# $LOG_DIR/containers-$PROJECT/, and after a failure shows what each
# container was doing and nginx's last requests; then removes the stack.
teardown() {
  [ -n "$PROJECT" ] || return 0
  local dir="$LOG_DIR/containers-$PROJECT" name
  rm -rf "$dir" && mkdir -p "$dir"
  for name in $(stack_containers -a); do
    podman logs "$name" >"$dir/$name.log" 2>&1 || true
  done
  if [ "${1:-}" = failed ]; then
    echo "the containers as the check failed (their logs: $dir):" >&2
    stack_containers -a | xargs -r podman inspect -f '  {{.Name}}: {{.State.Status}}, exit {{.State.ExitCode}}, {{.RestartCount}} restarts, at{{range .NetworkSettings.Networks}} {{.IPAddress}}{{end}}' >&2 || true
    name=$(container nginx 1)
    [ ! -s "$dir/$name.log" ] || { echo "nginx's last lines:" >&2; tail -n 30 "$dir/$name.log" >&2; }
    # A service's warnings and errors say why it restarted or is not ready.
    for name in "$dir"/*-service_*.log; do
      [ -e "$name" ] || continue
      echo "$(basename "$name" .log), its last warnings and errors:" >&2
      grep -E '"level":"(WARN|ERROR)"|panicked' "$name" | tail -n 8 | cut -c1-400 >&2 || true
    done
  fi
  step "Removing the stack, its volumes included"
  compose down -v >>"$LOG_DIR/compose-$PROJECT.log" 2>&1 || warn "podman-compose down failed (see $LOG_DIR/compose-$PROJECT.log)"
  PROJECT=""
}

cleanup() {
  local status=$?
  if ((status)); then teardown failed; else teardown; fi
  # The images built stay, with their build stage: a run on the same
  # sources builds nothing (the second compose file's build, too), and the
  # cargo cache (a build cache mount) makes the next change quick. Untagged
  # images a day old are from earlier sources.
  podman image prune -f --filter until=24h >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- the dev file

check_dev() {
  COMPOSE_FILE=docker-compose.yml
  COMPOSE_ARGS=(-f "$COMPOSE_FILE" -f "$STANDINS/compose.dev.yml")
  PROJECT=ecommerce-saga-dev
  ports_free "${SERVICE_PORTS[@]}" 5672 15672 27017 1025 1080
  local started port
  up "$LOG_DIR/compose-$PROJECT.log"
  # From the containers' start, not the image build's.
  started=$SECONDS
  for port in "${SERVICE_PORTS[@]}"; do wait_ready 300 "the service on $port" "http://127.0.0.1:$port/ready"; done
  wait_ready 60 MailDev http://127.0.0.1:1080/
  note "every service ready $((SECONDS - started)) s after the containers started"

  step "The README's first order, through the published ports"
  ADMIN_TOKEN=dev-admin-token JWT_SECRET=dev-jwt-secret-for-docker-compose-only JWT_ISSUER="" JWT_AUDIENCE="" \
    first_order "http://127.0.0.1:$(registry_port order)/api/orders" \
    "http://127.0.0.1:$(registry_port inventory)/api/products" http://127.0.0.1:1080
  teardown
  step "docker-compose.yml ran the README's first order end to end"
}

# ---------------------------------------------------------------- the prod file

PROD="$DIR/prod"

# The secrets docker-compose.prod.yml requires (.env.example's), made for
# this run in $PROD/.env: random passwords, the two key files, a
# certificate for localhost; the published ports on 127.0.0.1 only.
prod_secrets() {
  rm -rf "$PROD" && mkdir -p "$PROD" && chmod 700 "$PROD"
  openssl rand -base64 756 >"$PROD/mongo-keyfile"
  openssl rand -hex 32 >"$PROD/rabbitmq-erlang-cookie"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$PROD/tls.key" -out "$PROD/tls.crt" 2>/dev/null
  chmod 600 "$PROD"/*
  (
    umask 077
    local name
    for name in ADMIN_TOKEN MONGO_ROOT_PASSWORD MONGO_APP_PASSWORD RABBITMQ_PASSWORD JWT_SECRET; do
      echo "$name=$(openssl rand -hex 32)"
    done
    for name in $(registry_names); do echo "RABBITMQ_${name^^}_PASSWORD=$(openssl rand -hex 24)"; done
    cat <<ENV
MONGO_KEYFILE=$PROD/mongo-keyfile
RABBITMQ_ERLANG_COOKIE_FILE=$PROD/rabbitmq-erlang-cookie
TLS_CERT_FILE=$PROD/tls.crt
TLS_KEY_FILE=$PROD/tls.key
SMTP_HOST=maildev
ADMIN_EMAIL=ops@example.com
NOTIFY_FROM=shop@example.com
JWT_ISSUER=https://id.example.com/
JWT_AUDIENCE=shop
ALLOWED_HOSTS=localhost
PUBLISH_ADDRESS=127.0.0.1
ENV
  ) >"$PROD/.env"
}

# refused ENV_FILE NAME: compose, given ENV_FILE (and nothing from this
# shell), must refuse the file, naming NAME.
refused() {
  local answer
  if answer=$(env -i PATH="$PATH" HOME="$HOME" CONTAINERS_CONF="$CONTAINERS_CONF" \
    "$VENV/bin/podman-compose" --env-file "$1" -f docker-compose.prod.yml config 2>&1); then
    fail "docker-compose.prod.yml resolved without $2"
  fi
  grep -q "$2" <<<"$answer" || fail "compose refused the file without $2 but did not name it: $(tail -n 3 <<<"$answer")"
}

# healthy CONTAINER: its healthcheck passes, within the three tries the
# files allow (5 s apart here, not 10); if not, what it says and logs.
healthy() {
  local try
  for try in 1 2 3; do
    podman healthcheck run "$1" >/dev/null 2>&1 && return 0
    sleep 5
  done
  podman healthcheck run "$1" >&2 || true
  podman inspect -f '{{.Name}}: {{.State.Status}}, {{.RestartCount}} restarts' "$1" >&2
  podman logs --tail 20 "$1" >&2 || true
  return 1
}

# The containers that were restarted, and how often.
restarts() {
  stack_containers -a | xargs podman inspect -f '{{.Name}} {{.RestartCount}}' | awk '$2 > 0 { sub(/^'"$PROJECT"'_/, "", $1); printf "%s%s %s", sep, $1, $2; sep = ", " } END { if (!sep) printf "none" }'
}

# replica_ready CONTAINER PORT: the service in CONTAINER answers /ready on
# PORT (asked from inside: the replicas publish nothing).
replica_ready() { podman exec "$1" curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$2/ready" 2>/dev/null; }

# not_ready CONTAINER PORT: fails, with what the replica's /ready answers
# (the teardown then shows its state and its last warnings).
not_ready() {
  echo "$1 answers /ready with: $(podman exec "$1" curl -sS -m 2 "http://127.0.0.1:$2/ready" 2>&1)" >&2
  fail "$1 did not become ready within 300 s"
}

# The RabbitMQ nodes running in the cluster, as rabbitmq-1 sees it.
running_nodes() {
  podman exec "$(container rabbitmq-1 1)" rabbitmqctl -q cluster_status --formatter json \
    | json '["running_nodes"]' | tr -d "[]',"
}
three_nodes() { [ "$(running_nodes | wc -w)" = 3 ]; }

# restarted CONTAINER PID: CONTAINER runs again, as a process other than PID.
restarted() {
  local state
  state=$(podman inspect -f '{{.State.Running}} {{.State.Pid}}' "$1")
  [[ $state == "true "* && $state != "true $2" ]]
}

# A replica's container, by service and number.
container() { echo "${PROJECT}_$1_$2"; }

# served_by PORT: the distinct upstream addresses nginx's log shows for
# requests on PORT.
served_by() {
  podman logs "$(container nginx 1)" 2>/dev/null | grep -F "\"GET /health?via=$1 " \
    | grep -o 'upstream=[0-9.:]*' | sort -u | wc -l
}

check_prod() {
  COMPOSE_FILE=docker-compose.prod.yml
  COMPOSE_ARGS=(--env-file "$PROD/.env" --profile demo -f "$COMPOSE_FILE" -f "$STANDINS/compose.prod.yml")
  PROJECT=ecommerce-saga-prod
  local internal=() port
  for port in "${SERVICE_PORTS[@]}"; do internal+=("$(nginx_internal_port "$port")"); done
  ports_free "${SERVICE_PORTS[@]}" "${internal[@]}" 15672 1080
  step "docker-compose.prod.yml: its secrets are required"
  prod_secrets
  # Without any, compose names the first it resolves.
  refused /dev/null 'required variable [A-Z_]* is missing a value'
  grep -v '^ADMIN_TOKEN=' "$PROD/.env" >"$PROD/without-token.env"
  refused "$PROD/without-token.env" ADMIN_TOKEN
  grep -v '^RABBITMQ_INVENTORY_PASSWORD=' "$PROD/.env" >"$PROD/without-broker-password.env"
  refused "$PROD/without-broker-password.env" RABBITMQ_INVENTORY_PASSWORD
  note "refused without them, naming what is missing"

  set -a
  # shellcheck disable=SC1091
  source "$PROD/.env"
  set +a
  local started port tls=(--cacert "$PROD/tls.crt")
  for port in "${SERVICE_PORTS[@]}"; do tls+=(--resolve "localhost:$port:127.0.0.1"); done
  # podman before 5.6 cannot start a container whose running dependency
  # has dependencies of its own (a service, then mongo-init, then mongo-1:
  # containers/podman-compose#921), so podman-compose is told not to pass
  # them on; it still creates the containers in their order.
  up "$LOG_DIR/compose-$PROJECT.log" --no-deps
  started=$SECONDS
  for port in "${SERVICE_PORTS[@]}"; do wait_ready 300 "nginx for the service on $port" "${tls[@]}" "https://localhost:$port/ready"; done
  wait_ready 60 MailDev http://127.0.0.1:1080/
  note "every service ready behind nginx $((SECONDS - started)) s after the containers started"

  step "Two replicas of each service, both answering through nginx"
  # nginx answers once one replica is ready; each must be, before nginx
  # can be seen to send to both.
  local name i replica
  for name in $(registry_names); do
    for i in 1 2; do
      replica=$(container "$name-service" "$i")
      retry 300 replica_ready "$replica" "$(registry_port "$name")" || not_ready "$replica" "$(registry_port "$name")"
    done
  done
  # nginx skips a replica for 2 s after a failed connection (max_fails=1,
  # fail_timeout=2s in nginx/prod.conf), one it may have met while they
  # started, and answers 503 if it met both (each worker remembers its
  # own): each port first answers once within 5 s, then every request
  # must, spread over up to 5 s.
  for port in "${SERVICE_PORTS[@]}"; do
    retry 5 curl -fsS -o /dev/null "${tls[@]}" "https://localhost:$port/health" 2>/dev/null \
      || fail "nginx did not answer on $port within 5 s, with both replicas ready"
    for i in $(seq 20); do
      curl -fsS -o /dev/null "${tls[@]}" "https://localhost:$port/health?via=$port" \
        || fail "a request on $port through nginx failed, with both replicas ready"
      [ "$(served_by "$port")" -ge 2 ] && break
      sleep 0.25
    done
    [ "$(served_by "$port")" -ge 2 ] || fail "nginx sent all of 20 requests on $port to one replica"
  done
  note "each service: 2 containers running, requests through nginx answered by both"

  step "The RabbitMQ cluster, its quorum queues, every healthcheck"
  # The nodes join the cluster as they start, the last one possibly after
  # the services are ready (they need any one node): up to 120 s.
  retry 120 three_nodes || fail "the cluster's running nodes are $(running_nodes) after 120 s, not 3"
  local queues
  queues=$(podman exec "$(container rabbitmq-1 1)" rabbitmqctl -q list_queues name type --formatter json)
  python3 - "$queues" $(registry_names) <<'PY' || fail "the services' queues are not quorum queues: $queues"
import json, sys
types = {q["name"]: q["type"] for q in json.loads(sys.argv[1])}
sys.exit(any(types.get(f"{name}-service.events") != "quorum" for name in sys.argv[2:]))
PY
  note "3 nodes running; each service's queue a quorum queue"
  local checked=0
  for name in $(stack_containers); do
    [ -n "$(podman inspect -f '{{.Config.Healthcheck}}' "$name" | tr -d '<>[]{} ' | sed 's/nil//')" ] || continue
    healthy "$name" || fail "the healthcheck of $name fails"
    checked=$((checked + 1))
  done
  note "$checked healthchecks run by hand, all healthy"
  note "restarts while the stack came up: $(restarts)"

  step "The first order, through nginx"
  local orders products
  orders="https://localhost:$(registry_port order)/api/orders"
  products="https://localhost:$(registry_port inventory)/api/products"
  first_order "$orders" "$products" http://127.0.0.1:1080 "${tls[@]}"

  step "A service container killed: it comes back, and orders go on"
  local victim pid
  victim=$(container inventory-service 1)
  pid=$(podman inspect -f '{{.State.Pid}}' "$victim")
  kill -KILL "$pid"
  note "killed $victim (pid $pid)"
  first_order "$orders" "$products" http://127.0.0.1:1080 "${tls[@]}"
  retry 60 restarted "$victim" "$pid" || fail "$victim was not restarted within 60 s"
  healthy "$victim" || fail "$victim was restarted but is not healthy"
  note "$victim restarted by its restart policy, and healthy"
  teardown
  step "docker-compose.prod.yml ran with replicas behind nginx, the cluster, and a container killed"
}

step "Tools"
install_tools
step "Stand-in base images (made once)"
standins
trap cleanup EXIT
for which in "${WHICH[@]}"; do "check_$which"; done
