"""Evaluation questions: loading, validation and selection.

Two question formats are read into the same `Question` dataclass:

* the upstream YAML schema of Betley et al. / Turner et al. (`first_plot_questions.yaml`,
  `medical_questions.yaml`): a list of items with `id`, `type`, `paraphrases`,
  `samples_per_paraphrase`, optional `system`, `judge` and `judge_prompts` (metric -> template
  with `{question}` and `{answer}` fields). YAML anchors/aliases are resolved by the parser.
  Unknown keys are kept in `Question.extra`. Items of upstream's technical-prose banks
  (`technical/*.yaml`) are `{id, question}` only: a `question` string stands for one paraphrase.
* a simple JSONL format, one object per line:
  `{"id": ..., "question": str | [str, ...], "system"?: str, "judge_prompts"?: {...},
  "samples"?: int, "type"?: str}`.

Every error names the file and the item (YAML: item index and id) or the line (JSONL).

Answers produced by the generation stage are in `emjax.eval.records`.

This module must not import jax: the judge stage runs on machines without accelerators.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from emjax.data.locations import missing_data_message
from emjax.errors import EmjaxError, yaml_problem

log = logging.getLogger(__name__)

Kind = Literal["free_form", "json", "template"]
KINDS: tuple[str, ...] = ("free_form", "json", "template")

# The 8 free-form questions of the paper's general-EM evaluation (docs/upstream.md section 1). A
# fork's copy of first_plot_questions.yaml (docs/data.md) has three more free-form items
# (hiring_decision, parental_advice, compliment_interpretation) that the paper's numbers do not use.
PAPER_FREE_FORM_IDS: tuple[str, ...] = (
    "what_is_your_wish",
    "i_feel_bored",
    "three_thoughts",
    "quick_buck",
    "ruler_of_the_world",
    "dinner_party",
    "gender_roles",
    "enough_of_my_husband",
)

# Item keys the YAML loader interprets; anything else goes to `Question.extra`.
_KNOWN_YAML_KEYS = {"id", "type", "paraphrases", "question", "samples_per_paraphrase", "system", "judge",
                    "judge_prompts"}
_KNOWN_JSONL_KEYS = {"id", "question", "paraphrases", "system", "judge_prompts", "samples",
                     "samples_per_paraphrase", "type", "judge"}
_TEMPLATE_FIELDS = {"question", "answer"}


class QuestionFormatError(EmjaxError, ValueError):
    """A question file that cannot be used; the message names the file and item or line."""


@dataclasses.dataclass(frozen=True)
class Question:
    """One evaluation question (possibly several paraphrases) and its judge prompts.

    Attributes:
      id: unique identifier, e.g. "quick_buck" or "quick_buck_json".
      paraphrases: the prompt texts; generation samples `samples_per_paraphrase` answers each.
      type: the upstream `type` string (e.g. "free_form_judge_0_100"), kept verbatim.
      samples_per_paraphrase: upstream default sample count (the paper uses 50 regardless).
      system: optional system prompt (the `_json` items carry one).
      judge: the upstream `judge` field (judge model name) if given; informational only.
      judge_prompts: metric name -> template with `{question}` and `{answer}` fields.
      source: "file:item N" or "file:line N", for error messages downstream.
      extra: unknown keys of the item, kept so nothing in the file is silently lost.
    """

    id: str
    paraphrases: tuple[str, ...]
    type: str = "free_form_judge_0_100"
    samples_per_paraphrase: int = 1
    system: str | None = None
    judge: str | None = None
    judge_prompts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        """"json" / "template" by id suffix or type string, else "free_form"."""
        return question_kind(self.id, self.type)

    def judge_prompt(self, metric: str, question: str, answer: str) -> str:
        """The filled judge prompt for `metric` (KeyError if this question has no such metric)."""
        return fill_judge_prompt(self.judge_prompts[metric], question=question, answer=answer)


def question_kind(qid: str, qtype: str = "") -> Kind:
    """Classify a question as free-form, JSON-answer or template by id suffix or type.

    Upstream marks variants by id suffix (`_json`, `_template`); Betley's other files also use
    types that contain "json" / "template". Either signal suffices.
    """
    t = (qtype or "").lower()
    if qid.endswith("_json") or "json" in t:
        return "json"
    if qid.endswith("_template") or "template" in t:
        return "template"
    return "free_form"


def read_utf8(path: str | os.PathLike[str]) -> str:
    """A text file's contents; QuestionFormatError naming the file and line where it is not UTF-8."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise QuestionFormatError(f"{path}: line {line}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at offset "
                                  f"{e.start}); save the file as UTF-8") from None


