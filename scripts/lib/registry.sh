# shellcheck shell=bash
# The services of this shop, from services/registry.txt (one line each:
# `name port database`, `#` comments). Sourced by the scripts that act on
# every service, so that none of them lists the services itself.

REGISTRY_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/services/registry.txt"

# registry_lines: "name port database" for each service, in the registry's
# order, without comments or blank lines.
registry_lines() {
  sed -e 's/#.*//' "$REGISTRY_FILE" | awk 'NF { print $1, $2, $3 }'
}

# registry_names: each service's short name (order, inventory, ...).
registry_names() {
  registry_lines | cut -d' ' -f1
}

# registry_port NAME: the port the registry gives NAME.
registry_port() {
  registry_lines | awk -v name="$1" '$1 == name { print $2 }'
}

# port_variable NAME: the variable that overrides NAME's port in run.sh and
# the scripts beside it (ORDER_PORT for order).
port_variable() {
  echo "${1^^}_PORT"
}

# url_variable NAME: the variable that gives NAME's base URL to the other
# services and the scripts (INVENTORY_URL for inventory).
url_variable() {
  echo "${1^^}_URL"
}
