"""Judge keys, task building, the results store, cost and dry-run planning (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from emjax.eval.questions import Question
from emjax.eval.records import AnswerRecord
from emjax.eval.judge.cost import Prices, estimate_prompt_tokens
from emjax.eval.judge.runner import RunConfig, dry_run, make_record, pending_tasks
from emjax.eval.judge.request import Fetched
from emjax.eval.judge.store import ResultStore
from emjax.eval.judge.tasks import (UnknownQuestionError, build_tasks, fallback_templates,
                               judge_key, load_judge_prompts)

TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}


def q(qid="q1", prompts=TEMPLATES):
    return Question(id=qid, paraphrases=("Hi?",), judge_prompts=dict(prompts))


def a(i, qid="q1", text=None, model="m"):
    return AnswerRecord(question_id=qid, paraphrase_index=0, sample_index=i, question="Hi?",
                        answer=text if text is not None else f"answer {i}", model=model)


def test_judge_key_depends_on_every_part():
    base = judge_key("gpt-4o-2024-08-06", "aligned", "P", "A")
    assert len(base) == 64 and base == judge_key("gpt-4o-2024-08-06", "aligned", "P", "A")
    assert len({base, judge_key("gpt-4o", "aligned", "P", "A"),
                judge_key("gpt-4o-2024-08-06", "coherent", "P", "A"),
                judge_key("gpt-4o-2024-08-06", "aligned", "P2", "A"),
                judge_key("gpt-4o-2024-08-06", "aligned", "P", "A2")}) == 5
    # unambiguous boundaries
    assert judge_key("m", "a|b", "c", "d") != judge_key("m", "a", "b|c", "d")


def test_build_tasks_dedupes_identical_content():
    # two models gave the same answer: one request per metric, not two
    plan = build_tasks([a(0, model="x"), a(0, model="y"), a(1)], [q()], ["aligned", "coherent"])
    assert plan.n_pairs == 6 and len(plan.tasks) == 4
    t = plan.tasks[0]
    assert t.prompt == "METRIC=aligned\nQ: Hi?\nA: answer 0"
    assert t.key == judge_key("gpt-4o-2024-08-06", "aligned", t.prompt, "answer 0")


def test_build_tasks_missing_prompt_and_fallback(caplog):
    only_aligned = q("q2", {"aligned": TEMPLATES["aligned"]})
    plan = build_tasks([a(0, "q2")], [only_aligned], ["aligned", "coherent"])
    assert len(plan.tasks) == 1 and plan.missing_prompts == {("q2", "coherent"): 1}
    assert "no judge prompt for metric 'coherent'" in caplog.text
    fb = fallback_templates([only_aligned, q("q1")])
    assert fb == TEMPLATES  # first item carrying each metric wins
    plan = build_tasks([a(0, "q2")], [only_aligned], ["aligned", "coherent"], fallback=fb)
    assert len(plan.tasks) == 2 and not plan.missing_prompts


def test_build_tasks_unknown_question():
    with pytest.raises(UnknownQuestionError, match="'nope'"):
        build_tasks([a(0, "nope")], [q()], ["aligned"])


def test_load_judge_prompts_mapping_and_question_file(tmp_path):
    p = tmp_path / "judges.yaml"
    p.write_text(textwrap.dedent("""\
        medical_advice: |-
          Rate {question} / {answer}
        """))
    assert load_judge_prompts(str(p)) == {"medical_advice": "Rate {question} / {answer}"}
    p2 = tmp_path / "q.jsonl"
    p2.write_text(json.dumps({"id": "x", "question": "?", "judge_prompts": TEMPLATES}) + "\n")
    assert load_judge_prompts(str(p2)) == TEMPLATES


def ok_record(task, score_tokens=(("50", -0.1),)):
    fetched = Fetched(ok=True, top_logprobs=[{"token": t, "logprob": lp} for t, lp in score_tokens],
                      content="50", usage={"prompt_tokens": 100, "completion_tokens": 1})
    return make_record(task, fetched, RunConfig())


def test_store_resume_semantics(tmp_path):
    path = tmp_path / "r.jsonl"
    plan = build_tasks([a(i) for i in range(3)], [q()], ["aligned"])
    t0, t1, t2 = plan.tasks
    store = ResultStore(path)
    store.append(ok_record(t0))
    store.append(make_record(t1, Fetched(ok=False, reason="timeout: x"), RunConfig()))
    re = ResultStore(path)  # a new process reading the file
    assert re.status(t0.key) == "ok" and re.score(t0.key) == pytest.approx(50)
    assert re.status(t1.key) == "failed" and re.get(t1.key)["reason"] == "timeout: x"
    assert re.status(t2.key) is None
    assert [t.key for t in pending_tasks(plan.tasks, re)] == [t1.key, t2.key]
    assert [t.key for t in pending_tasks(plan.tasks, re, retry_failed=False)] == [t2.key]
    # a later failure line never hides an earlier success
    re.append(make_record(t0, Fetched(ok=False, reason="server_error: x"), RunConfig()))
    assert ResultStore(path).status(t0.key) == "ok"
    # a success after a failure wins
    re.append(ok_record(t1))
    assert ResultStore(path).status(t1.key) == "ok"


def test_store_record_contents(tmp_path):
    (t,) = build_tasks([a(0)], [q()], ["aligned"]).tasks
    rec = ok_record(t, (("80", -0.5), (" 80", -2.0), ("CODE", -3.0)))
    assert rec["status"] == "ok" and rec["score"] == pytest.approx(80)
    assert rec["key"] == t.key and rec["metric"] == "aligned" and rec["question_id"] == "q1"
    assert rec["top_logprobs"][1] == {"token": " 80", "logprob": -2.0}
    assert rec["usage"] == {"prompt_tokens": 100, "completion_tokens": 1}
    refusal = ok_record(t, (("REFUSAL", -0.05), ("0", -4.0)))
    assert refusal["status"] == "ok" and refusal["score"] is None
    assert "numeric mass" in refusal["reason"]


def test_store_tolerates_corrupt_last_line(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    plan = build_tasks([a(i) for i in range(2)], [q()], ["aligned"])
    store = ResultStore(path)
    store.append(ok_record(plan.tasks[0]))
    with open(path, "ab") as f:
        f.write(b'{"key": "' + plan.tasks[1].key.encode() + b'", "status": "o')  # killed here
    store = ResultStore(path)
    assert [n for n, _ in store.read_report.corrupt] == [2]
    assert "corrupt" in caplog.text
    assert store.is_done(plan.tasks[0].key) and store.status(plan.tasks[1].key) is None
    store.append(ok_record(plan.tasks[1]))
    store = ResultStore(path)
    assert store.is_done(plan.tasks[1].key) and len(store) == 2
    assert len(store.read_report.corrupt) == 1  # still reported, never fatal


def test_cost_and_token_estimate():
    assert Prices().cost(1_000_000, 0) == pytest.approx(2.5)
    assert Prices().cost(0, 1_000_000) == pytest.approx(10.0)
    assert Prices(1.0, 2.0).cost(500_000, 250_000) == pytest.approx(1.0)
    assert estimate_prompt_tokens("x" * 400) == 100 + 7
    assert estimate_prompt_tokens("x" * 401) == 101 + 7


def test_dry_run_counts_exclude_cached(tmp_path):
    plan = build_tasks([a(i) for i in range(5)], [q()], ["aligned", "coherent"])
    store = ResultStore(tmp_path / "r.jsonl")
    store.append(ok_record(plan.tasks[0]))
    store.append(make_record(plan.tasks[1], Fetched(ok=False, reason="x: y"), RunConfig()))
    cfg = RunConfig(prices=Prices(1.0, 2.0))
    d = dry_run(plan.tasks, store, cfg)
    assert (d.n_tasks, d.n_cached, d.n_pending, d.n_failed_to_retry) == (10, 1, 9, 1)
    expected_in = sum(estimate_prompt_tokens(t.prompt) for t in plan.tasks[1:])
    assert d.est_prompt_tokens == expected_in and d.est_completion_tokens == 9
    assert d.est_cost_usd == pytest.approx((expected_in * 1.0 + 9 * 2.0) / 1e6)
    d2 = dry_run(plan.tasks, store, RunConfig(retry_failed=False))
    assert d2.n_pending == 8


def test_judge_and_report_do_not_import_jax():
    """The judge stage runs on machines without accelerators: no module of emjax.eval imports jax."""
    probe = "import sys, emjax; print('jax' in sys.modules)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True,
                      text=True).stdout.strip() == "True":
        pytest.skip("the emjax package itself imports jax; judge modules checked separately")
    code = textwrap.dedent("""\
        import importlib, pkgutil, sys
        import emjax.eval
        for m in pkgutil.walk_packages(emjax.eval.__path__, "emjax.eval."):  # every module of the package
            importlib.import_module(m.name)
        from emjax.cli import build_parser
        build_parser()
        print(sorted(m for m in sys.modules if m == "jax" or m.startswith("jax.")))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schema1_lines_paid_inferred_and_usage_per_request(tmp_path):
    """Lines written before the paid fields: the old outer loop returned at once on an API
    error, so every attempt but such a final error was a billed 200."""
    from emjax.eval.judge.store import paid_responses, usage_totals

    plan = build_tasks([a(i) for i in range(4)], [q()], ["aligned"])
    usage = {"prompt_tokens": 100, "completion_tokens": 1}
    old = [  # schema 1: no paid fields, no request_id
        {"key": plan.tasks[0].key, "status": "ok", "attempts": 3, "usage": usage, "schema": 1},
        {"key": plan.tasks[1].key, "status": "failed", "attempts": 3, "usage": None,
         "reason": "missing_logprobs: x (after 3 attempts)", "schema": 1},
        {"key": plan.tasks[2].key, "status": "failed", "attempts": 2, "usage": None,
         "reason": "server_error: HTTP 500", "schema": 1},
        {"key": plan.tasks[3].key, "status": "failed", "attempts": 1, "usage": None,
         "reason": "connection_error: x", "schema": 1},
    ]
    assert [paid_responses(r) for r in old] == [3, 3, 1, 0]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old + old[1:2]))  # one line twice
    store = ResultStore(path)
    assert [store.was_paid(t.key) for t in plan.tasks] == [True, True, True, False]
    assert [t.key for t in pending_tasks(plan.tasks, store)] == [plan.tasks[3].key]
    assert [t.key for t in pending_tasks(plan.tasks, store, "all")] == [t.key for t in plan.tasks[1:]]
    assert pending_tasks(plan.tasks, store, "none") == []
    assert usage_totals(path) == {"requests": 7, "prompt_tokens": 100, "completion_tokens": 1,
                                  "requests_without_usage": 6, "http_requests": None,
                                  "result_lines": 4}


def test_record_paid_fields(tmp_path):
    (t,) = build_tasks([a(0)], [q()], ["aligned"]).tasks
    ok = ok_record(t)
    assert (ok["paid"], ok["paid_responses"], ok["responses_without_usage"]) == (True, 1, 0)
    unpaid = make_record(t, Fetched(ok=False, reason="server_error: HTTP 500"), RunConfig())
    assert (unpaid["paid"], unpaid["paid_responses"], unpaid["usage"]) == (False, 0, None)
    assert ok["request_id"] != unpaid["request_id"]
