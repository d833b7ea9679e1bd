#!/usr/bin/env bash
# Builds the given targets with --config=cuda (in a separate output base, so
# the CPU build here is not invalidated) and stages the binaries plus the
# Debian libraries they need (Abseil, ISA-L) and our shared libraries into
# .device/, which the GPU machine runs against its own torch:
#
#   tools/gpu/stage_for_device.sh //tests/cuda:cuda_checkpoint_test //examples:single_device_example
#   # then on the GPU machine: .device/run.sh BINARY [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE="${FABRIC_CACHE:-$HOME/.cache/fabric_cpp}/bazel_cuda_base"
bazel --output_base="$BASE" build --config=cuda --symlink_prefix=/ "$@"
BIN=$(bazel --output_base="$BASE" info --config=cuda bazel-bin 2>/dev/null)
rm -rf .device && mkdir -p .device/bin .device/lib
for target in "$@"; do
  path=${target#//}; path=${path/://}
  cp "$BIN/$path" .device/bin/
  ldd "$BIN/$path" | awk '/libabsl|libisal/ {print $3}' | xargs -r -I{} cp -L {} .device/lib/
done
cp -L "$BIN"/_solib_k8/lib*.so .device/lib/
cat > .device/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs a staged binary against the GPU machine's torch (/opt/torch/.venv).
cd "$(dirname "$0")"
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages)
NV=$(find "$SP/nvidia" -maxdepth 3 -name lib -type d | tr '\n' ':')
export LD_LIBRARY_PATH=$PWD/lib:$SP/torch/lib:$NV${LD_LIBRARY_PATH:-}
export FABRIC_TEST_PYTHON=/opt/torch/.venv/bin/python
export TEST_TMPDIR=${TEST_TMPDIR:-$(mktemp -d)}
bin=$1; shift
exec "./bin/$bin" "$@"
RUN
chmod +x .device/run.sh
echo "staged into .device/ ($(du -sh .device | cut -f1))"
