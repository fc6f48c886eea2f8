#!/usr/bin/env bash
# Starts the same infrastructure as run.sh (installing what is missing), then
# runs the whole test suite against it: unit tests, and integration tests
# that start the real services on free ports with their own databases and
# AMQP namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
trap infra_down EXIT

infra_up
step "Running the test suite"
cargo test --workspace --locked "$@"