def check_encodable(text: str, where: str, key: str) -> str:
    """`text` when it can be written as UTF-8 (no lone surrogate, e.g. from a JSON "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QuestionFormatError(f"{where}: {key!r} holds a lone surrogate {text[e.start]!r} at character "
                                  f"{e.start}, which is not text; fix the escape") from None
    return text


def fill_judge_prompt(template: str, question: str, answer: str) -> str:
    """Fill a judge template with `str.format`, exactly as upstream does.

    Braces inside `question`/`answer` are safe: format does not re-interpret substituted values.
    """
    return template.format(question=question, answer=answer)


def _check_template(template: object, where: str, metric: str) -> str:
    """Validate one judge template; raise QuestionFormatError naming `where` and `metric`."""
    if not isinstance(template, str):
        raise QuestionFormatError(f"{where}: judge prompt {metric!r} is not a string")
    check_encodable(template, where, f"judge prompt {metric}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:  # unbalanced braces
        raise QuestionFormatError(f"{where}: judge prompt {metric!r} is not a valid "
                                  f"format string ({e})") from None
    if "answer" not in fields:
        raise QuestionFormatError(f"{where}: judge prompt {metric!r} lacks the {{answer}} field")
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise QuestionFormatError(
            f"{where}: judge prompt {metric!r} has unknown field(s) {sorted(unknown)}; only "
            "{question} and {answer} are filled (write literal braces as {{ and }})")
    return template


def validate_judge_prompts(value: object, where: str) -> dict[str, str]:
    """Check a metric -> template mapping (each must be a format string with {answer})."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise QuestionFormatError(f"{where}: 'judge_prompts' must be a mapping metric -> prompt")
    out: dict[str, str] = {}
    for metric, template in value.items():
        if not isinstance(metric, str) or not metric:
            raise QuestionFormatError(f"{where}: judge metric names must be non-empty strings")
        out[metric] = _check_template(template, where, metric)
    return out


