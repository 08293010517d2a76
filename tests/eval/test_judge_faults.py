"""Judge faults that cost money or time, against the real local server through the real client.

* A 200 without logprobs is paid: its tokens are counted, its failed line says `paid`, and a
  plain rerun does not send it again (`--retry-failed` does); unpaid failures are re-sent.
* Usage is counted per request (the server's own log is the reference), never per line, and a
  line present twice is counted once.
* An unreachable server fails fast with the base URL in the message, before or during a run,
  and the lines written until then stay.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import socket
import subprocess
import sys

import pytest

from emjax.cli import main as cli_main
from emjax.eval.judge.cost import Prices
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.runner import JudgeServerUnreachableError, RunConfig, run_judge_sync
from emjax.eval.judge.store import ResultStore, RetryPolicyError, usage_totals
from emjax.eval.judge.tasks import build_tasks
from emjax.eval.questions import Question
from emjax.eval.records import AnswerRecord, append_answers

from openai_fake_server import FakeOpenAIServer, FaultRule

SECRET = "sk-test-faults-0123456789"
TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}
QUESTION = Question(id="q1", paraphrases=("Hi?",), judge_prompts=TEMPLATES)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never the real API


@pytest.fixture
def server():
    with FakeOpenAIServer(retry_after=0.05) as srv:
        yield srv


def tag(i: int) -> str:
    return f"<ans-{i:03d}>"


def answers(n: int) -> list[AnswerRecord]:
    return [AnswerRecord(question_id="q1", paraphrase_index=0, sample_index=i, question="Hi?",
                         answer=f"{tag(i)} [[aligned={i}]] [[coherent={i + 1}]]", model="m")
            for i in range(n)]


def config(url: str, **kw) -> RunConfig:
    req = dict(base_url=url, timeout=2.0, max_retries=1, malformed_retries=2,
               malformed_backoff=0.01)
    req.update({k: kw.pop(k) for k in list(kw) if k in RequestConfig.__dataclass_fields__})
    return RunConfig(request=RequestConfig(**req), progress=False, **{"concurrency": 4, **kw})


def server_totals(entries) -> dict:
    """What the server billed: 200 responses and the usage of those with a complete body."""
    paid = [e for e in entries if e.paid]
    return {"requests": len(paid),
            "prompt_tokens": sum(e.usage["prompt_tokens"] for e in paid if e.usage),
            "completion_tokens": sum(e.usage["completion_tokens"] for e in paid if e.usage),
            "requests_without_usage": sum(e.usage is None for e in paid),
            "http_requests": len(entries)}


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/v1"


def write_inputs(tmp_path, n: int) -> tuple[str, str]:
    qpath = tmp_path / "questions.jsonl"
    qpath.write_text(json.dumps({"id": "q1", "question": "Hi?", "judge_prompts": TEMPLATES}) + "\n")
    apath = tmp_path / "answers.jsonl"
    append_answers(apath, answers(n))
    return str(apath), str(qpath)


def judge_cli(url, apath, qpath, out, *extra) -> list[str]:
    return ["judge", "--answers", apath, "--questions", qpath, "--out", str(out),
            "--base-url", url, "--timeout", "2", "--max-retries", "1",
            "--malformed-backoff", "0.01", "--no-progress", *extra]


# -- paid failures ---------------------------------------------------------------------------


def test_200_without_logprobs_is_paid_counted_and_not_resent(server, tmp_path, capsys):
    # answer 0: 200 without logprobs, every time; answer 1: 500, every time; others fine
    server.reset_faults([FaultRule(["nologprobs"], match=tag(0), forever=True),
                         FaultRule(["500"], match=tag(1), forever=True)])
    apath, qpath = write_inputs(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    assert cli_main(judge_cli(server.base_url, apath, qpath, out)) == 3
    stats = json.loads(capsys.readouterr().out)
    billed = server_totals(server.entries())
    # 8 keys (4 answers x 2 metrics): 4 scored at once, 2 (tag 0) answered 3 times without
    # logprobs, 2 (tag 1) refused with 500 twice each (max_retries 1)
    assert billed["requests"] == 4 + 2 * 3
    assert (stats["n_ok"], stats["n_failed"], stats["n_failed_paid"]) == (4, 4, 2)
    assert stats["n_requests"] == billed["requests"]
    assert stats["prompt_tokens"] == billed["prompt_tokens"] > 0
    assert stats["completion_tokens"] == billed["completion_tokens"] == 10
    assert stats["n_http_requests"] == billed["http_requests"] == 4 + 2 * 3 + 2 * 2
    assert stats["cost_usd"] == pytest.approx(Prices().cost(billed["prompt_tokens"], 10))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    by_reason = {r["reason"].split(":")[0]: r for r in lines if r["status"] == "failed"}
    assert by_reason["missing_logprobs"]["paid"] is True
    assert by_reason["missing_logprobs"]["paid_responses"] == 3
    assert by_reason["missing_logprobs"]["usage"]["completion_tokens"] == 3
    assert by_reason["server_error"]["paid"] is False
    assert by_reason["server_error"]["paid_responses"] == 0
    assert all(r["paid"] for r in lines if r["status"] == "ok")

    # the outage is over; a plain rerun re-sends the unpaid (500) failures only
    server.reset_faults()
    n = len(server.entries())
    assert cli_main(judge_cli(server.base_url, apath, qpath, out)) == 3  # 2 answers left failed
    stats = json.loads(capsys.readouterr().out)
    sent = server.entries()[n:]
    assert len(sent) == 2 and all(tag(1) in e.prompt for e in sent)
    assert (stats["n_ok"], stats["n_failed_not_retried"], stats["n_left_failed"]) == (2, 2, 2)
    # asked explicitly, the paid failures are sent (and paid for) again
    n = len(server.entries())
    assert cli_main(judge_cli(server.base_url, apath, qpath, out, "--retry-failed")) == 0
    sent = server.entries()[n:]
    assert len(sent) == 2 and all(tag(0) in e.prompt for e in sent)
    assert json.loads(capsys.readouterr().out)["n_left_failed"] == 0
    assert all(ResultStore(out).is_done(t.key)
               for t in build_tasks(answers(4), [QUESTION], ["aligned", "coherent"]).tasks)


def test_logprobs_that_are_not_log_probabilities(server, tmp_path):
    # answer 0: a NaN logprob every time (JSON cannot store it: it used to stop the run unwritten,
    # so every rerun paid again); answer 1: extra candidates of probability 0 (-Infinity), which
    # weigh nothing; answers 2-3: fine
    server.reset_faults([FaultRule(["nanlogprob"], match=tag(0), forever=True),
                         FaultRule(["zeroprob"], match=tag(1), forever=True)])
    plan = build_tasks(answers(4), [QUESTION], ["aligned"])
    path = tmp_path / "r.jsonl"
    stats = run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url))
    store = ResultStore(path)
    bad, zero, *fine = (store.get(t.key) for t in plan.tasks)
    assert bad["status"] == "failed" and bad["paid"] is True and bad["paid_responses"] == 3
    assert bad["reason"].startswith("malformed_response: logprob nan of token")
    assert zero["status"] == "ok" and zero["score"] == pytest.approx(1)  # [[aligned=1]]
    assert all(math.isfinite(c["logprob"]) for c in zero["top_logprobs"])
    assert [r["score"] for r in fine] == pytest.approx([2, 3])
    assert (stats.n_ok, stats.n_failed) == (3, 1)
    n = len(server.entries())
    stats = run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url))
    assert stats.n_pending == 0 and len(server.entries()) == n  # the paid failure is not re-sent


@pytest.mark.parametrize("page", [b"<html>catch-all</html>", b"[1, 2]", b"not json"])
def test_a_preflight_page_that_is_no_model_list_is_a_server(server, tmp_path, caplog, page):
    # a proxy's catch-all page on /models: a server is there, so the run goes on (it used to stop
    # with the client's AttributeError)
    server.models_page = page
    plan = build_tasks(answers(2), [QUESTION], ["aligned"])
    stats = run_judge_sync(plan.tasks, ResultStore(tmp_path / "r.jsonl"), config(server.base_url))
    assert server.n_model_lists == 1 and stats.n_ok == 2
    assert "something other than a model list" in caplog.text


def test_scores_of_another_rule_already_in_the_file_are_named(server, tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    first = build_tasks(answers(2), [QUESTION], ["aligned"]).tasks
    stats = run_judge_sync(first, ResultStore(path), config(server.base_url))
    assert stats.n_cached_other_scoring == 0
    assert ResultStore(path).get(first[0].key)["scoring"] == {"min_mass": 0.25, "mode": "strict"}
    more = build_tasks(answers(3), [QUESTION], ["aligned"]).tasks
    stats = run_judge_sync(more, ResultStore(path), config(server.base_url, min_mass=0.95, score_mode="upstream"))
    assert (stats.n_cached, stats.n_ok, stats.n_cached_other_scoring) == (2, 1, 2)
    assert "2 score(s) already in the results were computed under another min_mass" in caplog.text
    assert ResultStore(path).get(more[2].key)["scoring"] == {"min_mass": 0.95, "mode": "upstream"}
    stats = run_judge_sync(more[:2], ResultStore(path), config(server.base_url))  # the same rule: no word
    assert stats.n_cached_other_scoring == 0


def test_a_server_without_logprobs_is_given_up_after_eight_tasks(server, tmp_path):
    """Every answer lacks logprobs (a model or server that never returns them): after 8 tasks in a
    row, each paid 3 times, the run stops instead of paying 3 times for every task."""
    from emjax.eval.judge.runner import JudgeRepliesUnusableError
    server.reset_faults([FaultRule(["nologprobs"], match="<ans-", forever=True)])
    plan = build_tasks(answers(30), [QUESTION], ["aligned"])
    path = tmp_path / "r.jsonl"
    with pytest.raises(JudgeRepliesUnusableError, match="answered 8 tasks in a row without usable logprobs"):
        run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url, concurrency=1))
    assert len(server.entries()) == 8 * 3 and len(path.read_text().splitlines()) == 8  # the paid lines kept
    # a reply with logprobs in between resets the count
    server.reset_faults([FaultRule(["nologprobs"], match=tag(i), forever=True) for i in range(30) if i % 5])
    stats = run_judge_sync(plan.tasks, ResultStore(tmp_path / "r2.jsonl"), config(server.base_url, concurrency=1))
    assert (stats.n_ok, stats.n_failed) == (6, 24)


def test_malformed_body_is_paid_without_usage(server, tmp_path):
    server.reset_faults([FaultRule(["malformed"], match=tag(0), forever=True)])
    plan = build_tasks(answers(2), [QUESTION], ["aligned"])
    path = tmp_path / "r.jsonl"
    stats = run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url))
    rec = ResultStore(path).get(plan.tasks[0].key)
    assert rec["status"] == "failed" and rec["paid"] is True
    assert (rec["paid_responses"], rec["responses_without_usage"], rec["usage"]) == (3, 3, None)
    assert (stats.n_requests, stats.n_requests_without_usage) == (4, 3)
    n = len(server.entries())
    stats = run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url))
    assert stats.n_pending == 0 and len(server.entries()) == n  # paid: not re-sent by default


def test_retry_policy_values():
    assert RunConfig(retry_failed=False).retry_failed == "none"  # the old False, same meaning
    assert RunConfig(retry_failed="all").retry_failed == "all"
    with pytest.raises(RetryPolicyError, match="unpaid"):
        RunConfig(retry_failed=True)  # used to mean "all", the old default: refused as ambiguous
    with pytest.raises(RetryPolicyError):
        RunConfig(retry_failed="sometimes")


def test_cli_retry_flags_help_and_exclusion(capsys):
    r = subprocess.run([sys.executable, "-m", "emjax", "judge", "--help"], capture_output=True,
                       text=True, timeout=60)
    help_text = " ".join(r.stdout.split())
    assert "--retry-failed" in help_text and "--no-retry-failed" in help_text
    assert "were not paid" in help_text and "paying for them again" in help_text
    with pytest.raises(SystemExit) as e:
        cli_main(["judge", "--answers", "a", "--questions", "q", "--out", "o",
                  "--retry-failed", "--no-retry-failed"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- usage counted per request ---------------------------------------------------------------


def test_usage_counts_requests_not_lines(server, tmp_path):
    server.reset_faults([
        FaultRule(["429"], match=tag(0)),                      # client retry, then scored
        FaultRule(["malformed", "nologprobs"], match=tag(1)),  # 2 paid bad bodies, then scored
        FaultRule(["nologprobs"], match=tag(2), forever=True),  # 3 paid, failed
        FaultRule(["500"], match=tag(3), forever=True),        # unpaid, failed
    ])
    plan = build_tasks(answers(6), [QUESTION], ["aligned"])
    path = tmp_path / "r.jsonl"
    stats = run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url))
    billed = server_totals(server.entries())
    assert billed["requests"] == 1 + 3 + 3 + 0 + 1 + 1  # per tag 0..5
    assert (stats.n_requests, stats.prompt_tokens, stats.completion_tokens,
            stats.n_requests_without_usage, stats.n_http_requests) == (
        billed["requests"], billed["prompt_tokens"], billed["completion_tokens"],
        billed["requests_without_usage"], billed["http_requests"])
    totals = usage_totals(path)
    assert totals == {**billed, "result_lines": 6}
    # the same lines twice (a careless merge) are the same requests: counted once
    merged = tmp_path / "merged.jsonl"
    shutil.copy(path, merged)
    with open(merged, "a") as f:
        f.write(path.read_text())
    assert usage_totals(merged) == totals
    # a rerun that pays again adds exactly what the server billed again
    server.reset_faults()
    run_judge_sync(plan.tasks, ResultStore(path), config(server.base_url, retry_failed="all"))
    billed = server_totals(server.entries())
    assert usage_totals(path) == {**billed, "result_lines": 8}


def test_cli_all_runs_usage_matches_server(server, tmp_path, capsys):
    server.reset_faults([FaultRule(["nologprobs"], match=tag(0))])
    apath, qpath = write_inputs(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    assert cli_main(judge_cli(server.base_url, apath, qpath, out, "--limit", "2")) == 0
    capsys.readouterr()
    assert cli_main(judge_cli(server.base_url, apath, qpath, out)) == 0
    stats = json.loads(capsys.readouterr().out)
    billed = server_totals(server.entries())
    assert billed["requests"] == 8  # 6 keys; the 2 of tag 0 answered twice (no logprobs first)
    assert stats["all_runs_usage"] == {**billed, "result_lines": 6}
    assert stats["all_runs_cost_usd"] == pytest.approx(
        Prices().cost(billed["prompt_tokens"], billed["completion_tokens"]))


# -- unreachable server ----------------------------------------------------------------------


def test_closed_port_fails_fast_naming_the_url(tmp_path, capsys):
    url = closed_port_url()
    apath, qpath = write_inputs(tmp_path, 20)
    out = tmp_path / "r.jsonl"
    # the default retries (6) and timeout (60 s): without the preflight this takes minutes; the
    # preflight's own message (not a per-request failure) shows it stopped before any request
    rc = cli_main(["judge", "--answers", apath, "--questions", qpath, "--out", str(out),
                   "--base-url", url, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"judge server {url}" in err and "unreachable" in err
    assert not out.exists() or out.read_text() == ""
    plan = build_tasks(answers(2), [QUESTION], ["aligned"])
    with pytest.raises(JudgeServerUnreachableError, match=url):
        run_judge_sync(plan.tasks, ResultStore(out), dataclasses.replace(
            config(url), request=RequestConfig(base_url=url)))


def test_server_gone_mid_run_aborts_and_keeps_lines(server, tmp_path):
    K = 5
    plan = build_tasks(answers(40), [QUESTION], ["aligned"])
    path = tmp_path / "r.jsonl"
    run_judge_sync(plan.tasks[:K], ResultStore(path), config(server.base_url))  # K scored
    # then the server stays up (the preflight passes) but drops every connection
    server.reset_faults([FaultRule(["drop"], forever=True)])
    n = len(server.entries())
    cfg = config(server.base_url, max_retries=1, abort_after_connection_errors=6, concurrency=3)
    with pytest.raises(JudgeServerUnreachableError,
                       match=rf"{server.base_url}.*6 requests in a row failed"):
        run_judge_sync(plan.tasks, ResultStore(path), cfg)
    store = ResultStore(path)
    assert sum(store.is_done(t.key) for t in plan.tasks) == K  # nothing lost
    n_failed = sum(store.status(t.key) == "failed" for t in plan.tasks)
    assert 6 <= n_failed <= 6 + cfg.concurrency
    assert len(server.entries()) - n <= 2 * (n_failed + cfg.concurrency)  # far from 2 x 35
    # the server is back: a plain rerun sends every unscored key (connection errors are unpaid)
    server.reset_faults()
    stats = run_judge_sync(plan.tasks, ResultStore(path), cfg)
    assert (stats.n_cached, stats.n_ok) == (K, 40 - K)


def test_preflight_is_one_free_request(server, tmp_path):
    plan = build_tasks(answers(3), [QUESTION], ["aligned"])
    stats = run_judge_sync(plan.tasks, ResultStore(tmp_path / "r.jsonl"), config(server.base_url))
    assert server.n_model_lists == 1 and stats.n_http_requests == len(server.entries()) == 3
    run_judge_sync(plan.tasks, ResultStore(tmp_path / "r.jsonl"), config(server.base_url))
    assert server.n_model_lists == 1  # nothing to send: no preflight either
