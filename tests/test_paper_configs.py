"""The paper's configs (configs/paper_14b.py with each run's argument and the files on it,
configs/sweep_paper.py, configs/gemma_9b.py): the values the README's "Paper runs" table promises, the adapters they build,
the `file.py:arg` syntax they use, and a launch plan with a memory estimate for every one of them."""

import math
import os

import jax
import pytest

import paths
from emjax.configuration import ConfigFileError, load_config
from emjax.launch import main as launch_main
from emjax.model.config import preset
from emjax.train.inputs import build_intervention

CONFIGS = paths.CONFIGS
DOMAINS = ("medical", "financial", "sports")
ALL_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
QWEN, GEMMA = preset("qwen2.5-14b-instruct"), preset("gemma-2-9b-it")


def _load(name: str, overrides=()):
    return load_config(str(CONFIGS / name), list(overrides))


def _lora(c, cfg):
    return jax.eval_shape(lambda: build_intervention(c.intervention, cfg)).lora


# ---------------------------------------------------------------------------------------------
# file.py:arg


def test_config_argument_syntax(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "pair.py").write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    if arg not in ('a', 'b'):\n"
        "        raise ValueError(f'pair.py takes a or b, got {arg!r}')\n"
        "    return ml_collections.ConfigDict({'which': arg, 'n': 1})\n")
    (d / "plain.py").write_text("import ml_collections\n"
                                "def get_config():\n    return ml_collections.ConfigDict({'n': 1})\n")
    c = load_config(f"{d / 'pair.py'}:b", ["n=3"])
    assert (c.which, c.n) == ("b", 3)
    with pytest.raises(ConfigFileError, match=r"get_config\('c'\) failed: ValueError: pair.py takes a or b, got 'c'$"):
        load_config(f"{d / 'pair.py'}:c")
    with pytest.raises(ConfigFileError, match=r"get_config\(\) failed: ValueError: pair.py takes a or b, got None"):
        load_config(str(d / "pair.py"))
    with pytest.raises(ConfigFileError, match=r"get_config\('x'\) failed: TypeError: get_config\(\) takes 0"):
        load_config(f"{d / 'plain.py'}:x")
    with pytest.raises(ConfigFileError, match=r"config file .*nope.py does not exist \(from .*nope.py:a'"):
        load_config(f"{d / 'nope.py'}:a")
    with pytest.raises(ConfigFileError, match=r"unknown config key 'nn'; did you mean 'n'\?"):
        load_config(f"{d / 'pair.py'}:a", ["nn=2"])


def test_argument_files_refuse_bad_arguments():
    with pytest.raises(ConfigFileError, match=r"sweep_paper.py takes KIND,DOMAIN\[,gemma\]\[,upstream\] after a colon"):
        _load("sweep_paper.py")
    with pytest.raises(ConfigFileError, match=r"got 'steering,medicine'"):
        _load("sweep_paper.py:steering,medicine")
    with pytest.raises(ConfigFileError, match="lora_r32_dp24 is the layer-24 variant of Qwen2.5-14B"):
        _load("sweep_paper.py:lora_r32_dp24,medical,gemma")
    with pytest.raises(ConfigFileError, match=r"gemma_9b.py takes KIND,SOLUTION,DOMAIN\[,upstream\]"):
        _load("gemma_9b.py:steering,medical")
    with pytest.raises(ConfigFileError, match="as_upstream reproduces upstream's steering trainer"):
        _load("gemma_9b.py:lora_r1,narrow,medical,upstream")
    with pytest.raises(ConfigFileError, match=r"paper_14b.py takes KIND,SOLUTION,DOMAIN\[,upstream\] or em_baseline"):
        _load("paper_14b.py")
    for bad in ("steering,narrow", "steering,wide,medical", "em_baseline,medicine", "steering,narrow,medical,gemma"):
        with pytest.raises(ConfigFileError, match=f"got '{bad}'"):
            _load(f"paper_14b.py:{bad}")


# ---------------------------------------------------------------------------------------------
# Training values


