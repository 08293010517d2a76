#!/bin/bash
# Run one emjax stage on every host of a TPU pod slice (all hosts run the same command).
# Usage: TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh emjax sweep all --config=configs/sweep_paper.py:steering,medical
#        DRY_RUN=1 HOSTS=16 DEVICES=4 MEMORY_GB=95 MODEL_PRESET=qwen2.5-14b-instruct launch/tpu_pod.sh emjax ...
#        (print the mesh, the per-device memory estimate and each worker's command; needs no TPU)
set -euo pipefail
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "${EMJAX:-emjax}" launch-plan --launcher tpu --hosts "${HOSTS:?set HOSTS}" --devices-per-host "${DEVICES:-4}" \
    ${MEMORY_GB:+--memory-gb "$MEMORY_GB"} ${MODEL_PRESET:+--model-preset "$MODEL_PRESET"} -- "$@"
fi
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
cmd="cd ~/emjax && EMJAX_DISTRIBUTED=1 .venv/bin/$(printf '%q ' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$cmd"
