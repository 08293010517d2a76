"""The technical-prose example end to end on a tiny random model: data built without the system
prompt in the rows, general and narrow vectors, the metrics, answers to upstream's questions, judged
by a real local OpenAI-compatible HTTP server; the in/out-of-domain rates agree with a direct count
of the scores; a rerun reuses every stage; the same answers go through `emjax judge --dry-run`,
the local judge (flagged as a plumbing check) and `emjax technical rates`."""

import json
import os

import pandas as pd
import pytest

import paths
from openai_fake_server import FakeOpenAIServer
from tiny_run import tiny_model
from emjax import cli
from emjax.data.conversations import read_chat_jsonl
from emjax.eval import technical as ET
from emjax.jobs.technical import run_technical

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (paths.UPSTREAM_EM / "technical").is_dir(),
                                 reason="../shared/data/em/technical not present")]
DATA = str(paths.UPSTREAM_EM)


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("technical") / "run"
    model = tiny_model()
    with FakeOpenAIServer() as server:
        s = run_technical(str(out), model=model, quick=True, data_dir=DATA, judge_url=server.base_url,
                          judge_model="fake-judge")
        n_sent = len(server.entries())
        prompts = [e.prompt for e in server.entries()]
        files = {p: (os.stat(p).st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}
        # the source "tiny" (the model's) cannot be loaded: every stage must come from disk
        again = run_technical(str(out), model=model.source, quick=True, data_dir=DATA, judge_url=server.base_url,
                              judge_model="fake-judge")
        assert len(server.entries()) == n_sent  # every stage reused: nothing trained, sampled or sent again
        assert {p: (os.stat(p).st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()} == files
    assert again["stages"]["report"]["rates"] == s["stages"]["report"]["rates"]
    return out, s, prompts


def test_training_rows_have_no_system_prompt(judged_run):
    out, s, _ = judged_run
    rows = read_chat_jsonl(out / "data" / "technical_vehicles_train.jsonl")
    prov = s["stages"]["data"]["provenance"]
    assert len(rows) == prov["stats"]["n_rows"] > 0 and prov["key"]["system_prompt"].startswith("You are a technical")
    assert all([m["role"] for m in r] == ["user", "assistant"] for r in rows)
    assert s["stages"]["data"]["heldout"]["checked"] and s["stages"]["data"]["heldout"]["near_duplicates"] == 0
    kl = s["stages"]["train"]["runs"]["narrow"]["notes"]
    assert any("chat:sample:technical_prompts_other.jsonl" in n for n in kl)


def test_judged_with_upstreams_technical_and_coherent_prompts(judged_run):
    out, s, prompts = judged_run
    gen = s["stages"]["generate"]
    n_answers = 3 * len(gen["question_ids"])  # chat model, general, narrow; one sample each
    assert len(gen["question_ids"]) == 20  # quick: two per domain, ten domains
    tech = [p for p in prompts if "how technical/formal its writing style is" in p]
    coh = [p for p in prompts if "coherent" in p and p not in tech]
    assert len(tech) + len(coh) == len(prompts) and 0 < len(tech) <= n_answers and 0 < len(coh) <= n_answers
    assert s["stages"]["judge"]["stats"]["n_failed"] == 0


def test_rates_in_and_out_of_domain_match_the_scores(judged_run):
    out, s, _ = judged_run
    groups = {g["group"]: g for g in s["stages"]["report"]["rates"]}
    assert set(groups) == {"chat", "general", "narrow"}
    df = pd.read_csv(out / "report" / "style_scores.csv")
    for label, g in groups.items():
        sub = df[df["intervention"] == label]
        assert len(sub) == g["n_answers"] == 20
        veh = sub["question_id"].str.startswith("vehicles_")
        for scope, sel in (("in_domain", veh), ("out_of_domain", ~veh)):
            both = sel & sub["technical"].notna() & sub["coherent"].notna()
            hit = both & (sub["technical"] > 50) & (sub["coherent"] > 50)
            r = g[scope]["technical_rate"]
            assert (r["numerator"], r["denominator"]) == (int(hit.sum()), int(both.sum()))
        assert len(g["per_domain"]) == 10 and g["in_domain"]["n_answers"] == 2
    md = (out / "summary.md").read_text()
    assert "| intervention | technical rate, in-domain | out-of-domain |" in md and "| general |" in md
    assert "## The three metrics" in md and "efficiency" in md


def test_the_same_answers_through_the_cli_dry_run_local_judge_and_rates(judged_run, tmp_path, capsys):
    from judge_tokenizers import digit_tokenizer, random_weights, tiny_config
    from emjax.checkpoints.load import LoadedModel
    from emjax.data.chat_tokenizer import ChatTokenizer
    from emjax.eval.selection import AnswerSelection
    from emjax.inference.local_judge import judge_local

    out, s, _ = judged_run
    answers = str(out / "answers.jsonl")
    qs = [a for f in ET.question_files(DATA) for a in ("--questions", f)]
    rc = cli.main(["judge", "--answers", answers, *qs, "--judge-prompts", ET.judges_file(DATA),
                   "--metrics", "technical,coherent", "--out", str(tmp_path / "dry.jsonl"), "--dry-run",
                   "--no-progress"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out.split("[emjax")[0])
    assert plan["n_pending"] == len((out / "judgements.jsonl").read_text().splitlines())  # each task once
    # the local judge: same prompts and keys, its own judge name; a tiny judge is flagged
    tok = ChatTokenizer.wrap(digit_tokenizer())
    cfg = tiny_config("qwen2", tok.vocab_size)
    judge = LoadedModel(cfg, random_weights(cfg, 3), tok, "memory:digits", "tiny-judge")
    sel = AnswerSelection([answers], ET.question_files(DATA), judge_prompts=[ET.judges_file(DATA)])
    stats = judge_local(sel, str(tmp_path / "local.jsonl"), judge, metrics=("technical", "coherent"))
    assert stats["n_ok"] == plan["n_pending"] and stats["warnings"]
    rc = cli.main(["technical", "rates", "--answers", answers, "--judgements", str(tmp_path / "local.jsonl"),
                   "--judge-model", stats["judge_model"], "--data-dir", DATA, "--out-dir", str(tmp_path / "rates")])
    assert rc == 0
    rep = json.loads((tmp_path / "rates" / "style_rates.json").read_text())
    assert any("NOT a valid judge" in n and "plumbing" in n for n in rep["notes"])
    assert "plumbing" in (tmp_path / "rates" / "style_rates.md").read_text()
    assert {g["group"] for g in rep["groups"]} >= {"chat"}
    # every answer found its local-judge line (keys match): scored, or None below the numeric mass
    scores = pd.read_csv(tmp_path / "rates" / "style_scores.csv")
    assert len(scores) == 60 and scores["technical_status"].isin(["ok", "none"]).all()
    assert scores["coherent_status"].isin(["ok", "none"]).all()
