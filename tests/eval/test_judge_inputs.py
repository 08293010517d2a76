"""The judge stage's input files, driven through the CLI against the real local server.

Bad answers files are errors that name the file and line, and nothing is sent; only crash damage
(a line cut off by an interrupted write) is skipped, with a warning naming file and line. An
unknown question id names the answers file and line. Zero answers to judge is an error (exit 2).
"""

from __future__ import annotations

import json
import logging

import pytest

from emjax.cli import main as cli_main
from emjax.eval.judge.join import scores_table
from emjax.eval.judge.stage import NothingToJudgeError, judge
from emjax.eval.selection import AnswerSelection
from emjax.eval.judge.store import ResultStore
from emjax.eval.judge.tasks import UnknownQuestionError
from emjax.eval.questions import Question
from emjax.eval.records import (CUT_LINE_MARK, AnswerRecord, RecordFormatError, append_answers,
                                read_answers)

from openai_fake_server import FakeOpenAIServer

TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-inputs")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never the real API


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def answer(i: int, qid: str = "q1") -> AnswerRecord:
    return AnswerRecord(question_id=qid, paraphrase_index=0, sample_index=i, question="Hi?",
                        answer=f"answer {i} [[aligned=50]] [[coherent=60]]", model="m")


def answer_line(i: int, qid: str = "q1") -> str:
    return json.dumps(answer(i, qid).to_json()) + "\n"


@pytest.fixture
def qpath(tmp_path):
    p = tmp_path / "questions.jsonl"
    p.write_text(json.dumps({"id": "q1", "question": "Hi?", "judge_prompts": TEMPLATES}) + "\n")
    return str(p)


def run_cli(server, apath, qpath, out, *extra) -> int:
    return cli_main(["judge", "--answers", str(apath), "--questions", qpath, "--out", str(out),
                     "--base-url", server.base_url, "--timeout", "5", "--max-retries", "0",
                     "--no-progress", *extra])


@pytest.mark.parametrize("bad", ["this is not json", '{"question_id": "q1", "paraph',
                                 "[1, 2, 3]", answer_line(9).strip() + answer_line(8).strip()])
def test_malformed_middle_line_is_an_error(server, tmp_path, qpath, capsys, bad):
    apath = tmp_path / "answers.jsonl"
    apath.write_text(answer_line(0) + bad + "\n" + answer_line(1))
    with pytest.raises(RecordFormatError, match=rf"{apath}: line 2: not a JSON object"):
        read_answers(apath)
    assert run_cli(server, apath, qpath, tmp_path / "r.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{apath}: line 2" in err
    assert server.entries() == [] and not (tmp_path / "r.jsonl").exists()


def test_partial_last_line_is_skipped_with_a_warning(server, tmp_path, qpath, caplog):
    apath = tmp_path / "answers.jsonl"
    apath.write_text(answer_line(0) + answer_line(1) + '{"question_id": "q1", "paraph')
    with caplog.at_level(logging.WARNING):
        assert run_cli(server, apath, qpath, tmp_path / "r.jsonl") == 0
    assert f"{apath}: line 3 is not a JSON object" in caplog.text
    assert len(server.entries()) == 4  # the two complete answers x two metrics


def test_cut_line_repaired_by_append_is_skipped_anywhere(tmp_path, caplog):
    apath = tmp_path / "answers.jsonl"
    apath.write_text(answer_line(0) + '{"question_id": "q1", "paraph')  # killed mid-write
    append_answers(apath, [answer(1)])  # a resumed writer appends after it
    assert apath.read_bytes().split(b"\n")[1].endswith(CUT_LINE_MARK)
    got = read_answers(apath)
    assert [a.sample_index for a in got] == [0, 1]
    assert f"{apath}: line 2 is not a JSON object" in caplog.text
    # a complete record that only lost its newline is kept, not marked
    bpath = tmp_path / "b.jsonl"
    bpath.write_text(answer_line(0) + answer_line(1).rstrip("\n"))
    append_answers(bpath, [answer(2)])
    assert CUT_LINE_MARK not in bpath.read_bytes()
    assert [a.sample_index for a in read_answers(bpath)] == [0, 1, 2]


def test_unknown_question_id_names_file_and_line(server, tmp_path, qpath, capsys):
    apath = tmp_path / "answers.jsonl"
    apath.write_text(answer_line(0) + "\n" + answer_line(1) + answer_line(2, qid="nope"))
    assert run_cli(server, apath, qpath, tmp_path / "r.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{apath}: line 4: answer refers to question id 'nope'" in err
    assert server.entries() == []
    # the report's join names it too
    q = Question(id="q1", paraphrases=("Hi?",), judge_prompts=TEMPLATES)
    with pytest.raises(UnknownQuestionError, match=rf"{apath}: line 4: .*'nope'"):
        scores_table(read_answers(apath), [q], ResultStore(tmp_path / "r.jsonl"), ["aligned"])


def test_empty_answers_file_is_an_error(server, tmp_path, qpath, capsys, caplog):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run_cli(server, empty, qpath, tmp_path / "r.jsonl") == 2
    assert f"no answers to judge in ['{empty}']: the files are empty" in capsys.readouterr().err
    assert run_cli(server, empty, qpath, tmp_path / "r.jsonl", "--dry-run") == 2
    # a selection that keeps nothing
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, [answer(0)])
    assert run_cli(server, apath, qpath, tmp_path / "r.jsonl", "--exclude", "q*") == 2
    assert "keeps none of them" in capsys.readouterr().err
    with pytest.raises(NothingToJudgeError, match="no answers to judge"):
        judge(AnswerSelection([str(empty)], [qpath]), str(tmp_path / "r.jsonl"))
    assert server.entries() == []
    # one empty file among others: a warning naming it, and the run goes on
    with caplog.at_level(logging.WARNING):
        assert run_cli(server, apath, qpath, tmp_path / "r.jsonl", "--answers", str(empty)) == 0
    assert f"{empty}: no answers in this file" in caplog.text
    assert len(server.entries()) == 2


def test_no_judge_prompt_for_any_metric_is_an_error(server, tmp_path, qpath, capsys):
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, [answer(0)])
    assert run_cli(server, apath, qpath, tmp_path / "r.jsonl", "--metrics", "medical") == 2
    assert "--metrics: no judge template for metric 'medical'" in capsys.readouterr().err
    assert server.entries() == []


def test_the_run_config_request_is_the_one_sent(server, tmp_path, qpath):
    from emjax.eval.judge.request import RequestConfig
    from emjax.eval.judge.runner import RunConfig
    from emjax.eval.judge.stage import JudgeModelMismatchError
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, [answer(0)])
    sel = AnswerSelection(answers=[str(apath)], questions=[qpath])
    run = RunConfig(request=RequestConfig(base_url=server.base_url, timeout=5, max_retries=0), progress=False)
    out = tmp_path / "r.jsonl"
    # its base URL was dropped for the environment's (nothing listens there)
    stats = judge(sel, str(out), judge_model="judge-x", run=run)
    assert stats["n_ok"] == 2 and {e.model for e in server.entries()} == {"judge-x"}
    assert {r["judge_model"] for r in map(json.loads, out.read_text().splitlines())} == {"judge-x"}
    other = RunConfig(request=RequestConfig(model="judge-y", base_url=server.base_url), progress=False)
    with pytest.raises(JudgeModelMismatchError, match="'judge-y' while the results are keyed and labelled 'judge-x'"):
        judge(sel, str(tmp_path / "r2.jsonl"), judge_model="judge-x", run=other)
    assert not (tmp_path / "r2.jsonl").exists() and len(server.entries()) == 2
