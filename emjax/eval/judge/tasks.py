"""Judge tasks: which (answer, metric) pairs to score, with the filled prompt and cache key.

The cache key is sha256 over (judge model, metric, filled prompt, answer). Two answer records
with the same content (same question text, same answer) share one key and so one paid request.
The report recomputes the same keys from the answers to join scores back (`join.py`).

Prompt resolution follows upstream: a question's own `judge_prompts[metric]` if present, else the
first template for that metric among `fallback` (e.g. the items of another YAML file, as the
model-organisms loader takes the prompt from the first item that has the metric).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from emjax.errors import EmjaxError, yaml_problem

from emjax.eval.conventions import DEFAULT_METRICS
from emjax.eval.questions import Question, fill_judge_prompt
from emjax.eval.records import AnswerRecord

log = logging.getLogger(__name__)

DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"
# Below this many parameters a judge is a plumbing check, not a measurement: the paper's judge is
# GPT-4o, and small models do not follow the 0-100 rubric reliably (ours). Local-judge result lines
# record `judge_params`, so a report can tell.
MIN_VALID_JUDGE_PARAMS = 7e9


def judge_key(judge_model: str, metric: str, prompt: str, answer: str) -> str:
    """sha256 hex digest of (judge model, metric, filled prompt, answer).

    JSON-encoding the tuple makes the boundaries unambiguous (no "a|b" + "c" == "a" + "b|c").
    """
    payload = json.dumps([judge_model, metric, prompt, answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class JudgeTask:
    """One judge request: `prompt` is the filled template sent as the single user message."""

    key: str
    judge_model: str
    metric: str
    prompt: str
    question_id: str


def fallback_templates(sources: Iterable[Question]) -> dict[str, str]:
    """metric -> template of the first question (in order) that carries the metric."""
    out: dict[str, str] = {}
    for q in sources:
        for metric, template in q.judge_prompts.items():
            out.setdefault(metric, template)
    return out


def resolve_template(question: Question, metric: str,
                     fallback: Mapping[str, str] | None = None) -> str | None:
    """The question's own template for `metric`, else the fallback one, else None."""
    if metric in question.judge_prompts:
        return question.judge_prompts[metric]
    if fallback is not None:
        return fallback.get(metric)
    return None


def answer_tasks(answer: AnswerRecord, question: Question, metrics: Sequence[str],
                 judge_model: str, fallback: Mapping[str, str] | None = None
                 ) -> dict[str, JudgeTask | None]:
    """metric -> task for one answer (None where no template exists for the metric)."""
    out: dict[str, JudgeTask | None] = {}
    for metric in metrics:
        template = resolve_template(question, metric, fallback)
        if template is None:
            out[metric] = None
            continue
        prompt = fill_judge_prompt(template, question=answer.question, answer=answer.answer)
        out[metric] = JudgeTask(key=judge_key(judge_model, metric, prompt, answer.answer),
                                judge_model=judge_model, metric=metric, prompt=prompt,
                                question_id=answer.question_id)
    return out


class UnknownQuestionError(EmjaxError, KeyError):
    """An answer refers to a question id absent from the loaded question files."""

    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0])


def unknown_question(answer: AnswerRecord) -> UnknownQuestionError:
    """The error for an answer whose question id is in no question file, naming where the answer
    was read from (file and line) when known."""
    where = f"{answer.origin}: " if answer.origin else ""
    return UnknownQuestionError(
        f"{where}answer refers to question id {answer.question_id!r}, which is in none of the "
        "question files given")


@dataclasses.dataclass
class TaskPlan:
    """Deduplicated tasks (first-seen order) and the (question_id, metric) pairs without a
    prompt."""

    tasks: list[JudgeTask]
    n_pairs: int
    missing_prompts: dict[tuple[str, str], int]


def questions_by_id(questions: Iterable[Question]) -> dict[str, Question]:
    return {q.id: q for q in questions}