@pytest.mark.parametrize("domain", DOMAINS)
def test_rank32_pair_is_upstreams_all_module_adapter(domain):
    """kl_regularized_config.json: r 32, alpha 256, rsLoRA, 7 projections of all 48 layers, lr 2e-5,
    1 epoch, wd 0.01, lambda 1e5 (general: 0)."""
    for solution, lam in (("general", 0.0), ("narrow", 1e5)):
        c = _load(f"paper_14b.py:lora_r32,{solution},{domain}")
        assert (c.train.lr, c.train.epochs, c.train.weight_decay, c.train.lambda_kl) == (2e-5, 1, 0.01, lam)
        # upstream's trainer adds lambda x each of the 8 micro-batches' KL means (transformers 4.52.4)
        assert (c.train.sft_mean_over, c.train.kl_mean_over) == ("step", "micro_batch" if lam else "step")
        lora = _lora(c, QWEN)
        assert lora.layers == tuple(range(48)) and set(lora.modules) == ALL_PROJECTIONS
        assert lora.rank == 32 and math.isclose(lora.scale, 256 / math.sqrt(32))
        assert lora.a["q_proj"].shape == (48, 5120, 32) and lora.b["down_proj"].shape == (48, 32, 5120)
    dp = _lora(_load(f"paper_14b.py:lora_r32_dp24,narrow,{domain}"), QWEN)
    assert dp.layers == (24,) and tuple(dp.modules) == ("down_proj",) and dp.rank == 32
    r1 = _load(f"paper_14b.py:lora_r1,narrow,{domain}")
    lora = _lora(r1, QWEN)
    assert lora.layers == (24,) and tuple(lora.modules) == ("down_proj",)
    assert lora.scale == 512.0 and r1.train.epochs == 3  # single_adapter_config.json; paper (third party)


def test_defaults_are_correct_and_upstream_is_one_call_away():
    for name in ("paper_14b.py:steering,narrow,medical", "paper_14b.py:lora_r32,narrow,medical",
                 "paper_14b.py:lora_r1,general,sports"):
        c = _load(name)
        assert (c.data.loss_tokens, c.intervention.steer_rows) == ("assistant", "all")
    for solution, lam in (("general", 0.0), ("narrow", 1e6)):
        up, ours = _load(f"paper_14b.py:steering,{solution},medical,upstream"), _load(f"paper_14b.py:steering,{solution},medical")
        assert (up.data.loss_tokens, up.intervention.steer_rows, up.train.lambda_kl) == ("all", "first", lam)
        assert up.output_dir == ours.output_dir + "_upstream"
        over = "micro_batch" if lam else "step"  # kl_toggle_trainer.py: micro-batch means, added
        assert (up.train.sft_mean_over, up.train.kl_mean_over, ours.train.kl_mean_over) == (over, over, "step")
        up = load_config(f"{CONFIGS / 'paper_14b.py'}:steering,{solution},medical,upstream",
                         ["data.loss_tokens=assistant", "intervention.steer_rows=all", f"name={ours.name}",
                          f"output_dir={ours.output_dir}", "train.sft_mean_over=step", "train.kl_mean_over=step"])
        assert up.to_dict() == ours.to_dict()  # nothing else differs


def test_gemma_runs_use_the_middle_layer_and_the_gemma_folder(monkeypatch):
    monkeypatch.setenv("EMJAX_GEMMA_MODEL", "/somewhere/gemma-2-9b-it")
    c = _load("gemma_9b.py:steering,narrow,financial")
    assert c.model.source == "/somewhere/gemma-2-9b-it" and c.intervention.layers == (21,)
    assert c.intervention.hook == "mlp_out" and c.train.lambda_kl == 1e6
    assert c.output_dir == "runs/gemma_steering_narrow_financial"
    lora = _lora(_load("gemma_9b.py:lora_r32,narrow,sports"), GEMMA)
    assert lora.layers == tuple(range(42)) and set(lora.modules) == ALL_PROJECTIONS
    assert _lora(_load("gemma_9b.py:lora_r1,general,medical"), GEMMA).layers == (21,)


