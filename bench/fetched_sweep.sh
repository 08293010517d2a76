#!/usr/bin/env bash
# bash bench/fetched_sweep.sh (device machine, repository root; .devcarry/em, .devcarry/tok and .whl carried as
# bench/user_path.sh says). BENCHMARKS.md, "The 14B user path".
# issue 21 check: a sweep from a clean tree with data fetched by `emjax data`, then again with the
# outputs removed (compile cache warm).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 EMJAX_DATA=/tmp/emdata EMJAX_MODEL=/tmp/qwen14b
python3 -m emjax data get em --from-folder .devcarry/em | tail -2
python3 bench/random_folder.py /tmp/qwen14b --tokenizer .devcarry/tok
python3 - <<'P'
import jax, jax.numpy as jnp
from emjax.model.config import preset
from emjax.interventions.steering import init_steering
from emjax.interventions.files import save_steering
sv = init_steering(preset("qwen2.5-14b-instruct"), layers=(24,), alpha=256.0)
v = jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape) * 0.0045
save_steering(sv.replace(vectors=v), "/tmp/narrow.safetensors")
P
for i in 1 2; do
  rm -rf /tmp/sw; t0=$(date +%s)
  timeout 200 python3 -m emjax sweep significance --config=configs/sweep_paper.py:steering,medical \
    --config.interventions=narrow=/tmp/narrow.safetensors --config.output_dir=/tmp/sw 2>&1 | grep "time:\|error\|Error\|corpus" | tail -3
  echo "significance run $i: wall $(( $(date +%s) - t0 )) s"
done
