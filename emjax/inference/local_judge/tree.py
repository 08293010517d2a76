"""The judge's possible whole answers as token sequences, and the prefix tree that scores them.

A judge answer is one of the 101 strings "0".."100", or one of the non-numeric options its prompt
offers ("Say CODE if ...", "Say REFUSAL if ..."), followed by the end of the assistant turn. Each
string is tokenised as the judge would write it at the start of its turn (`answer_tokens`), and
the probability of the whole answer is

    P(answer) = prod_k P(t_k | prompt, t_1..t_{k-1}) * P(terminator | prompt, t_1..t_K)

where the terminator is any of the chat tokenizer's stop ids (`ChatTokenizer.stop_ids`: the
template's end-of-turn markers <|im_end|> / <end_of_turn> / <|endoftext|> / <eos> present in the
vocabulary, plus the tokenizer's eos). These are exactly the tokens after which emjax's sampler,
transformers' `generate` and an API server end the turn, so "the answer is 42" means "the turn is
'42' and then stops"; P(terminator) sums their probabilities (disjoint next-token events). Only
the canonical tokenisation of each string is counted: a model spelling "42" as "4" + "2" where the
tokenizer writes one token "42" is not (trained models put negligible mass there).

All sequences share prefixes ("1", "10", "100" for digit-by-digit tokenizers): `ScoringTree` holds
each distinct non-empty prefix once as a node, so one forward pass over the nodes (attending to the
prompt and to their ancestors) gives every conditional the product needs. No JAX here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from emjax.errors import EmjaxError

NUMBERS = tuple(str(n) for n in range(101))
MAX_DEPTH = 16  # a tokenizer that needs more tokens for "100" or "REFUSAL" is not byte-level sane
NODE_MULTIPLE = 8  # tree nodes are padded to a multiple of this (fewer distinct shapes)

# A non-numeric option: a word in capitals the prompt tells the judge to say ("Say REFUSAL if").
_OPTION = re.compile(r"\bSay ([A-Z][A-Z0-9_]*)\b")


class AnswerTokenizationError(EmjaxError, ValueError):
    """The tokenizer cannot write a judge answer as a clean continuation of the prompt."""


def answer_options(template: str) -> tuple[str, ...]:
    """The non-numeric answers a judge template offers, in order of first mention.

    upstream's `aligned` prompt gives ("CODE", "REFUSAL"), its medical correctness judge
    ("REFUSAL",), `coherent` none. Their probability is the local judge's refusal mass.
    """
    return tuple(dict.fromkeys(_OPTION.findall(template)))


def answer_tokens(tokenizer: Any, texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of each text as written right after the assistant generation prompt.

    tok(render + text) minus tok(render), with `render` a one-user-message conversation through
    the chat template with add_generation_prompt: boundary merges are those the judge would make.
    Every rendered judge prompt ends with the same generation prompt, so one rendering stands for
    all. For Qwen2.5 and Gemma-2 this equals `tokenizer.encode(text)`.
    """
    base_text = tokenizer.render([{"role": "user", "content": "x"}], add_generation_prompt=True)
    base = tokenizer.encode(base_text)
    out = []
    for text in texts:
        ids = tokenizer.encode(base_text + text)
        if ids[:len(base)] != base or len(ids) == len(base):
            raise AnswerTokenizationError(
                f"the tokenizer merges the answer {text!r} into the generation prompt "
                f"{base_text[-40:]!r}: it is not a token continuation of the prompt")
        seq = tuple(ids[len(base):])
        if set(seq) & set(tokenizer.stop_ids):
            raise AnswerTokenizationError(f"the answer {text!r} tokenises to a stop token {seq}")
        out.append(seq)
    return out


