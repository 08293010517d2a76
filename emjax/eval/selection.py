"""Which answers a stage reads, as one value: `AnswerSelection` (answers files, the question files
they answer, fallback judge prompts, a filter by kind / id glob) and `load_selection`, which reads
it. The judge (API and local), the report, the technical rates and the direction stages take one.

    sel = AnswerSelection(answers=["answers.jsonl"], questions=["first_plot_questions.yaml"])
    answers, questions, fallback_prompts = load_selection(sel)

No JAX.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from emjax.errors import EmjaxError
from emjax.eval.checks import check_include_globs, check_kinds
from emjax.eval.judge.tasks import fallback_templates, load_judge_prompts
from emjax.eval.questions import Question, load_questions, select_questions
from emjax.eval.records import AnswerRecord, read_answers

log = logging.getLogger("emjax.judge")


@dataclasses.dataclass(frozen=True)
class AnswerSelection:
    """Which answers a stage reads: answers JSONL files, the question files they answer, fallback
    judge prompts, and an optional filter by question kind / id glob."""

    answers: Sequence[str]
    questions: Sequence[str]
    judge_prompts: Sequence[str] = ()
    kinds: Sequence[str] | None = None
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None


class SelectionInputError(EmjaxError, ValueError):
    """An input file of a selection that is missing or a folder."""


def load_selection(sel: AnswerSelection) -> tuple[list[AnswerRecord], list[Question], dict[str, str]]:
    """(answers, questions, fallback judge templates by metric) of a selection."""
    for option, paths in selection_inputs(sel).items():  # named by their option, before any is read
        for path in paths:
            if not os.path.exists(path):
                raise SelectionInputError(f"{option} {path}: no such file")
            if os.path.isdir(path):
                raise SelectionInputError(f"{option} {path} is a folder; give a file")
    questions = load_questions(sel.questions)
    fallback: dict[str, str] = {}
    for path in sel.judge_prompts:
        for metric, template in load_judge_prompts(path).items():
            fallback.setdefault(metric, template)
    for metric, template in fallback_templates(questions).items():
        fallback.setdefault(metric, template)
    if sel.kinds is not None:
        check_kinds(sel.kinds)
    check_include_globs(sel.include, [q.id for q in questions], where=", ".join(sel.questions))
    answers = _read_answer_files(sel.answers)
    if sel.kinds is not None or sel.include is not None or sel.exclude is not None:
        _warn_unknown_dropped(answers, questions)
        keep = {q.id for q in select_questions(questions, sel.kinds, sel.include, sel.exclude)}
        answers = [a for a in answers if a.question_id in keep]
    return answers, questions, fallback


def selection_inputs(sel: AnswerSelection) -> dict[str, list[str]]:
    """The selection's input files by option, for `check_output_file`."""
    return {"--answers": list(sel.answers), "--questions": list(sel.questions),
            "--judge-prompts": list(sel.judge_prompts)}


def _read_answer_files(paths: Sequence[str]) -> list[AnswerRecord]:
    """All answers of the files, warning (by name) about each file that holds none."""
    answers: list[AnswerRecord] = []
    for path in paths:
        got = read_answers(path)
        if not got:
            log.warning("%s: no answers in this file", path)
        answers += got
    return answers


def _warn_unknown_dropped(answers: Sequence[AnswerRecord], questions: Sequence[Question]) -> None:
    """A filtered selection drops answers to question ids in no question file; say so (where)."""
    known = {q.id for q in questions}
    unknown = [a for a in answers if a.question_id not in known]
    if unknown:
        log.warning("%d answer(s) refer to question ids in none of the question files and are "
                    "left out by the selection (first: %s, id %r)", len(unknown),
                    unknown[0].origin, unknown[0].question_id)
