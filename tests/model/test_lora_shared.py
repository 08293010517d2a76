"""`add_lora_shared`: the down-projections of projections of one input as one matmul give what
`add_lora` gives module by module, values and gradients, whichever subset is targeted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.model.hooks import LayerHooks, add_lora, add_lora_shared

MODULES = ("q_proj", "k_proj", "v_proj")
OUT = {"q_proj": 24, "k_proj": 8, "v_proj": 8}


def _hooks(targets, rank, seed):
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 2 * len(targets)))
    a = {m: jax.random.normal(next(keys), (16, rank)) for m in targets}
    b = {m: jax.random.normal(next(keys), (rank, OUT[m])) for m in targets}
    return LayerHooks(lora_a=a, lora_b=b, steer={})


@pytest.mark.parametrize("targets,rank", [(MODULES, 4), (("q_proj", "v_proj"), 3), (("k_proj",), 2), ((), 1)])
def test_shared_down_projection_equals_one_by_one(targets, rank):
    hooks = _hooks(targets, rank, seed=len(targets) + rank)
    rng = np.random.default_rng(rank)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    ys = tuple(jnp.asarray(rng.normal(size=(2, 5, OUT[m])), jnp.float32) for m in MODULES)

    def shared(h, x):
        return sum(jnp.sum(jnp.sin(y)) for y in add_lora_shared(h, MODULES, x, ys))

    def single(h, x):
        return sum(jnp.sum(jnp.sin(add_lora(h, m, x, y))) for m, y in zip(MODULES, ys))

    for got, want in zip(add_lora_shared(hooks, MODULES, x, ys),
                         [add_lora(hooks, m, x, y) for m, y in zip(MODULES, ys)]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    g_got = jax.grad(shared, argnums=(0, 1))(hooks, x)
    g_want = jax.grad(single, argnums=(0, 1))(hooks, x)
    for got, want in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    if len(targets) >= 2:  # one [.., 16] x [16, sum of ranks] product, not one per module
        hlo = jax.jit(shared).lower(hooks, x).as_text()
        assert hlo.count("stablehlo.dot_general") == 1 + len(targets), hlo.count("stablehlo.dot_general")
