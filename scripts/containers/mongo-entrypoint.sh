#!/bin/bash
# The official mongo image's entrypoint, as far as the compose files use it:
# with MONGO_INITDB_ROOT_USERNAME/_PASSWORD, the server runs with
# authentication and that root user is created on its first start (through
# the localhost exception, which closes once a user exists); then the
# server runs in the foreground.
set -euo pipefail
if [ -z "${MONGO_INITDB_ROOT_USERNAME:-}" ]; then
  exec "$@"
fi
"$@" --auth &
server=$!
trap 'kill -TERM "$server"' TERM INT
python3 /usr/local/bin/mongo-users.py root
# A signal ends the first wait early; the server's own exit ends the last.
set +e
wait "$server"
status=$?
if kill -0 "$server" 2>/dev/null; then
  wait "$server"
  status=$?
fi
exit "$status"
