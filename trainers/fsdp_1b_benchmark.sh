#!/bin/bash
# The 1B-parameter benchmark: fsdp_train (C++) on 2 CPU ranks for a few
# steps and a sharded checkpoint save; a second fsdp_train that only loads it
# (--resume at the last step: a fresh process, as a real resume); then
# Python's FSDP (FSDP2) on the same model, batch shape and threads per rank.
# One after the other: each needs about 8 GB per rank.
#   bazel run //trainers:fsdp_1b_benchmark -- [STEPS] [PRECISION] [BATCH]
set -euo pipefail
FSDP_TRAIN="$1"; PYTHON="$2"; PY_BENCH="$3"; shift 3
STEPS="${1:-4}"; PRECISION="${2:-32-true}"; BATCH="${3:-1}"
DATA="${DATA_DIR:-/work/shared/data/wikitext-2}"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/fsdp_1b_benchmark.XXXXXX)}"
FLAGS=(--preset=1b --devices=2 --accelerator=cpu --precision="${PRECISION}"
       --batch_size="${BATCH}" --steps="${STEPS}" --lr=1e-4 --data_dir="${DATA}" --split=valid
       --out_dir="${OUT}" --state_dict_type=sharded --keep_checkpoints=1)
echo "== C++ fsdp_train: preset 1b, 2 ranks, ${PRECISION}, batch ${BATCH}x35 per rank, ${STEPS} steps, sharded save; out ${OUT}"
"${FSDP_TRAIN}" "${FLAGS[@]}"
echo "== C++ fsdp_train --resume: load the sharded checkpoint on 2 ranks (fresh processes)"
"${FSDP_TRAIN}" "${FLAGS[@]}" --resume
echo "== Python FSDP2 (torch.distributed.fsdp.fully_shard), same model and batch"
"${PYTHON}" "${PY_BENCH}" --preset=1b --vocab_file="${DATA}/valid.txt" --devices=2 \
  --batch_size="${BATCH}" --steps="${STEPS}"
if [[ -z "${BENCH_OUT:-}" ]]; then rm -rf "${OUT}"; fi
