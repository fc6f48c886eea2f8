#!/usr/bin/env bash
# Dead letters from a terminal: the same admin routes as /docs, with a
# readable listing. A service of services/registry.txt is found at its
# <NAME>_URL (INVENTORY_URL, ...; default: its port in the registry, where
# run.sh runs it), authenticated with
# ADMIN_TOKEN (default: the one run.sh made, in .run/dev-secrets.env).
set -euo pipefail
source "$(dirname "$0")/lib/infra.sh"
source "$(dirname "$0")/lib/secrets.sh"
source "$(dirname "$0")/lib/registry.sh"

usage() {
  cat <<'USAGE'
usage: scripts/dlq.sh <service> <command> [args]

  service: a name in services/registry.txt (order, inventory, notification)

  list [--order ID] [DEAD|REPLAYED|DISCARDED|ALL]
                                   dead letters, newest first (default: DEAD),
                                   only that order's with --order
  show <id>                        one dead letter with its payload
  replay <id>                      send one back to its work queue
  replay-all [eventType]           replay every DEAD one (of that event type)
  discard <id> <note...>           give up on one; it stays on record
  groups                           the DEAD ones by cause: count, reason class,
                                   event type (- for bodies that are not events)
  replay-group <class> <eventType|->
                                   replay every DEAD one of that group
  discard-group <class> <eventType|-> <note...>
                                   give up on every DEAD one of that group

examples:
  scripts/dlq.sh inventory list
  scripts/dlq.sh inventory list --order 0193... ALL
  scripts/dlq.sh order replay-all inventory.reserved
  scripts/dlq.sh notification discard 0193... "customer address bounced"
  scripts/dlq.sh inventory groups
  scripts/dlq.sh inventory discard-group not_an_envelope - "a stray publisher's test messages"
USAGE
  exit 2
}

[ $# -ge 2 ] || usage
service=$1 command=$2
shift 2
port=$(registry_port "$service")
[ -n "$port" ] || { echo "unknown service: $service (services/registry.txt has $(registry_names | paste -sd ' '))" >&2; usage; }
url_var=$(url_variable "$service")
base=${!url_var:-http://127.0.0.1:$port}
load_dev_secrets
token=$ADMIN_TOKEN
url="$base/admin/dead-letters"

# Prints the body; fails with the service's JSON error on a non-2xx answer.
call() {
  local method=$1 target=$2 body=${3:-}
  local args=(-sS -X "$method" -H "Authorization: Bearer $token" -w '\n%{http_code}')
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
  local answer status
  answer=$(curl "${args[@]}" "$target") || { echo "error: $base is not answering" >&2; exit 1; }
  status=${answer##*$'\n'}
  answer=${answer%$'\n'*}
  if [ "${status:0:1}" != 2 ]; then
    echo "error: HTTP $status: $answer" >&2
    exit 1
  fi
  printf '%s\n' "$answer"
}

json_string() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
pretty() { python3 -m json.tool; }
# The filter of one group: its class and event type ("-": not an event),
# plus any further "key": value pairs given as JSON text.
group_filter() {
  python3 - "$@" <<'PY'
import json, sys
cls, event_type, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
body = {"reasonClass": cls}
if event_type == "-":
    body["hasEventType"] = False
else:
    body["eventType"] = event_type
for pair in extra:
    body.update(json.loads(pair))
print(json.dumps(body))
PY
}

case $command in
  list)
    order=""
    if [ "${1:-}" = --order ]; then
      [ $# -ge 2 ] || usage
      order=$2
      shift 2
    fi
    status=${1:-DEAD}
    [ "$status" = ALL ] && status=""
    query="limit=100${status:+&status=$status}"
    [ -n "$order" ] && query+="&orderId=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$order")"
    cursor=""
    # Walks every page, so a long backlog is listed in full.
    while :; do
      # One parse per page: the next cursor on the first line, then the rows.
      rows=$(call GET "$url?$query${cursor:+&cursor=$cursor}" | python3 -c '
import json, sys
page = json.load(sys.stdin)
print(page.get("nextCursor") or "")
for d in page["items"]:
    print("{}  {:<9}  {:<17}  {:<26}  attempts={}  {}  {}".format(d["deadLetterId"], d["status"],
          d.get("reasonClass") or "other", d.get("eventType") or "?", d["attempts"],
          d["deadAt"][:19], d["reason"][:80]))')
      cursor=$(head -n 1 <<<"$rows")
      tail -n +2 <<<"$rows"
      [ -n "$cursor" ] || break
    done
    ;;
  show)
    [ $# -eq 1 ] || usage
    call GET "$url/$1" | pretty
    ;;
  replay)
    [ $# -eq 1 ] || usage
    call POST "$url/$1/replay" | pretty
    ;;
  replay-all)
    filter='{}'
    [ $# -ge 1 ] && filter="{\"eventType\": $(json_string "$1")}"
    call POST "$url/replay" "$filter" | pretty
    ;;
  discard)
    [ $# -ge 2 ] || usage
    id=$1
    shift
    call POST "$url/$id/discard" "{\"note\": $(json_string "$*")}" | pretty
    ;;
  groups)
    call GET "$url/groups" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["groups"]
if groups:
    print("{:>6}  {:<17}  {:<26}  {:<19}  {:<19}  {}".format("count", "class", "event type", "oldest", "newest", "sample reason"))
for g in groups:
    print("{:>6}  {:<17}  {:<26}  {}  {}  {}".format(g["count"], g["reasonClass"], g.get("eventType") or "-",
          g["oldestDeadAt"][:19], g["newestDeadAt"][:19], g["sampleReason"][:80]))'
    ;;
  replay-group)
    [ $# -eq 2 ] || usage
    call POST "$url/replay" "$(group_filter "$1" "$2")" | pretty
    ;;
  discard-group)
    [ $# -ge 3 ] || usage
    cls=$1 event_type=$2
    shift 2
    call POST "$url/discard" "$(group_filter "$cls" "$event_type" "{\"note\": $(json_string "$*")}")" | pretty
    ;;
  *) usage ;;
esac
