#!/bin/bash
# Crash test: kills savers with SIGKILL at random moments and checks what is
# left after every kill (docs/crash-safety.md).
#   crash_test.sh FSDP_TRAIN FABRIC CRASH_SAVER PYTHON SAME_CHECKPOINT_PY KILLS_PER_KIND [DATA_FILE]
# (DATA_FILE: a WikiText-2 split file; its folder and --split=valid are used.)
# Kinds:
#   file, ddp, sharded: crash_saver saving over the same path for ever (one
#                process writing a torch.save file; 2 DDP ranks, rank 0
#                writing it; 2 FSDP ranks writing a sharded folder), killed
#                (the whole process group) at a random moment; then the
#                path, once a save has returned, must pass `fabric verify`
#                and hold exactly the last returned iteration or the next;
#   async_file, async_sharded: the same with Fabric::SaveAsync (one process;
#                2 FSDP ranks sharded), every parameter overwritten while
#                the save is in flight: the check also proves the snapshot;
#   rotation:    fsdp_train (2 ranks, sharded, a checkpoint every step,
#                --keep_checkpoints=2 --resume) killed mid-run;
#   consolidate: `fabric consolidate --force` over the same output file.
# After every kill: every checkpoint the listing counts as complete (a
# step-*.ckpt file, or folder with .metadata) passes `fabric verify`; the next
# run resumes from the newest; the consolidated file, when present, is
# the same as a reference when torch.load reads both; nothing but recognizable temps
# (.*.tmp.*, .*.saving.*, .*.deleting.*, .*.retired.*, and the shared-folder
# probe .fabric-shared-<pid>-*) is left, and those do not pile up.
# KINDS (environment, default "file ddp sharded async_file async_sharded
# rotation consolidate") picks
# kinds to run.
set -u
TRAIN=$(realpath "$1"); FABRIC=$(realpath "$2"); SAVER=$(realpath "$3")
PYTHON=$(realpath "$4"); SAME=$(realpath "$5"); KILLS=${6:-5}
DATA_FILE=${7:-}
WORK=$(mktemp -d "${TEST_TMPDIR:-/tmp}/crash.XXXXXX")
CK="$WORK/run/checkpoints"
fail=0; kills=0; during_save=0; during_rotation=0; resumed=0

note_fail() { echo "FAIL: $*"; fail=$((fail + 1)); }