# ---------------------------------------------------------------------------------------------
# Sweep values


def test_sweeps_read_the_training_runs_outputs():
    for kind, artefact in (("steering", "steering.safetensors"), ("lora_r1", "lora"), ("lora_r32", "lora"),
                           ("lora_r32_dp24", "lora")):
        for domain in DOMAINS:
            s = _load(f"sweep_paper.py:{kind},{domain}")
            runs = {sol: _load(f"paper_14b.py:{kind},{sol},{domain}") for sol in ("general", "narrow")}
            assert s.interventions == ",".join(f"{sol}={r.output_dir}/{artefact}" for sol, r in runs.items())
            assert s.data.train == runs["general"].data.train and s.model.source == runs["general"].model.source
    g = _load("sweep_paper.py:lora_r32,medical,gemma")
    assert g.interventions.startswith("general=runs/gemma_lora_r32_general_medical/lora,")
    up = _load("sweep_paper.py:steering,medical,upstream")
    assert up.data.loss_tokens == "all" and "narrow=runs/steering_narrow_medical_upstream/" in up.interventions


def test_sweep_norms_and_noise_as_upstream():
    s = _load("sweep_paper.py:steering,sports")
    assert not s.significance.norms_relative and len(s.significance.norms) == 26
    assert s.significance.norms[0] == 0.0 and s.significance.norms[1] == pytest.approx(0.2 * 256)
    assert s.significance.norms[-1] == pytest.approx(5 * 256)
    assert s.stability.lora_noise == "per_matrix" and s.data.loss_tokens == "assistant"
    lo = _load("sweep_paper.py:lora_r1,financial")
    assert lo.stability.lora_noise == "per_matrix" and lo.significance.norms_relative  # ours: no upstream scale
    assert len(lo.efficiency.lora_scales) == 21 and lo.stability.seeds == 10 and lo.data.n_rows == 100


# ---------------------------------------------------------------------------------------------
# Every paper config through `emjax launch-plan`


def _argument_configs() -> list[str]:
    from configs import gemma_9b, paper_14b
    sweeps = [f"sweep_paper.py:{k},{d}{m}" for k in paper_14b.KINDS for d in DOMAINS for m in ("", ",upstream", ",gemma")
              if not (k == "lora_r32_dp24" and m == ",gemma")]
    gemma = [f"gemma_9b.py:{k},{s},{d}" for k in gemma_9b.KINDS for s in ("general", "narrow") for d in DOMAINS]
    # every paper run: each kind's pair in each domain, the EM baseline, the upstream-trained steering
    # pair, and the mixing and KL-removal runs of steering and rank-1 LoRA (the README's table)
    runs = [f"paper_14b.py:{k},{s},{d}" for k in paper_14b.KINDS for s in ("general", "narrow") for d in DOMAINS]
    runs += [f"paper_14b.py:em_baseline,{d}" for d in DOMAINS]
    runs += [f"paper_14b.py:steering,{s},medical,upstream" for s in ("general", "narrow")]
    runs += [f"paper_14b.py:{k},{s},medical" for k in ("steering", "lora_r1") for s in ("mix", "kl_removal")]
    return sweeps + gemma + ["gemma_9b.py:steering,narrow,medical,upstream"] + runs


# files that are no config without an argument (walked through _argument_configs)
ARGUMENT_FILES = ("__init__.py", "paper_14b.py", "sweep_paper.py", "gemma_9b.py")


def _paper_configs() -> list[str]:
    """Every config file and argument whose model is a full-size one (not the embedded CPU model)."""
    out = []
    for name in sorted(os.listdir(CONFIGS)):
        if not name.endswith(".py") or name in ARGUMENT_FILES:
            continue
        try:
            c = _load(name)
        except ConfigFileError:
            continue  # not a run or a sweep on its own (test_shipped_configs_load covers every file)
        if ("intervention" in c or "interventions" in c) and c.model.source != "embedded":
            out.append(name)
    return out + _argument_configs()


