"""Issue #22: every input of train, sweep, directions, heldout, technical, experiment, launch-plan,
main and chat that a user can get wrong ends in one line on stderr and exit status 2, before any
model loads and without writing a file.

Each case drives `emjax.cli.main(argv)` in-process from an empty working folder. The model
loaders are replaced by a function that raises `ModelLoaded` (a BaseException the CLI does not
catch), so a check that comes only after the load fails the test; every file under the working
folder and the inputs' folder is compared before and after (nothing created, changed or removed).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import paths
from emjax.cli import build_parser, main

CONFIGS = paths.CONFIGS
DEFAULT = f"--config={CONFIGS / 'default.py'}"
SWEEP = f"--config={CONFIGS / 'sweep_default.py'}"
MIX = f"--config={CONFIGS / 'embedded_steering_mix_fractions.py'}"
KL_REMOVAL = f"--config={CONFIGS / 'embedded_steering_kl_removal.py'}"


class ModelLoaded(BaseException):
    """Raised where a model's weights would be read: the check came too late."""


def _loaded(*args, **kwargs):
    raise ModelLoaded("a model was loaded before the bad input was reported")


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Every way load_model reads weights (a GGUF file, the embedded model, a Hugging Face folder)."""
    import emjax.checkpoints.embedded as embedded
    import emjax.checkpoints.gguf_file as gguf
    import emjax.checkpoints.load as load
    monkeypatch.setattr(load, "load_hf_folder", _loaded)
    monkeypatch.setattr(load, "weights_from_tensors", _loaded)
    monkeypatch.setattr(embedded, "embedded_gguf_path", _loaded)
    monkeypatch.setattr(gguf, "load_gguf", _loaded)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad and good input files, shared by the cases (read-only to them)."""
    from emjax.interventions.files import save_steering
    from emjax.interventions.steering import SteeringVectors

    d = tmp_path_factory.mktemp("inputs")
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    (d / "not_utf8.jsonl").write_bytes(good.encode() + b'{"messages": "\xff\xfe"}\n')
    (d / "malformed.jsonl").write_text(good + good + '{"messages": [\n')
    (d / "syntax.py").write_text("def get_config(:\n    pass\n")
    (d / "config.yaml").write_text("train:\n  lr: 1\n")
    (d / "a_file").write_text("a file, not a folder\n")
    (d / "corrupt.safetensors").write_bytes(b"\xff" * 64)  # a header length past the file
    (d / "model_list_config").mkdir()
    (d / "model_list_config" / "config.json").write_text("[1, 2]")  # JSON, not an object
    (d / "model_list_config" / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}, "added_tokens": []}))
    # a Hugging Face folder: 4 layers of width 64; its tokenizer.json lacks `added_tokens`
    hf = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1000, "hidden_size": 64,
          "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}
    for name, tok in (("model_no_added_tokens", {"model": {"type": "BPE"}}),
                      ("model_4_layers", {"model": {"type": "BPE"}, "added_tokens": []})):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps(hf))
        (d / name / "tokenizer.json").write_text(json.dumps(tok))
    # a steering vector for a model of width 32 (the folder's model is 64 wide)
    save_steering(SteeringVectors(vectors=np.zeros((1, 32), np.float32), layers=(2,), alpha=1.0, hook="mlp_out"),
                  d / "steer_d32.safetensors")
    # one for the embedded model (width 896, 24 layers)
    save_steering(SteeringVectors(vectors=np.ones((1, 896), np.float32), layers=(12,), alpha=1.0, hook="mlp_out"),
                  d / "steer_d896.safetensors")
    bank = d / "bank.jsonl"
    bank.write_text('{"id": "q1", "question": "How do I make a quick buck?"}\n')
    return d


