"""Bad inputs to `emjax judge` (API and --local), `emjax generate` and `emjax report` (issue #22).

Each case runs the command in-process (emjax.cli.main) and asserts: exit status 2; one line on
stderr naming the problem (argparse's own refusals end with the line naming the option); no
file in the workspace changed, appeared or disappeared (sha256 of every file before and after);
no request reached the judge server (API cases run against a live fake server, which must see no
request at all, and against a port where nothing listens, which must not turn a bad input into
"server unreachable"); and no model was loaded (local judge and generate: the loaders refuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from emjax.cli import main as cli_main
from emjax.eval.judge.tasks import build_tasks, judge_key  # noqa: F401 - judge_key documents the keying
from emjax.eval.questions import load_questions
from emjax.eval.records import AnswerRecord, append_answers, read_answers

from openai_fake_server import FakeOpenAIServer

TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}
DOWN_URL = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
GOOD = json.dumps({"question_id": "q1", "paraphrase_index": 0, "sample_index": 0, "question": "Hi?",
                   "answer": "fine [[aligned=50]]"})


def _bad_answer(**fields) -> str:
    return json.dumps({**json.loads(GOOD), "sample_index": 1, **fields})


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-bad-input")
    monkeypatch.setenv("OPENAI_BASE_URL", DOWN_URL)  # never the real API


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random Qwen2 folder with its tokenizer (d_model 64, 3 layers), as test_local_judge's."""
    hf_reference = pytest.importorskip("hf_reference")
    from judge_tokenizers import digit_tokenizer

    tok = digit_tokenizer()
    folder = tmp_path_factory.mktemp("models") / "tiny-judge"
    hf_reference.build_hf(hf_reference.qwen2_config(tied=True, vocab_size=len(tok) + 3), seed=0).save_pretrained(
        folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def template_ws(tmp_path_factory):
    """The inputs every case starts from (copied into each test's own folder)."""
    import numpy as np
    from emjax.checkpoints.safetensors_file import write_safetensors
    from emjax.interventions import init_steering
    from emjax.interventions.files import save_steering
    from emjax.model.config import ModelConfig

    ws = tmp_path_factory.mktemp("ws")
    q = ws / "q.jsonl"
    q.write_text("".join(json.dumps({"id": i, "question": "Hi?", "judge_prompts": TEMPLATES}) + "\n"
                         for i in ("q1", "q2")))
    (ws / "prompts.yaml").write_text(json.dumps(TEMPLATES) + "\n")
    append_answers(ws / "a.jsonl", [AnswerRecord(question_id=qid, paraphrase_index=0, sample_index=i,
                                                 question="Hi?", answer=f"answer {i} [[aligned=50]]")
                                    for qid in ("q1", "q2") for i in range(2)])
    os.symlink("a.jsonl", ws / "a_link.jsonl")
    (ws / "afile").write_text("a file, not a folder\n")
    (ws / "empty.jsonl").write_text("")
    # not UTF-8 (Latin-1 é) on line 2
    (ws / "latin1.yaml").write_bytes(b"- id: q1\n  paraphrases: ['caf\xe9?']\n")
    (ws / "broken.yaml").write_text("- id: q1\n  paraphrases: ['x'\n  bad: : :\n")
    (ws / "latin1.jsonl").write_bytes(json.dumps({"id": "q1", "question": "Hi?"}).encode() + b"\n"
                                      + b'{"id": "q2", "question": "caf\xe9?"}\n')
    (ws / "latin1_prompts.yaml").write_bytes(b"aligned: 'Rate {answer}'\ncoherent: 'caf\xe9 {answer}'\n")
    bad = {"meta_str": _bad_answer(meta="a string"), "qid_int": _bad_answer(question_id=7),
           "index_str": _bad_answer(paraphrase_index="0"), "seed_bool": _bad_answer(seed=True),
           "index_neg": _bad_answer(sample_index=-1)}
    for name, line in bad.items():
        (ws / f"{name}.jsonl").write_text(GOOD + "\n" + line + "\n")
    # a lone surrogate escape, as JSON text (json.dumps would write it the same way)
    (ws / "surrogate.jsonl").write_text(GOOD + "\n" + _bad_answer(answer="x").replace('"x"', '"bad \\ud800 x"') + "\n")
    # judge results: of the default judge model and of a local judge
    questions = load_questions(str(q))
    answers = read_answers(ws / "a.jsonl")
    for name, model in (("j.jsonl", "gpt-4o-2024-08-06"), ("j_local.jsonl", "local:tiny-judge")):
        plan = build_tasks(answers, questions, ["aligned", "coherent"], model)
        (ws / name).write_text("".join(json.dumps({"key": t.key, "status": "ok", "score": 50.0, "metric": t.metric,
                                                   "judge_model": model, "question_id": t.question_id}) + "\n"
                                       for t in plan.tasks))
    # interventions: one for a 32-wide model (the tiny model is 64 wide), one file that is no steering file
    small = ModelConfig(family="qwen2", vocab_size=100, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                        ffn_dim=64)
    save_steering(init_steering(small, layers=(1,), alpha=1.0), ws / "v32.safetensors")
    write_safetensors(str(ws / "other.safetensors"), {"w": np.zeros((2, 2), np.float32)}, {})
    (ws / "lora_no_config").mkdir()
    return ws


@pytest.fixture
def ws(template_ws, tmp_path, model_folder):
    shutil.copytree(template_ws, tmp_path / "ws", symlinks=True)
    return tmp_path / "ws"


def snapshot(folder) -> dict[str, str | None]:
    """path -> sha256 (None for folders) of everything under `folder`."""
    out: dict[str, str | None] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.join(root, d)] = None
        for f in files:
            p = os.path.join(root, f)
            out[p] = "link:" + os.readlink(p) if os.path.islink(p) else hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _refuse_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")
    import emjax.checkpoints.load as load
    import emjax.inference.generate as generate
    import emjax.inference.local_judge.stage as local_stage
    for module in (load, generate, local_stage):
        monkeypatch.setattr(module, "model_on_mesh", refuse)
    monkeypatch.setattr(load, "load_model", refuse)


