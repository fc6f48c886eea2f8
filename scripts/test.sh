#!/usr/bin/env bash
# Starts the same infrastructure as run.sh (installing what is missing), then
# runs the whole test suite against it: the offline checks of the deployment
# files, unit tests, and integration tests that start the real services on
# free ports with their own databases and AMQP namespaces; then, with the
# infrastructure stopped, the Dockerfile and both compose files run for real
# (scripts/check-containers.sh).
#
#   ./scripts/test.sh [ARGS]         everything (CI runs this)
#   ./scripts/test.sh --fast [ARGS]  the fast tier only: unit tests, the
#                                    crates' own integration tests and the
#                                    in-process API and saga tests
#                                    (tests/e2e/tests/fast); a few minutes
#                                    on a warm build
#
# ARGS go to `cargo test` (a test name filter, `-- --nocapture`, ...); with
# ARGS, the containers' check at the end is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
source scripts/lib/previous-build.sh
trap infra_down EXIT

FAST=false
if [ "${1:-}" = "--fast" ]; then
  FAST=true
  shift
fi

# Python tools the tests drive, pinned: schemathesis (the api_contract test,
# against each service's spec) and aiosmtpd (the smtp_tls test's server,
# which requires STARTTLS and AUTH) in one venv; openapi-python-client (the
# generated_clients test) in its own, since its dependencies are not theirs.
VENV="$RUN_DIR/venv"
CLIENTS_VENV="$RUN_DIR/venv-clients"
SCHEMATHESIS_VERSION="4.32.5"
AIOSMTPD_VERSION="1.4.6"
OPENAPI_PYTHON_CLIENT_VERSION="0.29.1"

# pip_install PACKAGE VERSION: into $VENV, unless that version is there
# (VENV=... pip_install for another venv).
pip_install() {
  local package=$1 version=$2 log="$LOG_DIR/pip-$1.log"
  if [ -x "$VENV/bin/pip" ] && "$VENV/bin/pip" show "$package" 2>/dev/null | grep -qx "Version: $version"; then
    note "$package $version already in $VENV"
    return
  fi
  command -v python3 >/dev/null || fail "python3 not found: install Python 3.11 or newer ($package needs it)"
  mkdir -p "$LOG_DIR"
  note "pip install $package==$version into $VENV (log: $log)"
  { [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"; } >"$log" 2>&1 \
    || fail "python3 -m venv $VENV failed (see $log; on Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet "$package==$version" >>"$log" 2>&1 \
    || fail "pip install $package==$version failed (see $log)"
}

infra_up
if $FAST; then
  # The slow tier (tests/e2e/tests/slow and chaos.rs) needs the tools
  # below; the fast one needs only the infrastructure.
  step "Running the fast tier"
  cargo test --workspace --locked --exclude e2e-tests "$@"
  cargo test --locked -p e2e-tests --lib --test fast "$@"
  exit
fi
step "Installing the Python test tools"
pip_install schemathesis "$SCHEMATHESIS_VERSION"
pip_install aiosmtpd "$AIOSMTPD_VERSION"
VENV=$CLIENTS_VENV pip_install openapi-python-client "$OPENAPI_PYTHON_CLIENT_VERSION"
export SCHEMATHESIS="$VENV/bin/schemathesis" SMTP_TEST_PYTHON="$VENV/bin/python"
export OPENAPI_PYTHON_CLIENT="$CLIENTS_VENV/bin/openapi-python-client"
# The admin console's browser test (tests/e2e/tests/slow/admin_console.rs):
# Debian's Chromium, driven by playwright-core (pinned in
# tests/browser/package-lock.json) under Node.js 20 or newer. npm ci runs
# again only when the lock file differs from the one last installed.
step "Installing the browser and generated-client tests' tools"
[ -x /usr/bin/chromium ] || apt_install chromium
command -v npm >/dev/null || apt_install nodejs npm
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
((node_major >= 20)) || fail "Node.js $(node --version 2>/dev/null) is too old for playwright-core: install Node.js 20 or newer"
# npm_ci DIR: the packages DIR's lock file pins, unless that lock file is
# the one last installed there.
npm_ci() {
  local dir=$1 log="$LOG_DIR/npm-$(basename "$1").log"
  if cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"; then
    note "npm packages already installed in ${dir#"$PWD"/}"
    return
  fi
  note "npm ci in ${dir#"$PWD"/} (log: $log)"
  (cd "$dir" && npm ci --no-audit --no-fund) >"$log" 2>&1 \
    || fail "npm ci in $dir failed (see $log)"
  cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
}
npm_ci "$PWD/tests/browser"
export CONSOLE_TEST_DIR="$PWD/tests/browser" CHROMIUM=/usr/bin/chromium
# The generated_clients test's openapi-typescript (pinned in
# tests/clients/package-lock.json).
npm_ci "$PWD/tests/clients"
export CLIENTS_TEST_DIR="$PWD/tests/clients"
# The smtp_tls test makes its server's certificate with the openssl CLI.
command -v openssl >/dev/null || apt_install openssl
# The run.sh test with REPLICAS=2 puts nginx in front of the instances.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  step "Installing nginx"
  apt_install nginx
fi
step "Checking the deployment files offline (compose, nginx, Kubernetes)"
bash scripts/check-deploy.sh
step "Checking the monitoring files offline (alert rules and their tests, dashboard)"
bash scripts/check-monitoring.sh
step "Building an earlier inventory service for the rolling-upgrade test"
previous_build
step "Running the test suite"
cargo test --workspace --locked "$@"
# Last, because the compose files publish the ports the infrastructure
# above listens on: about 10 minutes with podman's caches warm, 25 on a
# fresh machine (docs/deploying.md, "The containers, run for real"). Not
# when ARGS chose some tests: `bash scripts/check-containers.sh` alone.
if (($# == 0)); then
  step "Building the image and running both compose files with podman"
  infra_down
  bash scripts/check-containers.sh
else
  note "the containers' check is skipped when tests are chosen (bash scripts/check-containers.sh runs it)"
fi
