#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (idempotent, seconds when
# everything is there), then every test of this workspace, then the separate
# workspace under tests/reuse_workspace that uses fabric_cpp as an external
# repository. Ends with one line "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")"
start=$(date +%s)
./setup.sh --no-run || exit 1
log=$(mktemp)
status=0
bazel test //... "$@" 2>&1 | tee "$log" || status=$?
(cd tests/reuse_workspace && bazel test //... "$@") 2>&1 | tee -a "$log" || status=$?
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD)' "$log")
rm -f "$log"
echo "test.sh: $(( $(date +%s) - start )) s"
echo "${passed} passed, ${failed} failed"
exit $status
