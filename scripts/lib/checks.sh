# shellcheck shell=bash
# What the offline checks (check-deploy.sh, check-monitoring.sh) share:
# running one check with its output kept, the self-test that breaks each
# rule on purpose in a copy of the files, and the summary. The caller sets
# WORK (a scratch directory) and sources scripts/lib/infra.sh first.

CHECKS=0
FAILED=()

# run_check NAME FUNCTION: runs it with errexit, its output kept; prints ok
# (with the output's `note:` lines), or FAIL and the output's last lines.
run_check() {
  local name=$1 fn=$2 log status
  CHECKS=$((CHECKS + 1))
  log="$WORK/check-$CHECKS.log"
  set +e
  (set -e; "$fn") >"$log" 2>&1
  status=$?
  set -e
  if [ "$status" -eq 0 ]; then
    printf '    \033[32mok\033[0m    %s\n' "$name"
    grep '^note: ' "$log" | sed 's/^note: /          /' || true
  else
    printf '    \033[31mFAIL\033[0m  %s\n' "$name"
    tail -n 40 "$log" | sed 's/^/          | /'
    FAILED+=("$name")
  fi
}

# self_test PYTHON COPY RERUN CASE...: each case is
# "CHECK|FILE|TEXT|BREAKAGE|MESSAGE". COPY DIR copies the files into DIR;
# TEXT in DIR/FILE (\n for a newline) becomes BREAKAGE; RERUN DIR runs the
# whole script against DIR, and the check whose name contains CHECK must
# fail, saying MESSAGE.
self_test() {
  local python=$1 copy_files=$2 rerun=$3
  shift 3
  local case want file from to message copy out status passed=0 failed=0
  for case in "$@"; do
    IFS='|' read -r want file from to message <<<"$case"
    copy="$WORK/self-test"
    rm -rf "$copy"
    mkdir -p "$copy"
    "$copy_files" "$copy"
    if ! "$python" - "$copy/$file" "$from" "$to" <<'PY'; then
import sys
path, old, new = sys.argv[1], sys.argv[2].replace("\\n", "\n"), sys.argv[3].replace("\\n", "\n")
text = open(path).read()
if old not in text:
    sys.exit(f"self-test case is stale: {old!r} is not in {path}")
open(path, "w").write(text.replace(old, new, 1))
PY
      failed=$((failed + 1))
      continue
    fi
    set +e
    out=$("$rerun" "$copy" 2>&1)
    status=$?
    set -e
    if [ "$status" -ne 0 ] && grep -F "FAIL" <<<"$out" | grep -qF "$want" \
      && grep -qF -- "$message" <<<"$out"; then
      printf '    \033[32mcaught\033[0m  %s: %s\n' "$file" "$message"
      passed=$((passed + 1))
    else
      printf '    \033[31mMISSED\033[0m  %s: %s -> %s: no failing "%s" saying "%s" (exit %s)\n' \
        "$file" "$from" "$to" "$want" "$message" "$status"
      tail -n 40 <<<"$out" | sed 's/^/          | /'
      failed=$((failed + 1))
    fi
  done
  CHECKS=$((CHECKS + 1))
  if [ "$failed" -eq 0 ]; then
    note "self-test: all $passed breakages caught"
  else
    FAILED+=("self-test: $failed of $# breakages not caught")
  fi
}

# finish_checks WHAT: fails naming each failed check, or says all passed.
finish_checks() {
  local what=$1 name
  if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '\n'
    for name in "${FAILED[@]}"; do printf '  failed: %s\n' "$name" >&2; done
    fail "${#FAILED[@]} of $CHECKS $what checks failed"
  fi
  step "All $CHECKS $what checks passed"
}
