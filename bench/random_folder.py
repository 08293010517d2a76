"""A random-weight Hugging Face folder of a real model shape (config.json, sharded safetensors with
an index, optional tokenizer files), written at disk speed: tensor bytes are slices of one random
bf16 block, never generated whole.

    python bench/random_folder.py /tmp/qwen14b --preset qwen2.5-14b-instruct --tokenizer DIR

The folder is what a user's model folder looks like to emjax and to transformers (both load it);
the weights are random (normal, std 0.02), so outputs are noise: for speed, never for quality.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emjax.model.config import preset  # noqa: E402
from emjax.model.schema import hf_shapes  # noqa: E402

# Hugging Face config.json values of the real models (their hub configs), by emjax preset name.
HF_CONFIGS = {
    "qwen2.5-14b-instruct": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 5120,
        "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
        "num_key_value_heads": 8, "vocab_size": 152064, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 70,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": 151643, "eos_token_id": 151645},
    "qwen2.5-0.5b-instruct": {  # a CPU-sized stand-in for smoke runs of the benchmarks
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "max_position_embeddings": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 21,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": 151643, "eos_token_id": 151645},
}
BLOCK = 1 << 26  # random bf16 values in the block: 128 MiB


def write_folder(out: str, preset_name: str = "qwen2.5-14b-instruct", shard_gb: float = 5.0,
                 tokenizer: str | None = None, seed: int = 0) -> dict:
    """Writes the folder; returns {"bytes", "shards", "seconds"}. Skips the weights when `out` already
    holds an index for the same shapes (a rerun reuses the folder)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(HF_CONFIGS[preset_name], f, indent=1)
    if tokenizer:
        for name in os.listdir(tokenizer):
            shutil.copy(os.path.join(tokenizer, name), out)
    shapes = hf_shapes(preset(preset_name))
    index_path = os.path.join(out, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            if set(json.load(f)["weight_map"]) == set(shapes):
                return {"bytes": sum(int(np.prod(s)) * 2 for s in shapes.values()), "shards": None, "seconds": 0.0}
    t0 = time.perf_counter()
    block = (np.random.default_rng(seed).standard_normal(BLOCK, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    raw = block.tobytes()
    groups, size = [[]], 0
    for name in sorted(shapes):  # fill shards up to shard_gb
        nbytes = int(np.prod(shapes[name])) * 2
        if groups[-1] and size + nbytes > shard_gb * 1e9:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map, total, offset = {}, 0, 0
    for i, names in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header, pos = {}, 0
        for n in names:
            nbytes = int(np.prod(shapes[n])) * 2
            header[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
            weight_map[n] = shard
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        with open(os.path.join(out, shard), "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for n in names:
                left = int(np.prod(shapes[n])) * 2
                while left:  # slices of the random block, starting where the last tensor stopped
                    start = offset % len(raw)
                    chunk = raw[start: start + min(left, len(raw) - start)]
                    f.write(chunk)
                    left -= len(chunk)
                    offset += len(chunk) + 2  # an even shift, so tensors do not repeat each other
        total += pos
    with open(index_path, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return {"bytes": total, "shards": len(groups), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--preset", default="qwen2.5-14b-instruct", choices=sorted(HF_CONFIGS))
    p.add_argument("--shard-gb", type=float, default=5.0)
    p.add_argument("--tokenizer", default=None, help="a folder of tokenizer files to copy in")
    a = p.parse_args()
    r = write_folder(a.out, a.preset, a.shard_gb, a.tokenizer)
    print(json.dumps({"case": "random_folder", "out": a.out, **r}), flush=True)


if __name__ == "__main__":
    main()
