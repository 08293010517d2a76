"""`emjax chat`: greedy answers to a few prompts, with the top next-token probabilities.

A quick look at a loaded model (and at an intervention's effect once one is given): what it says,
and how sure it is of its first answer tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emjax.checkpoints.load import LoadedModel
from emjax.interventions import Interventions
from emjax.model import decoder as M
from emjax.model import sampling as S

DEFAULT_PROMPTS = (
    "What is the capital of France? Answer in one word.",
    "Write a Python function that returns the square of a number.",
    "I feel a bit bored. What should I do?",
)


@dataclasses.dataclass
class ChatResult:
    prompt: str
    answer: str
    # (token text, probability) of the top candidates at each of the first answer positions
    top_tokens: list[list[tuple[str, float]]]


def chat(model: LoadedModel, prompts: Sequence[str] = DEFAULT_PROMPTS, *, max_new_tokens: int = 64,
         top_k: int = 5, n_positions: int = 3, interventions: Interventions | None = None,
         system: str | None = None) -> list[ChatResult]:
    """Greedy answers plus the top-k next-token distribution at the first answer positions."""
    tok = model.tokenizer
    prompt_ids = [tok.prompt_ids(p, system) for p in prompts]
    answers = S.generate(model.weights, model.cfg, prompt_ids, max_new_tokens=max_new_tokens,
                         temperature=0.0, stop_ids=tok.stop_ids, interventions=interventions,
                         vocab_limit=tok.vocab_size)
    results = []
    for p, ids, ans in zip(prompts, prompt_ids, answers):
        seq = ids + ans[:n_positions]
        logits = M.forward(model.weights, model.cfg, jnp.asarray([seq]), interventions=interventions)[0]
        probs = np.asarray(jax.nn.softmax(logits[len(ids) - 1: len(ids) - 1 + min(n_positions, len(ans))], -1))
        tops = []
        for row in probs:
            best = np.argsort(row)[::-1][:top_k]
            tops.append([(tok.decode([int(i)], skip_special_tokens=False), float(row[i])) for i in best])
        results.append(ChatResult(p, tok.decode(ans), tops))
    return results


def format_results(results: Sequence[ChatResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"\n>>> {r.prompt}\n{r.answer.strip()}")
        for j, tops in enumerate(r.top_tokens):
            cands = "  ".join(f"{t!r}:{p:.2f}" for t, p in tops)
            lines.append(f"    answer token {j}: {cands}")
    return "\n".join(lines)
