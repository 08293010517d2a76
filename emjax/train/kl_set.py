"""The KL set as the paper describes it: good and bad advice from domains *other* than the
training domain, at a configured bad:good ratio; and the aligned rows of the data-mixing baseline.

    rows, info = compose_kl_set(bad=[...], good=[...], ratio=(1, 4), n_rows=4000, seed=0,
                                answerer=answerer, exclude_prompts=training_prompts)

A source is a data spec (emjax.data.mixtures.resolve_data_spec). Where a domain has no good-advice
data (upstream ships good medical advice only), `chat:SPEC` builds the good half from the frozen
chat model's own answers to SPEC's prompts: the prompts are drawn first, then only those are
answered, once, and cached as a chat JSONL with a provenance file beside it (model, source file and
its sha256, the prompts' hash, the sampling settings); a rerun with the same inputs reads the cache.
SPEC may be a chat JSONL file (its user turns) or a prompt bank (emjax.data.prompt_bank), e.g.
`chat:sample:technical_prompts_other.jsonl`, the technical example's KL prompts.

Counts: the bad share is ratio[0] / sum(ratio) of n_rows (largest remainder, emjax.data.mixtures
.kl_counts), split equally over the bad sources, likewise the good share over the good sources.
Rows whose user prompt also occurs in the training set are refused (`exclude_prompts`), so the KL
term never pins behaviour on the training domain's own prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np

from emjax.data.conversations import Conversation, DataError, read_chat_jsonl, write_chat_jsonl
from emjax.data.mixtures import kl_counts, resolve_data_spec
from emjax.data.prompt_bank import read_prompt_source
from emjax.model.mesh_plan import is_writer

CHAT_PREFIX = "chat:"

# (prompts [n], system prompt or None) -> answers [n]; the frozen chat model behind it.
Answerer = Callable[[Sequence[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class SourcePick:
    """What one source gave the mix: its spec, resolved path, whether good or bad, and its rows."""

    spec: str
    path: str
    kind: str  # "bad" | "good"
    n_rows: int
    generated: bool
    n_excluded: int = 0  # rows of the source refused: their prompt is one of `exclude_prompts`


def user_prompt(conv: Conversation) -> str:
    """The first user turn of a chat (the prompt the KL / training sets are compared on)."""
    return next((m["content"] for m in conv if m["role"] == "user"), "")


def normalise_prompt(text: str) -> str:
    """A prompt as rows are compared for overlap: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def split_counts(n_rows: int, ratio: Sequence[float], n_bad: int, n_good: int) -> tuple[list[int], list[int]]:
    """Rows per bad source and per good source: the bad:good ratio first, then equal shares."""
    if len(ratio) != 2 or min(ratio) < 0 or sum(ratio) <= 0:
        raise DataError(f"the bad:good ratio must be two non-negative numbers, got {tuple(ratio)}")
    if (ratio[0] > 0 and not n_bad) or (ratio[1] > 0 and not n_good):
        raise DataError(f"bad:good ratio {tuple(ratio)} needs {'bad' if ratio[0] > 0 and not n_bad else 'good'} "
                        "sources, none given")
    bad, good = kl_counts([ratio[0], ratio[1]], n_rows)
    return (kl_counts([1.0] * n_bad, bad) if n_bad else []), (kl_counts([1.0] * n_good, good) if n_good else [])


def _draw(convs: list[Conversation], k: int, rng_seed: list[int], name: str,
          exclude: set[str]) -> tuple[list[Conversation], int]:
    """k rows of `convs` whose prompt is not excluded, and how many rows were excluded."""
    pool = [c for c in convs if normalise_prompt(user_prompt(c)) not in exclude]
    if k > len(pool):
        raise DataError(f"{name} has {len(pool)} usable rows ({len(convs) - len(pool)} share a prompt with the "
                        f"training set, or for a data mix with the KL set), needs {k}")
    take = np.random.default_rng(rng_seed).choice(len(pool), size=k, replace=False)
    return [pool[int(j)] for j in sorted(take)], len(convs) - len(pool)


