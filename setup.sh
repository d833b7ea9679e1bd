#!/usr/bin/env bash
# Installs everything fabric_cpp needs on a fresh Debian machine, then (unless
# --no-run is given) builds and runs the main job on a small default: the
# WikiText-2 Transformer (tiny preset) under FSDP on 2 processes, a sharded
# checkpoint, and its evaluation on a single device.
# Idempotent: a second run checks and returns in seconds.
#
#   ./setup.sh            install, build, run the example
#   ./setup.sh --no-run   install only (used by test.sh)
set -euo pipefail
cd "$(dirname "$0")"

RUN_EXAMPLE=1
[[ "${1:-}" == "--no-run" ]] && RUN_EXAMPLE=0

CACHE="${FABRIC_CACHE:-$HOME/.cache/fabric_cpp}"
APT_PACKAGES=(bazel-bootstrap bazel-platforms bazel-rules-java libabsl-dev libgtest-dev libgmock-dev
              libbenchmark-dev libgloo-dev libisal-dev nlohmann-json3-dev)
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

# 2. The Python virtual environment with the pinned torch (LibTorch comes from
#    its wheel) and lightning. It lives in a cache keyed by the requirements, so
#    every clone on this machine shares it; .venv links to it.
REQ=third_party/python/requirements.txt
PY="${FABRIC_PYTHON:-python3}"
key=$( (cat "$REQ"; "$PY" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$key"
if [[ ! -f "$VENV/.complete" ]]; then
  log "creating virtual environment $VENV (torch wheel with CUDA libraries: a few GB, a few minutes)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$REQ"
  "$VENV/bin/python" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'
  touch "$VENV/.complete"
fi
ln -sfn "$VENV" .venv

# 3. Machine-local Bazel settings.
mkdir -p "$CACHE/bazel-disk-cache"
cat > .bazelrc.user <<RC
# Written by setup.sh; machine-local, not committed.
build --disk_cache=$CACHE/bazel-disk-cache
RC
log "environment ready: $(bazel --version 2>/dev/null || echo bazel), venv $VENV"

if ((RUN_EXAMPLE)); then
  log "main job: //trainers:fsdp_train (tiny preset, 2 processes, 60 steps), then //trainers:load"
  bazel run //trainers:fsdp_train -- --steps=60 --checkpoint_interval=30
  bazel run //trainers:load -- --checkpoint=runs/fsdp_train/checkpoints
fi
