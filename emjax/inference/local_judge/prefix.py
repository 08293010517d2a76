"""Shared prompt prefixes of the local judge (no JAX): which leading tokens many prompts have in
common, so that their prefill runs once instead of once per prompt.

Every answer to one question under one metric is judged by the same template: the chat header,
the template's head and the question come before the answer, so the 50 samples of a question
share their first ~80-120 tokens (about a fifth of a judge prompt with upstream's templates and
the embedded tokenizer: measured on the package's question files). `plan_shared_prefix` finds
one length Lp for a set of tokenised prompts and the distinct Lp-token prefixes (groups); the
forward (`forward.prefix_cache`, `answer_logprobs(prefix=...)`) runs each group's prefix once and
every prompt's remaining tokens (its body) attend to its group's cached keys and values. The
groups are found from the tokens themselves (the longest common token prefixes), not from the
template text, so a tokenizer that merges across the answer boundary can never make them wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

# Not worth a second program below this: a prefix pass per group and a prefix attention per row
# cost more than they save when the shared tokens are few (ours).
MIN_SAVED_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class SharedPrefix:
    """`length` leading tokens shared within each group; `groups[g]` is that prefix,
    `row_group[i]` the group of prompt i (every prompt is longer than `length`)."""

    length: int
    groups: tuple[tuple[int, ...], ...]
    row_group: tuple[int, ...]

    def saved_tokens(self) -> int:
        """Prompt tokens not run: every row's prefix, less one prefix pass per group."""
        return self.length * (len(self.row_group) - len(self.groups))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_shared_prefix(prompts: Sequence[Sequence[int]], *, multiple: int = 16,
                       min_saved: float = MIN_SAVED_FRACTION) -> SharedPrefix | None:
    """The prefix length that saves the most prompt tokens, or None where sharing would save less
    than `min_saved` of them.

    A length c groups the prompts by their first c tokens; it saves c x (prompts - groups) tokens
    (each group's prefix still runs once). Candidates are the common-prefix lengths of neighbours
    in sorted order (a group's members are consecutive there), rounded down to a multiple of
    `multiple` (ours: fewer compiled shapes across windows, at most 15 tokens a row given up) and
    below the shortest prompt (a prompt's last token must stay in its body: its logits score the
    first answer token).
    """
    n = len(prompts)
    if n < 2:
        return None
    order = sorted(range(n), key=lambda i: tuple(prompts[i]))
    neighbours = [_common_prefix(prompts[order[k]], prompts[order[k + 1]]) for k in range(n - 1)]
    cap = min(map(len, prompts)) - 1
    best, best_saved = 0, 0
    for c in sorted({min(x, cap) // multiple * multiple for x in neighbours} - {0}):
        groups = 1 + sum(x < c for x in neighbours)
        if c * (n - groups) > best_saved:
            best, best_saved = c, c * (n - groups)
    if best == 0 or best_saved < min_saved * sum(map(len, prompts)):
        return None
    keys: dict[tuple[int, ...], int] = {}
    row_group = tuple(keys.setdefault(tuple(p[:best]), len(keys)) for p in prompts)
    return SharedPrefix(best, tuple(keys), row_group)


def group_chunks(plan: SharedPrefix, max_groups: int) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(group ids, prompt indices) in chunks of at most `max_groups` groups, so that the cached
    prefixes of one chunk fit in memory; prompts keep their order within a chunk."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    for start in range(0, len(plan.groups), max_groups):
        ids = tuple(range(start, min(start + max_groups, len(plan.groups))))
        rows = tuple(i for i, g in enumerate(plan.row_group) if start <= g < start + max_groups)
        yield ids, rows
