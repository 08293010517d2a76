#!/usr/bin/env bash
# One device call: the emjax benchmarks and the PyTorch peer, back to back on the same card.
#
#   bash bench/device_suite.sh "train_steps --attention cudnn" "sweep --attention cudnn" generate \
#        -- "--cases steer,kl,lora1,lora32,sweep,gen"
#
# Each argument before `--` is one `python bench/<script> <args>` run; the argument after `--`
# is passed to the peer (.devcarry/anchor_torch.py, copied from ../shared/bench). Set
# EMJAX_OLD=<folder> to also run the same emjax cases from another checkout (e.g. an older
# revision unpacked with `git archive`). JSON lines go to $OUT/results.jsonl, full logs to
# $OUT/log.txt; each run is bounded by STEP_TIMEOUT seconds (default 240) and, with BUDGET set,
# skipped when less than a minute of the call's BUDGET seconds is left. Sourced (`source
# bench/device_suite.sh`), it only sets up and defines `run` for a script of its own.
set -uo pipefail
OUT=${OUT:-/tmp/emjax-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then  # wheels the device image lacks (ml-collections)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$OUT/log.txt"
left() { echo $(( ${BUDGET:-100000} - ($(date +%s) - T0) )); }
run() {  # run LABEL DIR SCRIPT ARGS...
  local label=$1 dir=$2; shift 2
  [ "$(left)" -gt 60 ] || { echo "== skipped (budget): [$label] $*" | tee -a "$OUT/log.txt"; return; }
  local limit=${STEP_TIMEOUT:-240}; [ "$limit" -lt "$(left)" ] || limit=$(( $(left) - 5 ))
  echo "== [$label] $*" | tee -a "$OUT/log.txt"
  (cd "$dir" && timeout "$limit" python3 "$@") 2>&1 | tee -a "$OUT/log.txt" \
    | grep '^{' | sed "s/^{/{\"rev\": \"$label\", /" >> "$OUT/results.jsonl"
}
[ "${BASH_SOURCE[0]}" != "$0" ] && return 0
peer=""
cases=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then peer=${2:-}; break; fi
  cases+=("$1"); shift
done
for c in "${cases[@]}"; do
  read -r -a words <<< "$c"
  run new . "bench/${words[0]}.py" "${words[@]:1}"
  if [ -n "${EMJAX_OLD:-}" ]; then run old "$EMJAX_OLD" "bench/${words[0]}.py" "${words[@]:1}"; fi
done
if [ -n "$peer" ]; then
  # shellcheck disable=SC2086
  STEP_TIMEOUT=${PEER_TIMEOUT:-420} run peer . .devcarry/anchor_torch.py $peer
fi
echo "== results"; cat "$OUT/results.jsonl" 2>/dev/null
