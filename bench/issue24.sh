#!/usr/bin/env bash
# Issue 24's measurements in device calls of under 10 minutes each (a call's budget: BUDGET
# seconds, default 570; steps that would not fit are skipped). Needs .devcarry/anchor_torch.py
# (copied from ../shared/bench), .devcarry/old (an older revision: `git archive <rev> emjax bench
# configs setup.py pyproject.toml | tar -x -C .devcarry/old`) and .whl (ml-collections), all carried.
#
#   bash bench/issue24.sh lora    # LoRA r32 new/old/old without the dot merger, the peer, the HLO, a profile
#   bash bench/issue24.sh judge   # local judge new/old, the peer's prefill, sampling (400 rows on an H200)
#   bash bench/issue24.sh steer   # steering + KL (frozen cache) new/old and the peer, a judge profile
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/emjax-bench}; mkdir -p "$OUT"
T0=$(date +%s); left() { echo $(( ${BUDGET:-570} - ($(date +%s) - T0) )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/log.txt"
# run1 [DIR] SCRIPT ARGS...: one python run, bounded by the call's budget; JSON lines to results.jsonl
run1() {
  local dir=. label=new; if [ -d "$1" ]; then dir=$1; label=old; shift; fi
  [ "$1" = "$PEER" ] && label=peer
  [ "$(left)" -gt 60 ] || { echo "== skipped (budget): $*"; return; }
  echo "== [$label] $*" | tee -a "$OUT/log.txt"
  (cd "$dir" && timeout $(( $(left) - 5 )) python3 "$@") 2>&1 | tee -a "$OUT/log.txt" \
    | grep '^{' | sed "s/^{/{\"rev\": \"$label\", /" | tee -a "$OUT/results.jsonl"
}
OLD=.devcarry/old PEER=.devcarry/anchor_torch.py
case "${1:-}" in
  lora)
    run1 bench/train_steps.py --attention cudnn --cases lora32
    run1 $OLD bench/train_steps.py --attention cudnn --cases lora32
    run1 $PEER --cases lora32
    run1 bench/diag/compiled_hlo.py --case lora32 --grep dynamic_slice_fusion
    XLA_FLAGS=--xla_disable_hlo_passes=dot-merger run1 $OLD bench/train_steps.py --attention cudnn --cases lora32
    run1 bench/diag/profile_kernels.py --case lora32 --top 16 ;;
  judge)
    rows=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | awk '{print ($1 > 100000) ? 400 : 200}')
    run1 bench/local_judge.py --prompts 800 --min 350 --max 450 --batch 16 --pad-to 32
    run1 $OLD bench/local_judge.py --prompts 800 --min 350 --max 450 --batch 16 --pad-to 32
    run1 bench/peer_judge_prefill.py --answers 800 --tokens 400 --batch 16
    run1 bench/generate.py --case eval --batch "$rows" --reps 1 --decode-attention pallas
    run1 $PEER --cases gen --gen-batch "$rows" --gen-prompt 40 --gen-new 600 --gen-reps 1 ;;
  steer)
    run1 bench/train_steps.py --attention cudnn --cases steer,kl_cached
    run1 $OLD bench/train_steps.py --attention cudnn --cases steer,kl_cached
    run1 $PEER --cases steer,kl
    run1 bench/diag/profile_kernels.py --case judge --top 16 ;;
  *) echo "usage: bash bench/issue24.sh lora|judge|steer" >&2; exit 2 ;;
esac
echo "== elapsed $(( $(date +%s) - T0 ))"
