"""summary.md of the main job: what did not run is listed with why and how, a dry-run judge is
said (not listed as a skip), and each stage's seconds are tabled."""

from emjax.jobs.main_summary import summary_md

MODEL = {"name": "m", "family": "qwen2", "layers": 4, "params": 1e6, "source": "tiny"}
TIMES = {"load": 1.0, "data": 0.1, "cache": 0.0, "compile": 2.0, "compute": 3.0, "other": 0.1, "total": 6.2}
RUNS = {k: {"final_eval": {"eval_loss": 1.0, "eval_kl_ood": 0.1}, "intervention_norm": 2.0}
        for k in ("general_seed0", "narrow_seed0")}


def _summary(**extra):
    return {"model": MODEL, "timings": TIMES, "not_run": [], **extra,
            "stages": {"chat": {"timings": TIMES}, "train": {"runs": RUNS, "timings": TIMES},
                       "generate": {"timings": TIMES}, "judge": {"dry_run": {"n_pending": 7}, "timings": TIMES},
                       **extra.pop("stages", {})}}


def test_a_dry_run_judge_is_said_and_nothing_listed_as_skipped():
    md = summary_md(_summary(judge_note="dry run", stages={"sweeps": {
        "efficiency": {"equal_norm_loss": {"at_norm_of_general_seed0": {"general_seed0": 1.0, "narrow_seed0": 2.0}}},
        "stability": {"mean_relative_increase": {"general_seed0": 0.1, "narrow_seed0": 0.2},
                      "relative_increase": {"general_seed0": {"0.3": 0.05, "1": 0.15}}},
        "significance": {"kl_at_max_norm": {"general_seed0": 2.0, "narrow_seed0": 1.0}}}}))
    assert "Nothing was skipped" in md and "## Not run" not in md and "dry run" in md.lower()
    assert "## The three metrics" in md and "over eps 0.3, 1 (eps 1: the vector replaced by noise" in md
    assert "| 2 train | 1.0 | 0.1 | 0.0 | 2.0 | 3.0 | 0.1 | 6.2 |" in md


def test_what_did_not_run_is_listed_with_reason_and_command():
    md = summary_md(_summary(not_run=[{"what": "significance", "reason": "no FineWeb sample at X",
                                       "enable": "`emjax data get fineweb`"}],
                             stages={"sweeps": {"efficiency": {"equal_norm_loss": {}}, "stability": {
                                 "mean_relative_increase": {}}}}))
    assert "## Not run" in md and "| significance | no FineWeb sample at X | `emjax data get fineweb` |" in md
    assert "2 of the paper's three ran" in md and "Nothing was skipped" not in md


def test_general_and_narrow_vectors_compared_and_sameness_said():
    same = {"seed0": {"cosine": 1.0, "relative_difference": 2e-7, "note": "the narrow and general vectors are the same"}}
    md = summary_md(_summary(general_vs_narrow=same))
    assert "General vs narrow (seed0): cosine 1.0000, relative difference 2.00e-07. **Note:** the narrow" in md
    apart = {"seed0": {"cosine": 0.93, "relative_difference": 0.4, "note": None}}
    md = summary_md(_summary(general_vs_narrow=apart))
    assert "cosine 0.9300, relative difference 4.00e-01." in md and "Note" not in md


def test_vectors_compared_per_seed_and_a_missing_file_skipped(tmp_path, capsys):
    import numpy as np
    from emjax.interventions import SteeringVectors
    from emjax.interventions.files import save_steering
    from emjax.jobs.main import _vectors_compared

    rng = np.random.default_rng(0)
    g = rng.normal(size=(1, 8)).astype(np.float32)
    runs = {}
    for kind, v in (("general", g), ("narrow", g + 1e-6)):
        path = tmp_path / f"{kind}0.safetensors"
        save_steering(SteeringVectors(vectors=v, layers=(2,), alpha=1.0, hook="mlp_out"), path)
        runs[f"{kind}_seed0"] = {"artefact": str(path), "steps": 2}
    far = g + rng.normal(size=g.shape).astype(np.float32)
    save_steering(SteeringVectors(vectors=far, layers=(2,), alpha=1.0, hook="mlp_out"), tmp_path / "narrow1.safetensors")
    runs["general_seed1"] = runs["general_seed0"]
    runs["narrow_seed1"] = {"artefact": str(tmp_path / "narrow1.safetensors"), "steps": 12}
    runs["general_seed2"] = runs["general_seed0"]
    runs["narrow_seed2"] = {"artefact": str(tmp_path / "gone.safetensors"), "steps": 12}
    out = _vectors_compared(runs, (0, 1, 2))
    assert out["seed0"]["cosine"] > 0.9999 and out["seed0"]["relative_difference"] < 1e-5
    assert "same to" in out["seed0"]["note"] and "2 steps" in out["seed0"]["note"]
    want = np.linalg.norm(far - g) / np.linalg.norm(g)
    assert abs(out["seed1"]["relative_difference"] - want) < 1e-6 and out["seed1"]["note"] is None
    assert "seed2" not in out and "general vs narrow (seed2): not compared" in capsys.readouterr().out
