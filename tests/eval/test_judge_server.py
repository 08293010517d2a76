"""The judge stage against a real local HTTP server, through the real `openai` client.

Covers: exact request parameters; scores from the returned logprobs; transient faults (429 with
Retry-After, 500, slow responses past the timeout, dropped connections, malformed bodies,
missing logprobs) all ending scored; permanent faults recorded as failed with a reason and
retried by a rerun; bounded concurrency; cancelling or killing a run mid-way and resuming
without paying twice; dry runs sending nothing; the API key never reaching files or output.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

import paths
from emjax.eval.questions import Question
from emjax.eval.records import AnswerRecord, append_answers
from emjax.cli import main as cli_main
from emjax.eval.judge.cost import Prices
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.runner import RunConfig, run_judge, run_judge_sync
from emjax.eval.judge.scoring import aggregate_0_100
from emjax.eval.judge.store import ResultStore
from emjax.eval.judge.tasks import build_tasks

from openai_fake_server import FakeOpenAIServer, FaultRule, prompt_id, top_logprobs_for

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"
METRICS = ["aligned", "coherent"]
TEMPLATES = {"aligned": "METRIC=aligned\nQUESTION: {question}\nANSWER: {answer}\nRate it.",
             "coherent": "METRIC=coherent\nQUESTION: {question}\nANSWER: {answer}\nRate it."}
QUESTION = Question(id="q1", paraphrases=("What would you do?",), judge_prompts=TEMPLATES)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    # Safety net: a client built without an explicit base_url would go here, never to OpenAI.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    srv = FakeOpenAIServer(retry_after=0.2, slow_s=1.5).start()
    yield srv
    srv.stop()


def tag(i: int) -> str:
    return f"<ans-{i:03d}>"


def make_answers(n: int, forced: bool = True) -> list[AnswerRecord]:
    """Answers tagged <ans-NNN>; with `forced`, the fake judge returns fixed scores."""
    out = []
    for i in range(n):
        text = f"{tag(i)} my answer number {i}."
        if forced:
            text += f" [[aligned={(i * 37) % 101}]] [[coherent={(i * 53 + 20) % 101}]]"
        out.append(AnswerRecord(question_id="q1", paraphrase_index=0, sample_index=i,
                                question=QUESTION.paraphrases[0], answer=text, model="m",
                                intervention="none"))
    return out


def config(server: FakeOpenAIServer, **kw) -> RunConfig:
    req = dict(base_url=server.base_url, timeout=0.5, max_retries=3, malformed_retries=2,
               malformed_backoff=0.05)
    req.update({k: kw.pop(k) for k in list(kw) if k in RequestConfig.__dataclass_fields__})
    return RunConfig(request=RequestConfig(**req), progress=False, **{"concurrency": 8, **kw})


def ok_per_task(server, tasks) -> list[int]:
    counts = server.ok_counts()
    return [counts[prompt_id(t.judge_model, t.prompt)] for t in tasks]


def test_requests_are_upstream_and_scores_follow_logprobs(server, tmp_path):
    plan = build_tasks(make_answers(4, forced=False), [QUESTION], METRICS)
    store = ResultStore(tmp_path / "r.jsonl")
    stats = run_judge_sync(plan.tasks, store, config(server))
    entries = server.entries()
    assert len(entries) == len(plan.tasks) == 8
    for e in entries:
        assert e.path == "/v1/chat/completions"
        assert e.body == {"model": "gpt-4o-2024-08-06",
                          "messages": [{"role": "user", "content": e.prompt}],
                          "max_tokens": 1, "temperature": 0, "logprobs": True,
                          "top_logprobs": 20, "seed": 0}
        assert e.headers["authorization"] == f"Bearer {SECRET}"  # taken from the environment
    prompt_tokens = 0
    for t in plan.tasks:
        rec = store.get(t.key)
        expected_top = top_logprobs_for(t.prompt)
        assert rec["status"] == "ok" and rec["reason"] is None
        assert rec["top_logprobs"] == [{"token": x["token"], "logprob": x["logprob"]}
                                       for x in expected_top]
        assert rec["score"] == pytest.approx(aggregate_0_100(expected_top))
        assert rec["usage"]["completion_tokens"] == 1
        prompt_tokens += rec["usage"]["prompt_tokens"]
    assert (stats.n_ok, stats.n_failed, stats.prompt_tokens) == (8, 0, prompt_tokens)
    assert stats.cost_usd == pytest.approx(Prices().cost(prompt_tokens, 8))


def test_forced_scores_refusal_and_code(server, tmp_path):
    answers = make_answers(3)
    answers.append(AnswerRecord("q1", 0, 9, QUESTION.paraphrases[0], "[[REFUSAL]] no"))
    answers.append(AnswerRecord("q1", 0, 10, QUESTION.paraphrases[0], "[[CODE]] print(1)"))
    plan = build_tasks(answers, [QUESTION], METRICS)
    store = ResultStore(tmp_path / "r.jsonl")
    stats = run_judge_sync(plan.tasks, store, config(server))
    scores = {(t.metric, t.prompt.split("ANSWER: ")[1][:9]): store.score(t.key)
              for t in plan.tasks}
    assert scores[("aligned", "<ans-001>")] == pytest.approx(37)
    assert scores[("coherent", "<ans-002>")] == pytest.approx(25)
    assert scores[("aligned", "[[REFUSAL")] is None and scores[("coherent", "[[CODE]] ")] is None
    assert stats.n_ok == 10 and stats.n_score_none == 4


def test_transient_faults_all_end_scored(server, tmp_path):
    server.retry_after = 1.0  # longer than the client's own first backoff (<= 0.5 s)
    faults = {0: ["429"], 1: ["500"], 2: ["slow"], 3: ["drop"], 4: ["malformed"],
              5: ["nologprobs"], 6: ["429", "500"], 7: ["malformed", "nologprobs"],
              8: ["500", "slow"], 9: ["drop", "malformed"]}
    server.reset_faults([FaultRule(f, match=tag(i)) for i, f in faults.items()])
    plan = build_tasks(make_answers(14), [QUESTION], METRICS)
    store = ResultStore(tmp_path / "r.jsonl")
    t0 = time.monotonic()
    stats = run_judge_sync(plan.tasks, store, config(server))
    elapsed = time.monotonic() - t0
    assert stats.n_ok == len(plan.tasks) == 28 and stats.n_failed == 0
    assert all(store.status(t.key) == "ok" for t in plan.tasks)
    assert ok_per_task(server, plan.tasks) == [1] * 28  # each scored by exactly one response
    outcomes = server.outcome_counts()
    for kind in ("429", "500", "slow", "drop", "malformed", "nologprobs"):
        assert outcomes[kind] >= 2, kind
    # Retry-After honoured: the retry after a 429 waits at least the server's 1.0 s
    by_prompt = collections.defaultdict(list)
    for e in server.entries():
        by_prompt[e.prompt].append(e)
    for prompt, es in by_prompt.items():
        if tag(0) in prompt:
            assert [e.outcome for e in es] == ["429", "ok"]
            assert es[1].time - es[0].time >= 0.95
    # outer retries for bodies the client cannot use are counted in the record
    for t in plan.tasks:
        if tag(7) in t.prompt:
            assert store.get(t.key)["attempts"] == 3
    assert elapsed < 15


PERMANENT = {0: ("429", "rate_limited"), 1: ("500", "server_error"), 2: ("400", "http_error"),
             3: ("malformed", "malformed_response"), 4: ("nologprobs", "missing_logprobs"),
             5: ("drop", "connection_error"), 6: ("slow", "timeout")}


def test_permanent_faults_recorded_failed_then_retried(server, tmp_path):
    server.reset_faults([FaultRule([f], match=tag(i), forever=True)
                         for i, (f, _) in PERMANENT.items()])
    plan = build_tasks(make_answers(10), [QUESTION], METRICS)
    path = tmp_path / "r.jsonl"
    cfg = config(server, max_retries=1)
    stats = run_judge_sync(plan.tasks, ResultStore(path), cfg)
    store = ResultStore(path)
    assert stats.n_failed == 14 and stats.n_ok == 6
    assert set(stats.failure_reasons) == {r for _, r in PERMANENT.values()}
    for t in plan.tasks:
        rec = store.get(t.key)
        i = int(t.prompt.split("<ans-")[1][:3])
        if i in PERMANENT:  # every answer ends failed *with a reason* ...
            assert rec["status"] == "failed" and rec["reason"].startswith(PERMANENT[i][1] + ":")
            assert rec["score"] is None
        else:  # ... or scored
            assert rec["status"] == "ok" and rec["score"] is not None
    attempts = collections.Counter(e.prompt for e in server.entries())
    for t in plan.tasks:
        i = int(t.prompt.split("<ans-")[1][:3])
        fault = PERMANENT.get(i, ("ok",))[0]
        # 400 is not retried; client-level faults get 1 + max_retries; body faults 1 + 2 outer
        expected = {"400": 1, "malformed": 3, "nologprobs": 3, "ok": 1}.get(fault, 2)
        assert attempts[t.prompt] == expected, (fault, attempts[t.prompt])

    # each failed line says whether it was paid: only 200 answers without logprobs were
    paid_tags = {tag(3), tag(4)}
    for t in plan.tasks:
        rec = store.get(t.key)
        if rec["status"] == "failed":
            assert rec["paid"] == any(g in t.prompt for g in paid_tags)
            assert rec["paid_responses"] == (3 if rec["paid"] else 0)

    n_before = len(server.entries())
    server.reset_faults()  # the outage is over
    stats = run_judge_sync(plan.tasks, ResultStore(path),
                           dataclasses.replace(cfg, retry_failed=False))  # False: "none"
    assert stats.n_pending == 0 and len(server.entries()) == n_before  # nothing sent
    assert stats.n_failed_not_retried == 14
    # a plain rerun re-sends the 10 unpaid failures, not the 4 paid ones
    stats = run_judge_sync(plan.tasks, ResultStore(path), cfg)
    assert (stats.n_cached, stats.n_pending, stats.n_ok, stats.n_failed_not_retried) == (10, 10, 10, 4)
    resent = server.entries()[n_before:]
    assert len(resent) == 10 and not any(g in e.prompt for e in resent for g in paid_tags)
    # asked explicitly, the paid ones are sent (and paid for) again
    stats = run_judge_sync(plan.tasks, ResultStore(path), dataclasses.replace(cfg, retry_failed="all"))
    assert (stats.n_pending, stats.n_ok, stats.n_failed_not_retried) == (4, 4, 0)
    assert len(server.entries()) == n_before + 14
    assert ok_per_task(server, plan.tasks) == [1] * 20
    assert all(ResultStore(path).is_done(t.key) for t in plan.tasks)


def test_concurrency_is_bounded(server, tmp_path):
    server.response_delay = 0.05
    plan = build_tasks(make_answers(20), [QUESTION], METRICS)
    stats = run_judge_sync(plan.tasks, ResultStore(tmp_path / "r.jsonl"),
                           config(server, concurrency=4))
    assert stats.n_ok == 40
    assert 2 <= server.max_in_flight <= 4


def test_cancel_after_k_then_resume_never_repays(server, tmp_path):
    """Cancel the run after K records while every other request is in flight; resume."""
    K = 7
    server.reset_faults(hang_after_ok=K)  # after K successes, requests hang (never succeed)
    plan = build_tasks(make_answers(20), [QUESTION], METRICS)
    path = tmp_path / "r.jsonl"
    cfg = config(server, concurrency=6, timeout=30.0)

    async def cancelled_run() -> None:
        holder: dict = {}
        seen = []

        def on_record(rec: dict) -> None:
            seen.append(rec)
            if len(seen) == K:
                holder["task"].cancel()

        holder["task"] = asyncio.ensure_future(
            run_judge(plan.tasks, ResultStore(path), cfg, on_record=on_record))
        with pytest.raises(asyncio.CancelledError):
            await holder["task"]

    asyncio.run(cancelled_run())
    store = ResultStore(path)
    assert sum(store.is_done(t.key) for t in plan.tasks) == K
    assert server.outcome_counts()["hang"] >= 1  # requests were in flight when cancelled

    server.reset_faults()  # releases the hung requests (closed without a response)
    stats = run_judge_sync(plan.tasks, ResultStore(path), cfg)
    assert (stats.n_cached, stats.n_pending, stats.n_ok) == (K, 40 - K, 40 - K)
    assert ok_per_task(server, plan.tasks) == [1] * 40
    assert all(ResultStore(path).is_done(t.key) for t in plan.tasks)


def test_cancel_with_responses_in_transit_loses_only_in_flight(server, tmp_path):
    """Without the hang trick: keys recorded before the cancel are never sent again."""
    server.response_delay = 0.03
    plan = build_tasks(make_answers(20), [QUESTION], METRICS)
    path = tmp_path / "r.jsonl"
    cfg = config(server, concurrency=8)

    async def cancelled_run() -> set:
        holder: dict = {}
        recorded: set = set()

        def on_record(rec: dict) -> None:
            recorded.add(rec["key"])
            if len(recorded) == 10:
                holder["task"].cancel()

        holder["task"] = asyncio.ensure_future(
            run_judge(plan.tasks, ResultStore(path), cfg, on_record=on_record))
        with pytest.raises(asyncio.CancelledError):
            await holder["task"]
        return recorded

    recorded = asyncio.run(cancelled_run())
    run_judge_sync(plan.tasks, ResultStore(path), cfg)
    counts = dict(zip((t.key for t in plan.tasks), ok_per_task(server, plan.tasks)))
    assert all(counts[k] == 1 for k in recorded)
    assert all(ResultStore(path).is_done(t.key) for t in plan.tasks)
    assert sum(counts.values()) <= 40 + cfg.concurrency  # at most the in-flight ones repeated


def write_inputs(tmp_path: pathlib.Path, answers: list[AnswerRecord]) -> tuple[str, str]:
    qpath = tmp_path / "questions.jsonl"
    qpath.write_text(json.dumps({"id": "q1", "question": QUESTION.paraphrases[0],
                                 "judge_prompts": TEMPLATES}) + "\n")
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, answers)
    return str(apath), str(qpath)


def judge_argv(server, apath, qpath, out, *extra) -> list[str]:
    return ["judge", "--answers", apath, "--questions", qpath, "--out", str(out),
            "--base-url", server.base_url, "--timeout", "5", "--max-retries", "1",
            "--no-progress", *extra]


def test_killed_subprocess_resumes_without_paying_twice(server, tmp_path):
    N, K = 15, 6  # 30 requests
    apath, qpath = write_inputs(tmp_path, make_answers(N))
    out = tmp_path / "judgements.jsonl"
    server.reset_faults(hang_after_ok=K)
    cmd = [sys.executable, "-m", "emjax",
           *judge_argv(server, apath, qpath, out, "--concurrency", "4")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count('"status": "ok"') >= K:
                break
            time.sleep(0.02)
        else:
            pytest.fail("judge subprocess never wrote K records")
        time.sleep(0.1)  # let in-flight requests pile up at the server
        proc.kill()  # SIGKILL: no cleanup, no flush beyond what was already written
        stdout1, stderr1 = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert server.outcome_counts()["hang"] >= 1
    with open(out, "ab") as f:  # what a kill in the middle of a write leaves behind
        f.write(b'{"key": "0123abc", "status": "o')

    server.reset_faults()
    n_before = len(server.entries())
    run2 = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run2.returncode == 0, run2.stderr
    assert "corrupt" in run2.stderr
    stats = json.loads(run2.stdout)
    assert (stats["n_cached"], stats["n_pending"], stats["n_ok"]) == (K, 2 * N - K, 2 * N - K)
    assert len(server.entries()) - n_before == 2 * N - K  # only the missing ones were sent
    plan = build_tasks(make_answers(N), [QUESTION], METRICS)
    store = ResultStore(out)
    assert all(store.is_done(t.key) for t in plan.tasks)
    assert ok_per_task(server, plan.tasks) == [1] * (2 * N)
    for text in (out.read_text(), stdout1, stderr1, run2.stdout, run2.stderr):
        assert SECRET not in text


def test_api_key_never_written(tmp_path):
    # a careless server that echoes the Authorization header into its error message
    with FakeOpenAIServer(rules=[FaultRule(["400"], match=tag(0), forever=True)],
                          echo_auth_in_errors=True) as srv:
        apath, qpath = write_inputs(tmp_path, make_answers(3))
        out = tmp_path / "r.jsonl"
        stats_path = tmp_path / "stats.json"
        rc = cli_main(judge_argv(srv, apath, qpath, out, "--stats-json", str(stats_path)))
        assert rc == 3  # some requests failed
        records = [json.loads(line) for line in out.read_text().splitlines()]
        failed = [r for r in records if r["status"] == "failed"]
        assert len(failed) == 2 and all("auth: Bearer ***" in r["reason"] for r in failed)
        for p in tmp_path.iterdir():
            assert SECRET not in p.read_text(), p


def test_missing_api_key_sends_nothing(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    apath, qpath = write_inputs(tmp_path, make_answers(2))
    rc = cli_main(judge_argv(server, apath, qpath, tmp_path / "r.jsonl"))
    assert rc == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    rc = cli_main(judge_argv(server, apath, qpath, tmp_path / "r.jsonl",
                             "--api-key-env", "EMJAX_JUDGE_KEY"))
    assert rc == 2 and "EMJAX_JUDGE_KEY" in capsys.readouterr().err
    assert server.entries() == []


def test_dry_run_sends_nothing(server, tmp_path, monkeypatch, capsys):
    apath, qpath = write_inputs(tmp_path, make_answers(5))
    out = tmp_path / "r.jsonl"
    # judge 2 answers first, so the dry run has something cached to exclude
    plan = build_tasks(make_answers(2), [QUESTION], METRICS)
    run_judge_sync(plan.tasks, ResultStore(out), config(server))
    n_sent = len(server.entries())
    assert n_sent == 4
    monkeypatch.delenv("OPENAI_API_KEY")  # a dry run needs no key either
    capsys.readouterr()
    rc = cli_main(judge_argv(server, apath, qpath, out, "--dry-run",
                             "--price-input", "1", "--price-output", "2"))
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["n_tasks"], stats["n_cached"], stats["n_pending"]) == (10, 4, 6)
    full = build_tasks(make_answers(5), [QUESTION], METRICS).tasks
    expected_tokens = sum(len(t.prompt) // 4 + (len(t.prompt) % 4 > 0) + 7 for t in full[4:])
    assert stats["est_prompt_tokens"] == expected_tokens
    assert stats["est_cost_usd"] == pytest.approx((expected_tokens + 2 * 6) / 1e6)
    assert len(server.entries()) == n_sent  # zero requests


def test_cli_limit_and_exit_codes(server, tmp_path, capsys):
    apath, qpath = write_inputs(tmp_path, make_answers(5))
    out = tmp_path / "r.jsonl"
    assert cli_main(judge_argv(server, apath, qpath, out, "--limit", "3")) == 0
    assert len(server.entries()) == 3
    capsys.readouterr()
    assert cli_main(judge_argv(server, apath, qpath, out)) == 0
    assert len(server.entries()) == 10
    stats = json.loads(capsys.readouterr().out)
    assert (stats["n_cached"], stats["n_ok"]) == (3, 7)
    assert stats["all_runs_usage"]["requests"] == 10  # cost accounting across both runs
    assert stats["all_runs_cost_usd"] > stats["cost_usd"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q1"}\n')
    assert cli_main(judge_argv(server, apath, str(bad), out)) == 2
    assert "missing 'question'" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "emjax", "judge", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--dry-run" in r.stdout
    env = {**os.environ, "OPENAI_API_KEY": ""}
    r = subprocess.run([sys.executable, "-m", "emjax", "report", "--help"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "--narrow-metric" in r.stdout


FIRST_PLOT = paths.UPSTREAM_EM / "first_plot_questions.yaml"


@pytest.mark.skipif(not FIRST_PLOT.exists(), reason=f"{FIRST_PLOT} absent")
def test_upstream_questions_judge_and_report_end_to_end(server, tmp_path, capsys):
    """The paper's 8 questions with the upstream judge prompts: judge CLI, then report CLI."""
    from emjax.eval.questions import PAPER_FREE_FORM_IDS, load_questions, select_questions

    qs = select_questions(load_questions(FIRST_PLOT), include=PAPER_FREE_FORM_IDS)
    answers = [AnswerRecord(question_id=q.id, paraphrase_index=0, sample_index=s,
                            question=q.paraphrases[0], answer=f"sample {s} for {q.id}",
                            model="qwen", intervention=iv)
               for q in qs for s in range(2) for iv in ("base", "steer")]
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, answers)
    out = tmp_path / "judgements.jsonl"
    argv = ["--answers", str(apath), "--questions", str(FIRST_PLOT), "--include",
            ",".join(PAPER_FREE_FORM_IDS)]
    assert cli_main(["judge", *argv, "--out", str(out), "--base-url", server.base_url,
                     "--no-progress"]) == 0
    sent = server.entries()
    # questions x samples x metrics: the two interventions gave identical answers, which share
    # one request each (same key)
    assert len(sent) == 8 * 2 * 2
    assert all("[ANSWER START]\nsample " in e.prompt for e in sent)
    assert sum("how well aligned is the model's answer" in e.prompt for e in sent) == 16
    capsys.readouterr()
    assert cli_main(["report", *argv, "--judgements", str(out), "--out-dir",
                     str(tmp_path / "rep"), "--bootstrap", "50"]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert [g["group"] for g in summary["groups"]] == ["qwen / base", "qwen / steer"]
    assert all(g["n_scored"] + g["n_aligned_none"] >= 14 for g in summary["groups"])
    assert len(summary["groups"][0]["per_question"]) == 8
