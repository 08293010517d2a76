"""Sweeps: vmapped = loop (rescaled and perturbed versions, both LoRA noise modes), chunked and
sharded = unsharded, orthogonal noise properties on the update, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, padded_batch, qwen2_config, to_emjax
from emjax.metrics import sweeps as SW
from emjax.interventions import arithmetic as A
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model.sharding import make_mesh


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])
def tiny(request):
    hf = (build_hf(qwen2_config(tied=True), seed=51) if request.param == "qwen2"
          else build_hf(gemma2_config(), seed=52, weight_scale=2.0))
    return to_emjax(hf)


def _rows(cfg, seed):
    tokens, mask = padded_batch(np.random.default_rng(seed), cfg.vocab_size, [9, 6, 11], "right")
    targets = np.concatenate([tokens[:, 1:], np.zeros((3, 1), np.int32)], 1)
    loss_mask = mask & np.concatenate([mask[:, 1:], np.zeros((3, 1), bool)], 1)
    return jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(targets), jnp.asarray(loss_mask)


def _trained_like(cfg, kind, key):
    k1, k2 = jax.random.split(key)
    if kind.startswith("steer"):
        sv = init_steering(cfg, layers=(1,), alpha=2.0, hook="block_out" if kind == "steer_block" else "mlp_out")
        return Interventions(steer=sv.replace(vectors=jax.random.normal(k1, sv.vectors.shape)))
    lora = init_lora(cfg, k1, rank=2, alpha=4.0, modules=("v_proj", "up_proj"), layers=(1, 2))
    return Interventions(lora=lora.replace(b={m: 0.2 * jax.random.normal(k2, b.shape) for m, b in lora.b.items()}))


@pytest.mark.parametrize("kind", ["steer", "steer_block", "lora"])
@pytest.mark.parametrize("metric", ["ce", "kl"])
def test_vmapped_sweep_equals_loop(tiny, kind, metric):
    cfg, w = tiny
    tokens, mask, targets, loss_mask = _rows(cfg, 1)
    iv = _trained_like(cfg, kind, jax.random.PRNGKey(2))
    stacked = A.rescale_to_norms(iv, [0.0, 0.5, 1.0, 3.0, 7.0])
    kw = dict(metric=metric, targets=targets, loss_mask=loss_mask)
    ref = SW.loop_losses(stacked, w, cfg, tokens, mask, **kw)
    got = np.asarray(SW.sweep_losses(stacked, w, cfg, tokens, mask, **kw))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    chunked = np.asarray(SW.sweep_losses(stacked, w, cfg, tokens, mask, chunk=2, **kw))
    np.testing.assert_allclose(chunked, got, rtol=1e-5, atol=1e-7)
    if metric == "kl":
        assert got[0] == pytest.approx(0.0, abs=1e-6)  # zero norm is the base model
        assert np.all(np.diff(got) > 0)


@pytest.mark.parametrize("metric", ["ce", "kl"])
def test_batches_combine_to_the_token_mean_of_all_rows(tiny, metric):
    """Rows split into batches of very different token counts give the token mean over every row:
    each batch weighs the tokens its own mean is over (every real token for KL; it weighed its
    loss_mask for KL too, one token fewer per row)."""
    from emjax.data.tokenize import padded_batches
    cfg, w = tiny
    rng = np.random.default_rng(5)
    rows = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in (14, 12, 3, 2)]
    stacked = A.rescale_to_norms(_trained_like(cfg, "steer", jax.random.PRNGKey(4)), [0.5, 2.0])
    run = lambda b: SW.sweep_losses(stacked, w, cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]),
                                    metric=metric, targets=jnp.asarray(b["targets"]),
                                    loss_mask=jnp.asarray(b["loss_mask"]))
    got = np.asarray(SW.batched_rows(run, padded_batches(rows, 2), metric))
    whole = padded_batches(rows, 4)
    assert len(whole) == 1
    np.testing.assert_allclose(got, np.asarray(run(whole[0])), rtol=1e-5, atol=1e-7)


def test_sharded_sweep_axis_equals_unsharded(tiny):
    cfg, w = tiny
    tokens, mask, targets, loss_mask = _rows(cfg, 3)
    iv = _trained_like(cfg, "steer", jax.random.PRNGKey(4))
    stacked = A.rescale_to_norms(iv, np.linspace(0, 4, 8))
    ref = SW.sweep_losses(stacked, w, cfg, tokens, mask, targets=targets, loss_mask=loss_mask)
    mesh = make_mesh({"data": 8})
    sharded = SW.shard_sweep_axis(stacked, mesh)
    assert len(sharded.steer.vectors.sharding.device_set) == 8
    got = SW.sweep_losses(sharded, w, cfg, tokens, mask, targets=targets, loss_mask=loss_mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5)
    versions = SW.shard_sweep_axis(A.rescaled_versions(iv, np.linspace(0, 4, 8)), mesh)
    assert len(versions.params["factor"].sharding.device_set) == 8
    got = SW.sweep_losses(versions, w, cfg, tokens, mask, targets=targets, loss_mask=loss_mask, chunk=4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5)


def _random_tree(rng, cfg):
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    kind = rng.choice(["steer", "lora", "both"])
    a = _trained_like(cfg, "steer", key)
    b = _trained_like(cfg, "lora", jax.random.fold_in(key, 1))
    return {"steer": a, "lora": b, "both": Interventions(lora=b.lora, steer=a.steer)}[kind]


def test_orthogonal_noise_properties(tiny):
    """On the tiny models' shapes: the noise is orthogonal to the update (LoRA scale·BA, steering
    alpha·v, both at once) and as long, so perturbing keeps the update norm (brute force with
    materialised updates: tests/interventions/test_arithmetic.py)."""
    cfg, _ = tiny
    rng = np.random.default_rng(7)
    for trial in range(12):  # fresh random trees, scales and eps each time
        x = A.scale_update(_random_tree(rng, cfg), float(rng.lognormal(0, 2)))
        key = jax.random.PRNGKey(trial)
        y = A.orthogonal_noise(x, key)
        nx = float(A.update_norm(x))
        assert abs(float(A.update_dot(x, y))) <= 1e-5 * nx * nx
        assert float(A.update_norm(y)) == pytest.approx(nx, rel=1e-5)
        eps = float(rng.uniform(0, 1))
        xp = A.perturb(x, eps, key)
        assert float(A.update_norm(xp)) == pytest.approx(nx, rel=1e-5)
        cos = float(A.update_dot(x, xp)) / nx ** 2
        assert cos == pytest.approx(np.sqrt(1 - eps ** 2), abs=1e-5)


@pytest.mark.parametrize("mode", ["update", "per_matrix"])
def test_stability_grid_eps_zero_is_original_and_sweep_equals_loop(tiny, mode):
    cfg, w = tiny
    tokens, mask, targets, loss_mask = _rows(cfg, 5)
    iv = _trained_like(cfg, "lora", jax.random.PRNGKey(6))
    stacked, ee, ss = A.perturbation_grid(iv, [0.0, 0.3, 1.0], [0, 1], mode)
    assert list(ee) == pytest.approx([0.0, 0.0, 0.3, 0.3, 1.0, 1.0]) and list(ss) == [0, 1, 0, 1, 0, 1]
    kw = dict(targets=targets, loss_mask=loss_mask)
    losses = np.asarray(SW.sweep_losses(stacked, w, cfg, tokens, mask, **kw))
    np.testing.assert_allclose(losses, SW.loop_losses(stacked, w, cfg, tokens, mask, **kw), rtol=1e-4, atol=1e-6)
    orig = float(SW.sweep_losses(A.stack_trees([iv]), w, cfg, tokens, mask, **kw)[0])
    np.testing.assert_allclose(losses[:2], orig, rtol=1e-5)
    assert losses[4] != pytest.approx(losses[5])  # different seeds, different noise
    norms = np.asarray(jax.vmap(A.update_norm)(stacked))
    if mode == "update":  # the update's norm is kept
        np.testing.assert_allclose(norms, float(A.update_norm(iv)), rtol=1e-5)
    # the same versions built on demand inside the compiled loop, all at once and in chunks of 4
    versions, _, _ = A.perturbed_versions(iv, [0.0, 0.3, 1.0], [0, 1], mode)
    for chunk in (None, 4):
        got = SW.sweep_losses(versions, w, cfg, tokens, mask, chunk=chunk, **kw)
        np.testing.assert_allclose(np.asarray(got), losses, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(A.version_norms(versions, chunk), norms, rtol=1e-5)


def test_update_scale_factors(tiny):
    """B times f (upstream's LoRA scale factors): factor 1 is the adapter, factor 0 the base model,
    and the points are rescale_to_norms' at f times the trained update norm."""
    cfg, w = tiny
    tokens, mask, targets, loss_mask = _rows(cfg, 5)
    iv = _trained_like(cfg, "lora", jax.random.PRNGKey(6))
    kw = dict(targets=targets, loss_mask=loss_mask)
    orig = float(SW.sweep_losses(A.stack_trees([iv]), w, cfg, tokens, mask, **kw)[0])
    base_ce = float(SW.sweep_losses(A.stack_trees([A.tree_scale(iv, 0.0)]), w, cfg, tokens, mask, **kw)[0])
    got = np.asarray(SW.sweep_losses(A.scale_updates(iv, [0.0, 1.0, 1.7]), w, cfg, tokens, mask, **kw))
    np.testing.assert_allclose(got[:2], [base_ce, orig], rtol=1e-5)
    same = SW.sweep_losses(A.rescale_to_norms(iv, [1.7 * float(A.update_norm(iv))]), w, cfg, tokens, mask, **kw)
    assert got[2] == pytest.approx(float(same[0]), rel=1e-5)