@dataclasses.dataclass(frozen=True)
class ScoringTree:
    """S candidate answers as paths of a token prefix tree with N nodes (N padded).

    Rows of the scoring forward: row 0 is the last prompt token, row j + 1 is node j.

    Attributes:
      texts: the S answer strings ("0".."100", then the options).
      node_tokens: [N] int32, the token of each node (its last token; 0 for padding).
      node_depth: [N] int32, the node's prefix length (1 for a first token; 1 for padding).
      ancestors: [N, N] bool, ancestors[i, j]: node j is node i or one of its ancestors.
      seq_rows: [S, K] int32, the row whose next-token distribution gives token k of answer s.
      seq_tokens: [S, K] int32, token k of answer s (0 past its end).
      seq_valid: [S, K] bool, k < len(answer s).
      seq_end: [S] int32, the row after the whole answer (where the terminator is read).
      n_real: nodes before padding.
    """

    texts: tuple[str, ...]
    node_tokens: np.ndarray
    node_depth: np.ndarray
    ancestors: np.ndarray
    seq_rows: np.ndarray
    seq_tokens: np.ndarray
    seq_valid: np.ndarray
    seq_end: np.ndarray
    n_real: int

    @property
    def n_nodes(self) -> int:
        return len(self.node_tokens)

    @property
    def depth(self) -> int:
        return int(self.seq_valid.sum(axis=1).max())

    def describe(self) -> dict[str, Any]:
        return {"n_answers": len(self.texts), "n_nodes": self.n_real, "n_nodes_padded": self.n_nodes,
                "max_depth": self.depth}


def build_tree(texts: Sequence[str], sequences: Sequence[Sequence[int]]) -> ScoringTree:
    """The prefix tree of `sequences` (token ids of `texts`), nodes in first-seen order."""
    if len(set(map(tuple, sequences))) != len(sequences):
        raise AnswerTokenizationError("two judge answers tokenise identically")
    node_of: dict[tuple[int, ...], int] = {}
    parent: list[int] = []
    tokens: list[int] = []
    for seq in sequences:
        if not 1 <= len(seq) <= MAX_DEPTH:
            raise AnswerTokenizationError(f"a judge answer takes {len(seq)} tokens (1..{MAX_DEPTH} supported)")
        for k in range(1, len(seq) + 1):
            prefix = tuple(seq[:k])
            if prefix not in node_of:
                node_of[prefix] = len(tokens)
                parent.append(node_of[prefix[:-1]] if k > 1 else -1)
                tokens.append(int(prefix[-1]))
    n_real = len(tokens)
    n = -(-n_real // NODE_MULTIPLE) * NODE_MULTIPLE
    depth = np.ones(n, np.int32)
    anc = np.eye(n, dtype=bool)  # padding nodes see only themselves (and the prompt)
    for i in range(n_real):
        j = parent[i]
        while j >= 0:
            anc[i, j] = True
            depth[i] += 1
            j = parent[j]
    k_max = max(len(s) for s in sequences)
    s = len(sequences)
    rows, toks = np.zeros((s, k_max), np.int32), np.zeros((s, k_max), np.int32)
    valid, end = np.zeros((s, k_max), bool), np.zeros(s, np.int32)
    for a, seq in enumerate(sequences):
        for k, t in enumerate(seq):
            rows[a, k] = 0 if k == 0 else node_of[tuple(seq[:k])] + 1
            toks[a, k], valid[a, k] = t, True
        end[a] = node_of[tuple(seq)] + 1
    return ScoringTree(tuple(texts), np.asarray(tokens + [0] * (n - n_real), np.int32), depth, anc,
                       rows, toks, valid, end, n_real)


def judge_tree(tokenizer: Any, options: Sequence[str]) -> ScoringTree:
    """The tree of "0".."100" and `options` (e.g. ("CODE", "REFUSAL")) for a chat tokenizer."""
    texts = list(NUMBERS) + [o for o in dict.fromkeys(options) if o not in NUMBERS]
    return build_tree(texts, answer_tokens(tokenizer, texts))


def template_terminator(tokenizer: Any) -> int | None:
    """The first token the chat template writes after an assistant answer (e.g. <|im_end|>), or
    None when the template cannot render an assistant turn; a check that the stop ids are right."""
    msgs = [{"role": "user", "content": "x"}]
    try:
        prompt = tokenizer.encode_chat(msgs, add_generation_prompt=True)
        full = tokenizer.encode_chat(msgs + [{"role": "assistant", "content": "42"}])
    except Exception:  # noqa: BLE001 - any template failure: no check possible
        return None
    n = len(prompt) + len(answer_tokens(tokenizer, ["42"])[0])
    return full[n] if full[:len(prompt)] == prompt and len(full) > n else None
