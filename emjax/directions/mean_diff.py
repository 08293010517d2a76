"""Mean-difference directions: per layer, the mean residual stream over the answer tokens of one set
of chats minus that of another.

    means_a = answer_means(model, chats_a)        # AnswerMeans: sums [L, D] float64, tokens
    means_b = answer_means(model, chats_b)
    direction = means_a.mean() - means_b.mean()   # [L, D]: row l after block l

What upstream does (`em_organism_dir/steering/activation_steering.py`, `collect_hidden_states`):
render [user question, assistant answer] with the chat template, take the residual stream after
every decoder layer, and accumulate token-weighted means over all answer tokens of all examples;
the direction is "misaligned answers minus aligned answers". Here the answer tokens are the
assistant turn's tokens as SFT masks them (the content and the end-of-turn marker; upstream counts
everything after the rendered user turn, the "assistant\\n" header included). The means can be
taken under an intervention (upstream collects them from the misaligned fine-tune).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import Message
from emjax.data.tokenize import pad_batch, tokenize_sft
from emjax.model import decoder as D
from emjax.model.hooks import HookSource


@dataclasses.dataclass
class AnswerMeans:
    """Token sums of the residual stream after every block over a set's answer tokens.

    sums: [L, D] float64; tokens: answer tokens counted; rows: chats counted.
    """

    sums: np.ndarray
    tokens: int
    rows: int

    def mean(self) -> np.ndarray:
        """[L, D] token-weighted mean over all answer tokens."""
        if self.tokens == 0:
            raise ValueError("no answer tokens to average")
        return self.sums / self.tokens


@jax.jit
def _masked_sums(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """hidden [L + 1, B, T, D], weight [B, T] -> [L, D] sums over weighted positions of the block
    outputs (the embedding output, hidden[0], is not a block's output)."""
    return jnp.einsum("lbtd,bt->ld", hidden[1:].astype(jnp.float32), weight.astype(jnp.float32))


def answer_means(model: LoadedModel, chats: Sequence[Sequence[Message]], *, max_len: int = 512,
                 batch_size: int = 8, interventions: HookSource | None = None, desc: str = "activations"
                 ) -> AnswerMeans:
    """Sums of the block outputs over the assistant tokens of `chats` (each ending with the answer).

    interventions: applied while collecting (e.g. the trained vector, or an ablation)."""
    data = tokenize_sft(chats, model.tokenizer, max_len, on_template_error="skip")
    if not data.rows:
        raise ValueError("none of the chats has an assistant token to average")
    cfg = model.cfg
    sums = np.zeros((cfg.n_layers, cfg.d_model), np.float64)
    tokens = 0
    for i in tqdm(range(0, len(data.rows), batch_size), desc=desc, unit="batch", leave=False):
        rows = data.rows[i: i + batch_size]
        b = pad_batch(rows)
        # the answer tokens themselves (pad_batch's loss_mask is shifted by one for the targets)
        answer = np.zeros(b["mask"].shape, bool)
        for r, (_, m) in enumerate(rows):
            answer[r, : len(m)] = m
        _, hidden = D.forward(model.weights, cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]),
                              interventions=interventions, collect=True)
        sums += np.asarray(_masked_sums(hidden, jnp.asarray(answer)), np.float64)
        tokens += int(answer.sum())
    return AnswerMeans(sums=sums, tokens=tokens, rows=len(data.rows))


def mean_difference(a: AnswerMeans, b: AnswerMeans) -> np.ndarray:
    """[L, D] mean of set a minus mean of set b, per layer (raw, not normalised)."""
    return a.mean() - b.mean()


def balance(a: list, b: list, seed: int) -> tuple[list, list]:
    """Both sets cut to the smaller size by a seeded shuffle of the larger (upstream truncates the
    aligned set to the misaligned count after an unseeded shuffle)."""
    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)
    pick = lambda xs: [xs[i] for i in sorted(rng.permutation(len(xs))[:n])] if len(xs) > n else list(xs)
    return pick(a), pick(b)