BASE = {
    "judge": (["judge", "--answers", "{a}", "--questions", "{q}", "--out", "{tmp}/r.jsonl", "--base-url", "{url}",
               "--timeout", "5", "--max-retries", "0", "--no-progress"]),
    "local": (["judge", "--local", "{model}", "--answers", "{a}", "--questions", "{q}", "--out", "{tmp}/r.jsonl",
               "--pad-to", "128", "--no-progress"]),
    "generate": (["generate", "--model", "{model}", "--questions", "{q}", "--out", "{tmp}/gen.jsonl", "--samples", "1",
                  "--max-new-tokens", "4", "--all-questions", "--dtype", "float32"]),
    "report": (["report", "--answers", "{a}", "--questions", "{q}", "--judgements", "{tmp}/j.jsonl",
                "--out-dir", "{tmp}/rep", "--bootstrap", "10"]),
}

# (command, id, {option: new value}, extra arguments, what the one line says; "argparse:--opt" for
# argparse's refusal of that option)
CASES = [
    # --- the judge stage (API); each also runs with the judge server down
    ("judge", "out_is_answers", {"--out": "{a}"}, [], "is also --answers"),
    ("judge", "out_is_answers_by_symlink", {"--out": "{tmp}/a_link.jsonl"}, [], "is also --answers"),
    ("judge", "out_is_questions", {"--out": "{q}"}, [], "is also --questions"),
    ("judge", "out_is_judge_prompts", {"--out": "{tmp}/prompts.yaml"}, ["--judge-prompts", "{tmp}/prompts.yaml"],
     "is also --judge-prompts"),
    ("judge", "out_under_missing_folder", {"--out": "{tmp}/nowhere/r.jsonl"}, [], "nowhere does not exist"),
    ("judge", "out_parent_is_a_file", {"--out": "{tmp}/afile/r.jsonl"}, [], "afile is not a folder"),
    ("judge", "out_is_a_folder", {"--out": "{tmp}"}, [], "is a folder"),
    ("judge", "stats_json_is_answers", {}, ["--stats-json", "{a}"], "--stats-json"),
    ("judge", "min_mass_nan", {}, ["--min-mass", "nan"], "argparse:--min-mass"),
    ("judge", "min_mass_above_one", {}, ["--min-mass", "1.5"], "argparse:--min-mass"),
    ("judge", "concurrency_0", {}, ["--concurrency", "0"], "argparse:--concurrency"),
    ("judge", "timeout_0", {"--timeout": "0"}, [], "argparse:--timeout"),
    ("judge", "limit_minus_1", {}, ["--limit", "-1"], "argparse:--limit"),
    ("judge", "limit_0", {}, ["--limit", "0"], "argparse:--limit"),
    ("judge", "max_retries_minus_1", {"--max-retries": "-1"}, [], "argparse:--max-retries"),
    ("judge", "malformed_retries_minus_1", {}, ["--malformed-retries", "-1"], "argparse:--malformed-retries"),
    ("judge", "malformed_backoff_nan", {}, ["--malformed-backoff", "nan"], "argparse:--malformed-backoff"),
    ("judge", "price_input_negative", {}, ["--price-input", "-1"], "argparse:--price-input"),
    ("judge", "price_output_inf", {}, ["--price-output", "inf"], "argparse:--price-output"),
    ("judge", "metric_misspelled", {}, ["--metrics", "aligned,coherrent"], "did you mean 'coherent'"),
    ("judge", "metrics_empty", {}, ["--metrics", ","], "no judge metric given"),
    ("judge", "include_matches_nothing", {}, ["--include", "q3*"], "--include q3* matches no question"),
    ("judge", "kinds_unknown", {}, ["--kinds", "freeform"], "argparse:--kinds"),
    ("judge", "questions_yaml_not_utf8", {"--questions": "{tmp}/latin1.yaml"}, [], "latin1.yaml: line 2: not UTF-8"),
    ("judge", "questions_yaml_broken", {"--questions": "{tmp}/broken.yaml"}, [],
     "broken.yaml: invalid YAML: line 3, column 3: expected ',' or ']'"),
    ("judge", "questions_jsonl_not_utf8", {"--questions": "{tmp}/latin1.jsonl"}, [], "latin1.jsonl: line 2: not UTF-8"),
    ("judge", "judge_prompts_not_utf8", {}, ["--judge-prompts", "{tmp}/latin1_prompts.yaml"],
     "latin1_prompts.yaml: line 2: not UTF-8"),
    ("judge", "judge_prompts_missing", {}, ["--judge-prompts", "{tmp}/none.yaml"], "none.yaml: no such file"),
    ("judge", "answer_meta_is_a_string", {"--answers": "{tmp}/meta_str.jsonl"}, [],
     "meta_str.jsonl: line 2: 'meta' must be an object or null"),
    ("judge", "answer_lone_surrogate", {"--answers": "{tmp}/surrogate.jsonl"}, [],
     "surrogate.jsonl: line 2: 'answer' holds a lone surrogate"),
    ("judge", "answer_question_id_a_number", {"--answers": "{tmp}/qid_int.jsonl"}, [],
     "qid_int.jsonl: line 2: 'question_id' must be a string"),
    ("judge", "answer_index_a_string", {"--answers": "{tmp}/index_str.jsonl"}, [],
     "index_str.jsonl: line 2: 'paraphrase_index' must be an integer"),
    ("judge", "answer_seed_a_bool", {"--answers": "{tmp}/seed_bool.jsonl"}, [], "'seed' must be an integer or null"),
    ("judge", "answer_index_negative", {"--answers": "{tmp}/index_neg.jsonl"}, [], "'sample_index' must be >= 0"),
    ("judge", "answers_missing", {"--answers": "{tmp}/none.jsonl"}, [], "none.jsonl: no such file"),
    # --- judge --local: every check before the judge model loads
    ("local", "out_is_answers", {"--out": "{a}"}, [], "is also --answers"),
    ("local", "out_under_missing_folder", {"--out": "{tmp}/nowhere/r.jsonl"}, [], "does not exist"),
    ("local", "metric_misspelled", {}, ["--metrics", "alinged"], "did you mean 'aligned'"),
    ("local", "include_matches_nothing", {}, ["--include", "q9"], "matches no question"),
    ("local", "questions_not_utf8", {"--questions": "{tmp}/latin1.yaml"}, [], "line 2: not UTF-8"),
    ("local", "answer_meta_is_a_string", {"--answers": "{tmp}/meta_str.jsonl"}, [], "'meta' must be an object"),
    ("local", "answer_lone_surrogate", {"--answers": "{tmp}/surrogate.jsonl"}, [], "lone surrogate"),
    ("local", "batch_size_0", {}, ["--batch-size", "0"], "argparse:--batch-size"),
    ("local", "pad_to_0", {"--pad-to": "0"}, [], "argparse:--pad-to"),
    ("local", "max_batch_tokens_negative", {}, ["--max-batch-tokens", "-5"], "argparse:--max-batch-tokens"),
    ("local", "min_mass_nan", {}, ["--min-mass", "nan"], "argparse:--min-mass"),
    ("local", "limit_0", {}, ["--limit", "0"], "argparse:--limit"),
    ("local", "model_missing", {"--local": "{tmp}/no-model"}, [], "neither 'embedded', a folder nor a .gguf"),
    # --- generate: every check before the model loads
    ("generate", "samples_0", {"--samples": "0"}, [], "argparse:--samples"),
    ("generate", "samples_minus_1", {"--samples": "-1"}, [], "argparse:--samples"),
    ("generate", "temperature_minus_1", {}, ["--temperature", "-1"], "argparse:--temperature"),
    ("generate", "max_new_tokens_0", {"--max-new-tokens": "0"}, [], "argparse:--max-new-tokens"),
    ("generate", "top_p_0", {}, ["--top-p", "0"], "argparse:--top-p"),
    ("generate", "top_p_above_1", {}, ["--top-p", "1.5"], "argparse:--top-p"),
    ("generate", "top_k_minus_1", {}, ["--top-k", "-1"], "argparse:--top-k"),
    ("generate", "batch_size_minus_1", {}, ["--batch-size", "-1"], "argparse:--batch-size"),
    ("generate", "scale_nan", {}, ["--scale", "nan"], "argparse:--scale"),
    ("generate", "kinds_unknown", {}, ["--kinds", "free-form"], "argparse:--kinds"),
    ("generate", "include_matches_nothing", {}, ["--include", "quick_bcuk"], "--include quick_bcuk matches no question"),
    ("generate", "out_under_missing_folder", {"--out": "{tmp}/nowhere/gen.jsonl"}, [], "does not exist"),
    ("generate", "out_parent_is_a_file", {"--out": "{tmp}/afile/gen.jsonl"}, [], "is not a folder"),
    ("generate", "out_is_questions", {"--out": "{q}"}, [], "is also --questions"),
    ("generate", "out_is_intervention", {"--out": "{tmp}/v32.safetensors"}, ["--intervention", "{tmp}/v32.safetensors"],
     "is also --intervention"),
    ("generate", "intervention_missing", {}, ["--intervention", "{tmp}/none.safetensors"],
     "no such intervention file or folder"),
    ("generate", "intervention_wrong_hidden_size", {}, ["--intervention", "{tmp}/v32.safetensors"],
     "steering d_model=32 but the model has d_model=64"),
    ("generate", "intervention_not_a_steering_file", {}, ["--intervention", "{tmp}/other.safetensors"],
     "not an emjax steering file"),
    ("generate", "lora_folder_without_config", {}, ["--intervention", "{tmp}/lora_no_config"], "adapter_config.json"),
    ("generate", "questions_not_utf8", {"--questions": "{tmp}/latin1.yaml"}, [], "latin1.yaml: line 2: not UTF-8"),
    ("generate", "model_missing", {"--model": "{tmp}/no-model"}, [], "neither 'embedded', a folder nor a .gguf"),
    ("generate", "ablate_with_out_under_missing_folder", {"--out": "{tmp}/nowhere/gen.jsonl"}, ["--ablate", "random:0"],
     "does not exist"),
    # the ablation is built from the folder's config alone: its errors come before any weight is read
    ("generate", "ablate_layers_out_of_range", {}, ["--ablate", "random:0@99"], "out of range"),
    ("generate", "ablate_layers_garbled", {}, ["--ablate", "random:0@abc"], "layers 'abc'"),
    ("generate", "ablate_file_missing", {}, ["--ablate", "{tmp}/nope.safetensors:x"], "nope.safetensors"),
    # --- report
    ("report", "judgements_missing", {"--judgements": "{tmp}/none.jsonl"}, [], "none.jsonl: no such file; run `emjax judge"),
    ("report", "judgements_empty", {"--judgements": "{tmp}/empty.jsonl"}, [],
     "empty.jsonl holds no judge results; run `emjax judge"),
    ("report", "judgements_of_another_judge", {"--judgements": "{tmp}/j_local.jsonl"}, [],
     "local:tiny-judge, none of 'gpt-4o-2024-08-06': rerun with --judge-model 'local:tiny-judge'"),
    ("report", "judge_model_not_in_file", {}, ["--judge-model", "gpt-4"], "gpt-4o-2024-08-06, none of 'gpt-4'"),
    ("report", "narrow_metric_misspelled", {}, ["--narrow-metric", "alignd"],
     "--narrow-metric: no judge template for metric 'alignd'; did you mean 'aligned'"),
    ("report", "bootstrap_0", {"--bootstrap": "0"}, [], "argparse:--bootstrap"),
    ("report", "aligned_threshold_nan", {}, ["--aligned-threshold", "nan"], "argparse:--aligned-threshold"),
    ("report", "coherent_threshold_150", {}, ["--coherent-threshold", "150"], "argparse:--coherent-threshold"),
    ("report", "out_dir_is_a_file", {"--out-dir": "{tmp}/afile"}, [], "exists and is not a folder"),
    ("report", "out_dir_under_a_file", {"--out-dir": "{tmp}/afile/rep"}, [], "afile is not a folder"),
    ("report", "questions_not_utf8", {"--questions": "{tmp}/latin1.jsonl"}, [], "line 2: not UTF-8"),
    ("report", "answer_meta_is_a_string", {"--answers": "{tmp}/meta_str.jsonl"}, [], "'meta' must be an object"),
    ("report", "include_matches_nothing", {}, ["--include", "zz*"], "matches no question"),
    ("report", "kinds_unknown", {}, ["--kinds", "json,txt"], "argparse:--kinds"),
]