# $1: folder. Checks leftovers and every complete checkpoint.
check_folder() {
  local d=$1 name
  for p in "$d"/* "$d"/.[!.]*; do
    [ -e "$p" ] || continue
    name=$(basename "$p")
    case "$name" in
      step-*.ckpt)
        if [ -f "$p" ] || [ -f "$p/.metadata" ]; then
          "$FABRIC" verify "$p" --progress=never >/dev/null 2>"$WORK/verify.err" ||
            note_fail "$p is listed complete but fails verify: $(tail -1 "$WORK/verify.err")"
        else
          during_save=$((during_save + 1))
        fi ;;
      .*.deleting.*) during_rotation=$((during_rotation + 1)) ;;
      .*.saving.*|.*.tmp.*|.*.retired.*|.fabric-shared-*) during_save=$((during_save + 1)) ;;
      *) note_fail "unrecognized leftover $p" ;;
    esac
  done
}

run_killed() {  # $1: seconds before the kill; rest: command
  local delay=$1; shift
  setsid "$@" >"$WORK/out.log" 2>&1 &
  local pid=$!
  sleep "$delay"
  kill -9 -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  kills=$((kills + 1))
}

rand_delay() { awk -v s="$RANDOM" -v lo="$1" -v hi="$2" 'BEGIN{srand(s); printf "%.2f", lo + rand() * (hi - lo)}'; }

# --- same-path saves: $1 kind name, $2 file name, rest: crash_saver flags
same_path_kind() {
  local kind=$1 name=$2; shift 2
  local dir="$WORK/same-$kind" before=$kills
  mkdir -p "$dir"
  for ((i = 0; i < KILLS; i++)); do
    run_killed "$(rand_delay 0.5 3)" "$SAVER" --path="$dir/$name" "$@"
    local last
    last=$(grep -o '^saved [0-9]*' "$WORK/out.log" | tail -1 | cut -d' ' -f2)
    if grep -q "crash_saver:" "$WORK/out.log"; then
      note_fail "$kind run $i: $(grep "crash_saver:" "$WORK/out.log" | head -1)"
    fi
    # A run killed before its first save returned leaves the previous run's
    # checkpoint: any iteration, still whole (--last_saved=-1).
    if [ -e "$dir/$name" ]; then
      "$FABRIC" verify "$dir/$name" --progress=never >/dev/null 2>"$WORK/verify.err" ||
        note_fail "$kind kill $i: $dir/$name fails verify: $(tail -1 "$WORK/verify.err")"
      "$SAVER" --check="$dir/$name" --last_saved="${last:--1}" >/dev/null 2>"$WORK/check.err" ||
        note_fail "$kind kill $i: $(tail -1 "$WORK/check.err")"
      same_path_checked=$((same_path_checked + 1))
      [ -n "$last" ] && saved_mid=$((saved_mid + 1))
    elif [ -n "$last" ] || [ -n "${had_one:-}" ]; then
      note_fail "$kind kill $i: $dir/$name is gone"
    fi
    [ -e "$dir/$name" ] && had_one=1
    for p in "$dir"/* "$dir"/.[!.]*; do
      [ -e "$p" ] || continue
      case "$(basename "$p")" in
        "$name") ;;
        .*.tmp.*|.*.saving.*|.*.retired.*|.fabric-shared-*) during_save=$((during_save + 1)) ;;
        .*.deleting.*) during_rotation=$((during_rotation + 1)) ;;
        *) note_fail "$kind: unrecognized leftover $p" ;;
      esac
    done
  done
  unset had_one
  # Each committed save removes the remains of dead savers: they must not pile
  # up over the kills (those of the last kill or two may still be there).
  local left
  left=$(find "$dir" -mindepth 1 -maxdepth 1 -name '.*' | wc -l)
  [ "$left" -le 2 ] || note_fail "$kind: $left temp remains piled up after $KILLS kills"
  eval "kills_$kind=$((kills - before))"
  echo "$kind: $((kills - before)) kills, failures so far $fail"
}
same_path_checked=0; saved_mid=0
KINDS=" ${KINDS:-file ddp sharded async_file async_sharded rotation consolidate} "
kills_file=0; kills_ddp=0; kills_sharded=0; kills_async_file=0; kills_async_sharded=0
runs() { [[ "$KINDS" == *" $1 "* ]]; }
runs file && same_path_kind file state.pt --strategy=single_device --devices=1
runs ddp && same_path_kind ddp state.pt --strategy=ddp --devices=2
runs sharded && same_path_kind sharded state.ckpt --strategy=fsdp --devices=2 --state_dict_type=sharded
# Asynchronous saves (Fabric::SaveAsync): killed while the background write runs.
runs async_file && same_path_kind async_file state.pt --strategy=single_device --devices=1 --async_save
runs async_sharded && same_path_kind async_sharded state.ckpt --strategy=fsdp --devices=2 \
  --state_dict_type=sharded --async_save
same_kills=$kills

# --- rotation
TRAIN_ARGS=(--devices=2 --preset=tiny --steps=100000 --checkpoint_interval=1 --keep_checkpoints=2
            --resume --log_every=1000 --out_dir="$WORK/run" --checkpoint_dir="$CK")
if [ -n "$DATA_FILE" ]; then
  TRAIN_ARGS+=(--data_dir="$(dirname "$(realpath "$DATA_FILE")")" --split=valid)
else
  DATA=${DATA_DIR:-/work/shared/data/wikitext-2}
  [ -d "$DATA" ] && TRAIN_ARGS+=(--data_dir="$DATA")
fi
ROT_KILLS=0; runs rotation && ROT_KILLS=$KILLS
for ((i = 0; i < ROT_KILLS; i++)); do
  run_killed "$(rand_delay 2 8)" "$TRAIN" "${TRAIN_ARGS[@]}"
  if grep -q "resumed from" "$WORK/out.log"; then resumed=$((resumed + 1)); fi
  if [ -d "$CK" ] && ls "$CK"/step-*.ckpt >/dev/null 2>&1 && [ "$i" -gt 0 ] &&
     grep -qi "error\|failed" "$WORK/out.log"; then
    note_fail "run $i: $(grep -i "error\|failed" "$WORK/out.log" | head -1)"
  fi
  [ -d "$CK" ] && check_folder "$CK"
done
rot_kills=$((kills - same_kills))
runs rotation && echo "rotation: $rot_kills kills, failures so far $fail"

# --- consolidate over the same output path (of rotation's newest checkpoint)
if ! runs consolidate; then
  :
elif ! SRC=$(ls -d "$CK"/step-*.ckpt 2>/dev/null | while read -r p; do [ -f "$p/.metadata" ] && echo "$p"; done | tail -1) || [ -z "$SRC" ]; then
  note_fail "no complete sharded checkpoint to consolidate"
else
  cp -r "$SRC" "$WORK/src.ckpt"
  mkdir -p "$WORK/cons"
  # Same file name as the output (torch.save names its records after the
  # file); compared as torch.load reads them (each save has a random id).
  mkdir -p "$WORK/ref"
  "$FABRIC" consolidate "$WORK/src.ckpt" --output_file "$WORK/ref/out.pt" --progress=never >/dev/null 2>&1 ||
    note_fail "reference consolidate failed"
  for ((i = 0; i < KILLS; i++)); do
    run_killed "$(rand_delay 0.05 1.5)" "$FABRIC" consolidate "$WORK/src.ckpt" \
      --output_file "$WORK/cons/out.pt" --force --progress=never
    if [ -e "$WORK/cons/out.pt" ] &&
       ! "$PYTHON" "$SAME" "$WORK/cons/out.pt" "$WORK/ref/out.pt" >"$WORK/same.out" 2>&1; then
      note_fail "consolidated file differs from the reference after kill $i: $(tail -1 "$WORK/same.out")"
    fi
    for p in "$WORK/cons"/* "$WORK/cons"/.[!.]*; do
      [ -e "$p" ] || continue
      case "$(basename "$p")" in out.pt) ;; .*.tmp.*|.*.retired.*|.*.deleting.*) during_save=$((during_save + 1)) ;;
        *) note_fail "unrecognized leftover $p" ;; esac
    done
  done
fi

echo "crash test: kills=$kills (same-path file $kills_file, ddp $kills_ddp, sharded $kills_sharded," \
     "async file $kills_async_file, async sharded $kills_async_sharded;" \
     "rotation $rot_kills, consolidate $((kills - same_kills - rot_kills)));" \
     "same-path checkpoints checked bit-exact after a kill: $same_path_checked" \
     "($saved_mid after a save of the killed run had returned);" \
     "temps seen after a kill: save=$during_save rotation=$during_rotation resumed_runs=$resumed failures=$fail"
rm -rf "$WORK"
[ "$fail" -eq 0 ]
