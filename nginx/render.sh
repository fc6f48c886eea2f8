# shellcheck shell=bash
# Renders nginx's configurations from a template, with one upstream and one
# server block for each service of services/registry.txt, so that neither
# configuration lists the services by hand.
#
#   render_nginx_conf TEMPLATE NGINX_DIR INSTANCE...
#       nginx.conf.template for `REPLICAS=N ./scripts/run.sh`, on stdout.
#       Sourced by scripts/run.sh (which runs nginx with the result) and
#       scripts/check-deploy.sh (which runs `nginx -t` on it). NGINX_DIR is
#       this directory (where the includes are); each INSTANCE is
#       "NAME:...:PORT", NAME a registry name, and becomes a server line of
#       that upstream. RUN_DIR and LOG_DIR come from the caller, and each
#       service listens on its <NAME>_PORT (ORDER_PORT, ...) if the caller
#       set one, else on the registry's port.
#
#   bash nginx/render.sh prod
#       prod.conf, which docker-compose.prod.yml mounts, from
#       prod.conf.template: each service's containers by their Compose name
#       (<name>-service) on the registry's port. prod.conf is committed, as
#       users run it; the suite checks that it is this output
#       (tests/e2e/tests/fast/registry.rs).

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/registry.sh"

# nginx_internal_port PORT: the plain listener, with the operators' routes,
# beside a service's public TLS one on PORT.
nginx_internal_port() { echo $(($1 + 6000)); }

# _nginx_blocks UPSTREAMS|SERVERS|TLS_SERVERS LISTEN_HOST INCLUDE_DIR
# SERVER_LINES_FN: the upstream or server blocks of every service.
# SERVER_LINES_FN NAME PORT prints an upstream's server lines. TLS_SERVERS
# gives each service two: the public one on its port, with TLS and without
# the operators' routes (public.conf), and an internal one, plain, on its
# port + 6000 with everything.
_nginx_blocks() {
  local kind=$1 listen_host=$2 include_dir=$3 servers=$4 name registry_port var port
  while read -r name registry_port _; do
    var=$(port_variable "$name")
    port=${!var:-$registry_port}
    case $kind in
      UPSTREAMS)
        printf '    upstream %s {\n' "$name"
        "$servers" "$name" "$port"
        printf '        keepalive 32;\n    }\n'
        ;;
      SERVERS)
        printf '    server {\n        listen %s%s;\n' "$listen_host" "$port"
        printf '        location / { proxy_pass http://%s; }\n' "$name"
        printf '        include %s/errors.conf;\n    }\n' "$include_dir"
        ;;
      TLS_SERVERS)
        printf '    server {\n        listen %s%s ssl;\n' "$listen_host" "$port"
        printf '        include %s/public.conf;\n' "$include_dir"
        printf '        location / { proxy_pass http://%s; }\n' "$name"
        printf '        include %s/errors.conf;\n    }\n' "$include_dir"
        printf '    server {\n        listen %s%s;\n' "$listen_host" "$(nginx_internal_port "$port")"
        printf '        location / { proxy_pass http://%s; }\n' "$name"
        printf '        include %s/errors.conf;\n    }\n' "$include_dir"
        ;;
    esac
  done < <(registry_lines)
}

# _nginx_fill TEMPLATE LISTEN_HOST INCLUDE_DIR SERVER_LINES_FN: the template
# with its @UPSTREAMS@, @SERVERS@ and @TLS_SERVERS@ lines replaced by the blocks; other
# @PLACEHOLDERS@ are left to the caller.
_nginx_fill() {
  local template=$1 line
  while IFS= read -r line; do
    case $line in
      @UPSTREAMS@) _nginx_blocks UPSTREAMS "$2" "$3" "$4" ;;
      @SERVERS@) _nginx_blocks SERVERS "$2" "$3" "$4" ;;
      @TLS_SERVERS@) _nginx_blocks TLS_SERVERS "$2" "$3" "$4" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done <"$template"
}

render_nginx_conf() {
  local template=$1 nginx_dir=$2
  shift 2
  _NGINX_INSTANCES=("$@")
  # One server line for each instance of the service.
  _nginx_instances() {
    local name=$1 entry
    for entry in "${_NGINX_INSTANCES[@]}"; do
      if [ "${entry%%:*}" = "$name" ]; then
        printf '        server 127.0.0.1:%s max_fails=1 fail_timeout=2s;\n' "${entry##*:}"
      fi
    done
  }
  _nginx_fill "$template" 127.0.0.1: "$nginx_dir" _nginx_instances \
    | sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@LOG_DIR@|$LOG_DIR|g" -e "s|@NGINX_DIR@|$nginx_dir|g"
}

# The Compose service of each shop service, on the registry's port.
_nginx_compose_service() {
  printf '        server %s-service:%s max_fails=1 fail_timeout=2s;\n' "$1" "$2"
}

render_prod_conf() {
  local dir
  dir=$(dirname "${BASH_SOURCE[0]}")
  # The registry's ports, whatever the caller's environment says.
  (
    while read -r name _; do unset "$(port_variable "$name")"; done < <(registry_lines)
    _nginx_fill "$dir/prod.conf.template" "" /etc/nginx/saga _nginx_compose_service
  )
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    prod) render_prod_conf ;;
    *) echo "usage: bash nginx/render.sh prod   (prod.conf from prod.conf.template, on stdout)" >&2; exit 64 ;;
  esac
fi
