"""One process of the two-process run of tests/test_multihost.py (4 fake CPU devices each, joined by
`jax.distributed` over localhost), started by launch/local_multiprocess.sh:

    N=2 DEVICES=4 launch/local_multiprocess.sh python multihost_worker.py PHASE WORKDIR

PHASE "train": train 2 of 4 steps on mesh data:2,fsdp:4 (an Orbax checkpoint from both processes
at step 2), then a sharded efficiency sweep. PHASE "resume": a fresh run on mesh data:4,fsdp:2
restores that checkpoint and trains to the end. Process 1 records every file it opens for
writing outside the checkpoints (it should write none) in WORKDIR/writes_<phase>_1.json.
"""

import builtins
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

from emjax.model.mesh_plan import join_hosts_from_env  # noqa: E402

phase, work = sys.argv[1], sys.argv[2]
assert join_hosts_from_env()  # EMJAX_COORDINATOR / EMJAX_NUM_PROCESSES / EMJAX_PROCESS_ID from the launcher
pid = jax.process_index()
assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4

writes: list[str] = []
_open = builtins.open


def recording_open(file, mode="r", *args, **kwargs):
    path = os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
    if any(c in mode for c in "wax+") and path.startswith(os.path.join(work, "out")) and \
            f"{os.sep}checkpoints{os.sep}" not in path:
        writes.append(path)
    return _open(file, mode, *args, **kwargs)


builtins.open = recording_open

from jax.experimental import multihost_utils  # noqa: E402

from multihost_setup import sweep_config, train_config  # noqa: E402
from emjax.metrics.runner import sweep  # noqa: E402
from emjax.train.trainer import Trainer  # noqa: E402

if phase == "train":
    trainer = Trainer(train_config(work, "data:2,fsdp:4"))
    assert trainer.mesh.shape["fsdp"] == 4 and len(trainer.model.weights.layers.q_proj.sharding.device_set) == 8
    # each process holds only its own devices' slices of the weights
    assert all(s.device.process_index == pid for s in trainer.model.weights.layers.q_proj.addressable_shards)
    assert trainer.run(stop_at_step=2) == {"stopped_at": 2}
    multihost_utils.sync_global_devices("trained")
    summary = sweep(sweep_config(work, "data:2,fsdp:4"), ("efficiency",))["efficiency"]
    with _open(os.path.join(work, f"sweep_{pid}.json"), "w") as f:
        json.dump(summary["at_trained_norm"], f)
else:
    trainer = Trainer(train_config(work, "data:4,fsdp:2"))
    assert trainer.mesh.shape == {"data": 4, "fsdp": 2, "tensor": 1}
    summary = trainer.run()
    with _open(os.path.join(work, f"resume_{pid}.json"), "w") as f:
        json.dump({"steps": summary["steps"], "eval_loss": summary["final_eval"]["eval_loss"]}, f)
multihost_utils.sync_global_devices("done")
with _open(os.path.join(work, f"writes_{phase}_{pid}.json"), "w") as f:
    json.dump(writes, f)
jax.distributed.shutdown()
