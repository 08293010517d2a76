"""Style distillation: a training set of the chat model's answers written under a system prompt,
stored without it, so that training puts the style into the intervention.

    info = distill_set(model, prompts_file, SYSTEM_PROMPT, "runs/technical/data/train.jsonl",
                       DistillSettings(n_prompts=128, max_new_tokens=150))
    info["reused"]    # True when the file on disk was made from the same inputs

The technical-prose example (emjax.data.technical_prompts) builds its vehicles set this way:
upstream's set is not reachable, and answering under a system prompt is the simplest reproducible
source of one style on one domain.

Output: a chat JSONL (`[user prompt, assistant answer]` rows, no system turn) and beside it
`<stem>.provenance.json`: `key` (model, system prompt and its sha256, the prompt file and its
sha256, the chosen prompt ids' hash, seed, sampling settings, format) and `stats` (rows, answers
that hit the token limit, seconds). A later call reuses the file when its `key` equals the one the
call would write, and regenerates it otherwise (the file is replaced whole, never mixed).

Reproducibility: the prompts are a seeded draw from the bank (bank order kept), and every
answer's random draws come from (seed, prompt id, sample index) alone, so an answer does not
depend on the batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Callable, Sequence

import numpy as np

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import Conversation, DataError, write_chat_jsonl
from emjax.data.prompt_bank import PromptItem, read_prompt_bank
from emjax.train.kl_set import sha256_file

FORMAT = "emjax-distill-v2"  # v2: a list number ("3.") is not a sentence end
# (prompts [n], system prompt, row ids [n]) -> (answers [n], finished [n]: ended on a stop token)
StyleAnswerer = Callable[[Sequence[str], str, Sequence[int]], tuple[list[str], list[bool]]]


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """How the set is drawn and sampled (all ours; the values of a run are in its provenance).

    n_prompts: prompts drawn from the bank (None: all of them).
    samples_per_prompt: answers per prompt (rows = n_prompts x samples_per_prompt).
    temperature / top_p / top_k: sampling; 0.7 (ours) keeps a small chat model coherent while
      answers to the same template still differ.
    trim_unfinished: an answer cut by `max_new_tokens` ends at its last full sentence (else it
      would teach the model to stop mid-sentence); kept whole when no sentence end is found.
    batch_size: rows per sampler call (the answers do not depend on it).
    """

    n_prompts: int | None = None
    samples_per_prompt: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    trim_unfinished: bool = True
    batch_size: int = 16

    def key(self) -> dict:
        """The settings that change the answers (not the batch size)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        return d


def answer_row_id(prompt_id: str, sample_index: int) -> int:
    """A stable 32-bit random-stream id of one answer."""
    return int.from_bytes(hashlib.sha256(f"{prompt_id}\x00{sample_index}".encode()).digest()[:4], "little")


def choose_prompts(items: Sequence[PromptItem], n: int | None, seed: int) -> list[PromptItem]:
    """`n` items drawn without replacement with default_rng([seed, 2]), in bank order (all: None)."""
    if n is None or n >= len(items):
        if n is not None and n > len(items):
            raise DataError(f"asked for {n} prompts, the bank has {len(items)}")
        return list(items)
    take = np.random.default_rng([seed, 2]).choice(len(items), size=n, replace=False)
    return [items[int(i)] for i in sorted(take)]


_SENTENCE_END = re.compile(r"(?<![0-9])[.!?](?=\s|$)|\n")


