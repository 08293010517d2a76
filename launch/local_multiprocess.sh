#!/bin/bash
# N processes of one emjax stage on this machine, joined with jax.distributed over localhost: the
# multi-host code path (sharded weights per process, process 0 writing, Orbax from all) without a
# cluster. On CPU each process gets DEVICES fake devices; on a GPU host set GPU=1 and each process
# drives DEVICES GPUs of its own (CUDA_VISIBLE_DEVICES).
# Usage: N=2 DEVICES=4 launch/local_multiprocess.sh emjax train --config=configs/embedded_steering_general.py --mesh data:2,fsdp:4
#        DRY_RUN=1 N=2 DEVICES=4 launch/local_multiprocess.sh emjax ...   (print the plan and the commands)
set -euo pipefail
N=${N:-2}
DEVICES=${DEVICES:-4}
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "${EMJAX:-emjax}" launch-plan --launcher local --hosts "$N" --devices-per-host "$DEVICES" \
    ${MEMORY_GB:+--memory-gb "$MEMORY_GB"} ${MODEL_PRESET:+--model-preset "$MODEL_PRESET"} -- "$@"
fi
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < N; i++)); do
  if [ "${GPU:-0}" = 1 ]; then
    visible=$(seq -s, $((i * DEVICES)) $((i * DEVICES + DEVICES - 1)))
    CUDA_VISIBLE_DEVICES=$visible EMJAX_COORDINATOR=localhost:$PORT EMJAX_NUM_PROCESSES=$N EMJAX_PROCESS_ID=$i \
      "$@" &
  else
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES \
      EMJAX_COORDINATOR=localhost:$PORT EMJAX_NUM_PROCESSES=$N EMJAX_PROCESS_ID=$i "$@" &
  fi
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