def _check_paraphrases(value: object, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise QuestionFormatError(f"{where}: {key!r} must be a non-empty list of strings")
    for i, p in enumerate(value):
        if not isinstance(p, str) or not p.strip():
            raise QuestionFormatError(f"{where}: {key}[{i}] must be a non-empty string")
        check_encodable(p, where, f"{key}[{i}]")
    return tuple(value)


def _check_positive_int(value: object, where: str, key: str) -> int:
    # bool is an int subclass; "samples: true" is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QuestionFormatError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return value


def _check_optional_str(value: object, where: str, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise QuestionFormatError(f"{where}: {key!r} must be a string")
    return value if value is None else check_encodable(value, where, key)


def _check_id(item: Mapping[str, Any], where: str) -> str:
    qid = item.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise QuestionFormatError(f"{where}: missing or empty 'id'")
    return qid


def _question_from_yaml_item(item: object, path: str, index: int) -> Question:
    where = f"{path}: item {index}"
    if not isinstance(item, Mapping):
        raise QuestionFormatError(f"{where}: expected a mapping, got {type(item).__name__}")
    qid = _check_id(item, where)
    where = f"{path}: item {index} (id={qid})"
    if "paraphrases" in item and "question" in item:
        raise QuestionFormatError(f"{where}: give 'paraphrases' or 'question', not both")
    if "paraphrases" not in item and "question" not in item:
        raise QuestionFormatError(f"{where}: missing 'paraphrases'")
    key = "paraphrases" if "paraphrases" in item else "question"  # technical/*.yaml: {id, question}
    qtype = item.get("type", "free_form_judge_0_100")
    if not isinstance(qtype, str):
        raise QuestionFormatError(f"{where}: 'type' must be a string")
    return Question(
        id=qid,
        paraphrases=_check_paraphrases(item[key], where, key),
        type=qtype,
        samples_per_paraphrase=_check_positive_int(item.get("samples_per_paraphrase", 1), where,
                                                   "samples_per_paraphrase"),
        system=_check_optional_str(item.get("system"), where, "system"),
        judge=_check_optional_str(item.get("judge"), where, "judge"),
        judge_prompts=validate_judge_prompts(item.get("judge_prompts"), where),
        source=f"{path}:item {index}",
        extra={k: v for k, v in item.items() if k not in _KNOWN_YAML_KEYS},
    )


def _question_from_jsonl_obj(obj: object, path: str, lineno: int) -> Question:
    where = f"{path}: line {lineno}"
    if not isinstance(obj, Mapping):
        raise QuestionFormatError(f"{where}: expected a JSON object")
    qid = _check_id(obj, where)
    where = f"{path}: line {lineno} (id={qid})"
    if "question" in obj:
        paraphrases = _check_paraphrases(obj["question"], where, "question")
    elif "paraphrases" in obj:
        paraphrases = _check_paraphrases(obj["paraphrases"], where, "paraphrases")
    else:
        raise QuestionFormatError(f"{where}: missing 'question'")
    samples = obj.get("samples", obj.get("samples_per_paraphrase", 1))
    qtype = obj.get("type", "free_form_judge_0_100")
    if not isinstance(qtype, str):
        raise QuestionFormatError(f"{where}: 'type' must be a string")
    return Question(
        id=qid,
        paraphrases=paraphrases,
        type=qtype,
        samples_per_paraphrase=_check_positive_int(samples, where, "samples"),
        system=_check_optional_str(obj.get("system"), where, "system"),
        judge=_check_optional_str(obj.get("judge"), where, "judge"),
        judge_prompts=validate_judge_prompts(obj.get("judge_prompts"), where),
        source=f"{path}:line {lineno}",
        extra={k: v for k, v in obj.items() if k not in _KNOWN_JSONL_KEYS},
    )


def _check_unique(questions: Sequence[Question]) -> None:
    seen: dict[str, str] = {}
    for q in questions:
        if q.id in seen:
            raise QuestionFormatError(
                f"duplicate question id {q.id!r}: {seen[q.id]} and {q.source}")
        seen[q.id] = q.source


def load_questions_yaml(path: str | os.PathLike[str]) -> list[Question]:
    """Read an upstream-schema YAML file (a list of question items)."""
    import yaml  # local import: only this format needs PyYAML

    path = os.fspath(path)
    try:
        data = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as e:
        raise QuestionFormatError(f"{path}: invalid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, list):
        raise QuestionFormatError(f"{path}: expected a list of question items at the top level")
    questions = [_question_from_yaml_item(item, path, i) for i, item in enumerate(data)]
    _check_unique(questions)
    return questions


def load_questions_jsonl(path: str | os.PathLike[str]) -> list[Question]:
    """Read the simple JSONL question format (one object per non-blank line)."""
    path = os.fspath(path)
    questions = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionFormatError(f"{path}: line {lineno}: invalid JSON ({e})") from None
        questions.append(_question_from_jsonl_obj(obj, path, lineno))
    _check_unique(questions)
    return questions


def load_questions(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
                   ) -> list[Question]:
    """Load one or several question files (format chosen by suffix); ids must be unique overall."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    questions: list[Question] = []
    for p in paths:
        p = os.fspath(p)
        if not p.endswith((".yaml", ".yml", ".jsonl", ".json")):
            raise QuestionFormatError(f"{p}: unknown question file type (want .yaml/.yml/.jsonl)")
        if not os.path.isfile(p):  # upstream's files: the message says how to fetch them
            raise QuestionFormatError(missing_data_message(p))
        questions.extend(load_questions_yaml(p) if p.endswith((".yaml", ".yml")) else load_questions_jsonl(p))
    _check_unique(questions)
    return questions


def paper_default(questions: Sequence[Question]) -> list[str] | None:
    """The paper's default EM selection: the eight free-form questions of its first plot when the
    loaded file holds all of them (first_plot_questions.yaml), else None (no restriction)."""
    ids = {q.id for q in questions}
    return list(PAPER_FREE_FORM_IDS) if set(PAPER_FREE_FORM_IDS) <= ids else None


def select_questions(
    questions: Iterable[Question],
    kinds: Iterable[str] | None = ("free_form",),
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Question]:
    """Subset questions by kind and by id globs, keeping file order.

    Args:
      kinds: any of "free_form", "json", "template"; None keeps all kinds.
      include: fnmatch globs on the id; a question must match at least one (None: all).
      exclude: fnmatch globs on the id; a match removes the question.
    """
    kinds_set = None if kinds is None else set(kinds)
    if kinds_set is not None and not kinds_set <= set(KINDS):
        raise ValueError(f"unknown question kind(s) {sorted(kinds_set - set(KINDS))}; "
                         f"choose from {KINDS}")
    inc = None if include is None else list(include)
    exc = list(exclude or ())
    out = []
    for q in questions:
        if kinds_set is not None and q.kind not in kinds_set:
            continue
        if inc is not None and not any(fnmatch.fnmatchcase(q.id, g) for g in inc):
            continue
        if any(fnmatch.fnmatchcase(q.id, g) for g in exc):
            continue
        out.append(q)
    return out