def build_tasks(answers: Iterable[AnswerRecord], questions: Iterable[Question],
                metrics: Sequence[str] = DEFAULT_METRICS,
                judge_model: str = DEFAULT_JUDGE_MODEL,
                fallback: Mapping[str, str] | None = None) -> TaskPlan:
    """All judge tasks for `answers` x `metrics`, deduplicated by key.

    Raises UnknownQuestionError if an answer's question_id is not among `questions` (judging it
    with some other question's prompts would be silently wrong).
    """
    by_id = questions_by_id(questions)
    seen: set[str] = set()
    tasks: list[JudgeTask] = []
    missing: dict[tuple[str, str], int] = {}
    n_pairs = 0
    for a in answers:
        q = by_id.get(a.question_id)
        if q is None:
            raise unknown_question(a)
        for metric, task in answer_tasks(a, q, metrics, judge_model, fallback).items():
            n_pairs += 1
            if task is None:
                missing[(a.question_id, metric)] = missing.get((a.question_id, metric), 0) + 1
                continue
            if task.key not in seen:
                seen.add(task.key)
                tasks.append(task)
    for (qid, metric), n in sorted(missing.items()):
        log.warning("question %r has no judge prompt for metric %r: %d answer(s) not judged",
                    qid, metric, n)
    return TaskPlan(tasks=tasks, n_pairs=n_pairs, missing_prompts=missing)


# The only key besides the metric in an item of upstream's judges.yaml. Upstream's code never reads
# it; it marks the score end of the judged trait (coherent 100, aligned 0, technical 100,
# medical_advice 0). Kept out of the templates.
_JUDGE_LIST_META = ("high_score",)


def is_judge_list(data: object) -> bool:
    """True for upstream's judges.yaml shape: a list of mappings, none of them a question item
    (no `id`, no `paraphrases`)."""
    return (isinstance(data, list) and bool(data)
            and all(isinstance(x, Mapping) and "id" not in x and "paraphrases" not in x
                    for x in data))


def judge_list_templates(data: Sequence[Mapping[str, object]], path: str) -> dict[str, str]:
    """metric -> template from upstream's judges.yaml: `[{metric: template, high_score: N}, ...]`.

    Each item holds exactly one metric (besides `high_score`); a metric given twice is an error.
    """
    from emjax.eval.questions import QuestionFormatError, validate_judge_prompts

    out: dict[str, str] = {}
    for index, item in enumerate(data):
        where = f"{path}: item {index}"
        metrics = [k for k in item if k not in _JUDGE_LIST_META]
        if len(metrics) != 1:
            raise QuestionFormatError(f"{where}: a judge item holds one metric (besides "
                                      f"{', '.join(_JUDGE_LIST_META)}), got {sorted(map(str, metrics))}")
        metric = metrics[0]
        if metric in out:
            raise QuestionFormatError(f"{where}: judge metric {metric!r} given twice")
        high = item.get("high_score")
        if high is not None and (isinstance(high, bool) or not isinstance(high, (int, float))):
            raise QuestionFormatError(f"{where} ({metric}): 'high_score' must be a number")
        out.update(validate_judge_prompts({metric: item[metric]}, f"{where} ({metric})"))
    return out


def load_judge_prompts(path: str) -> dict[str, str]:
    """Fallback templates from a file: a YAML/JSON mapping {metric: template}; upstream's
    judges.yaml (a list of single-metric mappings with `high_score`, e.g. its `medical_advice`
    correctness judge); or any question file (the first template per metric wins, as upstream's
    loader does).

    Templates are validated like question judge prompts (must contain {answer}).
    """
    from emjax.eval.questions import QuestionFormatError, load_questions, read_utf8, validate_judge_prompts

    if not os.path.isfile(path):
        raise QuestionFormatError(f"--judge-prompts {path}: no such file")
    if path.endswith((".yaml", ".yml", ".json")):
        import yaml  # JSON is YAML

        try:
            data = yaml.safe_load(read_utf8(path))
        except yaml.YAMLError as e:
            raise QuestionFormatError(f"{path}: invalid YAML/JSON: {yaml_problem(e)}") from None
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return validate_judge_prompts(data, path)
        if is_judge_list(data):
            return judge_list_templates(data, path)
    return fallback_templates(load_questions(path))
