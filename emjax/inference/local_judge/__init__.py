"""The local judge: a model in emjax scores judge prompts by prefill, with exact answer probabilities.

    emjax judge --local /models/Qwen2.5-14B-Instruct --answers A.jsonl --questions Q.yaml --out J.jsonl

Modules, one job each:

* `tree`: the judge's whole answers ("0".."100", CODE, REFUSAL) as token sequences, what ends an
  answer (the terminator), and the prefix tree that scores them all at once (no JAX).
* `forward`: the jitted prefill of prompt + tree -> [B, S] answer log-probabilities (batches
  pipelined: `score_batches`).
* `records`: length-bucketed batches and the result lines (the API judge's format, plus the
  101-vector of probabilities and the refusal mass; no JAX).
* `stage`: `judge_local(...)`, the stage as one library call (`emjax judge --local` parses into it).

Unlike `emjax.eval.judge`, this package needs JAX (it imports `emjax.model` and
`emjax.checkpoints`); the judge package, the report and the judge-agreement module stay JAX-free.
"""

from emjax.inference.local_judge.forward import TreeArrays, answer_logprobs, score_batches, score_prompts
from emjax.inference.local_judge.records import local_record, plan_batches
from emjax.inference.local_judge.stage import (MIN_VALID_JUDGE_PARAMS, LocalJudgeConfig, LocalJudgeError, judge_local,
                                          judge_validity_warning, local_judge_name)
from emjax.inference.local_judge.tree import (NUMBERS, AnswerTokenizationError, ScoringTree, answer_options,
                                         answer_tokens, build_tree, judge_tree)

__all__ = ["MIN_VALID_JUDGE_PARAMS", "NUMBERS", "AnswerTokenizationError", "LocalJudgeConfig", "LocalJudgeError",
           "ScoringTree", "TreeArrays", "answer_logprobs", "answer_options", "answer_tokens", "build_tree",
           "judge_local", "judge_tree", "judge_validity_warning", "local_judge_name", "local_record",
           "plan_batches", "score_batches", "score_prompts"]
