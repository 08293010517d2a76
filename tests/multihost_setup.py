"""The tiny model folder and configs shared by tests/test_multihost.py and its worker processes."""

import os
from pathlib import Path

from tiny_run import tiny_config

from emjax.configuration import load_config

import paths


def build_folder(work: str) -> str:
    """A tiny random Qwen2 as a Hugging Face folder (safetensors + tokenizer) under `work`/model."""
    from chat_templates import tiny_tokenizer
    from hf_reference import build_hf, qwen2_config
    folder = os.path.join(work, "model")
    tok = tiny_tokenizer("qwen2")
    build_hf(qwen2_config(tied=True, vocab_size=len(tok), num_hidden_layers=4), seed=21).save_pretrained(
        folder, safe_serialization=True, max_shard_size="200KB")
    tok.save_pretrained(folder)
    return folder


def train_config(work: str, mesh: str | None, out: str = "out"):
    """4 steps of 4 rows (SFT only), a checkpoint and a snapshot every 2 steps."""
    c = tiny_config(Path(work) / out, "train", max_steps=4, batch_size=4, grad_accum=1, eval_every=2,
                    lambda_kl=0.0)
    c.data.kl_eval_rows = 0
    c.model.source = os.path.join(work, "model")
    c.checkpoint.every = 2
    c.checkpoint.snapshot_every = 2
    c.mesh = mesh
    return c


def sweep_config(work: str, mesh: str | None, out: str = "out"):
    """The efficiency sweep of the step-2 snapshot at 4 norms on 8 training rows."""
    c = load_config(os.path.join(str(paths.CONFIGS), "sweep_default.py"))
    c.model.source = os.path.join(work, "model")
    c.output_dir = os.path.join(work, out, "sweep")
    c.interventions = "trained=" + os.path.join(work, out, "train", "snapshots", "step_000002", "steering.safetensors")
    c.data.n_rows = 8
    c.data.batch_size = 4
    c.data.max_len = 64
    c.efficiency.scales = (0.0, 0.5, 1.0, 1.5)
    c.mesh = mesh
    return c
