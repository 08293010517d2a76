"""The lean block (emjax.model.decoder: norms and the MLP after gate/up recomputed in the backward
pass when training without remat) against the same block keeping every intermediate: the same
loss and gradients, fewer saved bytes, and no base matmul run twice."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model import decoder as D
from emjax.model.config import preset
from emjax.model.schema import PROJECTIONS, init_random
from emjax.train.shared_prefix import suffix_ce

TINY = dict(n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=160, vocab_size=256)


def _setup(family):
    cfg = preset(family).replace(**TINY)
    if cfg.sliding_window:
        cfg = cfg.replace(sliding_window=5)
    w = init_random(cfg, jax.random.PRNGKey(0), jnp.float32)
    lora = init_lora(cfg, jax.random.PRNGKey(1), rank=4, alpha=8.0, modules=PROJECTIONS)
    lora = lora.replace(b=jax.tree.map(lambda b: 0.05 * jax.random.normal(jax.random.PRNGKey(2), b.shape), lora.b))
    steer = init_steering(cfg, layers=(1,))
    steer = steer.replace(vectors=jax.random.normal(jax.random.PRNGKey(3), steer.vectors.shape))
    iv = Interventions(lora=lora, steer=steer)
    b, t = 2, 12
    x = jax.random.normal(jax.random.PRNGKey(4), (b, t, cfg.d_model))
    mask = jnp.arange(t)[None, :] < jnp.array([[t], [t - 3]])  # a right-padded row
    targets = jax.random.randint(jax.random.PRNGKey(5), (b, t), 0, cfg.vocab_size)
    loss = lambda p, x, remat=None: suffix_ce(p, w, cfg, 0, x, mask, targets, mask, remat=remat)[0]
    return loss, iv, x


def _keep_everything(monkeypatch):
    monkeypatch.setattr(D, "_recompute", lambda fn: fn)


@pytest.mark.parametrize("family", ["qwen2.5-14b-instruct", "gemma-2-9b-it"])
def test_lean_block_gives_the_same_gradients_and_keeps_less(family, monkeypatch):
    loss, iv, x = _setup(family)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    saved = lambda: _saved_bytes(loss, iv, x)
    lean_value, lean_grads = grad(iv, x)
    lean_saved = saved()
    lean_flops = _flops(loss, iv, x)
    with monkeypatch.context() as m:
        _keep_everything(m)
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(iv, x)
        kept_saved = saved()
        kept_flops = _flops(loss, iv, x)
    np.testing.assert_allclose(lean_value, value, rtol=1e-6)
    _assert_close(lean_grads, grads)
    assert lean_saved < 0.7 * kept_saved, (lean_saved, kept_saved)
    # recomputing the norms, the activation and the small x @ A of down_proj only: a base matmul run
    # again would add 2 b t F D per layer (here 13% of the step's FLOPs)
    assert lean_flops < 1.02 * kept_flops, (lean_flops, kept_flops)


def test_remat_policies_agree_with_the_lean_block():
    loss, iv, x = _setup("qwen2.5-14b-instruct")
    ref = jax.grad(loss)(iv, x)
    for remat in ("dots", "full"):
        got = jax.grad(lambda p, x: loss(p, x, remat))(iv, x)
        _assert_close(got, ref)


def _assert_close(got, want):
    """float32 agreement, relative to each gradient leaf's scale (the recomputed activation is fused
    otherwise than the kept one: rounding differences of 1e-4 of an element near cancellation)."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


def _saved_bytes(loss, iv, x) -> int:
    """Bytes the backward keeps stacked over the layers (what the blocks keep; the loss's are equal)."""
    saved_residuals = pytest.importorskip("jax._src.ad_checkpoint").saved_residuals
    return sum(math.prod(r.shape) * r.dtype.itemsize for r, _ in saved_residuals(loss, iv, x)
               if r.shape[:2] == (TINY["n_layers"], x.shape[0]))


def _flops(loss, iv, x) -> float:
    cost = jax.jit(jax.grad(loss)).lower(iv, x).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]
