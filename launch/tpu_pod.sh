#!/bin/bash
# Run one emjax stage on every host of a TPU pod slice (all hosts run the same command).
# Usage: TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh emjax sweep all --config=configs/sweep_paper_medical.py
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
cmd="cd ~/emjax && EMJAX_DISTRIBUTED=1 .venv/bin/$*"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$cmd"
