"""The share of each GPU's memory that JAX's allocator reserves in an `emjax` command.

JAX's GPU client reserves XLA_PYTHON_CLIENT_MEM_FRACTION of each card when it starts, 0.75 by
default. Everything emjax sizes from the device (the decode batch of `emjax generate`,
`train.layer_loop=auto`, `--mesh auto`) reads that reserve's limit, so the default leaves a quarter
of the card unused. At 14B on an 80 GB H100 it is the difference between 2 sampler calls of 200 rows and
3 of 134 for the paper's 400 answers (BENCHMARKS.md, "Issue 24, seventh session": the CLI took 3
calls under the default, where 200 rows run in the benchmark).

The command sets GPU_MEMORY_FRACTION only where the variable is unset (the user's value wins) and
before the backend starts; it changes nothing on CPU or TPU.
"""

from __future__ import annotations

import os
from typing import MutableMapping

VARIABLE = "XLA_PYTHON_CLIENT_MEM_FRACTION"
# Ours, as launch/slurm_gpu.sbatch: it leaves about 6 GB of an 80 GB card outside the pool for the
# CUDA context and the cuBLAS / cuDNN workspaces (bench/train_memory.py ran 14B steps at 0.95).
GPU_MEMORY_FRACTION = "0.92"


def reserve_gpu_memory(environ: MutableMapping[str, str] | None = None) -> str:
    """Sets `VARIABLE` to GPU_MEMORY_FRACTION in `environ` (default: this process's) unless it is
    set already; returns the value in force. Call it before JAX's first computation: the backend
    reads the variable once, when it starts."""
    environ = os.environ if environ is None else environ
    if not environ.get(VARIABLE, "").strip():
        environ[VARIABLE] = GPU_MEMORY_FRACTION
    return environ[VARIABLE]
