#!/usr/bin/env bash
# Offline checks of the deployment files, on a machine without Docker:
#
#   compose   docker-compose.yml and docker-compose.prod.yml resolve with
#             docker-compose (anchors, merges, interpolation); the prod file
#             resolves with its required variables set and refuses to
#             without each of them
#   nginx     `nginx -t` accepts nginx/nginx.conf.template rendered as
#             run.sh renders it (nginx/render.sh), and nginx/prod.conf
#             mounted as docker-compose.prod.yml mounts it, with the compose
#             services' names resolvable (a private mount namespace with its
#             own /etc/hosts: the machine's files are not touched); and
#             prod.conf run, on moved ports before a stub: TLS only on the
#             public listeners, the admin routes and /metrics internal only
#   rules     the resolved prod file: only nginx publishes ports (others on
#             127.0.0.1 only); every container has a healthcheck (one-shot
#             init containers aside), a restart policy, a memory limit and,
#             if long-running, a stop grace period; the services share one
#             image built once, run 2+ replicas, quorum queues,
#             APP_ENV=production and JSON logs, and trust nginx alone; no
#             `guest` anywhere and no default for a secret
#   registry  both compose files against services/registry.txt: a block per
#             service with its command, PORT and MONGODB_DATABASE, and no
#             other block than the infrastructure listed in the check; in
#             the prod file nginx waits for and publishes every service, and
#             mongo-init grants exactly the registry's databases
#   image     the Dockerfile copies the whole workspace, builds the
#             registry's services with -p (read from services/registry.txt,
#             not named) and runs as a non-root user; .dockerignore keeps
#             target, .run and .git out
#   deploy    deploy/check.sh (the Kubernetes manifests' checks, the
#             services of services/registry.txt among them), if present
#
# Installs what it needs once, pinned: docker-compose 1.29.2 from PyPI (the
# last Python release; it reads the Compose specification, and its `config`
# needs no Docker engine) in ${RUN_DIR:-.run}/venv-compose, and Debian's
# nginx if missing. (Not in deploy/check.sh's venv: docker-compose 1.29
# needs jsonschema < 4 and PyYAML < 6, its Kubernetes checkers newer ones.)
# Exits non-zero, naming each failed check, if any fails.
#
#   bash scripts/check-deploy.sh               all checks
#   bash scripts/check-deploy.sh --self-test   also breaks each rule on
#       purpose, in a copy of the files, and expects its check to fail (and
#       runs deploy/check.sh --self-test, which does the same for its rules)
#   DEPLOY_ROOT=DIR bash scripts/check-deploy.sh   checks the copy in DIR,
#       services/registry.txt included (what --self-test runs;
#       deploy/check.sh is then skipped)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/lib/infra.sh
SRC=$(cd "${DEPLOY_ROOT:-$ROOT}" && pwd)
source scripts/lib/registry.sh
# registry_lines reads the checked tree's registry (a copy's, under --self-test).
REGISTRY_FILE="$SRC/services/registry.txt"
SELF_TEST=""
case "${1:-}" in
  "") ;;
  --self-test) SELF_TEST=1 ;;
  *) fail "usage: $0 [--self-test]" ;;
esac

COMPOSE_VERSION=1.29.2
VENV="$RUN_DIR/venv-compose"
# docker-compose's dependencies, pinned and installed with --no-deps (which
# also leaves out docker[ssh]'s paramiko and its crypto libraries, used only
# for ssh:// Docker hosts). PyYAML 5.4.1 (compose wants <6) has no wheel for
# Python 3.11 and does not build with Cython 3, hence Cython 0.29 and
# --no-build-isolation.
BUILD_REQUIREMENTS="setuptools==69.5.1 wheel==0.43.0 Cython==0.29.37"
REQUIREMENTS="PyYAML==5.4.1
docker-compose==$COMPOSE_VERSION
docker==7.1.0
dockerpty==0.4.1
docopt==0.6.2
jsonschema==3.2.0
attrs==23.2.0
pyrsistent==0.20.0
six==1.16.0
requests==2.31.0
urllib3==2.2.1
certifi==2024.2.2
idna==3.7
charset-normalizer==3.3.2
texttable==1.7.0
websocket-client==0.59.0
python-dotenv==0.21.1
distro==1.9.0"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOG_DIR"
source scripts/lib/checks.sh

# ---------------------------------------------------------------- tools

install_compose() {
  local stamp="$VENV/.check-deploy-requirements"
  if [ -x "$VENV/bin/docker-compose" ] && [ -f "$stamp" ] \
    && [ "$(cat "$stamp")" = "$BUILD_REQUIREMENTS $REQUIREMENTS" ]; then
    note "docker-compose $COMPOSE_VERSION: present in $VENV"
    return
  fi
  command -v python3 >/dev/null || apt_install python3
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >>"$LOG_DIR/check-deploy-pip.log" 2>&1; then
    # Debian's python3 makes venvs only with python3-venv.
    apt_install python3-venv
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV" >>"$LOG_DIR/check-deploy-pip.log" 2>&1 \
      || fail "could not make a venv in $VENV (see $LOG_DIR/check-deploy-pip.log)"
  fi
  note "pip install docker-compose==$COMPOSE_VERSION into $VENV (log: $LOG_DIR/check-deploy-pip.log)"
  local pip=("$VENV/bin/pip" install --disable-pip-version-check --no-input)
  printf '%s\n' "$REQUIREMENTS" >"$WORK/requirements.txt"
  # shellcheck disable=SC2086
  { "${pip[@]}" $BUILD_REQUIREMENTS \
    && "${pip[@]}" --no-build-isolation "$(head -n 1 "$WORK/requirements.txt")" \
    && "${pip[@]}" --no-deps -r "$WORK/requirements.txt"; } >>"$LOG_DIR/check-deploy-pip.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/check-deploy-pip.log" >&2; fail "installing docker-compose failed (see $LOG_DIR/check-deploy-pip.log)"; }
  "$VENV/bin/docker-compose" version >/dev/null || fail "the installed docker-compose does not run"
  # docker-compose 1.29 predates the Compose Specification's `pull_policy:
  # missing` (its `if_not_present` is the older name of the same policy,
  # which podman does not take), so its schema is taught the current name.
  sed -i 's/"always", "never", "if_not_present", "build"/"always", "never", "missing", "if_not_present", "build"/' \
    "$VENV"/lib/python3*/site-packages/compose/config/compose_spec.json
  grep -q '"missing", "if_not_present"' "$VENV"/lib/python3*/site-packages/compose/config/compose_spec.json \
    || fail "could not teach docker-compose $COMPOSE_VERSION's schema pull_policy: missing"
  printf '%s' "$BUILD_REQUIREMENTS $REQUIREMENTS" >"$stamp"
}