def compose_kl_set(bad: Sequence[str], good: Sequence[str], ratio: Sequence[float], n_rows: int, seed: int, *,
                   data_dir: str = ".", answerer: Answerer | None = None, answer_cache: str | None = None,
                   provenance: dict | None = None, exclude_prompts: Sequence[str] = ()
                   ) -> tuple[list[Conversation], list[SourcePick]]:
    """The mixed KL set (shuffled) and what each source contributed.

    Args:
      bad / good: data specs; a good spec `chat:SPEC` is answered by `answerer`.
      ratio: (bad, good) weights, e.g. (1, 4).
      n_rows: rows in total.
      seed: source i draws with default_rng([seed, i]); the mix is shuffled with [seed, n_sources].
      answer_cache: folder of the generated answers (needed for chat: sources).
      provenance: what produced the answers (model name, sampling settings), written beside them
        and part of the cache key.
      exclude_prompts: training prompts; KL rows with one of these user prompts are never drawn.
    """
    n_bad, n_good = split_counts(n_rows, ratio, len(bad), len(good))
    exclude = {normalise_prompt(p) for p in exclude_prompts}
    rows: list[Conversation] = []
    picks: list[SourcePick] = []
    specs = [(s, "bad", k) for s, k in zip(bad, n_bad)] + [(s, "good", k) for s, k in zip(good, n_good)]
    for i, (spec, kind, k) in enumerate(specs):
        generated = spec.startswith(CHAT_PREFIX)
        path = resolve_data_spec(spec[len(CHAT_PREFIX):] if generated else spec, data_dir)
        drawn, n_excluded = _draw(_source_rows(path, generated), k, [seed, i], path, exclude)
        if generated:
            if answerer is None or answer_cache is None:
                raise DataError(f"KL source {spec!r} needs the chat model to answer its prompts "
                                "(no answerer / cache folder given)")
            drawn = chat_answers([user_prompt(c) for c in drawn], path, answerer, answer_cache, provenance or {})
        rows.extend(drawn)
        picks.append(SourcePick(spec=spec, path=path, kind=kind, n_rows=len(drawn), generated=generated,
                                n_excluded=n_excluded))
    order = np.random.default_rng([seed, len(specs)]).permutation(len(rows))
    return [rows[int(j)] for j in order], picks


def _source_rows(path: str, generated: bool) -> list[Conversation]:
    """A source's chats; a `chat:` source only needs its prompts, so it may also be a prompt bank
    (emjax.data.prompt_bank), read as prompt-only chats."""
    if generated:
        return [[{"role": "user", "content": p}] for p in read_prompt_source(path)]
    try:
        return read_chat_jsonl(path)
    except DataError as e:
        if "missing 'messages'" in str(e):
            raise DataError(f"{e}; a prompt bank has no answers: name it as chat:{path} to have the "
                            "chat model answer it") from None
        raise


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


sha256_file = _sha256_file  # the one file hash of the training inputs' provenance


def chat_answers(prompts: Sequence[str], source: str, answerer: Answerer, cache_dir: str,
                 provenance: dict) -> list[Conversation]:
    """[user prompt, the chat model's answer] chats for `prompts`, generated once and cached.

    The cache file is named by a hash of (source sha256, prompts, provenance); beside it a
    `.provenance.json` says what made it. A cache file that does not hold exactly these prompts
    is an error (never silently reused).
    """
    meta = {"source": os.path.abspath(source), "source_sha256": _sha256_file(source),
            "prompts_sha256": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(),
            "n_prompts": len(prompts), **provenance}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stem = os.path.join(cache_dir, f"chat_answers_{os.path.basename(source).split('.')[0]}_{key}")
    path = stem + ".jsonl"
    if os.path.exists(path):
        convs = read_chat_jsonl(path)
        if [user_prompt(c) for c in convs] != list(prompts):
            raise DataError(f"{path}: cached chat answers do not match the requested prompts; delete the file")
        return convs
    answers = answerer(prompts)  # every process of a multi-host run samples (the same rows); one writes
    convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
    if not is_writer():
        return convs
    os.makedirs(cache_dir, exist_ok=True)
    write_chat_jsonl(path + ".tmp", convs)
    with open(stem + ".provenance.json", "w") as f:
        json.dump({**meta, "file": os.path.basename(path)}, f, indent=1, default=str)
    os.replace(path + ".tmp", path)  # the cache appears whole or not at all
    return convs
