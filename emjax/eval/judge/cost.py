"""Token prices and cost estimates for judge runs.

Prices are USD per 1M tokens and always configurable (CLI `--price-input/--price-output`); the
defaults are OpenAI's list prices for gpt-4o-2024-08-06 (2.50 input, 10.00 output) at the time of
writing. Check them before trusting a budget.

The dry-run estimate of prompt tokens is deliberately crude: characters / 4 (the usual rule of
thumb for English under GPT-4o's o200k tokenizer) plus a few tokens of chat framing per request.
It is an estimate for budgeting, not a bill; real runs record the API's `usage` counts.
"""

from __future__ import annotations

import dataclasses
import math

# Role markers and reply priming around one user message (OpenAI cookbook: about 3 + 3 + 1).
CHAT_OVERHEAD_TOKENS = 7


@dataclasses.dataclass(frozen=True)
class Prices:
    """USD per 1M input (prompt) and output (completion) tokens."""

    input_per_1m: float = 2.50
    output_per_1m: float = 10.00

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


DEFAULT_PRICES = Prices()


def estimate_prompt_tokens(text: str) -> int:
    """Rough prompt-token count: ceil(chars / 4) + chat framing (see module docstring)."""
    return math.ceil(len(text) / 4) + CHAT_OVERHEAD_TOKENS
