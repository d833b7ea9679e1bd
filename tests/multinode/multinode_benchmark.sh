#!/bin/bash
# Figures of docs/benchmarks.md ("Several nodes"): the 2 x 2 run's step time
# (two launcher invocations over loopback) against 1 x 4 (one launcher), and
# how long a missing node and a dead rank take to be reported.
#   bazel run //tests/multinode:multinode_benchmark -- [STEPS] [PRESET] [RENDEZVOUS_TIMEOUT_S]
set -euo pipefail
TRAIN=$(realpath "$1"); VALID=$(realpath "$2"); shift 2
STEPS=${1:-30}; PRESET=${2:-tiny}; RDV=${3:-10}
DATA=$(dirname "$VALID")
WORK=$(mktemp -d /tmp/fabric_multinode_bench.XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FLAGS=(--data_dir="$DATA" --split=valid --preset="$PRESET" --batch_size=8 --log_every=1000
       --steps="$STEPS" --save_last=false)
now() { date +%s.%N; }
summary() { grep -o '[0-9.]* s/step' "$1" | head -1; }

# 1 x 4: one launcher starts four local ranks.
"$TRAIN" --devices=4 "${FLAGS[@]}" --out_dir="$WORK/one" > "$WORK/one.log" 2>&1
# 2 x 2: one launcher per node, rendezvous on node 0's address; both nodes
# share the output folder, as a multi-node run must (docs/trainers.md).
P=$(port)
for n in 0 1; do
  "$TRAIN" --devices=2 --num_nodes=2 --node_rank=$n --main_address=127.0.0.1 --main_port="$P" \
    "${FLAGS[@]}" --out_dir="$WORK/two" > "$WORK/two$n.log" 2>&1 &
done
wait
echo "step time, FSDP, preset $PRESET, $STEPS steps (first excluded), $(nproc) cores:"
echo "  1 node  x 4 ranks: $(summary "$WORK/one.log")"
echo "  2 nodes x 2 ranks: $(summary "$WORK/two0.log")"
[ -n "$(summary "$WORK/two0.log")" ] || { echo "the 2 x 2 run failed:"; tail -n 3 "$WORK/two0.log"; exit 1; }

# Missing node: node 0 alone.
P=$(port); T0=$(now)
"$TRAIN" --devices=2 --num_nodes=2 --node_rank=0 --main_address=127.0.0.1 --main_port="$P" \
  "${FLAGS[@]}" --rendezvous_timeout="$RDV" --out_dir="$WORK/miss" > "$WORK/miss.log" 2>&1 || true
T1=$(now)
echo "missing node 1 (--rendezvous_timeout=$RDV): reported after $(echo "$T1 - $T0" | bc) s:"
grep -o 'rank(s) [0-9, ]* of world_size [0-9]* never joined[^(]*([^)]*)' "$WORK/miss.log" | head -1 | sed 's/^/  /'

# Dead rank: kill -9 rank 3 (node 1's second process) at step 3.
P=$(port)
for n in 0 1; do
  "$TRAIN" --devices=2 --num_nodes=2 --node_rank=$n --main_address=127.0.0.1 --main_port="$P" \
    "${FLAGS[@]}" --steps=100000 --log_every=1 --out_dir="$WORK/dead" > "$WORK/dead$n.log" 2>&1 &
  PIDS[$n]=$!
done
for ((i = 0; i < 6000; i++)); do
  grep -q 'step 3/' "$WORK/dead0.log" && break
  if ! kill -0 "${PIDS[0]}" 2>/dev/null; then
    echo "the dead-rank run ended before step 3:"; tail -n 3 "$WORK/dead0.log"; exit 1
  fi
  sleep 0.05
done
VICTIM=$(cat /proc/${PIDS[1]}/task/${PIDS[1]}/children | awk '{print $1}')
T0=$(now); kill -9 "$VICTIM"
wait "${PIDS[0]}" || true; wait "${PIDS[1]}" || true
T1=$(now)
echo "dead rank 3 (kill -9 on node 1): every node ended after $(echo "$T1 - $T0" | bc) s:"
grep -o 'because rank 3 ([^)]*) was killed by signal 9' "$WORK/dead0.log" | head -1 | sed 's/^/  node 0: /'
