"""Loading a Hugging Face safetensors folder onto one device: emjax against transformers, each in its
own process (so neither inherits the other's page-cache warm-up order or device memory), alternated.

    python bench/load.py /tmp/qwen14b --reps 2          # writes the random folder first if absent

Prints one JSON line per load (`impl`, `seconds`, `gb_per_s`) and a table. transformers:
`AutoModelForCausalLM.from_pretrained(folder, torch_dtype=bfloat16, device_map=<device>)`, timed to a
synchronised device; emjax: `load_model(folder, dtype=bfloat16)` with the chat tokenizer when the
folder has one, timed to `block_until_ready`. Both read the same files from the same page cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

EMJAX = """
import json, os, time, jax, jax.numpy as jnp
t0 = time.perf_counter()
from emjax.checkpoints.load import load_model
folder = {folder!r}
has_tok = os.path.exists(os.path.join(folder, "tokenizer.json"))
m = load_model(folder, dtype=jnp.bfloat16, tokenizer=has_tok, progress=False)
jax.block_until_ready(m.weights)
dev = jax.devices()[0]
print(json.dumps({{"seconds": time.perf_counter() - t0, "device": getattr(dev, "device_kind", dev.platform)}}))
"""

TORCH = """
import json, time, torch
t0 = time.perf_counter()
from transformers import AutoModelForCausalLM
dev = "cuda" if torch.cuda.is_available() else "cpu"
m = AutoModelForCausalLM.from_pretrained({folder!r}, torch_dtype=torch.bfloat16, device_map=dev)
if dev == "cuda":
    torch.cuda.synchronize()
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def _run(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr[-4000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--preset", default="qwen2.5-14b-instruct")
    ap.add_argument("--tokenizer", default=None, help="tokenizer files to put in a folder this script writes")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args()
    from random_folder import write_folder
    made = write_folder(a.folder, a.preset, tokenizer=a.tokenizer)
    gb = made["bytes"] / 1e9
    print(json.dumps({"case": "random_folder", "gb": round(gb, 2), "write_s": round(made["seconds"], 1)}), flush=True)
    rows = []
    for rep in range(a.reps):
        for impl, code in (("emjax-jax", EMJAX), ("transformers", TORCH)):
            if impl == "transformers" and a.skip_peer:
                continue
            r = _run(code.format(folder=a.folder))
            row = {"case": "load_folder", "impl": impl, "rep": rep, "gb": round(gb, 2), "seconds": round(r["seconds"], 2),
                   "gb_per_s": round(gb / r["seconds"], 2), "date": datetime.date.today().isoformat(),
                   **({"device": r["device"]} if "device" in r else {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| impl | rep | seconds | GB/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['rep']} | {r['seconds']:.1f} | {r['gb_per_s']:.2f} |")


if __name__ == "__main__":
    main()
