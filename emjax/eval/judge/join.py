"""Join judge results back onto answers: one row per answer, one score column per metric.

Keys are recomputed from the answers and question files exactly as the judge computed them
(`tasks.answer_tasks`), so the results file needs no copy of the answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from emjax.eval.questions import Question
from emjax.eval.records import AnswerRecord
from emjax.eval.judge.store import STATUS_OK, ResultStore
from emjax.eval.judge.tasks import (DEFAULT_JUDGE_MODEL, answer_tasks, questions_by_id,
                                    unknown_question)

ANSWER_COLUMNS = ("question_id", "paraphrase_index", "sample_index", "model", "intervention",
                  "config_hash", "seed", "question", "answer", "system")


def scores_table(answers: Iterable[AnswerRecord], questions: Iterable[Question],
                 store: ResultStore, metrics: Sequence[str],
                 judge_model: str = DEFAULT_JUDGE_MODEL,
                 fallback: Mapping[str, str] | None = None) -> Any:
    """A pandas DataFrame: answer fields, `kind`, and per metric `<metric>` (score or NaN) and
    `<metric>_status` ("ok", "none" for a non-numeric judge answer, "failed", "pending", or
    "no_prompt")."""
    import pandas as pd

    by_id = questions_by_id(questions)
    rows = []
    for a in answers:
        q = by_id.get(a.question_id)
        if q is None:
            raise unknown_question(a)
        row: dict[str, Any] = {c: getattr(a, c) for c in ANSWER_COLUMNS}
        row["kind"] = q.kind
        for metric, task in answer_tasks(a, q, metrics, judge_model, fallback).items():
            score, status = math.nan, "no_prompt"
            if task is not None:
                rec = store.get(task.key)
                if rec is None:
                    status = "pending"
                elif rec.get("status") != STATUS_OK:
                    status = "failed"
                elif rec.get("score") is None:
                    status = "none"
                else:
                    score, status = float(rec["score"]), "ok"
            row[metric] = score
            row[f"{metric}_status"] = status
        rows.append(row)
    columns = list(ANSWER_COLUMNS) + ["kind"]
    for m in metrics:
        columns += [m, f"{m}_status"]
    return pd.DataFrame(rows, columns=columns)
