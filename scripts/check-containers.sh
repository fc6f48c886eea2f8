#!/usr/bin/env bash
# The Dockerfile and docker-compose.yml, built and run for real with podman
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
#      (Debian's rabbitmq-server), mongo:7 (secantusd-rs, the
#      MongoDB-compatible server the scripts run) and maildev/maildev
#      (npm's MailDev);
#   3. runs docker-compose.yml with podman-compose, plus
#      scripts/containers/compose.dev.yml (what the MongoDB stand-in needs,
#      nothing else), the project's image built from its Dockerfile
#      unchanged: the README's first order through the published ports
#      (127.0.0.1 only) must end CONFIRMED with its email in MailDev; then
#      everything is removed, volumes included.
#
# The compose file publishes the usual ports (3001-3003, 5672, 15672, 27017,
# 1025, 1080): stop ./scripts/run.sh and the local infrastructure first.
# The first run takes about 20 minutes (the stand-ins, then a release build
# of the workspace inside the build container, whose cargo cache is kept);
# later runs about 6 (the workspace's own crates rebuilt and linked).
# podman 4.3 runs no healthchecks without systemd and podman-compose then
# ignores `condition: service_healthy`: the services start beside their
# infrastructure and wait for it themselves, which this run shows they do.
#
#   bash scripts/check-containers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh

PODMAN_COMPOSE_VERSION=1.6.0
DIR="$RUN_DIR/containers"
VENV="$RUN_DIR/venv-containers"
STANDINS=scripts/containers
PROJECT=ecommerce-saga-check
mkdir -p "$DIR" "$LOG_DIR"
export CONTAINERS_CONF="$DIR/containers.conf"

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

# build_standin IMAGE CONTAINERFILE CONTEXT [FILES...]: builds IMAGE unless
# it is fresh; FILES (besides the Containerfile) enter its stamp.
build_standin() {
  local image=$1 file=$2 context=$3 label log
  shift 3
  log="$LOG_DIR/standin-$(basename "${image%%:*}").log"
  # Every stand-in is made FROM the Debian one: a new base, a new stand-in.
  label=$(stamp "$file" "$@" <(podman image inspect --format '{{.Id}}' docker.io/library/debian:bookworm-slim))
  if fresh "$image" "$label"; then
    note "$image: stand-in up to date"
    return
  fi
  note "$image: building the stand-in (log: $log)"
  podman build --network=host --label "saga.stand-in=$label" -f "$file" -t "$image" "$context" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; fail "could not build the stand-in $image"; }
}

# The machine's own certificate authorities (an egress proxy that inspects
# TLS, say), for the stand-ins: Debian's ca-certificates, which the images
# install, then trusts them, and builds reach crates.io and npm as this
# machine does. The project's Dockerfile is unchanged.
EXTRA_CAS=(/usr/local/share/ca-certificates/*.crt)
[ -e "${EXTRA_CAS[0]}" ] || EXTRA_CAS=()

debian_base() {
  local image=docker.io/library/debian:bookworm-slim label
  label="debootstrap-bookworm-minbase-$( ((${#EXTRA_CAS[@]})) && stamp "${EXTRA_CAS[@]}")"
  if fresh "$image" "$label"; then
    note "$image: stand-in up to date"
    return
  fi
  note "$image: debootstrap bookworm (about 2 minutes)"
  local root="$DIR/rootfs-bookworm"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$LOG_DIR/debootstrap.log" 2>&1 \
    || fail "debootstrap failed (see $LOG_DIR/debootstrap.log)"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
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
  build_standin docker.io/maildev/maildev:latest "$STANDINS/maildev.Containerfile" "$STANDINS"
  # The server the scripts run (installed by infra.sh's tools step).
  local context="$DIR/mongo-context"
  mkdir -p "$context"
  cp -f "$(command -v secantusd-rs)" "$context/"
  build_standin docker.io/library/mongo:7 "$STANDINS/mongo.Containerfile" "$context" "$context/secantusd-rs"
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

# ---------------------------------------------------------------- the dev file

compose() {
  "$VENV/bin/podman-compose" -p "$PROJECT" -f docker-compose.yml -f "$STANDINS/compose.dev.yml" "$@"
}

# wait_ready URL SECONDS WHAT
wait_ready() {
  local waited=0
  until curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; do
    ((waited < $2)) || { compose logs --tail 20 >&2 || true; fail "$3 did not answer $1 within $2 s"; }
    sleep 2
    waited=$((waited + 2))
  done
}

check_dev_compose() {
  local port
  for port in 3001 3002 3003 5672 15672 27017 1025 1080; do
    port_open "$port" && fail "port $port is taken: docker-compose.yml publishes it (stop ./scripts/run.sh and the local infrastructure first)"
  done
  step "docker-compose.yml: building the image and starting the stack (log: $LOG_DIR/compose-dev.log)"
  local started=$SECONDS
  # The build reaches crates.io as the machine does; the docker format keeps
  # the Dockerfile's HEALTHCHECK, which OCI images drop.
  compose --podman-build-args='--network=host --format docker' up -d --build >"$LOG_DIR/compose-dev.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/compose-dev.log" >&2; fail "podman-compose up failed (see $LOG_DIR/compose-dev.log)"; }
  note "up in $((SECONDS - started)) s; waiting for the services"
  for port in 3001 3002 3003; do wait_ready "http://127.0.0.1:$port/ready" 300 "the service on $port"; done
  wait_ready http://127.0.0.1:1080/ 60 MailDev
  note "every service ready $((SECONDS - started)) s after the start"

  step "The README's first order, through the published ports"
  local admin=dev-admin-token token product order status email="c1-$RANDOM@example.com"
  token=$(JWT_SECRET=dev-jwt-secret-for-docker-compose-only RUN_DIR="$DIR/token" bash scripts/token.sh c1)
  product=$(curl -fsS -X POST http://127.0.0.1:3002/api/products -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/json' \
    -d '{"sku":"CHECK-'"$RANDOM"'","name":"Mug","category":"demo","price":12.50,"stock":10,"lowStockThreshold":1}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["productId"])')
  order=$(curl -fsS -X POST http://127.0.0.1:3001/api/orders -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d '{"customerId":"c1","customerEmail":"'"$email"'","items":[{"productId":"'"$product"'","quantity":2}]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["orderId"])')
  for _ in $(seq 60); do
    status=$(curl -fsS "http://127.0.0.1:3001/api/orders/$order" -H "Authorization: Bearer $token" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = PENDING ] || break
    sleep 1
  done
  [ "$status" = CONFIRMED ] || fail "order $order ended $status, not CONFIRMED"
  note "order $order CONFIRMED"
  for _ in $(seq 30); do
    curl -fsS http://127.0.0.1:1080/email | grep -q "$email" && break
    sleep 1
  done
  curl -fsS http://127.0.0.1:1080/email | grep -q "$email" || fail "no email to $email in MailDev"
  note "its email is in MailDev (http://127.0.0.1:1080)"
}

teardown() {
  step "Removing the stack, its volumes included"
  compose down -v >>"$LOG_DIR/compose-dev.log" 2>&1 || warn "podman-compose down failed (see $LOG_DIR/compose-dev.log)"
  # The image it built and the build stages; the stand-ins and the cargo
  # cache (a build cache mount) stay for the next run.
  podman rmi -f localhost/ecommerce-saga:dev >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
}

step "Tools"
install_tools
step "Stand-in base images (made once)"
standins
trap teardown EXIT
check_dev_compose
step "docker-compose.yml ran the README's first order end to end"
