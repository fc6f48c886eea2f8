# shellcheck shell=bash
# render_nginx_conf TEMPLATE NGINX_DIR INSTANCE...: nginx.conf.template with
# its @PLACEHOLDERS@ filled in, on stdout. Sourced by scripts/run.sh (which
# runs nginx with the result) and scripts/check-deploy.sh (which runs
# `nginx -t` on it), so both render it the same way.
#
# NGINX_DIR is this directory (where the config's includes are); each
# INSTANCE is "NAME:...:PORT", NAME one of order, inventory, notification,
# and becomes a server line of that upstream. RUN_DIR, LOG_DIR, ORDER_PORT,
# INVENTORY_PORT and NOTIFICATION_PORT come from the caller.
render_nginx_conf() {
  local template=$1 nginx_dir=$2
  shift 2
  # _nginx_servers NAME INSTANCE...: an upstream's server lines, joined by
  # \n for sed.
  _nginx_servers() {
    local name=$1 entry
    shift
    for entry in "$@"; do
      if [ "${entry%%:*}" = "$name" ]; then
        printf '        server 127.0.0.1:%s max_fails=1 fail_timeout=2s;\\n' "${entry##*:}"
      fi
    done
  }
  sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@LOG_DIR@|$LOG_DIR|g" -e "s|@NGINX_DIR@|$nginx_dir|g" \
    -e "s|@ORDER_PORT@|$ORDER_PORT|g" -e "s|@INVENTORY_PORT@|$INVENTORY_PORT|g" \
    -e "s|@NOTIFICATION_PORT@|$NOTIFICATION_PORT|g" \
    -e "s|^@ORDER_SERVERS@\$|$(_nginx_servers order "$@")|" -e "s|^@INVENTORY_SERVERS@\$|$(_nginx_servers inventory "$@")|" \
    -e "s|^@NOTIFICATION_SERVERS@\$|$(_nginx_servers notification "$@")|" \
    "$template"
}
