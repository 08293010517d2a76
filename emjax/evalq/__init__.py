"""Evaluation questions (upstream YAML / simple JSONL) and generated-answer records."""

from emjax.evalq.questions import (
    KINDS,
    PAPER_FREE_FORM_IDS,
    AnswerRecord,
    JsonlReadReport,
    Question,
    QuestionFormatError,
    append_answers,
    append_jsonl,
    fill_judge_prompt,
    load_questions,
    load_questions_jsonl,
    load_questions_yaml,
    question_kind,
    read_answers,
    read_jsonl,
    select_questions,
)

__all__ = [
    "KINDS",
    "PAPER_FREE_FORM_IDS",
    "AnswerRecord",
    "JsonlReadReport",
    "Question",
    "QuestionFormatError",
    "append_answers",
    "append_jsonl",
    "fill_judge_prompt",
    "load_questions",
    "load_questions_jsonl",
    "load_questions_yaml",
    "question_kind",
    "read_answers",
    "read_jsonl",
    "select_questions",
]