install_nginx() {
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then apt_install nginx; fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  note "$("$NGINX" -v 2>&1) at $NGINX"
}

# ---------------------------------------------------------------- helpers

# compose ARGS...: docker-compose in a clean environment (only the variables
# in COMPOSE_ENV, no .env file), so that what it resolves depends on the
# files alone, not on the caller's environment or a local .env.
compose() {
  env -i PATH="$PATH" HOME="$WORK" LANG=C.UTF-8 "${COMPOSE_ENV[@]}" \
    "$VENV/bin/docker-compose" --env-file "$WORK/empty.env" "$@"
}
COMPOSE_ENV=()

# The prod file's required variables (${VAR:?...}) and a dummy for each: a
# file for the key files, a word otherwise.
required_variables() {
  grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*:?\?' "$SRC/docker-compose.prod.yml" \
    | sed -E 's/^\$\{//; s/:?\?$//' | sort -u
}
dummy_env() {
  local var
  for var in $(required_variables); do
    if [ "$var" != "${1:-}" ]; then
      case $var in
        *FILE) printf '%s=%s\n' "$var" "$WORK/dummy-$var" ;;
        *) printf '%s=dummy-%s\n' "$var" "$(tr 'A-Z_' 'a-z-' <<<"$var")" ;;
      esac
    fi
  done
}

# ---------------------------------------------------------------- checks

check_dev_compose() {
  COMPOSE_ENV=()
  compose -f "$SRC/docker-compose.yml" config >"$WORK/dev.yml"
  # shellcheck disable=SC2046 # one argument per service
  "$VENV/bin/python" - "$WORK/dev.yml" $(registry_lines | awk '{ print $1 "-service" }') <<'PY'
import sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
bad = []
for name in sys.argv[2:]:
    s = services.get(name) or {}
    # From the x-service anchor: proof that the merge was resolved.
    for key in ("healthcheck", "depends_on", "restart"):
        if key not in s:
            bad.append(f"{name}: no {key} (the x-service anchor was not merged?)")
    if "RABBITMQ_URL" not in (s.get("environment") or {}):
        bad.append(f"{name}: no RABBITMQ_URL (the &env anchor was not merged?)")
for line in bad:
    print(line)
sys.exit(1 if bad else 0)
PY
}

check_prod_compose() {
  local var
  mapfile -t COMPOSE_ENV < <(dummy_env)
  [ "${#COMPOSE_ENV[@]}" -gt 0 ] || { echo "no \${VAR:?} in docker-compose.prod.yml"; return 1; }
  for var in "${COMPOSE_ENV[@]}"; do
    case ${var%%=*} in *FILE) : >"${var#*=}" ;; esac
  done
  # nginx -t loads the certificate and key: a real pair.
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$WORK/dummy-TLS_KEY_FILE" -out "$WORK/dummy-TLS_CERT_FILE" 2>/dev/null \
    || { echo "openssl could not make a test certificate"; return 1; }
  # --profile demo: MailDev is resolved (and linted) too.
  compose --profile demo -f "$SRC/docker-compose.prod.yml" config >"$WORK/prod.yml"
  echo "note: required: $(required_variables | paste -sd ' ')"
  "$VENV/bin/python" - "$WORK/prod.yml" "${COMPOSE_ENV[@]}" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
dummies = dict(arg.split("=", 1) for arg in sys.argv[2:])
text = open(sys.argv[1]).read()
# Every required variable's value must reach the resolved file, so each one
# is used, and the anchors that carry them were merged.
missing = [k for k, v in dummies.items() if v not in text]
for k in missing:
    print(f"{k} is required but its value appears nowhere in the resolved file")
env = (doc["services"].get("inventory-service") or {}).get("environment") or {}
if not str(env.get("ADMIN_TOKEN", "")).startswith("dummy-"):
    print("inventory-service has no ADMIN_TOKEN from the x-app-env anchor")
    missing.append("anchor")
sys.exit(1 if missing else 0)
PY
}

# The variables .env.example lists under "Required".
documented_required() {
  sed -n '/^# ---- Required/,/^# ---- /p' "$SRC/.env.example" | grep -oE '^[A-Za-z_][A-Za-z0-9_]*=' | tr -d '=' | sort -u
}

