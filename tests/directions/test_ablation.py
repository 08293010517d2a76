"""Directional ablation removes exactly the direction's component at every ablated layer, leaves
inputs orthogonal to it alone, composes with steering and per-row interventions, and reaches the
sweeps and the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, qwen2_config, to_emjax
from emjax.interventions import Interventions
from emjax.interventions.steering import SteeringVectors
from emjax.metrics import sweeps as SW
from emjax.interventions import arithmetic as A
from emjax.model import decoder as D
from emjax.model import sampling as S
from emjax.model.ablation import AblationError, ablated, direction_ablation
from emjax.model.row_hooks import intervention_set


def _model(kind="qwen2", seed=3):
    hf = build_hf(qwen2_config(tied=True, num_hidden_layers=4) if kind == "qwen2" else
                  gemma2_config(num_hidden_layers=4), seed=seed)
    return to_emjax(hf)


def _tokens(cfg, b=3, t=9, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, cfg.vocab_size)


def _along(hidden, u):
    """|projection| of hidden [L+1, B, T, D] on unit u [D] per layer -> [L+1] max over rows, positions."""
    return np.abs(np.einsum("lbtd,d->lbt", np.asarray(hidden, np.float64), u)).max(axis=(1, 2))


@pytest.mark.parametrize("kind", ["qwen2", "gemma2"])
def test_projection_is_zero_at_every_ablated_layer(kind):
    cfg, w = _model(kind)
    rng = np.random.default_rng(1)
    d = rng.standard_normal(cfg.d_model).astype(np.float32)
    u = d / np.linalg.norm(d)
    tokens = _tokens(cfg)
    _, h0 = D.forward(w, cfg, tokens, collect=True)
    assert _along(h0, u)[1:].min() > 1e-3  # the direction is present before ablation
    layers = (1, 2)
    _, h = D.forward(w, cfg, tokens, interventions=ablated(None, direction_ablation(cfg, 5.0 * d, layers)), collect=True)
    along = _along(h, u)
    for l in layers:  # hidden[l + 1] is block l's output
        assert along[l + 1] < 1e-5 * float(np.abs(np.asarray(h[l + 1])).max())
    # layers below the first ablated one are untouched, exactly
    np.testing.assert_array_equal(np.asarray(h[:2]), np.asarray(h0[:2]))
    assert along[4] > 1e-3  # not ablated at layer 3: the component comes back


def test_per_layer_directions_and_all_layers():
    cfg, w = _model()
    rng = np.random.default_rng(2)
    dirs = rng.standard_normal((cfg.n_layers, cfg.d_model)).astype(np.float32)
    _, h = D.forward(w, cfg, _tokens(cfg), interventions=ablated(None, direction_ablation(cfg, dirs)), collect=True)
    for l in range(cfg.n_layers):
        u = dirs[l] / np.linalg.norm(dirs[l])
        assert _along(h, u)[l + 1] < 1e-5 * float(np.abs(np.asarray(h[l + 1])).max())


def test_orthogonal_inputs_unchanged():
    """A direction orthogonal to everything the block writes leaves the block's output as it was:
    here the direction is orthogonal to the residual stream of the given rows at the ablated
    layer, built from the unablated run itself."""
    cfg, w = _model()
    tokens = _tokens(cfg, b=1, t=3)
    _, h0 = D.forward(w, cfg, tokens, collect=True)
    x = np.asarray(h0[3], np.float64).reshape(-1, cfg.d_model)  # block 2's output rows [3, D]
    q, _ = np.linalg.qr(x.T, mode="complete")
    d = q[:, -1]  # orthogonal to all three rows
    assert np.abs(x @ d).max() < 1e-10
    abl = direction_ablation(cfg, d, (2,))
    logits, h = D.forward(w, cfg, tokens, interventions=ablated(None, abl), collect=True)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(D.forward(w, cfg, tokens)), atol=1e-4, rtol=0)


def test_ablation_removes_the_steered_component():
    """Steering along u at the ablated layer is removed entirely: the ablated model with the vector
    equals the ablated model without it."""
    cfg, w = _model()
    d = np.random.default_rng(3).standard_normal(cfg.d_model).astype(np.float32)
    sv = Interventions(steer=SteeringVectors(vectors=jnp.asarray(d)[None] * 0.3, layers=(2,), alpha=8.0,
                                             hook="block_out"))
    abl = direction_ablation(cfg, d, (2,))
    tokens = _tokens(cfg)
    with_v = D.forward(w, cfg, tokens, interventions=ablated(sv, abl))
    without = D.forward(w, cfg, tokens, interventions=ablated(None, abl))
    np.testing.assert_allclose(np.asarray(with_v), np.asarray(without), atol=1e-4, rtol=0)
    assert float(jnp.abs(D.forward(w, cfg, tokens, interventions=sv) - D.forward(w, cfg, tokens)).max()) > 1e-2


def test_sweep_with_ablation_matches_the_loop():
    cfg, w = _model()
    rng = np.random.default_rng(4)
    tokens = _tokens(cfg, b=2, t=8)
    mask = jnp.ones(tokens.shape, bool)
    targets, loss_mask = jnp.roll(tokens, -1, 1), mask.at[:, -1].set(False)
    iv = Interventions(steer=SteeringVectors(vectors=jnp.asarray(rng.standard_normal((1, cfg.d_model)), jnp.float32),
                                             layers=(2,), alpha=1.0))
    stacked = A.stack_trees([A.tree_scale(iv, s) for s in (0.0, 0.5, 1.0)])
    abl = direction_ablation(cfg, rng.standard_normal(cfg.d_model), (1, 3))
    for metric in ("ce", "kl"):
        got = SW.sweep_losses(stacked, w, cfg, tokens, mask, metric=metric, targets=targets, loss_mask=loss_mask,
                              ablation=abl)
        want = SW.loop_losses(stacked, w, cfg, tokens, mask, metric=metric, targets=targets, loss_mask=loss_mask,
                              ablation=abl)
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
        plain = SW.sweep_losses(stacked, w, cfg, tokens, mask, metric=metric, targets=targets, loss_mask=loss_mask)
        assert np.abs(np.asarray(plain) - want).max() > 1e-4  # the ablation changed the losses


def test_sampling_with_ablation_and_per_row_interventions():
    """Greedy decoding with the ablation equals greedy argmax over full forwards with it, for a
    set of per-row interventions (the ablation applies to every row)."""
    cfg, w = _model()
    rng = np.random.default_rng(5)
    abl = direction_ablation(cfg, rng.standard_normal(cfg.d_model), (1, 2))
    sv = Interventions(steer=SteeringVectors(vectors=jnp.asarray(rng.standard_normal((1, cfg.d_model)), jnp.float32),
                                             layers=(2,), alpha=2.0))
    iset = intervention_set(cfg, [None, sv])
    prompts = [[5, 7, 9, 11], [5, 7, 9, 11], [3, 4]]
    index = [0, 1, 1]
    got = S.generate(w, cfg, prompts, max_new_tokens=5, temperature=0.0, interventions=iset,
                     intervention_index=index, ablation=abl)
    for p, k, toks in zip(prompts, index, got):
        seq = list(p)
        member = None if k == 0 else sv
        for _ in range(5):
            logits = D.forward(w, cfg, jnp.asarray([seq]), interventions=ablated(member, abl))
            seq.append(int(jnp.argmax(logits[0, -1])))
        assert toks == seq[len(p):]
    plain = S.generate(w, cfg, prompts, max_new_tokens=5, temperature=0.0, interventions=iset,
                       intervention_index=index)
    assert plain != got


def test_bad_directions_named():
    cfg, _ = _model()
    with pytest.raises(AblationError, match="D = "):
        direction_ablation(cfg, np.ones(cfg.d_model + 1))
    with pytest.raises(AblationError, match="zero"):
        direction_ablation(cfg, np.zeros(cfg.d_model), (1,))
    with pytest.raises(AblationError, match="out of range"):
        direction_ablation(cfg, np.ones(cfg.d_model), (cfg.n_layers,))
