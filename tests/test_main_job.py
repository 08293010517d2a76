"""The main job end to end on a tiny random model, judged by a real local OpenAI-compatible HTTP
server: all three metrics run offline, the EM and narrow rate table is filled, summary.md is
written, and a rerun reuses every finished stage (no request is sent twice, no model is loaded, no
file is rewritten)."""

import json
import os

import pytest

from openai_fake_server import FakeOpenAIServer
from tiny_run import tiny_model
from emjax.jobs.main import run_main


@pytest.mark.slow
def test_main_job_judged_by_a_local_server_and_resumed(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("EMJAX_FINEWEB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no fetched FineWeb sample
    monkeypatch.delenv("EMJAX_CACHE", raising=False)
    model = tiny_model()
    out = tmp_path / "main"
    with FakeOpenAIServer() as server:
        s = run_main(str(out), model=model, quick=True, seeds=(0, 1), judge_url=server.base_url,
                     judge_model="local-judge")
        n_sent = len(server.entries())
        # all three metrics, the last on the FineWeb documents shipped with emjax
        assert set(s["stages"]["sweeps"]) >= {"efficiency", "stability", "significance"}
        assert s["stages"]["sweeps"]["significance"]["corpus"]["source"] == "sample:fineweb"
        judged = s["stages"]["judge"]
        assert judged["judge"]["stats"]["n_failed"] == 0 and n_sent > 0
        rates = {r["group"]: r for r in judged["rates"]}
        # the chat model and two seeds each of the general and the narrow vector
        assert len(rates) == 5 and "all" in rates
        for r in rates.values():
            assert r["em_rate_n"] > 0 and r["narrow_rate_n"] > 0  # both columns filled
            assert 0.0 <= r["em_rate"] <= 1.0 and 0.0 <= r["narrow_rate"] <= 1.0
        assert len(judged["across_seeds"]) == 2  # general and narrow, pooled over the two seeds
        md = (out / "summary.md").read_text()
        assert "| intervention | EM rate | narrow rate | coherent |" in md and "aligned < 30" in md
        assert (out / "report" / "em_vs_narrow.png").stat().st_size > 1000
        assert s["spread_across_seeds"]["general"]["eval_loss"]["n"] == 2
        for seed in ("seed0", "seed1"):  # the narrow vector against the general one, said in summary.md
            c = s["general_vs_narrow"][seed]
            assert -1.0 <= c["cosine"] <= 1.0 + 1e-9 and c["relative_difference"] >= 0.0
            assert (c["note"] is not None) == (c["relative_difference"] < 1e-3)
            assert f"General vs narrow ({seed}): cosine" in md

        assert set(s["timings"]) >= {"load", "data", "cache", "compile", "compute", "total"}
        assert s["timings"]["compute"] > 0 and s["stages"]["train"]["timings"]["cache"] > 0
        files = sorted(p for p in out.rglob("*") if p.is_file())
        before = {p: (os.stat(p).st_mtime_ns, p.read_bytes()) for p in files}
        # the source "tiny" (the model's) cannot be loaded: every stage must come from disk
        again = run_main(str(out), model=model.source, quick=True, seeds=(0, 1), judge_url=server.base_url,
                         judge_model="local-judge")
        assert len(server.entries()) == n_sent  # every stage reused: nothing trained, sampled or sent again
        assert again["stages"]["judge"]["rates"] == judged["rates"]
        assert sorted(p for p in out.rglob("*") if p.is_file()) == files
        assert {p: (os.stat(p).st_mtime_ns, p.read_bytes()) for p in files} == before
        # without the stage markers (a job interrupted after its stages' work): each stage's own
        # check finds its work on disk (trained runs, sweep kinds, answers, judgements); still no model
        for i in (2, 3, 4, 5):
            (out / "stages" / f"{i}.json").unlink()
        kept = {p: v for p, v in before.items() if p.parent.name not in ("report", "stages") and p.name != "summary.md"
                and (p.suffix in (".safetensors", ".parquet", ".csv", ".jsonl") or p.name.endswith("summary.json"))}
        kept.pop(out / "summary.json")  # the job's summary: its stages' seconds are new
        assert {out / "answers.jsonl", out / "judgements.jsonl"} < set(kept) and len(kept) > 15
        third = run_main(str(out), model=model.source, quick=True, seeds=(0, 1), judge_url=server.base_url,
                         judge_model="local-judge")
        assert len(server.entries()) == n_sent and third["stages"]["judge"]["rates"] == judged["rates"]
        assert {p: (os.stat(p).st_mtime_ns, p.read_bytes()) for p in kept} == kept
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["stages"]["generate"]["n_answers"] == s["stages"]["generate"]["n_answers"]


@pytest.mark.slow
def test_main_job_lists_what_it_could_not_run_and_goes_on(tmp_path, monkeypatch, capsys):
    """A missing FineWeb file and a judge server that is down: the other metrics, the answers and
    the summary are still produced; both are listed in summary.md and on the terminal with their
    reason and the way to enable them; a rerun retries only what did not run."""
    import socket
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.setenv("EMJAX_FINEWEB", str(tmp_path / "no_such_fineweb.jsonl"))
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    out = tmp_path / "main"
    s = run_main(str(out), model=tiny_model(), quick=True, judge_url=dead, judge_model="j")
    not_run = {m["what"]: m for m in s["not_run"]}
    assert set(not_run) == {"significance", "judge"}
    assert "emjax data get fineweb" in not_run["significance"]["enable"]
    assert not_run["judge"]["reason"].startswith("failed:") and "rerun" in not_run["judge"]["enable"]
    assert set(s["stages"]) == {"chat", "train", "sweeps", "generate"}
    assert {"efficiency", "stability"} <= set(s["stages"]["sweeps"]) and "significance" not in s["stages"]["sweeps"]
    md = (out / "summary.md").read_text()
    assert "## Not run" in md and "| significance |" in md and "| judge |" in md
    assert "2 of the paper's three ran" in md and "## Time" in md and "| 2 train |" in md
    printed = capsys.readouterr().out
    assert "NOT RUN: significance:" in printed and "NOT RUN: judge: failed:" in printed
    assert not (out / "stages" / "5.json").exists()  # the failed stage left no marker: a rerun retries it
