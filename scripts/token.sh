#!/usr/bin/env bash
# Prints a bearer token for the stack run.sh started:
#   scripts/token.sh CUSTOMER_ID   a customer's JWT (valid for a day)
#   scripts/token.sh --admin       the admin token
# The secrets are those in $RUN_DIR/dev-secrets.env (run.sh makes them), or
# ADMIN_TOKEN / JWT_SECRET if set.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/infra.sh
source scripts/lib/secrets.sh

case ${1:-} in
  "" | -h | --help)
    echo "usage: scripts/token.sh CUSTOMER_ID | --admin" >&2
    exit 2
    ;;
  --admin)
    load_dev_secrets
    echo "$ADMIN_TOKEN"
    ;;
  *)
    load_dev_secrets
    mint_token "$1"
    ;;
esac
