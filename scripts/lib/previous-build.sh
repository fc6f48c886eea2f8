# The inventory service as an earlier commit of this repository built it,
# for the rolling-upgrade test (tests/e2e/tests/slow/rolling_upgrade.rs): a real
# old build beside the current one on one queue. Sourced by test.sh, after
# infra.sh (for step, note, fail, RUN_DIR and LOG_DIR).
#
# PREVIOUS_BUILD_REV is the commit whose consumers read events tolerantly
# and retry a version newer than they know, with order.created still at
# version 1. Move it forward when an event's version changes again, so the
# test keeps checking the step users take.

PREVIOUS_BUILD_REV="8522e2b"

# Builds it once into $RUN_DIR/previous-build (kept across runs) and exports
# PREVIOUS_INVENTORY_BIN. Its own target directory, so the current build's
# binaries are never overwritten: the first build takes a few minutes.
previous_build() {
  local dir="$RUN_DIR/previous-build" log="$LOG_DIR/previous-build.log"
  local bin="$dir/target/debug/inventory-service"
  if [ -x "$bin" ] && [ "$(cat "$dir/rev" 2>/dev/null)" = "$PREVIOUS_BUILD_REV" ]; then
    note "the inventory service of $PREVIOUS_BUILD_REV is built ($bin)"
  else
    git cat-file -e "$PREVIOUS_BUILD_REV^{commit}" 2>/dev/null \
      || fail "commit $PREVIOUS_BUILD_REV is not in this clone (the rolling-upgrade test needs the repository's history: clone without --depth)"
    note "building the inventory service of $PREVIOUS_BUILD_REV (a few minutes the first time; log: $log)"
    rm -rf "$dir/src" "$dir/rev"
    mkdir -p "$dir/src" "$LOG_DIR"
    git archive "$PREVIOUS_BUILD_REV" | tar -x -C "$dir/src"
    # No debug info: it only has to run, and it links much faster.
    (cd "$dir/src" && CARGO_PROFILE_DEV_DEBUG=0 cargo build --locked -p inventory-service \
      --bin inventory-service --target-dir "$dir/target") >"$log" 2>&1 \
      || fail "building the inventory service of $PREVIOUS_BUILD_REV failed (see $log)"
    echo "$PREVIOUS_BUILD_REV" >"$dir/rev"
  fi
  export PREVIOUS_INVENTORY_BIN="$bin"
}
