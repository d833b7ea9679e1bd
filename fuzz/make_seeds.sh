#!/usr/bin/env bash
# Regenerates the checked-in fuzz seed corpora (fuzz/corpus/<target>/) from
# real files: our writers (//fuzz:write_our_seeds) and Python's torch.save,
# DCP and Lightning (fuzz/make_seeds.py in the project's venv).
#   fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus
rm -rf "$out"
mkdir -p "$out"
bazel run //fuzz:write_our_seeds -- "$PWD/$out"
py=.venv/bin/python  # the venv setup.sh made
"$py" fuzz/make_seeds.py "$out"
du -sh "$out"
