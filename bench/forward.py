"""Forward-pass throughput of a Qwen2.5-14B-shaped random model, emjax (JAX) vs transformers.

Usage: python bench/forward.py --impl jax|torch [--batch 8 --seq 256 --preset qwen2.5-14b-instruct]
Each impl runs in its own process (both hold the 29.5 GB of bf16 weights).
"""

import argparse
import json
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

p = argparse.ArgumentParser()
p.add_argument("--impl", choices=["jax", "torch"], required=True)
p.add_argument("--preset", default="qwen2.5-14b-instruct")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--tiny", action="store_true", help="small shapes, for a CPU smoke run")
a = p.parse_args()

from emjax.model.config import preset  # noqa: E402
from emjax.model.schema import num_params  # noqa: E402

cfg = preset(a.preset)
if a.tiny:
    cfg = cfg.replace(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=256, vocab_size=1024)
B, T = a.batch, a.seq
flops = 2 * num_params(cfg) * B * T

if a.impl == "jax":
    import jax
    import jax.numpy as jnp
    from bench.common import random_weights, report, timeit
    from emjax import model as M

    w = random_weights(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, cfg.vocab_size)
    fwd = jax.jit(lambda w, t: M.forward(w, cfg, t))
    run = lambda: fwd(w, tokens).block_until_ready()
    s = timeit(run)
    report("forward", s, B * T, flops, B=B, T=T, model=a.preset)
else:
    import time
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hc = Qwen2Config(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings)
    hc._attn_implementation = "sdpa"
    with torch.device(dev):
        m = Qwen2ForCausalLM(hc).to(torch.bfloat16 if dev == "cuda" else torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run():
        with torch.no_grad():
            m(input_ids=ids).logits
        sync()
    for _ in range(2):
        run()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
    s = sorted(ts)[2]
    print(json.dumps({"case": "forward", "impl": "transformers-torch", "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                      "median_s": round(s, 4), "tokens_per_s": round(B * T / s, 1),
                      "tflops": round(flops / s / 1e12, 1), "B": B, "T": T, "model": a.preset}), flush=True)
