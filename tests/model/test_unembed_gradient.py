"""The unembedding's own backward (`emjax.model.layers.frozen_unembed`): exact in float32, the
bf16 product of a bf16 model's autograd otherwise, and never a float32 copy of the table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.model.config import preset
from emjax.model.decoder import unembed
from emjax.model.schema import abstract_weights


def _weights(tied: bool, dtype, seed: int):
    cfg = preset("qwen2.5-14b-instruct").replace(n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16,
                                                  ffn_dim=128, vocab_size=96, tie_embeddings=tied)
    abstract = abstract_weights(cfg, dtype)
    leaves, tree = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [jax.random.normal(k, l.shape, jnp.float32).astype(dtype) for k, l in zip(keys, leaves)]
    return cfg, jax.tree.unflatten(tree, leaves)


def _plain_unembed(w, cfg, x):
    """The einsum the decoder used before its custom VJP (autodiff's own transpose)."""
    from emjax.model.layers import rms_norm
    x = rms_norm(x, w.final_norm, cfg.norm_eps, cfg.norm_plus_one)
    table, spec = (w.embed, "btd,vd->btv") if w.lm_head is None else (w.lm_head, "btd,dv->btv")
    return jnp.einsum(spec, x, table, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("tied", [True, False])
def test_float32_gradient_is_autodiffs(tied):
    cfg, w = _weights(tied, jnp.float32, seed=1 + tied)
    rng = np.random.default_rng(tied)
    x = jnp.asarray(rng.normal(size=(2, 5, cfg.d_model)), jnp.float32)
    r = jnp.asarray(rng.normal(size=(2, 5, cfg.vocab_size)), jnp.float32)
    loss = lambda f: (lambda x: jnp.sum(jax.nn.log_softmax(f(w, cfg, x)) * r))
    np.testing.assert_array_equal(np.asarray(unembed(w, cfg, x)), np.asarray(_plain_unembed(w, cfg, x)))
    got, want = jax.grad(loss(unembed))(x), jax.grad(loss(_plain_unembed))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_gradient_within_bf16_rounding_and_no_float32_table(tied):
    cfg, w = _weights(tied, jnp.bfloat16, seed=3 + tied)
    rng = np.random.default_rng(5 + tied)
    x = jnp.asarray(rng.normal(size=(2, 7, cfg.d_model)), jnp.bfloat16)
    r = jnp.asarray(rng.normal(size=(2, 7, cfg.vocab_size)), jnp.float32)
    loss = lambda f: (lambda x: jnp.sum(jax.nn.log_softmax(f(w, cfg, x)) * r))
    got = jax.grad(loss(unembed))(x)
    assert got.dtype == jnp.bfloat16
    # reference: the whole backward in float32 from the same bf16 inputs
    w32 = jax.tree.map(lambda a: a.astype(jnp.float32), w)
    want = jax.grad(lambda x: jnp.sum(jax.nn.log_softmax(_plain_unembed(w32, cfg, x)) * r))(x.astype(jnp.float32))
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want))
    assert err.max() <= 2e-2 * np.abs(np.asarray(want)).max(), err.max()
    # the backward's product reads the bf16 table: no [V, D] float32 operand in the program
    hlo = jax.jit(jax.grad(loss(unembed))).lower(x).as_text()
    v, d = cfg.vocab_size, cfg.d_model
    assert f"tensor<{v}x{d}xf32>" not in hlo and f"tensor<{d}x{v}xf32>" not in hlo
    plain = jax.jit(jax.grad(loss(_plain_unembed))).lower(x).as_text()
    assert f"tensor<{v}x{d}xf32>" in plain or f"tensor<{d}x{v}xf32>" in plain  # what the test guards against