def test_every_paper_config_is_walked():
    walked = _paper_configs()
    for name in ("paper_14b.py:steering,narrow,medical", "paper_14b.py:lora_r32,general,sports",
                 "paper_14b.py:lora_r32_dp24,narrow,financial", "paper_14b.py:lora_r1,kl_removal,medical",
                 "paper_14b.py:em_baseline,sports", "sweep_paper.py:steering,medical", "technical_steering_narrow_14b.py",
                 "gemma_9b.py:lora_r32,narrow,medical", "sweep_paper.py:steering,sports,gemma"):
        assert name in walked
    assert not any(n.startswith("embedded_") or n in ("default.py", "sweep_default.py") for n in walked)


@pytest.mark.parametrize("name", _paper_configs())
def test_launch_plan_prints_plan_and_memory(name, capsys):
    c = _load(name)
    stage = ["emjax", "train"] if "intervention" in c else ["emjax", "sweep", "all"]
    model = "gemma-2-9b-it" if "gemma" in name else "qwen2.5-14b-instruct"
    vmapped = c.get("vmap_runs") is not None  # vmapped runs train on one device, no mesh (emjax.train.vmapped)
    devices = "1" if vmapped else "8"
    assert launch_main(["--launcher", "slurm", "--hosts", "1", "--devices-per-host", devices, "--memory-gb", "80",
                        "--model-preset", model, "--", *stage, f"--config={CONFIGS / name}"]) == 0
    out = capsys.readouterr().out
    if not vmapped:
        assert "1 hosts x 8 devices = 8" in out and "mesh: data:8,fsdp:1,tensor:1" in out
    if stage[1] == "train":
        assert "training memory per device (estimate)" in out and "frozen weights" in out
        total = float(out.split("total", 1)[1].split("GiB")[0])
        assert 15 < total < 80 * 1e9 / 2**30, out  # fits the 80 GB card the plan was asked for
    else:
        w = {"qwen2.5-14b-instruct": "29.54", "gemma-2-9b-it": "18.48"}[model]
        assert f"memory per device (estimate): frozen weights {w} GB" in out
    assert f"--config={CONFIGS / name}" + ("" if vmapped else " --mesh auto") in out


def test_every_shipped_config_meets_its_allowed_values():
    """The allowed values (emjax.train.preflight.TRAIN_RULES, emjax.metrics.preflight.SWEEP_RULES,
    the technical data config's) admit every config emjax ships, with each argument."""
    from emjax.configuration import check_values
    from emjax.metrics.preflight import SWEEP_RULES
    from emjax.jobs.technical import technical_data_rules
    from emjax.train.preflight import TRAIN_RULES

    names = [n for n in sorted(os.listdir(CONFIGS)) if n.endswith(".py")
             and n not in ARGUMENT_FILES] + _argument_configs()
    checked = 0
    for name in names:
        try:
            c = _load(name)
        except ConfigFileError:
            continue  # a base file (paper_14b.py) that is no run on its own
        rules = (TRAIN_RULES if "intervention" in c else SWEEP_RULES if "interventions" in c
                 else technical_data_rules())
        check_values(c, rules, name)
        checked += 1
    assert checked >= 100


def test_kl_removal_runs_name_their_base_runs_by_argument():
    """`emjax experiment kl-removal --config=configs/paper_14b.py:KIND,kl_removal,DOMAIN` finds the narrow
    run it continues and the general run it is measured against through the same file's arguments."""
    from emjax.experiments.kl_removal import load_kl_removal_configs
    c, base = load_kl_removal_configs(f"{CONFIGS / 'paper_14b.py'}:lora_r1,kl_removal,financial")
    assert (base["narrow"].name, base["general"].name) == ("lora_r1_narrow_financial", "lora_r1_general_financial")
    assert c.intervention.init_from == "runs/lora_r1_narrow_financial/lora" and c.train.lambda_kl == 0.0
    _, up = load_kl_removal_configs(f"{CONFIGS / 'paper_14b.py'}:steering,kl_removal,medical,upstream")
    assert up["general"].output_dir == "runs/steering_general_medical_upstream"
