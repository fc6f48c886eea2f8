# The development secrets: an admin token, a JWT secret and the services'
# broker passwords, made once per run directory and kept in
# $RUN_DIR/dev-secrets.env (mode 600), so nothing default is ever in use and
# a restart keeps the tokens already handed out. Set one yourself and yours
# wins. Sourced by run.sh,
# token.sh, dlq.sh and bench.sh after scripts/lib/infra.sh (for RUN_DIR).

DEV_SECRETS="$RUN_DIR/dev-secrets.env"

random_secret() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# Exports ADMIN_TOKEN and JWT_SECRET: the caller's, else this run
# directory's, made now if there are none yet.
load_dev_secrets() {
  if [ ! -f "$DEV_SECRETS" ]; then
    mkdir -p "$RUN_DIR"
    (umask 077 && printf 'ADMIN_TOKEN=%s\nJWT_SECRET=%s\n' "$(random_secret)" "$(random_secret)" >"$DEV_SECRETS")
  fi
  local name value
  while IFS='=' read -r name value; do
    case $name in
      ADMIN_TOKEN | JWT_SECRET) [ -n "${!name:-}" ] || export "$name=$value" ;;
    esac
  done <"$DEV_SECRETS"
}

# Exports RABBITMQ_<NAME>_PASSWORD for each service of the registry (needs
# scripts/lib/registry.sh): the password of its own broker user
# (rabbitmq/users.sh), the caller's, else this run directory's, made now
# and added to the file if it has none yet.
load_broker_passwords() {
  local name variable value
  for name in $(registry_names); do
    variable="RABBITMQ_${name^^}_PASSWORD"
    [ -n "${!variable:-}" ] && continue
    value=$(sed -n "s/^$variable=//p" "$DEV_SECRETS")
    if [ -z "$value" ]; then
      value=$(random_secret)
      (umask 077 && echo "$variable=$value" >>"$DEV_SECRETS")
    fi
    export "$variable=$value"
  done
}

# A customer's token, HS256 with JWT_SECRET, valid for TTL seconds (a day),
# with `iss` and `aud` when JWT_ISSUER and JWT_AUDIENCE are set.
mint_token() {
  local customer=$1 ttl=${2:-86400}
  command -v python3 >/dev/null || fail "python3 is needed to sign a token"
  JWT_SECRET="$JWT_SECRET" JWT_ISSUER="${JWT_ISSUER:-}" JWT_AUDIENCE="${JWT_AUDIENCE:-}" \
    python3 - "$customer" "$ttl" <<'PY'
import base64, hashlib, hmac, json, os, sys, time

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

customer, ttl = sys.argv[1], int(sys.argv[2])
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = {"sub": customer, "exp": int(time.time()) + ttl}
# The stack checks them when it is configured with them.
for claim, setting in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")):
    if os.environ[setting]:
        claims[claim] = os.environ[setting]
claims = b64(json.dumps(claims).encode())
signing_input = f"{header}.{claims}".encode()
signature = hmac.new(os.environ["JWT_SECRET"].encode(), signing_input, hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
PY
}