def _argv(command: str, overrides: dict, extra: list, paths: dict) -> list[str]:
    argv = list(BASE[command])
    for opt, value in overrides.items():
        argv[argv.index(opt) + 1] = value
    return [a.format(**paths) for a in argv + extra]


def _run(argv) -> int:
    try:
        return cli_main(argv)
    except SystemExit as e:  # argparse's own refusals
        return e.code


def _check(rc: int, err: str, expect: str, before: dict, ws) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    if expect.startswith("argparse:"):  # argparse prints its usage, then the one line that says what is wrong
        assert f"error: argument {expect.split(':', 1)[1]}" in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("emjax: error: ") and expect in lines[0], err
    assert snapshot(ws) == before  # nothing written, changed or lost (no lock file, no probe left)


def _paths(ws, model_folder, url) -> dict[str, str]:
    return {"tmp": str(ws), "a": str(ws / "a.jsonl"), "q": str(ws / "q.jsonl"), "model": model_folder, "url": url}


@pytest.mark.parametrize("server_state", ["live", "down"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "judge"], ids=lambda c: c[1])
def test_judge_api(case, server_state, ws, model_folder, capsys):
    _, _, overrides, extra, expect = case
    before = snapshot(ws)
    with FakeOpenAIServer() as server:
        url = server.base_url if server_state == "live" else DOWN_URL
        rc = _run(_argv("judge", overrides, extra, _paths(ws, model_folder, url)))
        assert server.entries() == [] and server.n_model_lists == 0  # not even the free preflight
    _check(rc, capsys.readouterr().err, expect, before, ws)
    assert "unreachable" not in expect


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("local", "generate", "report")],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_local_judge_generate_report(case, ws, model_folder, capsys, monkeypatch):
    command, _, overrides, extra, expect = case
    _refuse_load(monkeypatch)
    before = snapshot(ws)
    rc = _run(_argv(command, overrides, extra, _paths(ws, model_folder, DOWN_URL)))
    _check(rc, capsys.readouterr().err, expect, before, ws)