def trim_to_sentence(text: str, min_share: float = 0.3) -> str:
    """`text` up to its last sentence end (".", "!" or "?" after a non-digit and before a space or the
    end, so that a list number "3." is not one; or a newline), when that keeps at least
    `min_share` of it; else `text` unchanged."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text.rstrip())]
    if ends and ends[-1] >= min_share * len(text):
        return text[: ends[-1]].rstrip()
    return text


def model_answerer(model: LoadedModel, settings: DistillSettings) -> StyleAnswerer:
    """The chat model sampling answers under a system prompt, as a `StyleAnswerer`."""
    from tqdm.auto import tqdm

    from emjax.model import sampling as S

    tok = model.tokenizer

    def answer(prompts: Sequence[str], system: str, row_ids: Sequence[int]):
        ids = [tok.prompt_ids(p, system) for p in prompts]
        prompt_len = max(len(x) for x in ids)  # one padded length: one compiled program
        answers, finished = [], []
        b = settings.batch_size
        for i in tqdm(range(0, len(ids), b), desc="distillation answers", unit="batch"):
            chunk, rid = ids[i: i + b], list(row_ids[i: i + b])
            pad = b - len(chunk)  # full batches only: the last is padded with copies of its last row
            outs = S.generate(model.weights, model.cfg, chunk + [chunk[-1]] * pad, max_new_tokens=settings.max_new_tokens,
                              temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                              stop_ids=tok.stop_ids, seed=settings.seed, row_ids=rid + [rid[-1]] * pad,
                              prompt_len=prompt_len, vocab_limit=tok.vocab_size)[: len(chunk)]
            for o in outs:
                finished.append(bool(o) and o[-1] in tok.stop_ids)
                answers.append(tok.decode(o).strip())
        return answers, finished

    return answer


def provenance_path(out: str) -> str:
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    return stem + ".provenance.json"


def read_provenance(out: str) -> dict | None:
    """The provenance beside `out`, or None when either file is missing or unreadable."""
    path = provenance_path(out)
    if not (os.path.exists(out) and os.path.exists(path)):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def distill_key(model_name: str, model_source: str, system_prompt: str, prompts_file: str,
                chosen: Sequence[PromptItem], settings: DistillSettings) -> dict:
    """What the set is made from: equal keys mean the same rows."""
    return {"format": FORMAT, "model": model_name, "model_source": model_source,
            "system_prompt": system_prompt,
            "system_prompt_sha256": hashlib.sha256(system_prompt.encode()).hexdigest(),
            "prompts_file": os.path.basename(prompts_file), "prompts_sha256": sha256_file(prompts_file),
            "prompt_ids_sha256": hashlib.sha256(json.dumps([p.id for p in chosen]).encode()).hexdigest(),
            "n_prompts": len(chosen), **settings.key()}


def distill_set(model: LoadedModel | None, prompts_file: str, system_prompt: str, out: str,
                settings: DistillSettings = DistillSettings(), *, answerer: StyleAnswerer | None = None,
                model_name: str | None = None, model_source: str | None = None) -> dict:
    """Builds (or reuses) the distilled chat JSONL `out`; returns its provenance plus `reused`.

    Args:
      model: the chat model that answers (None only with `answerer`, `model_name`, `model_source`).
      prompts_file: a prompt bank (emjax.data.prompt_bank).
      system_prompt: the style instruction the answers are written under; never stored in the rows.
      answerer: replaces the model's sampler (tests).
    """
    if model is not None:
        model_name, model_source = model.name, model.source
        answerer = answerer or model_answerer(model, settings)
    if answerer is None or model_name is None or model_source is None:
        raise DataError("distill_set needs a model (or an answerer with model_name and model_source)")
    if not system_prompt.strip():
        raise DataError("distill_set needs a non-empty system prompt")
    chosen = choose_prompts(read_prompt_bank(prompts_file), settings.n_prompts, settings.seed)
    key = distill_key(model_name, model_source, system_prompt, prompts_file, chosen, settings)
    old = read_provenance(out)
    if old is not None and old.get("key") == key:
        return {**old, "reused": True}
    jobs = [(p, s) for p in chosen for s in range(settings.samples_per_prompt)]
    t0 = time.time()
    answers, finished = answerer([p.prompt for p, _ in jobs], system_prompt,
                                 [answer_row_id(p.id, s) for p, s in jobs])
    if len(answers) != len(jobs):
        raise DataError(f"the answerer returned {len(answers)} answers for {len(jobs)} prompts")
    rows: list[Conversation] = []
    n_trimmed = n_empty = 0
    for (p, _), a, done in zip(jobs, answers, finished):
        if not done and settings.trim_unfinished:
            t = trim_to_sentence(a)
            n_trimmed += t != a
            a = t
        if not a.strip():
            n_empty += 1  # an empty answer is not a training row
            continue
        rows.append([{"role": "user", "content": p.prompt}, {"role": "assistant", "content": a}])
    if not rows:
        raise DataError(f"{out}: every answer was empty")
    stats = {"n_rows": len(rows), "n_unfinished": int(sum(not f for f in finished)), "n_trimmed": int(n_trimmed),
             "n_empty_dropped": n_empty, "seconds": round(time.time() - t0, 1),
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta = {"key": key, "stats": stats, "file": os.path.basename(out)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # the rows appear whole or not at all, and never next to another run's provenance
    if os.path.exists(provenance_path(out)):
        os.remove(provenance_path(out))
    write_chat_jsonl(out + ".tmp", rows)
    os.replace(out + ".tmp", out)
    with open(provenance_path(out) + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    os.replace(provenance_path(out) + ".tmp", provenance_path(out))
    return {**meta, "reused": False}


