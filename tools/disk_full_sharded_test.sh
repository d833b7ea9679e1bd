#!/bin/bash
# Disk full in the middle of a sharded save by 2 FSDP ranks, for real: a
# 5 MiB tmpfs the test mounts holds the first checkpoint (~3 MiB) but not a
# second one written beside it. The save must fail on every rank with an
# error naming the path, nothing half-written may be left, and the first
# checkpoint must still verify and load bit-exact.
#   disk_full_sharded_test.sh CRASH_SAVER FABRIC
# Needs root and mount(2) (skipped with a message where they are missing).
set -u
SAVER=$(realpath "$1"); FABRIC=$(realpath "$2")
MNT=$(mktemp -d "${TEST_TMPDIR:-/tmp}/full.XXXXXX")
if ! mount -t tmpfs -o size=5m tmpfs "$MNT" 2>/dev/null; then
  echo "SKIPPED: cannot mount a tmpfs here (needs root and mount(2))"
  exit 0
fi
trap 'umount "$MNT"; rmdir "$MNT"' EXIT
fail=0; LOG=$(mktemp "${TEST_TMPDIR:-/tmp}/saver.XXXXXX")
start=$(date +%s.%N)
timeout 120 "$SAVER" --path="$MNT/state.ckpt" --strategy=fsdp --devices=2 > "$LOG" 2>&1
rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
out=$(cat "$LOG")
echo "saver exit $rc after ${took}s:"; echo "$out" | tail -n 4
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "FAIL: the saver did not fail (exit $rc)"; fail=1; }
echo "$out" | grep -q '^saved 1$' || { echo "FAIL: the first save did not fit"; fail=1; }
echo "$out" | grep -q '^saved 2$' && { echo "FAIL: a second save fitted: the tmpfs is too big"; fail=1; }
echo "$out" | grep -q "No space left on device" || { echo "FAIL: the error does not say the disk is full"; fail=1; }
echo "$out" | grep -q "state.ckpt" || { echo "FAIL: the error does not name the checkpoint"; fail=1; }
left=$(find "$MNT" -mindepth 1 -maxdepth 1 ! -name state.ckpt | wc -l)
[ "$left" -eq 0 ] || { echo "FAIL: left behind:"; ls -la "$MNT"; fail=1; }
"$FABRIC" verify "$MNT/state.ckpt" --progress=never || { echo "FAIL: the first checkpoint no longer verifies"; fail=1; }
"$SAVER" --check="$MNT/state.ckpt" --last_saved=1 || { echo "FAIL: the first checkpoint changed"; fail=1; }
[ "$fail" -eq 0 ] && echo "PASS"
exit "$fail"