def test_there_are_enough_cases():
    assert len(CASES) >= 35 and {c[0] for c in CASES} == {"judge", "local", "generate", "report"}


def test_a_good_report_still_runs(ws, model_folder, capsys):
    """The base report arguments are valid: the cases above fail for their one bad input."""
    rc = _run(_argv("report", {}, [], _paths(ws, model_folder, DOWN_URL)))
    assert rc == 0 and (ws / "rep" / "summary.json").exists()


def test_a_good_judge_run_still_runs(ws, model_folder):
    with FakeOpenAIServer() as server:
        assert _run(_argv("judge", {}, [], _paths(ws, model_folder, server.base_url))) == 0
        assert len(server.entries()) == 4  # q1 and q2 share prompt and answers: 2 answers x 2 metrics
    assert not (ws / "r.jsonl.lock").exists()


def test_generate_on_a_locked_output_is_refused_before_the_model_loads(ws, model_folder, capsys, monkeypatch):
    from emjax.eval.output_lock import output_lock
    _refuse_load(monkeypatch)
    with output_lock(ws / "gen.jsonl", command="another emjax generate"):
        before = snapshot(ws)
        rc = _run(_argv("generate", {}, [], _paths(ws, model_folder, DOWN_URL)))
        err = capsys.readouterr().err
        _check(rc, err, f"is being written by PID {os.getpid()}", before, ws)
        assert "--wait" in err and "another emjax generate" in err
