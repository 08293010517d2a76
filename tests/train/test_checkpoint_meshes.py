"""An Orbax checkpoint of arrays sharded on one mesh restores onto another (and onto one device)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from emjax.model.mesh_plan import global_array
from emjax.model.sharding import make_mesh
from emjax.train.checkpointing import Checkpointer


def test_restore_onto_a_different_mesh(tmp_path):
    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=(8, 16)).astype(np.float32), "b": rng.normal(size=(16,)).astype(np.float32),
            "step": np.int32(3)}
    a = make_mesh({"data": 2, "fsdp": 4})
    on_a = {"w": global_array(host["w"], NamedSharding(a, P("data", "fsdp"))),
            "b": global_array(host["b"], NamedSharding(a, P("fsdp"))), "step": jnp.int32(3)}
    ck = Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(3, on_a, {"step": 3})
    ck.close()
    b = make_mesh({"fsdp": 2, "tensor": 4})
    target = {"w": global_array(np.zeros((8, 16), np.float32), NamedSharding(b, P("tensor", "fsdp"))),
              "b": global_array(np.zeros(16, np.float32), NamedSharding(b, P())), "step": jnp.int32(0)}
    state, meta = Checkpointer(str(tmp_path / "ck")).restore(target)
    assert meta == {"step": 3}
    assert state["w"].sharding.spec == P("tensor", "fsdp") and len(state["w"].sharding.device_set) == 8
    for k in host:
        np.testing.assert_array_equal(np.asarray(state[k]), host[k])
    one, _ = Checkpointer(str(tmp_path / "ck")).restore(jax.tree.map(np.zeros_like, host))
    np.testing.assert_array_equal(np.asarray(one["w"]), host["w"])
