#!/bin/bash
# The official image's entrypoint, as far as the compose files use it: the
# default user from RABBITMQ_DEFAULT_USER/_PASS (created on a first boot),
# then the command.
set -euo pipefail
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  printf 'default_user = %s\ndefault_pass = %s\n' "$RABBITMQ_DEFAULT_USER" "${RABBITMQ_DEFAULT_PASS:-}" \
    >/etc/rabbitmq/conf.d/20-default-user.conf
fi
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
# Debian's rabbitmq-server drops to the rabbitmq user itself.
exec "$@"
