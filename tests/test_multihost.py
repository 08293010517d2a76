"""Two processes on this machine joined with `jax.distributed` over localhost (4 fake CPU devices
each, started by launch/local_multiprocess.sh): a sharded train step and a sharded sweep, an Orbax checkpoint saved from both and restored
onto a different mesh in a fresh run, and only process 0 writing outputs; the numbers equal a
single-process run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from multihost_setup import build_folder, sweep_config, train_config
from emjax.interventions.files import load_steering
from emjax.metrics.runner import sweep
from emjax.train.trainer import Trainer

import paths

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
LAUNCHER = str(paths.REPO / "launch" / "local_multiprocess.sh")


def _launch(phase: str, work: str) -> None:
    env = {**os.environ, "N": "2", "DEVICES": "4"}
    p = subprocess.run(["bash", LAUNCHER, sys.executable, WORKER, phase, work], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"phase {phase} failed:\n{(p.stdout + p.stderr)[-4000:]}"


@pytest.mark.slow
def test_two_processes_train_sweep_checkpoint_and_restore_onto_another_mesh(tmp_path):
    work = str(tmp_path)
    build_folder(work)
    # the single-process reference: the whole run and the sweep of its step-2 snapshot
    ref = Trainer(train_config(work, None, out="ref")).run()
    ref_sweep = sweep(sweep_config(work, None, out="ref"), ("efficiency",))["efficiency"]["at_trained_norm"]

    _launch("train", work)
    out = os.path.join(work, "out", "train")
    assert os.path.isdir(os.path.join(out, "checkpoints", "2"))  # saved by both processes
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["step"] for l in lines if "sft_loss" in l] == [1, 2]  # one writer: no line twice
    for pid in (0, 1):  # both processes computed the same sweep, equal to the reference
        got = json.load(open(os.path.join(work, f"sweep_{pid}.json")))
        assert got["trained"]["loss"] == pytest.approx(ref_sweep["trained"]["loss"], rel=1e-5)
    assert os.path.exists(os.path.join(work, "out", "sweep", "efficiency.csv"))
    written = json.load(open(os.path.join(work, "writes_train_0.json")))  # the recorder sees process 0's files
    assert any(w.endswith("metrics.jsonl") for w in written) and any(w.endswith("efficiency.csv") for w in written)
    assert json.load(open(os.path.join(work, "writes_train_1.json"))) == []

    _launch("resume", work)  # fresh processes, mesh data:4,fsdp:2, restore from step 2
    resumed = json.load(open(os.path.join(work, "resume_0.json")))
    assert resumed == json.load(open(os.path.join(work, "resume_1.json")))
    assert resumed["steps"] == 4
    assert resumed["eval_loss"] == pytest.approx(ref["final_eval"]["eval_loss"], rel=1e-5)
    np.testing.assert_allclose(np.asarray(load_steering(os.path.join(out, "steering.safetensors")).vectors),
                               np.asarray(load_steering(ref["artefact"]).vectors), rtol=1e-4, atol=1e-6)
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["step"] for l in lines if "sft_loss" in l] == [1, 2, 3, 4]
    assert any(w.endswith("summary.json") for w in json.load(open(os.path.join(work, "writes_resume_0.json"))))
    assert json.load(open(os.path.join(work, "writes_resume_1.json"))) == []
