"""`emjax generate`: answers to evaluation questions, with full provenance, for the judge stage.

Every (question, paraphrase, sample) becomes one AnswerRecord line in the output JSONL (model,
intervention file, config hash, seed, indices). Rows already in the output are skipped, so an
interrupted run resumes where it stopped. Sampling uses the KV-cache sampler with the
intervention applied at every position of every row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import jax.numpy as jnp
from tqdm.auto import tqdm

from emjax import sampling as S
from emjax.evalq import AnswerRecord, append_answers, load_questions, read_answers, select_questions
from emjax.interventions import Interventions
from emjax.load import load_model
from emjax.train import DTYPES


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample answers to evaluation questions (JSONL for `emjax judge`)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--questions", required=True, help="upstream YAML or JSONL question file")
    p.add_argument("--intervention", default=None,
                   help="steering .safetensors or PEFT LoRA folder (default: the plain chat model)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the intervention by this")
    p.add_argument("--kinds", default="free_form", help="comma list of free_form,json,template or 'all'")
    p.add_argument("--include", action="append", help="question id glob (repeatable)")
    p.add_argument("--exclude", action="append", help="question id glob to drop (repeatable)")
    p.add_argument("--samples", type=int, default=50, help="samples per paraphrase (upstream: 50)")
    p.add_argument("--max-new-tokens", type=int, default=600)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="answers JSONL (appended; existing rows are skipped)")
    p.set_defaults(func=run_generate)


def _load_intervention(path: str | None, cfg, scale: float) -> Interventions | None:
    if not path:
        return None
    from emjax.adapters_io import load_peft_lora, load_steering
    from emjax.sweeps import tree_scale
    iv = (Interventions(lora=load_peft_lora(path, cfg)) if os.path.isdir(path)
          else Interventions(steer=load_steering(path, cfg)))
    return tree_scale(iv, scale) if scale != 1.0 else iv


def run_generate(args: argparse.Namespace, model=None) -> int:
    """Runs the stage as the parsed arguments say; `model` (a LoadedModel) skips loading."""
    model = model or load_model(args.model, dtype=DTYPES[args.dtype])
    iv = _load_intervention(args.intervention, model.cfg, args.scale)
    kinds = None if args.kinds == "all" else args.kinds.split(",")
    questions = select_questions(load_questions(args.questions), kinds, args.include, args.exclude)
    settings = {k: getattr(args, k) for k in ("model", "dtype", "questions", "intervention", "scale", "samples",
                                              "max_new_tokens", "temperature", "top_p", "top_k", "seed")}
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    done = set()
    if os.path.exists(args.out):
        done = {(a.question_id, a.paraphrase_index, a.sample_index) for a in read_answers(args.out)
                if a.config_hash == config_hash}
    jobs = [(q, pi, p, si) for q in questions for pi, p in enumerate(q.paraphrases) for si in range(args.samples)
            if (q.id, pi, si) not in done]
    print(f"{len(questions)} questions, {len(jobs)} answers to generate ({len(done)} already in {args.out})")
    tok = model.tokenizer
    bar = tqdm(total=len(jobs), desc="generate", unit="answer")
    for b in range(0, len(jobs), args.batch_size):
        chunk = jobs[b: b + args.batch_size]
        prompts = [tok.prompt_ids(p, q.system) for q, _, p, _ in chunk]
        # one seed per batch, derived from the run seed and the batch position: reproducible
        outs = S.generate(model.weights, model.cfg, prompts, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          stop_ids=tok.stop_ids, seed=args.seed * 1_000_003 + b, interventions=iv,
                          vocab_limit=tok.vocab_size)
        records = [AnswerRecord(question_id=q.id, paraphrase_index=pi, sample_index=si, question=p,
                                answer=tok.decode(o), system=q.system, model=model.name,
                                intervention=(f"{args.intervention} x{args.scale:g}" if args.intervention else ""),
                                config_hash=config_hash, seed=args.seed,
                                meta={"n_tokens": len(o), "stopped": bool(o and o[-1] in tok.stop_ids)})
                   for (q, pi, p, si), o in zip(chunk, outs)]
        append_answers(args.out, records)
        bar.update(len(chunk))
    bar.close()
    return 0
