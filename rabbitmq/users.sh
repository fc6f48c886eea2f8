#!/usr/bin/env bash
# Gives each service a RabbitMQ user of its own (order, inventory, ...) with
# only the permissions of grants.tsv beside this file, through the
# management API. grants.tsv is generated from the code (the exchanges and
# queues each service declares, the events it publishes and binds), and a
# unit test keeps it so; docs/security.md says what each permission is for.
# Running it again sets the same passwords and permissions: scripts/run.sh
# runs it at every start, docker-compose.prod.yml's rabbitmq-users once per
# `up`.
#
#   RABBITMQ_MANAGEMENT_URL    the management API [http://127.0.0.1:15672]
#   RABBITMQ_ADMIN_USER        an administrator of the broker [guest]
#   RABBITMQ_ADMIN_PASSWORD    [guest]
#   RABBITMQ_<USER>_PASSWORD   each user's password, required
#                              (RABBITMQ_ORDER_PASSWORD, ...)
#   RABBITMQ_USERS_WAIT        seconds to wait for the API to answer [60]
#   AMQP_NAMESPACE             the services' namespace, as they are given it:
#                              each user is then <namespace><user>, granted
#                              the names under that namespace [empty]
set -euo pipefail

GRANTS="$(cd "$(dirname "$0")" && pwd)/grants.tsv"
API=${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}
ADMIN="${RABBITMQ_ADMIN_USER:-guest}:${RABBITMQ_ADMIN_PASSWORD:-guest}"

say() { echo "users.sh: $*"; }
fail() {
  echo "users.sh: $*" >&2
  exit 1
}

# A JSON string holding $1 (the grants' regular expressions hold backslashes).
json_string() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

NAMESPACE=${AMQP_NAMESPACE:-}
# The namespace as a regular expression (every character but letters,
# digits, - and _ escaped).
NAMESPACE_PATTERN=$(sed 's/[^A-Za-z0-9_-]/\\&/g' <<<"$NAMESPACE")

# in_namespace TEXT WITH: grants.tsv's TEXT with WITH where the namespace
# goes (@NS@). The replacement is quoted: taken as it is, backslashes too.
in_namespace() { printf '%s\n' "${1//@NS@/"$2"}"; }

# put PATH BODY: PUT to the management API, or fail with its answer.
put() {
  local answer status
  answer=$(curl -sS -m 10 -u "$ADMIN" -X PUT -H 'Content-Type: application/json' \
    --data "$2" -w '\n%{http_code}' "$API/api/$1") || fail "PUT $API/api/$1 failed: is the management plugin on?"
  status=${answer##*$'\n'}
  [[ $status == 2?? ]] || fail "PUT /api/$1 answered $status: ${answer%$'\n'*}"
}

# The API answers some seconds after the broker's AMQP port opens.
waited=0
until curl -fsS -m 5 -o /dev/null -u "$ADMIN" "$API/api/overview" 2>/dev/null; do
  ((waited < ${RABBITMQ_USERS_WAIT:-60})) \
    || fail "no answer from RabbitMQ's management API at $API as ${ADMIN%%:*} after ${waited}s"
  sleep 1
  waited=$((waited + 1))
done

while IFS=$'\t' read -r name configure write read exchange topic_write topic_read; do
  [[ -z $name || $name == \#* ]] && continue
  user=$NAMESPACE$name
  variable="RABBITMQ_${name^^}_PASSWORD"
  [ -n "${!variable:-}" ] || fail "set $variable, the password of broker user '$user'"
  configure=$(in_namespace "$configure" "$NAMESPACE_PATTERN")
  write=$(in_namespace "$write" "$NAMESPACE_PATTERN")
  read=$(in_namespace "$read" "$NAMESPACE_PATTERN")
  exchange=$(in_namespace "$exchange" "$NAMESPACE")
  # No tags: the user cannot reach the management UI, nor impersonate another
  # user's user-id.
  put "users/$user" "{\"password\":$(json_string "${!variable}"),\"tags\":\"\"}"
  put "permissions/%2F/$user" \
    "{\"configure\":$(json_string "$configure"),\"write\":$(json_string "$write"),\"read\":$(json_string "$read")}"
  put "topic-permissions/%2F/$user" \
    "{\"exchange\":$(json_string "$exchange"),\"write\":$(json_string "$topic_write"),\"read\":$(json_string "$topic_read")}"
  say "broker user '$user' has its permissions"
done <"$GRANTS"
