#!/usr/bin/env bash
# Only the fault-injection suite (tests/e2e/tests/chaos.rs), which
# ./scripts/test.sh also runs: the services as separate processes under a
# steady order load while RabbitMQ is restarted, services are killed (also at
# fail points between a write and its ack or publish), MongoDB is stopped,
# SMTP disappears, events are duplicated, poison and unroutable messages are
# sent and hundreds of orders race for the last units. It prints a table and
# fails if any order is lost or any effect happens twice. About 15 minutes.
#
# It restarts the RabbitMQ application it finds on 5672 (rabbitmqctl
# stop_app / start_app), runs its own secantusd-rs on a free port, and for
# its last row a RabbitMQ cluster of three nodes on free ports
# (scripts/lib/rabbitmq-cluster.sh). CHAOS_ONLY=2a,11 runs only those rows.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
source scripts/lib/previous-build.sh
trap infra_down EXIT

infra_up
step "Building an earlier inventory service for the rolling-upgrade row"
previous_build
step "Running the fault-injection suite (logs under target/tmp/chaos-<id>/)"
cargo test --locked -p e2e-tests --test chaos "$@"
