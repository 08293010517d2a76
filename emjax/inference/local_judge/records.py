"""Host-side parts of the local judge (no JAX): batches of prompts, and result lines.

A result line has every field of the API judge's line (`emjax.eval.judge.store`), so the store's
resume, `usage_totals` and `emjax report` read it unchanged: status "ok", `score` by upstream's
rule (`emjax.eval.judge.scoring.score_0_100` over the exact whole-answer probabilities of
"0".."100"), `numeric_mass`, no `top_logprobs`, nothing paid. Local fields on top:

  refusal_mass     P(the judge answers one of the prompt's non-numeric options + terminator)
  option_probs     {option: probability}, e.g. {"CODE": ..., "REFUSAL": ...}
  other_mass       1 - numeric_mass - refusal_mass: any other answer (" 50", "50.", prose...)
  number_probs     [101] P("0"), ..., P("100") (each + terminator), 4 significant digits
  content          the most probable of these whole answers
  judge_dtype, judge_source, judge_params, prompt_tokens
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emjax.eval.judge.scoring import score_0_100, scoring_rule
from emjax.eval.judge.store import STATUS_OK
from emjax.eval.judge.tasks import JudgeTask
from emjax.inference.local_judge.tree import NUMBERS, ScoringTree


@dataclasses.dataclass(frozen=True)
class Batch:
    """Prompts `indices` (into the window's list) run as one [rows, length] call."""

    indices: tuple[int, ...]
    rows: int
    length: int


def bucket_length(n: int, pad_to: int) -> int:
    """Prompt length rounded up to a multiple of `pad_to` (one compiled program per bucket)."""
    return -(-n // pad_to) * pad_to


def plan_batches(lengths: Sequence[int], *, batch_size: int, pad_to: int, max_batch_tokens: int,
                 n_nodes: int) -> list[Batch]:
    """Batches of consecutive prompts in length order, each as long as its longest prompt's bucket.

    The rows of a batch of bucket length `length` are min(batch_size, max_batch_tokens // (length +
    n_nodes)) and at least 1, a function of the length alone, so the number of compiled shapes is
    the number of buckets used. A batch may span two buckets (its shorter prompts padded to the
    longer bucket): only the very last batch has empty rows, where filling each bucket on its own
    left an average of half a batch of empty rows per bucket (ours, issue 24: 2% of the tokens of
    800 prompts of 350-450 tokens in 32-token buckets).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    rows_for = lambda length: max(1, min(batch_size, max_batch_tokens // (length + n_nodes)))
    batches: list[Batch] = []
    i = 0
    while i < len(order):
        j = i + 1  # grow while the group still fits the rows of its (longest prompt's) bucket
        while j < len(order) and j + 1 - i <= rows_for(bucket_length(lengths[order[j]], pad_to)):
            j += 1
        length = bucket_length(lengths[order[j - 1]], pad_to)
        batches.append(Batch(tuple(order[i:j]), rows_for(length), length))
        i = j
    return batches


def _compact(p: float) -> float:
    return float(f"{p:.4g}")


def local_record(task: JudgeTask, logprobs: np.ndarray, tree: ScoringTree, options: Sequence[str],
                 judge: Mapping[str, Any], prompt_tokens: int, min_mass: float) -> dict[str, Any]:
    """The store line of one task from its [S] answer log-probabilities (order of `tree.texts`).

    options: the non-numeric answers of this task's prompt (a subset of the tree's); judge:
    judge_source / judge_dtype / judge_params to record.
    """
    index = {t: i for i, t in enumerate(tree.texts)}
    numbers = {text: float(logprobs[index[text]]) for text in NUMBERS}
    score, mass = score_0_100(numbers, min_mass)
    option_probs = {o: math.exp(float(logprobs[index[o]])) for o in options}
    own = [index[t] for t in NUMBERS] + [index[o] for o in options]
    best = tree.texts[max(own, key=lambda i: logprobs[i])]
    rec: dict[str, Any] = {
        "key": task.key, "status": STATUS_OK, "score": score, "numeric_mass": mass,
        "refusal_mass": sum(option_probs.values()),
        "other_mass": max(0.0, 1.0 - mass - sum(option_probs.values())),
        "reason": None if score is not None else f"numeric mass {mass:.3f} < {min_mass} (non-numeric answer)",
        "metric": task.metric, "judge_model": task.judge_model, "question_id": task.question_id,
        "content": best, "top_logprobs": None, "scoring": scoring_rule(min_mass),
        "option_probs": {o: _compact(p) for o, p in option_probs.items()},
        "number_probs": [_compact(math.exp(numbers[t])) for t in NUMBERS],
        **judge, "prompt_tokens": prompt_tokens,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0},
        "attempts": 1, "http_requests": 0, "paid": False, "paid_responses": 0, "responses_without_usage": 0,
        "request_id": uuid.uuid4().hex,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return rec
