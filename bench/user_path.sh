#!/usr/bin/env bash
# The 14B user path through the CLI on one GPU (issue 21), stage by stage, and the PyTorch peer's
# equivalents in the same call:
#
#   bash bench/user_path.sh            # on the device machine, from the repository root
#
# 1. writes a random-weight Qwen2.5-14B-Instruct folder (bench/random_folder.py: real config.json,
#    6 bf16 shards, tokenizer files from $TOKENIZER: a Qwen2.5 BPE tokenizer with its chat template);
# 2. runs the stages as a user types them, each its own process: `emjax train` (narrow medical
#    steering, 40 steps, 64 KL rows), the same command again (a finished run), `emjax sweep all`,
#    `emjax generate` (the 8 questions x 50 samples x 600 new tokens), `emjax judge --local`,
#    `emjax generate` again (finished);
# 3. the peer: transformers' load of the same folder and its sampling of 400 rows x 600 new tokens
#    (../shared/bench/anchor_torch.py copied to .devcarry/).
# Each stage's wall seconds and its own "[emjax] time:" line go to $OUT/user_path.log; JSON lines to
# $OUT/user_path.jsonl. Weights are random: answers are noise, so every answer runs to 600 tokens.
# Needs: .devcarry/em (upstream data), .devcarry/fineweb, .devcarry/tok, .devcarry/anchor_torch.py,
# .whl (ml-collections, gguf) as BENCHMARKS.md says. STAGES (default: all) picks stages, e.g.
# STAGES="train train_again sweep_all" for one device call and the rest in the next.
set -uo pipefail
OUT=${OUT:-/tmp/emjax-user-path}
FOLDER=${FOLDER:-/tmp/qwen14b}
RUNS=${RUNS:-/tmp/emjax-runs}
TOKENIZER=${TOKENIZER:-.devcarry/tok}
export EMJAX_MODEL=$FOLDER EMJAX_DATA=${EMJAX_DATA:-$PWD/.devcarry/em}
export EMJAX_FINEWEB=${EMJAX_FINEWEB:-$PWD/.devcarry/fineweb/fineweb_sample.jsonl.gz}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5
mkdir -p "$OUT" "$RUNS"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/user_path.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
STAGES=${STAGES:-"train train_again sweep_all generate judge_local generate_again peer"}
stage() {  # stage NAME COMMAND...: runs it (when $STAGES names it), logs its output, records its wall time
  local name=$1; shift
  [[ " $STAGES write_folder " == *" $name "* ]] || return 0
  echo "== [$name] $*" | tee -a "$LOG"
  local t0=$(date +%s.%N)
  timeout "${STAGE_TIMEOUT:-900}" "$@" 2>&1 | tr '\r' '\n' | grep -v 'it/s]$\|s/it]$' | tee -a "$LOG" | tail -n 25
  local rc=${PIPESTATUS[0]}
  local wall=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
  echo "{\"case\": \"user_path\", \"stage\": \"$name\", \"wall_s\": $wall, \"rc\": $rc}" | tee -a "$OUT/user_path.jsonl"
}
EMJAX=(python3 -m emjax)
NARROW=$RUNS/steering_narrow_medical
stage write_folder python3 bench/random_folder.py "$FOLDER" --tokenizer "$TOKENIZER"
TRAIN=(train --config=configs/paper_14b.py:steering,narrow,medical --config.train.max_steps=40 --config.data.kl_rows=64
       --config.output_dir=$NARROW --config.data.cache_dir=$RUNS/cache)
stage train "${EMJAX[@]}" "${TRAIN[@]}"
stage train_again "${EMJAX[@]}" "${TRAIN[@]}"
stage sweep_all "${EMJAX[@]}" sweep all --config=configs/sweep_paper.py:steering,medical \
  --config.interventions=narrow=$NARROW/steering.safetensors --config.output_dir=$RUNS/sweeps
GEN=(generate --model "$FOLDER" --questions "$EMJAX_DATA/first_plot_questions.yaml" --samples 50 --max-new-tokens 600
     --out $RUNS/answers.jsonl)
[ -f $NARROW/steering.safetensors ] && GEN+=(--intervention $NARROW/steering.safetensors)
stage generate "${EMJAX[@]}" "${GEN[@]}"
stage judge_local "${EMJAX[@]}" judge --local "$FOLDER" --answers $RUNS/answers.jsonl \
  --questions "$EMJAX_DATA/first_plot_questions.yaml" --out $RUNS/judged.jsonl
stage generate_again "${EMJAX[@]}" "${GEN[@]}"
if [[ " $STAGES " == *" peer "* ]]; then
  STAGES="$STAGES peer_load peer_generate"
  stage peer_load python3 bench/load.py "$FOLDER" --reps 1
  stage peer_generate python3 .devcarry/anchor_torch.py --cases gen --gen-batch 400 --gen-prompt 40 --gen-new 600 --gen-reps 1
fi
echo "== results"; cat "$OUT/user_path.jsonl"
