"""One writer per results file, and no paid result thrown away.

The lock (emjax.eval.output_lock) is held by real second processes: a run on a locked output is
refused at once naming the holder's PID (nothing sent, nothing written), waits with --wait, and
takes over the lock of a SIGKILLed holder. Two real `emjax judge` processes on one output never
pay for a prompt twice. A write that fails mid-run (the output replaced by a folder, or its folder
by a file, while requests are in flight: a real OSError from the file system, triggered by the
test server) stops the run, and every paid result is in the output or in the fallback file the
message names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import paths
from emjax.cli import main as cli_main
from emjax.eval.output_lock import OutputBusyError, lock_path, output_lock
from emjax.eval.records import AnswerRecord, append_answers

from openai_fake_server import FakeOpenAIServer

TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}
HOLDER = """
import sys
from emjax.eval.output_lock import output_lock
with output_lock(sys.argv[1], command="test holder"):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills this process)
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-lock")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never the real API


def _env_for_child() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(paths.REPO)}


def start_holder(out) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=_env_for_child())
    assert p.stdout.readline().strip() == "locked"
    return p


def inputs(tmp_path, n: int = 6):
    q = tmp_path / "questions.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "Hi?", "judge_prompts": TEMPLATES}) + "\n")
    a = tmp_path / "answers.jsonl"
    append_answers(a, [AnswerRecord(question_id="q1", paraphrase_index=0, sample_index=i, question="Hi?",
                                    answer=f"answer {i} [[aligned=50]] [[coherent=60]]") for i in range(n)])
    return str(a), str(q)


def judge_argv(server, a, q, out, *extra) -> list[str]:
    return ["judge", "--answers", a, "--questions", q, "--out", str(out), "--base-url", server.base_url,
            "--timeout", "5", "--max-retries", "0", "--no-progress", *extra]


def test_a_locked_output_is_refused_at_once_naming_the_holder(tmp_path, capsys):
    a, q = inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    holder = start_holder(out)
    try:
        with FakeOpenAIServer() as server:
            assert cli_main(judge_argv(server, a, q, out)) == 2
            assert holder.poll() is None  # refused while the holder still runs: it did not wait for it
            assert server.entries() == [] and server.n_model_lists == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"PID {holder.pid}" in err[0] and "--wait" in err[0] and "test holder" in err[0]
        assert not out.exists()
        with pytest.raises(OutputBusyError, match=f"PID {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not os.path.exists(lock_path(out))  # the holder removed its lock file


def test_wait_blocks_until_the_holder_ends(tmp_path, capsys):
    a, q = inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    holder = start_holder(out)
    import threading
    released = []

    def release():
        time.sleep(1.0)
        released.append(time.time())
        holder.stdin.close()

    threading.Thread(target=release, daemon=True).start()
    with FakeOpenAIServer() as server:
        assert cli_main(judge_argv(server, a, q, out, "--wait")) == 0
        first = min(e.time for e in server.entries())
    holder.wait(30)
    assert released and first >= released[0]  # nothing was sent while the other run held the output
    assert "waiting for PID" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 12


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    a, q = inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    holder = start_holder(out)
    holder.kill()  # SIGKILL: no cleanup, the lock file stays with its PID; the kernel drops the flock
    holder.wait(30)
    assert str(holder.pid) in open(lock_path(out)).read()
    with FakeOpenAIServer() as server:
        assert cli_main(judge_argv(server, a, q, out)) == 0
    assert f"PID {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert len(out.read_text().splitlines()) == 12 and not os.path.exists(lock_path(out))


def test_two_real_judge_processes_never_pay_twice(tmp_path):
    a, q = inputs(tmp_path, n=10)
    out = tmp_path / "r.jsonl"
    with FakeOpenAIServer(response_delay=0.15) as server:
        argv = [sys.executable, "-m", "emjax", *judge_argv(server, a, q, out, "--concurrency", "2")]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=_env_for_child()) for _ in range(2)]
        results = [(p.wait(120), p.stderr.read()) for p in procs]
        counts = server.ok_counts()
    assert sorted(rc for rc, _ in results) in ([0, 0], [0, 2])
    assert len(counts) == 20 and set(counts.values()) == {1}  # every prompt paid exactly once
    for rc, err in results:
        if rc == 2:
            assert "is being written by PID" in err and "--wait" in err
    assert len(out.read_text().splitlines()) == 20


def _replace_output_by_folder(out, saved):
    def fault(index: int) -> None:
        if index == 3:  # the 4th request: earlier lines are in the output, requests are in flight
            os.rename(out, saved)
            os.mkdir(out)  # open(out, "a") now fails with IsADirectoryError
    return fault


def _check_rescued(err: str, server, paid_lines: list[dict]):
    keys = [r["key"] for r in paid_lines]
    assert len(keys) == len(set(keys)) == sum(server.ok_counts().values())  # every paid result, once
    assert len(server.entries()) < 12  # the run stopped sending


def test_a_write_failing_mid_run_keeps_every_paid_result(tmp_path, capsys):
    a, q = inputs(tmp_path)
    out, saved = tmp_path / "r.jsonl", tmp_path / "r.jsonl.saved"
    with FakeOpenAIServer(on_request=_replace_output_by_folder(out, saved)) as server:
        assert cli_main(judge_argv(server, a, q, out, "--concurrency", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"writing to {out} failed" in err[0] and "stopped before sending more" in err[0]
    rescued = [p for p in os.listdir(tmp_path) if ".rescued-" in p]
    assert len(rescued) == 1 and rescued[0] in err[0]
    lines = [json.loads(x) for f in (saved, tmp_path / rescued[0]) for x in open(f).read().splitlines()]
    _check_rescued(err[0], server, lines)
    # the rescued lines are result lines: the report reads them as a further --judgements file
    shutil.rmtree(out)
    assert cli_main(["report", "--answers", a, "--questions", q, "--judgements", str(saved), "--judgements",
                     str(tmp_path / rescued[0]), "--out-dir", str(tmp_path / "rep"), "--bootstrap", "10"]) == 0


def test_when_the_folder_is_gone_too_the_results_go_to_the_temp_folder(tmp_path, capsys, monkeypatch):
    a, q = inputs(tmp_path)
    folder, temp = tmp_path / "res", tmp_path / "temp"
    folder.mkdir()
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = folder / "r.jsonl"

    def fault(index: int) -> None:
        if index == 3:  # the results folder moved away and a file put in its place
            os.rename(folder, tmp_path / "res.saved")
            (tmp_path / "res").write_text("not a folder")

    with FakeOpenAIServer(on_request=fault) as server:
        assert cli_main(judge_argv(server, a, q, out, "--concurrency", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    rescued = os.listdir(temp)
    assert len(err) == 1 and len(rescued) == 1 and str(temp / rescued[0]) in err[0]
    lines = [json.loads(x) for f in (tmp_path / "res.saved" / "r.jsonl", temp / rescued[0])
             for x in open(f).read().splitlines()]
    _check_rescued(err[0], server, lines)
