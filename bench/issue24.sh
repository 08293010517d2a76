#!/usr/bin/env bash
# Issue 24's measurements in device calls of under 10 minutes each (BUDGET seconds, default 570;
# runs that would not fit are skipped). Needs .devcarry/anchor_torch.py (copied from
# ../shared/bench), .devcarry/old (an older revision: `git archive <rev> emjax bench configs
# setup.py pyproject.toml | tar -x -C .devcarry/old`) and .whl (ml-collections), all carried.
#
#   bash bench/issue24.sh core    # one call when only one can be had: LoRA and judge new + peer, then old LoRA, sampling
#   bash bench/issue24.sh lora    # LoRA r32 and steering + KL new/old, the peer, a LoRA profile, its HLO's weight copies
#   bash bench/issue24.sh judge   # local judge new (whole prompts and 96 shared tokens)/old, the peer's prefill, sampling
#   bash bench/issue24.sh steer   # steering + KL (frozen cache) new/old and the peer, a judge profile
#   bash bench/issue24.sh next    # what the fourth session left open: the weight copies with the layer
#                                 # loop unrolled, barriers and candidate XLA flags (compile only, 8
#                                 # layers), the lean blocks' LoRA step rolled and unrolled, old, peer
#                                 # (old: the revision before the lean blocks, bf04fa6)
#   bash bench/issue24.sh rest    # the lean LoRA step's profile and memory peak, sampling
#   bash bench/issue24.sh h200    # the H200 goals in one call: sampling 400 rows and LoRA r32 unrolled,
#                                 # each with the peer, then the LoRA loop and the old revision
#   bash bench/issue24.sh h200b   # after h200 on the warm card (or alone on an H100): the unrolled
#                                 # step's profile and memory peak, a decode profile, the judge and the
#                                 # peer's prefill, the shrinking batch against lock-step (--stop-rate)
case "${1:-}" in core|lora|judge|steer|next|rest|h200|h200b) ;; *) echo "usage: bash bench/issue24.sh core|lora|judge|steer|next|rest|h200|h200b" >&2; exit 2 ;; esac
BUDGET=${BUDGET:-570} STEP_TIMEOUT=${STEP_TIMEOUT:-570}
source "$(dirname "$0")/device_suite.sh"
OLD=.devcarry/old PEER=.devcarry/anchor_torch.py
export PROFILE_DIR=${PROFILE_DIR:-/tmp/emjax-profiles}  # traces stay on the device; the tables go to the log
# h200 / h200b: compiled programs kept on the warm card between calls, so h200b's unrolled LoRA
# profile does not compile the step again (its "first call" is then a cache hit, not a compile)
case "$1" in h200|h200b) export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/emjax-jax-cache} ;; esac
JUDGE="bench/local_judge.py --prompts 800 --min 350 --max 450 --batch 16 --pad-to 32"
PEER_JUDGE="bench/peer_judge_prefill.py --answers 800 --tokens 400 --batch 16"
rows=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | awk '{print ($1 > 100000) ? 400 : 200}')
sampling() {  # the issue's 400 rows x 600 new tokens (200 where an H100 holds no more), emjax then the peer
  run new . bench/generate.py --case eval --batch "$rows" --reps 1 --decode-attention pallas
  run peer . $PEER --cases gen --gen-batch "$rows" --gen-prompt 40 --gen-new 600 --gen-reps 1
}
case "$1" in
  core)
    run new . $JUDGE --shared 96 --groups 16
    run new . bench/train_steps.py --attention cudnn --cases lora32
    run peer . $PEER --cases lora32
    run peer . $PEER_JUDGE
    run old $OLD bench/train_steps.py --attention cudnn --cases lora32
    sampling ;;
  lora)
    run new . bench/train_steps.py --attention cudnn --cases lora32,steer,kl_cached
    run old $OLD bench/train_steps.py --attention cudnn --cases lora32,steer,kl_cached
    run peer . $PEER --cases lora32,steer,kl
    run new . bench/diag/profile_kernels.py --case lora32 --top 16
    run new . bench/diag/compiled_hlo.py --case lora32 --grep dynamic_slice_fusion ;;
  judge)
    run new . $JUDGE --shared 96 --groups 16
    run old $OLD $JUDGE
    run peer . $PEER_JUDGE
    sampling ;;
  steer)
    run new . bench/train_steps.py --attention cudnn --cases steer,kl_cached
    run old $OLD bench/train_steps.py --attention cudnn --cases steer,kl_cached
    run peer . $PEER --cases steer,kl
    run new . bench/diag/profile_kernels.py --case judge --top 16 ;;
  next)
    run slices . bench/diag/slice_copies.py --layers 8 \
      --variants fwd,grad_lora,fwd_unrolled,grad_lora_unrolled,grad_lora_list,grad_lora_barrier
    run new . bench/train_steps.py --attention cudnn --cases lora32
    STEP_TIMEOUT=240 run new . bench/train_steps.py --attention cudnn --cases lora32,steer --unroll-layers
    run peer . $PEER --cases lora32
    run old $OLD bench/train_steps.py --attention cudnn --cases lora32
    for flags in --xla_gpu_executable_num_compute_streams=1 --xla_gpu_experimental_stream_annotation=false \
                 --xla_gpu_async_dot=false --xla_gpu_enable_latency_hiding_scheduler=false; do
      echo "== XLA_FLAGS=$flags" | tee -a "$OUT/log.txt"
      XLA_FLAGS="$flags" run slices . bench/diag/slice_copies.py --layers 8 --variants grad_lora
    done ;;
  rest)
    run new . bench/train_steps.py --attention cudnn --cases steer,kl_cached
    run old $OLD bench/train_steps.py --attention cudnn --cases steer
    run new . bench/diag/profile_kernels.py --case lora32 --top 16
    run new . bench/train_memory.py --policies none
    sampling ;;
  h200)
    sampling
    STEP_TIMEOUT=240 run new . bench/train_steps.py --attention cudnn --cases lora32 --unroll-layers
    run peer . $PEER --cases lora32
    run new . bench/train_steps.py --attention cudnn --cases lora32
    run old $OLD bench/train_steps.py --attention cudnn --cases lora32 ;;
  h200b)
    STEP_TIMEOUT=240 run new . bench/diag/profile_kernels.py --case lora32 --top 16 --unroll-layers
    STEP_TIMEOUT=240 run new . bench/train_memory.py --policies none --unroll-layers
    run new . bench/diag/profile_kernels.py --case eval --batch "$rows" --prompt 40 --new 600 --top 16
    run new . $JUDGE --shared 96 --groups 16
    run peer . $PEER_JUDGE
    run new . bench/generate.py --case eval --batch "$rows" --reps 1 --stop-rate 0.005 ;;
esac
echo "== results (elapsed $(( $(date +%s) - T0 )) s)"; cat "$OUT/results.jsonl" 2>/dev/null
