#!/usr/bin/env bash
# Starts the same infrastructure as run.sh (installing what is missing), then
# runs the whole test suite against it: unit tests, and integration tests
# that start the real services on free ports with their own databases and
# AMQP namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
trap infra_down EXIT

# The api_contract test runs schemathesis against each service's spec.
SCHEMATHESIS_VERSION="4.32.5"
SCHEMATHESIS_VENV="$RUN_DIR/venv"

install_schemathesis() {
  local cli="$SCHEMATHESIS_VENV/bin/schemathesis"
  if [ -x "$cli" ] && "$cli" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
    note "schemathesis $SCHEMATHESIS_VERSION already in $SCHEMATHESIS_VENV"
  else
    command -v python3 >/dev/null || fail "python3 not found: install Python 3.11 or newer (schemathesis needs it)"
    mkdir -p "$LOG_DIR"
    note "pip install schemathesis==$SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV (log: $LOG_DIR/schemathesis.log)"
    { [ -x "$SCHEMATHESIS_VENV/bin/pip" ] || python3 -m venv "$SCHEMATHESIS_VENV"; } >"$LOG_DIR/schemathesis.log" 2>&1 \
      || fail "python3 -m venv $SCHEMATHESIS_VENV failed (see $LOG_DIR/schemathesis.log; on Debian: apt-get install python3-venv)"
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >>"$LOG_DIR/schemathesis.log" 2>&1 \
      || fail "pip install schemathesis==$SCHEMATHESIS_VERSION failed (see $LOG_DIR/schemathesis.log)"
  fi
  export SCHEMATHESIS="$cli"
}

infra_up
step "Installing schemathesis"
install_schemathesis
# The run.sh test with REPLICAS=2 puts nginx in front of the instances.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  step "Installing nginx"
  apt_install nginx
fi
step "Running the test suite"
cargo test --workspace --locked "$@"
