"""The launchers' dry runs: the mesh, the per-device memory estimate and the command of every host,
from the scripts in launch/ (no cluster needed), and clear errors for launches that cannot work."""

import os
import subprocess
import sys

import pytest

import paths
from emjax.launch import LaunchError, plan_launch

EMJAX = os.path.join(os.path.dirname(sys.executable), "emjax")


def _dry_run(script: str, env: dict, *stage: str) -> str:
    p = subprocess.run(["bash", str(paths.REPO / "launch" / script), *stage], capture_output=True, text=True,
                       env={**os.environ, "DRY_RUN": "1", "EMJAX": EMJAX, **env}, cwd=str(paths.REPO), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_tpu_pod_dry_run_of_a_14b_sweep():
    out = _dry_run("tpu_pod.sh", {"HOSTS": "16", "DEVICES": "4", "MEMORY_GB": "95",
                                  "MODEL_PRESET": "qwen2.5-14b-instruct"},
                   "emjax", "sweep", "efficiency", "--config=configs/sweep_paper.py:steering,medical")
    assert "16 hosts x 4 devices = 64" in out
    assert "mesh: data:64,fsdp:1,tensor:1 (auto: weights 29.5 GB" in out  # fits: data parallel
    assert "frozen weights 29.54 GB of 29.54 GB" in out
    workers = [l for l in out.splitlines() if l.strip().startswith("worker ")]
    assert len(workers) == 16 and all("EMJAX_DISTRIBUTED=1" in w and w.endswith("--mesh auto") for w in workers)


def test_slurm_dry_run_of_14b_training_shards_when_the_card_is_small():
    out = _dry_run("slurm_gpu.sbatch", {"HOSTS": "2", "DEVICES": "8", "MEMORY_GB": "40",
                                        "MODEL_PRESET": "qwen2.5-14b-instruct"},
                   "emjax", "train", "--config=configs/paper_14b.py:em_baseline,medical",
                   "--config.train.batch_size=8", "--config.train.kl_batch_size=8")
    assert "mesh: data:8,fsdp:2,tensor:1" in out  # 29.5 GB > half of 40 GB: the smallest fsdp in a host
    assert "training memory per device (estimate)" in out and "AdamW moments" in out
    assert len([l for l in out.splitlines() if "SLURM_PROCID=" in l]) == 2
    assert "warning" not in out


def test_local_dry_run_warns_when_rows_do_not_split():
    out = _dry_run("local_multiprocess.sh", {"N": "2", "DEVICES": "4"},
                   "emjax", "train", "--config=configs/embedded_steering_general.py")
    assert "mesh: data:8,fsdp:1,tensor:1" in out  # CPU: no memory reported, data parallel
    assert "warning: train.batch_size=2" in out and "do not split over data:8" in out
    cmds = [l for l in out.splitlines() if "EMJAX_PROCESS_ID=" in l]
    assert len(cmds) == 2 and "EMJAX_PROCESS_ID=1" in cmds[1]


def test_launch_errors_name_the_problem():
    stage = ["emjax", "sweep", "efficiency", "--config=configs/sweep_embedded.py"]
    with pytest.raises(LaunchError, match="mesh 'data:3' needs 3 devices; the launch has 8"):
        plan_launch(stage + ["--mesh", "data:3"], "local", 2, 4)
    with pytest.raises(LaunchError, match="do not fit 8 devices"):
        plan_launch(stage, "slurm", 1, 8, memory_gb=2.0, model_preset="qwen2.5-14b-instruct")
    with pytest.raises(LaunchError, match="not a folder on this machine: name its shapes with --model-preset"):
        plan_launch(["emjax", "generate", "--model", "/nowhere/Qwen2.5-14B", "--questions", "q.yaml"], "tpu", 2, 4)
    with pytest.raises(LaunchError, match="must be an emjax command"):
        plan_launch(["python", "x.py"], "tpu", 2, 4)


def test_vmapped_training_is_planned_on_one_device_without_a_mesh():
    stage = ["emjax", "train", "--config=configs/steering_lambda_sweep_medical.py"]
    plan = plan_launch(stage, "local", 1, 1, memory_gb=141, model_preset="qwen2.5-14b-instruct")
    assert plan.commands[0].endswith("--config=configs/steering_lambda_sweep_medical.py")  # no --mesh: refused there
    assert "one run's estimate" in plan.memory and "layers 25-47 trained" in plan.memory
    with pytest.raises(LaunchError, match="vmapped runs .* train on one device without a mesh; this launch has 8"):
        plan_launch(stage, "slurm", 1, 8, memory_gb=141, model_preset="qwen2.5-14b-instruct")
    with pytest.raises(LaunchError, match="this launch has 1 devices and mesh 'data:1'"):
        plan_launch(["emjax", "train", "--config=configs/embedded_steering_narrow.py", "--vmap-runs", "seed=0,1",
                     "--mesh", "data:1"], "local", 1, 1)
