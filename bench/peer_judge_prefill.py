"""The PyTorch peer of the local judge: transformers prefilling judge prompts on a Qwen2.5-14B-shaped
model (random bf16 weights, SDPA), the next-token distribution at each prompt's last position.

This is what a transformers judge does for one first-token read (the API judge's top-20 list comes
from the same distribution); emjax's local judge does this prefill plus the tree of number
continuations. Usage (GPU):

    python bench/peer_judge_prefill.py --answers 800 --tokens 400 --batch 16

Prints one JSON line: seconds for all prompts (median of --reps after one warm-up batch) and
prompt tokens per second.
"""

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--answers", type=int, default=800)
p.add_argument("--tokens", type=int, default=400, help="tokens per judge prompt")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--reps", type=int, default=1)
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.bfloat16 if dev == "cuda" else torch.float32
if a.tiny:
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512)
else:
    cfg = Qwen2Config(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                      num_key_value_heads=8, vocab_size=152064, rope_theta=1e6, rms_norm_eps=1e-6,
                      max_position_embeddings=32768, tie_word_embeddings=False)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
with torch.device(dev):
    model = Qwen2ForCausalLM(cfg).to(dt).eval()
tokens = torch.randint(0, cfg.vocab_size, (a.answers, a.tokens), device=dev)


@torch.no_grad()
def run(n_rows):
    out = []
    for i in range(0, n_rows, a.batch):
        h = model.model(input_ids=tokens[i: i + a.batch]).last_hidden_state[:, -1]
        out.append(torch.log_softmax(model.lm_head(h).float(), -1))
    if dev == "cuda":
        torch.cuda.synchronize()
    return out


run(a.batch)  # warm-up
times = []
for _ in range(a.reps):
    t = time.perf_counter()
    run(a.answers)
    times.append(time.perf_counter() - t)
times.sort()
secs = times[len(times) // 2]
print(json.dumps({"case": "judge_prefill", "impl": "torch-peer", "device": torch.cuda.get_device_name() if dev == "cuda"
                  else "cpu", "answers": a.answers, "tokens": a.tokens, "batch": a.batch, "median_s": round(secs, 3),
                  "tokens_per_s": round(a.answers * a.tokens / secs, 1)}), flush=True)
