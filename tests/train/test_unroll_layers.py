"""The unrolled layer loop (`StepOptions.unroll_layers`, `run_layers(unroll=True)`) computes the same
loss and gradients as the scanned one, over the whole stack and over a suffix (the frozen prefix
below a steering layer), and compiles to a program with no loop over the layers; train.layer_loop
chooses it (`emjax.train.layer_loop`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model.config import preset
from emjax.model.schema import PROJECTIONS, init_random
from emjax.train import memory as MEM
from emjax.train import step as TS
from emjax.train.layer_loop import MIN_UNROLLED_PASSES, UNROLL_HEADROOM, choose_layer_loop

TINY = dict(n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=160, vocab_size=256)


def _batches(cfg, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    b, t = 2, 10
    mask = jnp.arange(t)[None, :] < jnp.array([[t], [t - 4]])  # one right-padded row
    tokens = jax.random.randint(keys[0], (b, t), 0, cfg.vocab_size)
    targets = jax.random.randint(keys[1], (b, t), 0, cfg.vocab_size)
    sft = TS.SFTBatch(tokens=tokens, mask=mask, targets=targets, loss_mask=mask)
    kl = TS.KLBatch(tokens=jax.random.randint(keys[2], (b, t), 0, cfg.vocab_size), mask=mask)
    return sft, kl


def _interventions(cfg, kind):
    if kind == "lora":  # every layer: the whole stack is scanned
        lora = init_lora(cfg, jax.random.PRNGKey(1), rank=4, alpha=8.0, modules=PROJECTIONS)
        return Interventions(lora=lora.replace(b=jax.tree.map(
            lambda b: 0.05 * jax.random.normal(jax.random.PRNGKey(2), b.shape), lora.b)))
    steer = init_steering(cfg, layers=(1,))  # a suffix: layers [1, L) from the frozen prefix
    return Interventions(steer=steer.replace(vectors=jax.random.normal(jax.random.PRNGKey(3), steer.vectors.shape)))


@pytest.mark.parametrize("family,kind,remat", [("qwen2.5-14b-instruct", "lora", None),
                                               ("qwen2.5-14b-instruct", "steer", "dots"),
                                               ("gemma-2-9b-it", "lora", None),
                                               ("gemma-2-9b-it", "steer", None)])
def test_unrolled_layers_give_the_scanned_loss_and_gradients(family, kind, remat):
    cfg = preset(family).replace(**TINY)
    if cfg.sliding_window:
        cfg = cfg.replace(sliding_window=4)
    w = init_random(cfg, jax.random.PRNGKey(0), jnp.float32)
    iv = _interventions(cfg, kind)
    sft, kl = _batches(cfg, seed=7)
    k = iv.shared_prefix_layers(cfg)
    assert (k > 0) == (kind == "steer")

    def loss_and_grads(unroll):
        opts = TS.StepOptions(first_layer=k, remat=remat, unroll_layers=unroll)
        n = jnp.sum(sft.loss_mask).astype(jnp.float32)
        fn = lambda p: TS.micro_loss(p, w, cfg, opts, sft, kl, jnp.float32(3.0), n, n)[0]
        return jax.jit(jax.value_and_grad(fn))(iv)

    value, grads = loss_and_grads(True)
    want_value, want_grads = loss_and_grads(False)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


def test_unrolled_step_compiles_without_a_layer_loop():
    cfg = preset("qwen2.5-14b-instruct").replace(**TINY)
    w = init_random(cfg, jax.random.PRNGKey(0), jnp.float32)
    iv = _interventions(cfg, "lora")
    sft, _ = _batches(cfg, seed=8)
    n = jnp.sum(sft.loss_mask).astype(jnp.float32)

    def loops(unroll):
        opts = TS.StepOptions(unroll_layers=unroll)
        fn = jax.grad(lambda p: TS.micro_loss(p, w, cfg, opts, sft, None, jnp.float32(0.0), n, n)[0])
        return len(re.findall(r"\bwhile\(", jax.jit(fn).lower(iv).compile().as_text()))

    assert loops(False) >= 2  # the forward and the backward layer loops
    assert loops(True) == 0


def test_layer_loop_choice():
    cfg = preset("qwen2.5-14b-instruct")
    lora = jax.eval_shape(lambda: init_lora(cfg, jax.random.PRNGKey(1), rank=32, alpha=64.0, modules=PROJECTIONS))
    est = MEM.estimate_training_memory(cfg, Interventions(lora=lora), MEM.MemoryPlan(batch_size=2, seq_len=256))
    need, long_run = est.total * UNROLL_HEADROOM, MIN_UNROLLED_PASSES
    assert choose_layer_loop("auto", est, None, long_run, backend="cpu") == (False, "")
    unroll, note = choose_layer_loop("auto", est, int(need) + 1, long_run, backend="gpu")
    assert unroll and "unrolled" in note and f"{long_run} micro-batches" in note
    unroll, note = choose_layer_loop("auto", est, int(need) - 1, long_run, backend="gpu")  # fits, not with room
    assert not unroll and "exceeds the device's" in note
    unroll, note = choose_layer_loop("auto", est, None, long_run - 1, backend="gpu")  # too short a run
    assert not unroll and "too few" in note
    assert choose_layer_loop("auto", est, None, long_run, backend="gpu")[0]  # no limit reported
    for choice, want in (("scan", False), ("unrolled", True)):
        for backend in ("cpu", "gpu"):
            unroll, note = choose_layer_loop(choice, est, 1, 1, backend=backend)
            assert unroll == want and "train.layer_loop" in note
    with pytest.raises(ValueError, match="unknown layer loop 'unroled'"):
        choose_layer_loop("unroled", est, None, long_run)


def test_trainer_takes_the_layer_loop_from_the_config(tmp_path):
    from tiny_run import tiny_config, tiny_model
    from emjax.train.trainer import Trainer

    model = tiny_model()
    auto = Trainer(tiny_config(tmp_path, "auto"), model)
    assert not auto.opts.unroll_layers and not any("layer loop" in n for n in auto.notes)  # CPU
    unrolled = Trainer(tiny_config(tmp_path, "unrolled", layer_loop="unrolled"), model)
    assert unrolled.opts.unroll_layers and "layer loop: unrolled (train.layer_loop)" in unrolled.notes