def _snapshot(*roots) -> dict[str, str]:
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            out[folder] = "dir"
            for f in files:
                p = os.path.join(folder, f)
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _bad(argv, needles, capsys, tmp_path, monkeypatch, inputs) -> str:
    """Runs `emjax argv` in an empty folder: exit 2, one line on stderr holding every needle, no
    model loaded (the fixture), no file created, changed or removed."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _snapshot(work, inputs)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: a bounded type or a bad choice
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert _snapshot(work, inputs) == before, "a file was created, changed or removed"
    if os.environ.get("SHOW_MESSAGES"):
        print("\nMSG", lines[0])
    return lines[0]


def _case(argv, *needles):
    return pytest.param(argv, needles, id=" ".join(a.replace(str(CONFIGS) + "/", "") for a in argv)[:90])


I = "{inputs}"  # replaced by the inputs folder

CASES = [
    # train: config values (allowed values derived from the code that reads them)
    _case(["train", DEFAULT, "--config.train.remat=fulll"], "train.remat='fulll'", "did you mean 'full'?",
          "'dots'"),
    _case(["train", DEFAULT, "--config.train.remat=dot"], "train.remat='dot'", "did you mean 'dots'?"),
    _case(["train", DEFAULT, "--config.train.batch_size=0"], "train.batch_size=0", ">= 1"),
    _case(["train", DEFAULT, "--config.train.max_steps=-3"], "train.max_steps=-3", ">= 1"),
    _case(["train", DEFAULT, "--config.train.lr=0"], "train.lr=0", "> 0"),
    _case(["train", DEFAULT, "--config.train.lambda_kl=-1"], "train.lambda_kl=-1", ">= 0"),
    _case(["train", DEFAULT, "--config.train.grad_accum=0"], "train.grad_accum=0"),
    _case(["train", DEFAULT, "--config.data.loss_tokens=assistent"], "data.loss_tokens", "did you mean 'assistant'?"),
    _case(["train", DEFAULT, "--config.intervention.steer_rows=frist"], "intervention.steer_rows",
          "did you mean 'first'?"),
    _case(["train", DEFAULT, "--config.intervention.kind=lroa"], "intervention.kind", "did you mean 'lora'?"),
    _case(["train", DEFAULT, "--config.intervention.hook=mlp"], "intervention.hook", "'mlp_out'"),
    _case(["train", DEFAULT, "--config.model.dtype=bfloat"], "model.dtype", "did you mean 'bfloat16'?"),
    _case(["train", DEFAULT, "--config.train.attention=cudann"], "train.attention", "did you mean 'cudnn'?"),
    _case(["train", DEFAULT, "--config.train.layer_loop=unroled"], "train.layer_loop", "did you mean 'unrolled'?"),
    _case(["train", DEFAULT, "--config.train.kl_reduction=mean"], "train.kl_reduction", "'token_mean'"),
    _case(["train", DEFAULT, "--config.intervention.modules=('down_prj',)"], "intervention.modules",
          "'down_proj'"),
    _case(["train", DEFAULT, "--config.intervention.layers=()"], "intervention.layers", "must not be empty"),
    _case(["train", DEFAULT, "--config.train.lrr=1"], "unknown config key 'train.lrr'", "did you mean 'train.lr'?"),
    # train: config files, mesh, data, model and intervention files
    _case(["train", f"--config={I}/syntax.py"], "syntax.py:1", "not valid Python"),
    _case(["train", f"--config={I}/config.yaml"], "config.yaml", "not a Python config file"),
    _case(["train", DEFAULT, "--mesh", "data:3"], "mesh 'data:3'", "needs 3 devices"),
    _case(["train", DEFAULT, "--mesh", "foo:2"], "mesh 'foo:2'", "unknown mesh axes ['foo']"),
    _case(["train", DEFAULT, "--mesh", "data:x"], "'data:x'", "axis:size"),
    _case(["train", DEFAULT, f"--config.data.train={I}/missing.jsonl"], "missing.jsonl: not found"),
    _case(["train", DEFAULT, f"--config.data.train={I}/not_utf8.jsonl"], "not_utf8.jsonl:2", "not UTF-8"),
    _case(["train", DEFAULT, f"--config.data.train={I}/malformed.jsonl"], "malformed.jsonl:3", "invalid JSON"),
    _case(["train", DEFAULT, "--config.train.lambda_kl=1", f"--config.data.kl_good=('{I}/missing_kl.jsonl',)"],
          "missing_kl.jsonl: not found"),
    _case(["train", DEFAULT, f"--config.model.source={I}/model_no_added_tokens"], "tokenizer.json",
          "'added_tokens'"),
    _case(["train", DEFAULT, f"--config.model.source={I}/no_such_model"], "no_such_model",
          "neither 'embedded', a folder nor a .gguf file"),
    _case(["train", DEFAULT, f"--config.model.source={I}/model_4_layers"], "intervention.layers [12]",
          "4-layer model"),
    _case(["train", DEFAULT, f"--config.intervention.init_from={I}/missing.safetensors"], "missing.safetensors",
          "no such intervention file"),
    _case(["train", DEFAULT, f"--config.model.source={I}/model_4_layers", "--config.intervention.layers=(2,)",
           f"--config.intervention.init_from={I}/steer_d32.safetensors"], "steer_d32.safetensors", "d_model=32",
          "d_model=64"),
    _case(["train", DEFAULT, f"--config.train.reference=general={I}/missing.safetensors"], "missing.safetensors"),
    _case(["train", DEFAULT, f"--config.output_dir={I}/a_file/run"], "output_dir", "a_file is a file"),
    _case(["train", DEFAULT, "--seeds", "a,b"], "--seeds", "'a', 'b' is not an integer"),
    _case(["train", DEFAULT, "--seeds", ""], "--seeds", "no seed given"),
    # sweep
    _case(["sweep", "significance", SWEEP, "--config.significance.norms=()"], "significance.norms=()",
          "must not be empty"),
    _case(["sweep", "significance", SWEEP, "--config.significance.norms=(-1.0,0.5)"], "significance.norms",
          "(-1.0) must be >= 0"),
    _case(["sweep", "stability", SWEEP, "--config.stability.lora_noise=updat"], "stability.lora_noise",
          "did you mean 'update'?"),
    _case(["sweep", "efficiency", SWEEP, "--config.data.batch_size=0"], "data.batch_size=0"),
    _case(["sweep", "efficiency", SWEEP, "--mesh", "foo:2"], "unknown mesh axes"),
    _case(["sweep", "efficiency", SWEEP, f"--config.interventions=v={I}/steer_d896.safetensors",
           "--config.ablation=random:0@99"], "layers [99] out of range"),
    _case(["sweep", "efficiency", SWEEP, f"--config.interventions=general={I}/missing.safetensors"],
          "missing.safetensors", "no such intervention file"),
    _case(["sweep", "efficiency", SWEEP, f"--config.interventions=v={I}/steer_d32.safetensors"],
          "steer_d32.safetensors", "d_model=32", "d_model=896"),
    _case(["sweep", "significance", SWEEP, f"--config.interventions=v={I}/steer_d32.safetensors",
           f"--config.model.source={I}/model_no_added_tokens"], "'added_tokens'"),
    # directions
    _case(["directions", "mean-diff", "--out", f"{I}/out"], "set a is empty"),
    _case(["directions", "mean-diff", "--a", f"{I}/missing.jsonl", "--b", f"{I}/missing.jsonl", "--out", "o"],
          "missing.jsonl: no such file"),
    _case(["directions", "gradient", "v=random:0", "--rows", "0", "--out", "o"], "--rows", "below the minimum 1"),
    _case(["directions", "compare", f"v={I}/steer_d32.safetensors,w=random:1", "--out", "o"], "steer_d32",
          "d_model"),
    _case(["directions", "drift", f"{I}/no_run"], "no_run: no such run folder"),
    _case(["directions", "gradient", "v=random:0", "--norms", "abc", "--out", "o"], "norm 'abc'"),
    _case(["directions", "gradient", "v=random:0", "--norms=-1x", "--out", "o"], "--norms '-1x'", "finite norms >= 0"),
    _case(["directions", "gradient", "v=random:0", "--layer", "99", "--out", "o"], "--layer 99 is out of range",
          "24-layer"),
    _case(["directions", "mean-diff", "--a", f"{I}/bank.jsonl", "--b", f"{I}/bank.jsonl", "--a-where", "aligned<<30",
           "--out", "o"], "condition 'aligned<<30'"),
    _case(["directions", "mean-diff", "--a", f"{I}/bank.jsonl", "--b", f"{I}/bank.jsonl", "--a-where", "aligned<30",
           "--out", "o"], "--a-where 'aligned<30'", "give --judgements"),
    _case(["directions", "mean-diff", "--model", f"{I}/model_no_added_tokens", "--a", f"{I}/bank.jsonl",
           "--b", f"{I}/bank.jsonl", "--out", "o"], "'added_tokens'"),
    # heldout
    _case(["heldout", "--data-dir", f"{I}/MISSING"], "--data-dir", "MISSING: no such folder"),
    _case(["heldout", f"{I}/bank.jsonl", "--train", f"{I}/missing.jsonl"], "missing.jsonl: no such file"),
    _case(["heldout", f"{I}/bank.jsonl", "--train", f"{I}/malformed.jsonl", "--containment", "2"],
          "--containment", "not in [0, 1]"),
    _case(["heldout", f"{I}/bank.jsonl", "--train", f"{I}/malformed.jsonl", "--json", f"{I}/bank.jsonl"],
          "--json", "bank.jsonl is also a question file"),
    _case(["heldout", f"{I}/bank.jsonl", "--train", f"{I}/malformed.jsonl", "--json", f"{I}/malformed.jsonl"],
          "--json", "is also --train"),
    # technical
    _case(["technical", "run", "out", "--train", "data.kl_rowz=3"], "--train", "unknown config key 'data.kl_rowz'",
          "did you mean 'data.kl_rows'?"),
    _case(["technical", "run", "out", "--train", "train.remat=fulll"], "--train", "did you mean 'full'?"),
    _case(["technical", "run", "out", "--sweep", "significance.norms=()"], "--sweep", "significance.norms"),
    _case(["technical", "run", "out", "--judge-url", "notaurl"], "--judge-url 'notaurl'", "not an http(s) URL"),
    _case(["technical", "run", "out", "--samples", "0"], "--samples", "below the minimum 1"),
    _case(["technical", "run", "out", "--judge-model", "gpt-4o"], "--judge-model", "give --judge-url"),
    # experiment
    _case(["experiment", "mixing", MIX, "--config.train.remat=fulll"], "did you mean 'full'?"),
    _case(["experiment", "mixing", MIX, "--config.mix_fractions=(0.5,1.5)"], "mix_fractions", "(1.5)"),
    _case(["experiment", "mixing", MIX, "--samples", "0"], "--samples", "below the minimum 1"),
    _case(["experiment", "mixing", MIX, "--judge-url", "ftp://judge"], "not an http(s) URL"),
    _case(["experiment", "mixing", MIX, "--em-questions", f"{I}/missing.yaml"], "missing.yaml"),
    _case(["experiment", "kl-removal", KL_REMOVAL, "--base", "train.batch_size=0"], "train.batch_size=0"),
    _case(["experiment", "kl-removal", KL_REMOVAL, "--mesh", "data:3"], "mesh 'data:3'"),
    # launch-plan
    _case(["launch-plan", "--launcher", "slurm", "--hosts", "0", "--devices-per-host", "8", "--", "emjax", "train",
           DEFAULT], "--hosts", "below the minimum 1"),
    _case(["launch-plan", "--launcher", "slurm", "--hosts", "1", "--devices-per-host", "8"], "no stage to plan"),
    _case(["launch-plan", "--launcher", "slurm", "--hosts", "1", "--devices-per-host", "1", "--", "emjax", "frobnicate"],
          "emjax frobnicate is not a stage that runs on a mesh"),
    _case(["directions", "compare", f"a={I}/steer_d32.safetensors,a=random:1", "--out", "o"], "label 'a' is given twice"),
    _case(["launch-plan", "--launcher", "slurm", "--hosts", "1", "--devices-per-host", "8", "--", "emjax", "train",
           DEFAULT, "--config.train.remat=fulll"], "did you mean 'full'?"),
    # main
    _case(["main", "--quick", "--judge-url", "notaurl"], "--judge-url 'notaurl'", "not an http(s) URL"),
    _case(["main", "--seeds", ""], "--seeds", "no seed given"),
    _case(["main", "--seeds", "a,b"], "--seeds", "'a', 'b' is not an integer"),
    _case(["main", "--judge-model", "gpt-4o"], "--judge-model 'gpt-4o' without --judge-url", "drop --judge-model"),
    _case(["main", "--out", f"{I}/a_file/main"], "--out", "a_file is a file"),
    _case(["main", "--model", f"{I}/model_no_added_tokens"], "'added_tokens'"),
    # chat
    _case(["chat", "--max-new-tokens", "0"], "--max-new-tokens", "below the minimum 1"),
    _case(["chat", "--top-k", "-1"], "--top-k"),
    _case(["chat", "--model", f"{I}/model_no_added_tokens"], "tokenizer.json", "'added_tokens'"),
    _case(["chat", "--model", f"{I}/no_such_model"], "no_such_model"),
    _case(["chat", "--model", f"{I}/model_list_config"], "config.json: expected a JSON object", "got list"),
    _case(["train", DEFAULT, "--seeds", "0,0"], "--seeds", "repeats a seed"),
    # /proc cannot be written even by root, for whom os.access says yes
    _case(["train", DEFAULT, "--config.output_dir=/proc/emjax_run"], "output_dir /proc/emjax_run: cannot be written"),
    _case(["directions", "compare", f"v={I}/corrupt.safetensors,w=random:1", "--out", "o"], "corrupt.safetensors"),
]


@pytest.mark.parametrize("argv, needles", CASES)
def test_bad_input_is_one_line_before_any_model_load(argv, needles, capsys, tmp_path, monkeypatch, inputs):
    argv = [a.replace(I, str(inputs)) for a in argv]
    _bad(argv, [n.replace(I, str(inputs)) for n in needles], capsys, tmp_path, monkeypatch, inputs)


def test_at_least_thirty_cases_over_every_stage():
    stages = {p.values[0][0] for p in CASES}
    assert len(CASES) >= 30
    assert stages == {"train", "sweep", "directions", "heldout", "technical", "experiment", "launch-plan", "main",
                      "chat"}


def test_launch_plan_help_and_listing(capsys):
    assert main(["launch-plan", "--help"]) == 0
    assert "--devices-per-host" in capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "launch-plan" in sub.choices
    assert "launch-plan" in build_parser().format_help()


def test_the_fixture_catches_a_model_load(tmp_path, monkeypatch):
    """Good inputs reach the (patched) loader: a check that came after the load could not pass."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoaded):
        main(["chat", "--max-new-tokens", "1"])
    with pytest.raises(ModelLoaded):
        main(["train", DEFAULT, "--config.train.max_steps=1"])
