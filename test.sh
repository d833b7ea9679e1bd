#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (idempotent, seconds when
# everything is there), then every test of this workspace, then the separate
# workspace under tests/reuse_workspace that uses fabric_cpp as an external
# repository.
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)
./setup.sh --no-run
bazel test //... "$@"
(cd tests/reuse_workspace && bazel test //... "$@")
echo "test.sh: all tests passed in $(( $(date +%s) - start )) s"