check_prod_requires_each_variable() {
  local var out bad=0
  if [ "$(required_variables)" != "$(documented_required)" ]; then
    echo "required by docker-compose.prod.yml (\${VAR:?}) and listed as required in .env.example differ:"
    diff <(required_variables) <(documented_required) | sed -n 's/^</  only in the compose file:/p; s/^>/  only in .env.example:/p'
    bad=1
  fi
  for var in $(required_variables); do
    mapfile -t COMPOSE_ENV < <(dummy_env "$var")
    if out=$(compose --profile demo -f "$SRC/docker-compose.prod.yml" config 2>&1 >/dev/null); then
      echo "resolves without $var"
      bad=1
    elif ! grep -q "$var" <<<"$out"; then
      echo "without $var it fails, but not naming it: $out"
      bad=1
    fi
  done
  echo "note: each of $(required_variables | wc -l) variables, missing, stops compose with its name"
  return "$bad"
}

check_prod_rules() {
  [ -s "$WORK/prod.yml" ] || { echo "the prod file did not resolve (see above)"; return 1; }
  # shellcheck disable=SC2046 # one argument per service
  "$VENV/bin/python" - "$WORK/prod.yml" "$SRC/docker-compose.prod.yml" "$SRC/.env.example" \
    $(registry_lines | awk '{ print $1 "-service" }') <<'PY'
import ipaddress, re, sys, yaml

resolved_path, raw_path, env_example_path = sys.argv[1:4]
registry = sys.argv[4:]
doc = yaml.safe_load(open(resolved_path))
services = doc["services"]
bad = []

def err(msg):
    bad.append(msg)

# ---- ports: nginx publishes; anything else only on the loopback
def host_ip(port):
    if isinstance(port, dict):                        # long syntax (compose v2)
        return port.get("host_ip") or "", bool(port.get("published"))
    spec = str(port).split("/")[0]
    m = re.match(r"^\[?([0-9a-fA-F:.]+?)\]?:(\d[\d-]*):(\d[\d-]*)$", spec)
    if m:
        return m.group(1), True
    return "", ":" in spec                            # "8080:80" publishes on all interfaces
for name, s in services.items():
    for port in s.get("ports") or []:
        ip, published = host_ip(port)
        if name == "nginx" or not published:
            continue
        try:
            loopback = ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            err(f"{name} publishes {port} beyond 127.0.0.1: only nginx may")
if not services.get("nginx", {}).get("ports"):
    err("nginx publishes no port")

# ---- one-shot containers: restart on-failure, awaited by another service
one_shot = set()
for s in services.values():
    deps = s.get("depends_on") or {}
    if isinstance(deps, dict):
        one_shot |= {d for d, c in deps.items()
                     if (c or {}).get("condition") == "service_completed_successfully"}

for name, s in services.items():
    restart = str(s.get("restart", "no"))
    if restart not in ("always", "unless-stopped") and not restart.startswith("on-failure"):
        err(f"{name}: restart policy is {restart!r}")
    if name in one_shot:
        if not restart.startswith("on-failure"):
            err(f"{name}: a one-shot container should restart on-failure, not {restart!r}")
    else:
        hc = s.get("healthcheck")
        if not hc or hc.get("disable") or hc.get("test") in (["NONE"], "NONE"):
            err(f"{name}: no healthcheck")
        if not s.get("stop_grace_period"):
            err(f"{name}: no stop_grace_period")
    limits = ((s.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    if not (limits.get("memory") or s.get("mem_limit")):
        err(f"{name}: no memory limit (deploy.resources.limits.memory)")

# ---- the services (the registry's: check_compose_registry checks the blocks)
apps = {n: s for n, s in services.items() if (s.get("command") or [None])[0] in registry}
if sorted(apps) != sorted(registry):
    err(f"expected the services {sorted(registry)}, found {sorted(apps)}")
images = {s.get("image") for s in apps.values()}
if len(images) != 1 or None in images:
    err(f"the services should share one image, not {images}")
builders = [n for n, s in apps.items() if s.get("build")]
if len(builders) != 1:
    err(f"exactly one service should build the image (else compose builds it once each): {builders}")
nginx_ips = {str(cfg.get("ipv4_address"))
             for cfg in ((services.get("nginx") or {}).get("networks") or {}).values()
             if isinstance(cfg, dict) and cfg.get("ipv4_address")}
for name, s in apps.items():
    env = s.get("environment") or {}
    if int((s.get("deploy") or {}).get("replicas") or 1) < 2:
        err(f"{name}: fewer than 2 replicas")
    if env.get("AMQP_QUEUE_TYPE") != "quorum":
        err(f"{name}: AMQP_QUEUE_TYPE is {env.get('AMQP_QUEUE_TYPE')!r}, not quorum (a clustered broker)")
    if env.get("APP_ENV") != "production":
        err(f"{name}: APP_ENV is not production")
    for var in ("JWT_ISSUER", "JWT_AUDIENCE", "ALLOWED_HOSTS"):
        if not env.get(var):
            err(f"{name}: {var} is empty (APP_ENV=production refuses to start without it)")
    if env.get("LOG_FORMAT") != "json":
        err(f"{name}: LOG_FORMAT is not json")
    if env.get("BIND_ADDRESS") != "0.0.0.0":
        err(f"{name}: BIND_ADDRESS is not 0.0.0.0")
    trusted = {t.strip() for t in str(env.get("TRUSTED_PROXIES", "")).split(",") if t.strip()}
    if not nginx_ips or trusted != nginx_ips:
        err(f"{name}: TRUSTED_PROXIES {sorted(trusted)} should be nginx's fixed address {sorted(nginx_ips)}")
    if not env.get("PORT"):
        err(f"{name}: no PORT")
for var in ("INVENTORY_URL", "NOTIFICATION_URL"):
    if var not in ((apps.get("order-service") or {}).get("environment") or {}):
        err(f"order-service: no {var}")

# ---- credentials
for path in (raw_path, env_example_path, resolved_path):
    for n, line in enumerate(open(path), 1):
        if re.search(r"guest", line, re.I):
            err(f"{path}:{n}: mentions guest: {line.strip()}")
# A default for a secret (an empty one only passes "unset" through).
secret = re.compile(r"\$\{(\w*(?:PASS|TOKEN|SECRET|COOKIE|KEY)\w*)(:?-[^}]+)\}", re.I)
for n, line in enumerate(open(raw_path), 1):
    for m in secret.finditer(line):
        err(f"{raw_path}:{n}: {m.group(1)} has a default ({m.group(0)}); use ${{{m.group(1)}:?...}}")

for line in bad:
    print(line)
print(f"note: {len(services)} services; one-shot: {sorted(one_shot) or 'none'}; nginx at {sorted(nginx_ips)}")
sys.exit(1 if bad else 0)
PY
}

# The compose files against services/registry.txt. Compose has no loops, so
# each file keeps a block per service, written by hand: this checks them.
check_compose_registry() {
  [ -s "$WORK/dev.yml" ] || { echo "docker-compose.yml did not resolve (see above)"; return 1; }
  [ -s "$WORK/prod.yml" ] || { echo "docker-compose.prod.yml did not resolve (see above)"; return 1; }
  "$VENV/bin/python" - "$WORK/dev.yml" "$WORK/prod.yml" <(registry_lines) <<'PY'
import re, sys, yaml

dev_path, prod_path, registry_path = sys.argv[1:4]
# "<name>-service": (port, database)
registry = {f"{name}-service": (int(port), database)
            for name, port, database in (line.split() for line in open(registry_path))}
# The blocks that are no service of the registry, file by file.
INFRASTRUCTURE = {
    "docker-compose.yml": {"rabbitmq", "mongodb", "maildev"},
    "docker-compose.prod.yml": {"nginx", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3",
                                "mongo-1", "mongo-2", "mongo-3", "mongo-init", "rabbitmq-users",
                                "maildev"},
}
bad = []

def container_port(port):
    if isinstance(port, dict):                        # long syntax
        return int(port["target"])
    return int(str(port).split("/")[0].rsplit(":", 1)[-1])

files = {"docker-compose.yml": dev_path, "docker-compose.prod.yml": prod_path}
for label, path in files.items():
    services = yaml.safe_load(open(path))["services"]
    for name in services:
        if name not in registry and name not in INFRASTRUCTURE[label]:
            bad.append(f"{label}: {name} is neither a service of services/registry.txt nor infrastructure")
    for name, (port, database) in registry.items():
        s = services.get(name)
        if s is None:
            bad.append(f"{label}: no block {name} (services/registry.txt)")
            continue
        if s.get("command") != [name]:
            bad.append(f"{label}: {name}: command is {s.get('command')}, not [\"{name}\"]")
        env = s.get("environment") or {}
        if str(env.get("PORT")) != str(port):
            bad.append(f"{label}: {name}: PORT is {env.get('PORT')}, services/registry.txt says {port}")
        if env.get("MONGODB_DATABASE") != database:
            bad.append(f"{label}: {name}: MONGODB_DATABASE is {env.get('MONGODB_DATABASE')}, "
                       f"services/registry.txt says {database}")
        for p in s.get("ports") or []:
            if container_port(p) != port:
                bad.append(f"{label}: {name}: publishes container port {container_port(p)}, not its PORT {port}")

prod = yaml.safe_load(open(prod_path))["services"]
nginx = prod.get("nginx") or {}
waits = nginx.get("depends_on") or {}
published = {container_port(p) for p in nginx.get("ports") or []}
for name, (port, _) in registry.items():
    if name not in waits:
        bad.append(f"docker-compose.prod.yml: nginx does not wait for {name} (depends_on)")
    if port not in published:
        bad.append(f"docker-compose.prod.yml: nginx does not publish {name}'s port {port}")
# mongo-init gives the services' user readWrite on these databases.
script = " ".join(str(part) for part in (prod.get("mongo-init") or {}).get("entrypoint") or [])
m = re.search(r"const roles = \[(.*?)\]", script, re.S)
granted = set(re.findall(r'"([^"]+)"', m.group(1))) if m else set()
databases = {database for _, database in registry.values()}
for database in sorted(databases - granted):
    bad.append(f"docker-compose.prod.yml: mongo-init grants no readWrite on {database}")
for database in sorted(granted - databases):
    bad.append(f"docker-compose.prod.yml: mongo-init grants readWrite on {database}, no database of services/registry.txt")

# Each service logs in to every node as its own broker user (its short
# name), whose password rabbitmq-users sets, and takes events only from the
# users of the registry's services.
nodes = sorted(n for n in prod if re.fullmatch(r"rabbitmq-\d+", n))
users_env = (prod.get("rabbitmq-users") or {}).get("environment") or {}
sources = {f"{name}={name[:-len('-service')]}" for name in registry}
for name in registry:
    user = name[:-len("-service")]
    env = (prod.get(name) or {}).get("environment") or {}
    logins = [u.strip() for u in str(env.get("RABBITMQ_URL", "")).split(",") if u.strip()]
    hosts = sorted(re.sub(r"^amqp://[^@]*@([^:/]+).*$", r"\1", u) for u in logins)
    if hosts != nodes:
        bad.append(f"docker-compose.prod.yml: {name}: RABBITMQ_URL names {hosts}, not every node {nodes}")
    for login in {(re.match(r"^amqp://([^:@]+)[:@]", u) or [None, None])[1] for u in logins}:
        if login != user:
            bad.append(f"docker-compose.prod.yml: {name}: RABBITMQ_URL logs in as {login}, not its own broker user {user}")
    if f"RABBITMQ_{user.upper()}_PASSWORD" not in users_env:
        bad.append(f"docker-compose.prod.yml: rabbitmq-users does not set RABBITMQ_{user.upper()}_PASSWORD")
    declared = {p.strip() for p in str(env.get("AMQP_SOURCE_USERS", "")).split(",") if p.strip()}
    if declared != sources:
        bad.append(f"docker-compose.prod.yml: {name}: AMQP_SOURCE_USERS is {sorted(declared)}, not {sorted(sources)}")

for line in bad:
    print(line)
print(f"note: {len(registry)} services ({', '.join(registry)}) in both files as services/registry.txt says")
sys.exit(1 if bad else 0)
PY
}

check_nginx_template() {
  # As run.sh renders it: REPLICAS=2, each service's port (ORDER_PORT=3001,
  # ...: the registry's) and two instances on a port base of its own.
  local RUN_DIR="$WORK/run" LOG_DIR="$WORK/run/logs" name port _ base=13001 instances=()
  mkdir -p "$LOG_DIR" "$RUN_DIR/nginx"
  while read -r name port _; do
    local "$(tr 'a-z-' 'A-Z_' <<<"$name")_PORT=$port" # read by render_nginx_conf
    instances+=("$name:$name-service-1:$base" "$name:$name-service-2:$((base + 1))")
    base=$((base + 10))
  done < <(registry_lines)
  # shellcheck source=nginx/render.sh
  source "$SRC/nginx/render.sh"
  render_nginx_conf "$SRC/nginx/nginx.conf.template" "$SRC/nginx" "${instances[@]}" >"$RUN_DIR/nginx.conf"
  if grep -nE '^[^#]*@[A-Z_]+@' "$RUN_DIR/nginx.conf"; then
    echo "placeholders left in the rendered config"
    return 1
  fi
  "$NGINX" -t -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR/nginx"
}

check_dockerfile() {
  # shellcheck disable=SC2046 # one argument per service
  "$VENV/bin/python" - "$SRC/Dockerfile" "$SRC/.dockerignore" "$SRC/Cargo.toml" \
    $(registry_lines | awk '{ print $1 "-service" }') <<'PY'
import re, sys
dockerfile, dockerignore, cargo = (open(p).read() for p in sys.argv[1:4])
registry = sys.argv[4:]
bad = []
# Instructions, continuation lines joined.
lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
stages = "\n".join(lines).split("\nFROM ")
build = stages[0] if len(stages) == 1 else "\nFROM ".join(stages[:-1])
final = stages[-1]
m = re.search(r"members\s*=\s*\[(.*?)\]", cargo, re.S)
members = re.findall(r'"([^"]+)"', m.group(1)) if m else []
copied = []
for line in build.splitlines():
    if line.startswith("COPY ") and "--from" not in line:
        copied += line.split()[1:-1]
for member in members:
    if not any(c in (".", "./") or member == c.rstrip("/") or member.startswith(c.rstrip("/") + "/")
               for c in copied):
        bad.append(f"Dockerfile: workspace member {member} is not copied into the build stage")
if not members:
    bad.append("Cargo.toml: no workspace members found")
# The registry's services, with -p (--bin, --workspace or no -p at all
# would build the e2e crate's fail points in), read from the registry.
code = "\n".join(l for l in build.splitlines() if not l.lstrip().startswith("#"))
cargo_builds = re.findall(r"cargo build\b[^\n&;|]*", code)
if len(cargo_builds) != 1 or not cargo_builds[0].startswith("cargo build --release --locked "):
    bad.append(f"Dockerfile: the build is not one `cargo build --release --locked ...`: {cargo_builds}")
for command in cargo_builds:
    for flag in ("--workspace", "--all", "--bin", "--exclude"):
        if re.search(rf"{flag}(?![\w-])", command):
            bad.append(f"Dockerfile: the build is not by -p alone: `{command.strip()}` has {flag}")
    if not re.search(r"-p\s", command):
        bad.append(f"Dockerfile: the build is not by -p: `{command.strip()}`")
if "services/registry.txt" not in code:
    bad.append("Dockerfile: the build stage does not read services/registry.txt")
for service in registry:
    if re.search(rf"\b{re.escape(service)}\b", code):
        bad.append(f"Dockerfile: the build stage names {service} (take the services from services/registry.txt)")
user = re.findall(r"^USER\s+(\S+)", final, re.M)
if not user or user[-1].split(":")[0] in ("0", "root"):
    bad.append(f"Dockerfile: the final stage runs as {user[-1] if user else 'root'}, not a non-root user")
if not re.search(r"^HEALTHCHECK\s", final, re.M):
    bad.append("Dockerfile: no HEALTHCHECK")
if not re.search(r"^ENV\s+BIND_ADDRESS=0\.0\.0\.0", final, re.M):
    bad.append("Dockerfile: no ENV BIND_ADDRESS=0.0.0.0")
ignored = {l.strip().strip("/") for l in dockerignore.splitlines() if l.strip() and not l.startswith("#")}
for must in ("target", ".run", ".git", "bench/results"):
    if must not in ignored:
        bad.append(f".dockerignore: {must} is not excluded")
for line in bad:
    print(line)
print(f"note: members copied: {', '.join(members)}; built: the {len(registry)} services of services/registry.txt")
sys.exit(1 if bad else 0)
PY
}

# The nginx service's mounts from the resolved prod file ("SOURCE TARGET"
# lines), and every service's name (for /etc/hosts).
nginx_mounts() {
  "$VENV/bin/python" - "$WORK/prod.yml" <<'PY'
import sys, yaml
s = yaml.safe_load(open(sys.argv[1]))["services"]["nginx"]
for v in s.get("volumes") or []:
    if isinstance(v, dict):
        print(v["source"], v["target"])
    else:
        parts = v.split(":")
        print(parts[0], parts[1])
PY
}

check_nginx_prod() {
  [ -s "$WORK/prod.yml" ] || { echo "the prod file did not resolve (see above)"; return 1; }
  local hosts="$WORK/hosts" mounts="$WORK/nginx-mounts" services
  nginx_mounts >"$mounts"
  grep -q ' /etc/nginx/nginx.conf$' "$mounts" || { echo "nginx: nothing mounted at /etc/nginx/nginx.conf"; return 1; }
  services=$("$VENV/bin/python" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["services"]))' "$WORK/prod.yml")
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n' "$services" >"$hosts"
  # In a mount namespace of its own, nginx sees /etc/nginx as the container
  # does (an empty tmpfs plus the compose mounts of the repository's files)
  # and an /etc/hosts naming the compose services, so "host not found in
  # upstream" means a name that is no compose service.
  # (Probed with the same kinds of mount in a throwaway namespace first.)
  if [ -z "${CHECK_DEPLOY_NO_NAMESPACE:-}" ] \
    && unshare --mount sh -c 'mount -t tmpfs tmpfs /etc/nginx && mount --bind /etc/hosts /etc/hosts' 2>/dev/null; then
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount bash -euc '
      nginx=$1 mounts=$2 hosts=$3
      mount -t tmpfs tmpfs /etc/nginx
      while read -r source target; do
        case $target in /etc/nginx/*) ;; *) continue ;; esac
        if [ -d "$source" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")"; : >"$target"; fi
        mount --bind "$source" "$target"
      done <"$mounts"
      mount --bind "$hosts" /etc/hosts
      "$nginx" -t -c /etc/nginx/nginx.conf
    ' _ "$NGINX" "$mounts" "$hosts"
    echo "note: nginx -t in a private mount namespace (tmpfs /etc/nginx with the compose mounts, /etc/hosts naming: $services)"
  else
    # No mount namespace here (not root, or CHECK_DEPLOY_NO_NAMESPACE set):
    # a copy whose /etc/nginx paths point into the copy, whose upstream
    # hosts are replaced by 127.0.0.1 if they are compose services (any
    # other name stays, and fails), and with its own temp and log paths.
    local copy="$WORK/etc-nginx" prefix="$WORK/nginx-prefix" source target name
    mkdir -p "$copy" "$prefix"
    while read -r source target; do
      case $target in /etc/nginx/*) ;; *) continue ;; esac
      mkdir -p "$(dirname "$copy${target#/etc/nginx}")"
      cp -r "$source" "$copy${target#/etc/nginx}"
    done <"$mounts"
    for name in $services; do
      find "$copy" -name '*.conf' -exec sed -i -E "s#(server[[:space:]]+)$name:#\\1127.0.0.1:#" {} +
    done
    find "$copy" -name '*.conf' -exec sed -i "s#/etc/nginx/#$copy/#g" {} +
    sed -i "s#^http {#http {\n    client_body_temp_path $prefix/body; proxy_temp_path $prefix/proxy; fastcgi_temp_path $prefix/fastcgi; uwsgi_temp_path $prefix/uwsgi; scgi_temp_path $prefix/scgi;#" "$copy/nginx.conf"
    "$NGINX" -t -c "$copy/nginx.conf" -p "$prefix" -e "$prefix/error.log" -g "pid $prefix/nginx.pid;"
    echo "note: no mount namespace: nginx -t on a copy, compose service names replaced by 127.0.0.1"
  fi
}

# nginx running prod.conf for real, on a copy whose listeners move up by
# 40000 on the loopback (beside anything on 3001-3003) and whose upstreams
# are one stub web server: the public listeners speak TLS only, with HSTS,
# and answer the operators' routes (/admin..., /metrics) with a JSON 404;
# the internal ones (port + 6000) hand those to the service.
check_nginx_prod_routes() {
  [ -s "$WORK/prod.yml" ] || { echo "the prod file did not resolve (see above)"; return 1; }
  local copy="$WORK/routes" source target stub_port status body failed=0 pid_file
  rm -rf "$copy" && mkdir -p "$copy/etc" "$copy/prefix" "$copy/stub/admin"
  nginx_mounts >"$WORK/nginx-mounts"
  while read -r source target; do
    case $target in /etc/nginx/*) ;; *) continue ;; esac
    mkdir -p "$(dirname "$copy/etc${target#/etc/nginx}")"
    cp -r "$source" "$copy/etc${target#/etc/nginx}"
  done <"$WORK/nginx-mounts"
  echo stub-admin >"$copy/stub/admin/index.html"
  echo stub-metrics >"$copy/stub/metrics"
  echo stub-root >"$copy/stub/index.html"
  stub_port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$copy/stub" && exec "$VENV/bin/python" -m http.server "$stub_port" --bind 127.0.0.1) >/dev/null 2>&1 &
  local stub=$!
  find "$copy/etc" -name '*.conf' -exec sed -i -E \
    -e "s#server [a-z0-9-]+:[0-9]+#server 127.0.0.1:$stub_port#" \
    -e 's#listen ([0-9]+)( ssl)?;#listen 127.0.0.1:4\1\2;#' \
    -e 's#listen 127\.0\.0\.1:8080;#listen 127.0.0.1:48080;#' \
    -e "s#/etc/nginx/#$copy/etc/#g" {} +
  sed -i "s#^http {#http {\n    client_body_temp_path $copy/prefix/body; proxy_temp_path $copy/prefix/proxy; fastcgi_temp_path $copy/prefix/fastcgi; uwsgi_temp_path $copy/prefix/uwsgi; scgi_temp_path $copy/prefix/scgi;#" "$copy/etc/nginx.conf"
  pid_file="$copy/prefix/nginx.pid"
  if ! "$NGINX" -c "$copy/etc/nginx.conf" -p "$copy/prefix" -e "$copy/prefix/error.log" -g "pid $pid_file;"; then
    kill "$stub"
    return 1
  fi
  for _ in $(seq 50); do port_open "$stub_port" && break; sleep 0.1; done
  # expect URL STATUS BODY_PART: one request, judged.
  expect() {
    status=$(curl -sk -o "$copy/body" -D "$copy/headers" -w '%{http_code}' "$1") || status=none
    body=$(head -c 300 "$copy/body" 2>/dev/null)
    if [ "$status" != "$2" ] || [[ $body != *"$3"* ]]; then
      echo "$1: $status ${body//$'\n'/ }; expected $2 with '$3'"
      failed=1
    fi
  }
  expect https://127.0.0.1:43001/ 200 stub-root
  grep -qi '^strict-transport-security: max-age=' "$copy/headers" || { echo "https://127.0.0.1:43001/: no Strict-Transport-Security"; failed=1; }
  expect https://127.0.0.1:43002/admin/ 404 '"error":"not_found"'
  expect https://127.0.0.1:43003/metrics 404 '"error":"not_found"'
  expect http://127.0.0.1:43001/ 400 'plain HTTP request'
  expect http://127.0.0.1:49001/admin/ 200 stub-admin
  expect http://127.0.0.1:49003/metrics 200 stub-metrics
  "$NGINX" -c "$copy/etc/nginx.conf" -p "$copy/prefix" -g "pid $pid_file;" -s stop 2>/dev/null || true
  kill "$stub" 2>/dev/null || true
  [ "$failed" = 0 ] && echo "note: public listeners TLS only with HSTS, /admin and /metrics 404 there; internal listeners pass them on"
  return "$failed"
}

# ---------------------------------------------------------------- self-test

# Each case: "CHECK|FILE|TEXT|BREAKAGE|MESSAGE": in a copy of the files,
# TEXT in FILE (\n for a newline) becomes BREAKAGE; then the check whose
# name contains CHECK must fail, saying MESSAGE.
SELF_TESTS=(
  "docker-compose.yml resolves|docker-compose.yml|    <<: *service|    <<: *services|undefined alias 'services'"
  "docker-compose.prod.yml resolves|docker-compose.prod.yml|\n  inventory-service:\n    <<: *app|\n  inventory-service:\n    <<: *app\n    bogus_key: 1|bogus_key"
  "docker-compose.prod.yml resolves|docker-compose.prod.yml|    <<: *app-env|    <<: *app-env-typo|undefined alias"
  "requires each variable|docker-compose.prod.yml|\${SMTP_HOST:?set SMTP_HOST|\${SMTP_HOST:-localhost|only in .env.example: SMTP_HOST"
  "requires each variable|.env.example|NOTIFY_FROM=|# NOTIFY_FROM=|only in the compose file: NOTIFY_FROM"
  "rules|docker-compose.prod.yml|\${RABBITMQ_ORDER_PASSWORD:?set RABBITMQ_ORDER_PASSWORD (see .env.example)}@|\${RABBITMQ_ORDER_PASSWORD:-changeme}@|RABBITMQ_ORDER_PASSWORD has a default"
  "rules|.env.example|RABBITMQ_PASSWORD=|RABBITMQ_PASSWORD=guest|mentions guest"
  "rules|docker-compose.prod.yml|    ports: [\"127.0.0.1:\${RABBITMQ_UI_PORT:-15672}:15672\"]|    ports: [\"15672:15672\"]|rabbitmq-1 publishes"
  "rules|docker-compose.prod.yml|    ports: [\"127.0.0.1:\${MAILDEV_UI_PORT:-1080}:1080\"]|    ports: [\"0.0.0.0:1080:1080\"]|maildev publishes"
  "rules|docker-compose.prod.yml|    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:1080/healthz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 3\n||maildev: no healthcheck"
  "rules|docker-compose.prod.yml|  image: rabbitmq:3.13-management\n  restart: unless-stopped|  image: rabbitmq:3.13-management|rabbitmq-2: restart policy is 'no'"
  "rules|docker-compose.prod.yml|      limits: { cpus: \"1.0\", memory: 512M }|      limits: { cpus: \"1.0\" }|order-service: no memory limit"
  "rules|docker-compose.prod.yml|  stop_grace_period: 60s\n  deploy:\n    resources:\n      limits: { cpus: \"1.0\", memory: 1536M }|  deploy:\n    resources:\n      limits: { cpus: \"1.0\", memory: 1536M }|mongo-3: no stop_grace_period"
  "rules|docker-compose.prod.yml|  JWT_AUDIENCE: \${JWT_AUDIENCE:?set JWT_AUDIENCE (see .env.example)}|  JWT_AUDIENCE: \${JWT_AUDIENCE:-}|JWT_AUDIENCE is empty"
  "rules|docker-compose.prod.yml|  AMQP_QUEUE_TYPE: quorum|  AMQP_QUEUE_TYPE: classic|not quorum"
  "rules|docker-compose.prod.yml|  TRUSTED_PROXIES: *nginx-address|  TRUSTED_PROXIES: 172.28.0.0/24|should be nginx's fixed address"
  "rules|docker-compose.prod.yml|    command: [\"inventory-service\"]|    command: [\"inventory-service\"]\n    build: .|exactly one service should build"
  "rules|docker-compose.prod.yml|    replicas: 2|    replicas: 1|fewer than 2 replicas"
  "Dockerfile|Dockerfile|COPY tools/loadgen tools/loadgen\n||member tools/loadgen is not copied"
  "Dockerfile|Dockerfile|USER 10001:10001|USER root|runs as root"
  "Dockerfile|Dockerfile|\$(printf -- '-p %s ' \$services)|--workspace|the build is not by -p alone"
  "Dockerfile|Dockerfile|\$(printf -- '-p %s ' \$services)|-p order-service -p inventory-service -p notification-service|the build stage names inventory-service"
  "against services/registry.txt|docker-compose.yml|      PORT: \"3002\"|      PORT: \"3012\"|docker-compose.yml: inventory-service: PORT is 3012, services/registry.txt says 3002"
  "against services/registry.txt|docker-compose.prod.yml|MONGODB_DATABASE: notification_service|MONGODB_DATABASE: notifications|notification-service: MONGODB_DATABASE is notifications, services/registry.txt says notification_service"
  "against services/registry.txt|docker-compose.yml|\n  inventory-service:\n|\n  stock-service:\n|stock-service is neither a service of services/registry.txt nor infrastructure"
  "against services/registry.txt|services/registry.txt|\ninventory |\npayment        3004   payment_service\ninventory |docker-compose.prod.yml: no block payment-service"
  "against services/registry.txt|docker-compose.prod.yml|      notification-service: { condition: service_healthy }\n||nginx does not wait for notification-service"
  "against services/registry.txt|docker-compose.prod.yml|\"inventory_service\", ||mongo-init grants no readWrite on inventory_service"
  "against services/registry.txt|docker-compose.prod.yml|amqp://inventory:\${RABBITMQ_INVENTORY_PASSWORD}@rabbitmq-2|amqp://order:\${RABBITMQ_INVENTORY_PASSWORD}@rabbitmq-2|inventory-service: RABBITMQ_URL logs in as order, not its own broker user inventory"
  "against services/registry.txt|docker-compose.prod.yml|,notification-service=notification||AMQP_SOURCE_USERS is ['inventory-service=inventory', 'order-service=order'], not"
  "against services/registry.txt|docker-compose.prod.yml|      RABBITMQ_NOTIFICATION_PASSWORD: |      RABBITMQ_NOTIFY_PASSWORD: |rabbitmq-users does not set RABBITMQ_NOTIFICATION_PASSWORD"
  "Dockerfile|.dockerignore|\n.git\n|\n|.git is not excluded"
  "nginx.conf.template as run.sh renders it|nginx/nginx.conf.template|\n@UPSTREAMS@\n|\n@UPSTREAM@\n|placeholders left"
  "nginx.conf.template as run.sh renders it|nginx/proxy.conf|proxy_connect_timeout 2s;|proxy_connect_timeout 2s|invalid number of arguments"
  "nginx/prod.conf as docker-compose.prod.yml mounts it|nginx/prod.conf|server inventory-service:3002|server inventory:3002|host not found in upstream"
  "nginx/prod.conf as docker-compose.prod.yml mounts it|docker-compose.prod.yml|      - ./nginx/prod.conf:/etc/nginx/nginx.conf:ro|      - ./nginx/prod.conf:/etc/nginx/prod.conf:ro|nothing mounted at /etc/nginx/nginx.conf"
  "listeners, run|nginx/public.conf|location = /metrics {|location = /metrics-old {|https://127.0.0.1:43003/metrics: 200"
  "listeners, run|nginx/prod.conf|listen 3002 ssl;|listen 3002;|https://127.0.0.1:43002/admin/: none"
)

copy_deploy_files() {
  cp -r "$SRC/docker-compose.yml" "$SRC/docker-compose.prod.yml" "$SRC/.env.example" "$SRC/nginx" \
    "$SRC/Dockerfile" "$SRC/.dockerignore" "$SRC/Cargo.toml" "$1/"
  mkdir -p "$1/services" "$1/scripts"
  cp "$SRC/services/registry.txt" "$1/services/"
  # nginx/render.sh reads the registry through scripts/lib/registry.sh.
  cp -r "$SRC/scripts/lib" "$1/scripts/"
}

check_copy() {
  DEPLOY_ROOT="$1" bash "$ROOT/scripts/check-deploy.sh"
}

# ---------------------------------------------------------------- main

step "Tools for the deployment checks"
install_compose
install_nginx
: >"$WORK/empty.env"

step "Checking the deployment files${DEPLOY_ROOT:+ in $SRC}"
run_check "docker-compose.yml resolves" check_dev_compose
run_check "docker-compose.prod.yml resolves (required variables set to dummies)" check_prod_compose
run_check "docker-compose.prod.yml requires each variable .env.example lists as required" check_prod_requires_each_variable
run_check "rules of docker-compose.prod.yml" check_prod_rules
run_check "docker-compose.yml and docker-compose.prod.yml against services/registry.txt" check_compose_registry
run_check "Dockerfile and .dockerignore" check_dockerfile
run_check "nginx: nginx.conf.template as run.sh renders it" check_nginx_template
run_check "nginx: nginx/prod.conf as docker-compose.prod.yml mounts it" check_nginx_prod
run_check "nginx: nginx/prod.conf's listeners, run (TLS, operators' routes internal only)" check_nginx_prod_routes

if [ -z "${DEPLOY_ROOT:-}" ]; then
  if [ -f deploy/check.sh ]; then
    step "deploy/check.sh${SELF_TEST:+ --self-test} (Kubernetes manifests)"
    set +e
    bash deploy/check.sh ${SELF_TEST:+--self-test}
    status=$?
    set -e
    CHECKS=$((CHECKS + 1))
    if [ "$status" -ne 0 ]; then FAILED+=("deploy/check.sh (exit $status)"); fi
  else
    note "no deploy/check.sh: skipped"
  fi
fi

if [ -n "$SELF_TEST" ]; then
  step "Self-test: each rule broken on purpose in a copy must fail its check"
  self_test "$VENV/bin/python" copy_deploy_files check_copy "${SELF_TESTS[@]}"
fi

finish_checks deployment
