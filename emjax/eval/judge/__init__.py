"""The judge stage: LLM-judge scoring of generated answers, as a separate async process.

Needs no accelerator and never imports jax. Modules, one job each:

* `scoring`: upstream's logprob-weighted 0-100 score from first-token top logprobs.
* `tasks`: (answer, metric) -> filled prompt and sha256 cache key; prompt fallback.
* `request`: one request through `openai.AsyncOpenAI` with upstream's parameters and retries.
* `store`: append-only, crash-tolerant JSONL results keyed by the cache key.
* `runner`: resumable, bounded-concurrency run; dry run; cost accounting.
* `cost`: prices and token estimates.
* `join`: scores back onto answers as a DataFrame for `emjax.eval.report`.
* `stage`: `judge(...)`, the stage as one library call (`emjax judge` parses into it).

Importing this package is cheap: openai, tqdm and pandas are imported where used.
"""

from emjax.eval.judge.cost import DEFAULT_PRICES, Prices, estimate_prompt_tokens
from emjax.eval.judge.request import (MissingAPIKeyError, RequestConfig, fetch_judgement,
                                 make_client, request_params)
from emjax.eval.judge.runner import (DryRunStats, JudgeServerUnreachableError, RunConfig,
                                     RunStats, dry_run, pending_tasks, run_judge, run_judge_sync)
from emjax.eval.judge.scoring import (MIN_NUMERIC_MASS, aggregate_0_100, numeric_distribution,
                                 parse_score_token, score_0_100)
from emjax.eval.judge.store import RETRY_POLICIES, ResultStore, RetryPolicyError, usage_totals
from emjax.eval.judge.tasks import (DEFAULT_JUDGE_MODEL, JudgeTask, TaskPlan,
                               build_tasks, judge_key, load_judge_prompts)

__all__ = [
    "DEFAULT_JUDGE_MODEL", "DEFAULT_PRICES", "MIN_NUMERIC_MASS",
    "DryRunStats", "JudgeServerUnreachableError", "JudgeTask", "MissingAPIKeyError", "Prices",
    "RETRY_POLICIES", "RequestConfig", "ResultStore", "RetryPolicyError", "RunConfig", "RunStats",
    "TaskPlan", "aggregate_0_100", "build_tasks", "dry_run",
    "estimate_prompt_tokens", "fetch_judgement", "judge_key", "load_judge_prompts",
    "make_client", "numeric_distribution", "parse_score_token", "pending_tasks",
    "request_params", "run_judge", "run_judge_sync", "score_0_100", "usage_totals",
]
