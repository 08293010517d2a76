"""Intervention arithmetic against brute force with materialised [in, out] updates: the update norm,
rescaling, the two LoRA noise modes, steering noise as upstream's, vmap / jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.interventions import Interventions, LoraAdapter, SteeringVectors
from emjax.interventions import arithmetic as A
from emjax.model.config import ModelConfig
from emjax.model.schema import layer_shapes

CFG = ModelConfig(family="qwen2", vocab_size=50, d_model=16, n_layers=4, n_heads=2, n_kv_heads=1,
                  head_dim=8, ffn_dim=24, qkv_bias=True)
RTOL = 1e-5  # fp32 precision of norms built from sums of ~1e3 products


# ---------------------------------------------------------------------------------------------
# Random trees and brute force


# A few fixed structures (several modules and layers, rank > 1, rsLoRA and plain scale), so eager
# ops compile once per structure; the values are fresh random draws every time.
STRUCTURES = [(("down_proj", "q_proj", "up_proj"), (0, 2, 3), 3, 8.0 / np.sqrt(3)),
              (("gate_proj", "k_proj", "o_proj", "v_proj"), (1, 3), 2, 5.0 / 2)]
SHAPES = layer_shapes(CFG)


def random_lora(rng: np.random.Generator, structure: int | None = None) -> LoraAdapter:
    """Random A and B at random magnitudes (not the zero B of init)."""
    modules, layers, rank, scale = STRUCTURES[int(rng.integers(len(STRUCTURES))) if structure is None else structure]
    def draw(shape):
        return jnp.asarray(rng.normal(0, rng.lognormal(0, 1), shape), jnp.float32)
    return LoraAdapter(a={m: draw((len(layers), SHAPES[m][0], rank)) for m in modules},
                       b={m: draw((len(layers), rank, SHAPES[m][1])) for m in modules},
                       layers=layers, scale=float(scale))


def random_steer(rng: np.random.Generator) -> SteeringVectors:
    return SteeringVectors(vectors=jnp.asarray(rng.normal(0, rng.lognormal(0, 1), (2, CFG.d_model)), jnp.float32),
                           layers=(1, 3), alpha=256.0)


def brute_updates(lora: LoraAdapter) -> dict[str, np.ndarray]:
    """module -> [n_sel, in, out] float64: scale * a_l @ b_l materialised."""
    return {m: lora.scale * np.einsum("nir,nro->nio", np.float64(lora.a[m]), np.float64(lora.b[m]))
            for m in lora.modules}


def brute_flat(iv: Interventions) -> np.ndarray:
    """Everything the intervention adds, flattened: every scale*a@b, then alpha*v."""
    parts = [u.ravel() for u in brute_updates(iv.lora).values()] if iv.lora is not None else []
    if iv.steer is not None:
        parts.append(iv.steer.alpha * np.float64(iv.steer.vectors).ravel())
    return np.concatenate(parts)


def brute_norm(iv: Interventions) -> float:
    return float(np.linalg.norm(brute_flat(iv)))


def index(stacked: Interventions, i: int) -> Interventions:
    return jax.tree.map(lambda x: x[i], stacked)


def trees(rng: np.random.Generator, n: int = 4):
    """n fresh random trees of each make-up: LoRA, steering, both."""
    for _ in range(n):
        yield Interventions(lora=random_lora(rng))
        yield Interventions(steer=random_steer(rng))
        yield Interventions(lora=random_lora(rng), steer=random_steer(rng))


# ---------------------------------------------------------------------------------------------
# Norm and rescaling


def test_update_norm_is_the_materialised_update_norm():
    rng = np.random.default_rng(1)
    for iv in trees(rng):
        assert float(A.update_norm(iv)) == pytest.approx(brute_norm(iv), rel=RTOL)
        if iv.lora is not None:
            per_layer = A.lora_update_sq_norms(iv.lora)
            for m, u in brute_updates(iv.lora).items():
                np.testing.assert_allclose(per_layer[m], np.sum(u ** 2, axis=(1, 2)), rtol=RTOL)
        if iv.lora is None:  # steering: the applied vector, not v
            assert float(A.update_norm(iv)) == pytest.approx(iv.steer.alpha * float(A.tree_norm(iv)), rel=RTOL)
    assert A.norm_kind(Interventions(lora=random_lora(rng))) == A.LORA_NORM == "||scale·BA||_F (effective update)"
    assert A.norm_kind(Interventions(steer=random_steer(rng))) == A.STEERING_NORM == "||alpha·v|| (applied vector)"


def test_update_dot_is_the_materialised_inner_product():
    rng = np.random.default_rng(2)
    for _ in range(6):
        x = Interventions(lora=random_lora(rng), steer=random_steer(rng))
        y = x.replace(lora=x.lora.replace(a={m: a + jnp.asarray(rng.normal(size=a.shape), jnp.float32)
                                             for m, a in x.lora.a.items()},
                                          b={m: jnp.asarray(rng.normal(size=b.shape), jnp.float32)
                                             for m, b in x.lora.b.items()}),
                      steer=x.steer.replace(vectors=jnp.asarray(rng.normal(size=x.steer.vectors.shape), jnp.float32)))
        ref = float(brute_flat(x) @ brute_flat(y))
        assert float(A.update_dot(x, y)) == pytest.approx(ref, rel=RTOL, abs=RTOL * brute_norm(x) * brute_norm(y))


def test_rescale_lora_to_norm_c_is_exact_and_linear():
    rng = np.random.default_rng(3)
    for iv in trees(rng):
        n = brute_norm(iv)
        targets = np.concatenate([[0.0], rng.lognormal(0, 2, 4)]).astype(np.float32)
        stacked = A.rescale_to_norms(iv, targets)
        for i, c in enumerate(targets):
            v = index(stacked, i)
            assert brute_norm(v) == pytest.approx(float(c), rel=RTOL, abs=1e-30)
            # direction kept: the update scales linearly, by c / n (not (c / n)^2)
            np.testing.assert_allclose(brute_flat(v), brute_flat(iv) * (c / n), rtol=1e-4,
                                       atol=RTOL * float(c) / np.sqrt(brute_flat(iv).size))
            if iv.lora is not None:  # A untouched
                for m in iv.lora.modules:
                    np.testing.assert_array_equal(v.lora.a[m], iv.lora.a[m])
        # upstream's "B times factor" points are the same family
        f = rng.uniform(0, 2, 3).astype(np.float32)
        by_factor, by_norm = A.scale_updates(iv, f), A.rescale_to_norms(iv, f * float(A.update_norm(iv)))
        for x, y in zip(jax.tree.leaves(by_factor), jax.tree.leaves(by_norm)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(y))))
        np.testing.assert_allclose(jax.vmap(A.update_norm)(by_factor), f * n, rtol=RTOL)


def test_rescaled_random_baseline_hits_the_matched_norm():
    rng = np.random.default_rng(4)
    for iv in trees(rng, 2):
        rnd = A.random_like(iv, jax.random.PRNGKey(int(rng.integers(1 << 30))))
        targets = rng.lognormal(0, 1, 3)
        stacked = A.rescale_to_norms(rnd, targets)
        np.testing.assert_allclose([brute_norm(index(stacked, i)) for i in range(3)], targets, rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# Noise


def test_column_space_whitener():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 24, 4)) * rng.lognormal(0, 1, (3, 1, 4))
    a[2, :, 3] = a[2, :, 0]  # a rank-deficient A: the whitener spans only its 3 directions
    w = np.asarray(A.column_space_whitener(jnp.asarray(a, jnp.float32)), np.float64)
    q = np.einsum("nir,nrs->nis", a, w)
    gram = np.einsum("nir,nis->nrs", q, q)
    np.testing.assert_allclose(gram[:2], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-4)
    assert np.linalg.matrix_rank(gram[2], tol=1e-3) == 3
    np.testing.assert_allclose(gram[2] @ gram[2], gram[2], atol=1e-4)  # a projector


def test_update_noise_is_orthogonal_to_the_update_and_keeps_its_norm():
    rng = np.random.default_rng(6)
    for trial, iv in enumerate(trees(rng)):
        key = jax.random.PRNGKey(trial)
        y = A.orthogonal_noise(iv, key, "update")
        dw, dn = brute_flat(iv), brute_flat(y)  # y is an intervention with iv's A: its update is the noise
        n = np.linalg.norm(dw)
        assert abs(dw @ dn) <= 1e-5 * n * n
        assert np.linalg.norm(dn) == pytest.approx(n, rel=RTOL)
        if iv.lora is not None:  # the noise lies in the column space of A
            for m in iv.lora.modules:
                a = np.float64(iv.lora.a[m])
                u = brute_updates(y.lora)[m]
                proj = np.einsum("nij,njo->nio", a @ np.linalg.pinv(a), u)
                np.testing.assert_allclose(proj, u, atol=1e-4 * np.abs(u).max())
        eps = float(rng.uniform(0, 1))
        xp = A.perturb(iv, eps, key, "update")
        assert brute_norm(xp) == pytest.approx(n, rel=RTOL)
        np.testing.assert_allclose(brute_flat(xp), np.sqrt(1 - eps ** 2) * dw + eps * dn, rtol=1e-4,
                                   atol=1e-5 * n / np.sqrt(dw.size))
        assert float(brute_flat(xp) @ dw) / n ** 2 == pytest.approx(np.sqrt(1 - eps ** 2), abs=1e-5)
        if iv.lora is not None:  # only B moves
            for m in iv.lora.modules:
                np.testing.assert_array_equal(xp.lora.a[m], iv.lora.a[m])


def _rows(x: jax.Array) -> np.ndarray:
    return np.float64(x).reshape(x.shape[0], -1)


def test_per_matrix_noise_keeps_each_matrix_norm():
    rng = np.random.default_rng(7)
    for trial in range(5):
        lora = random_lora(rng)
        m0 = lora.modules[0]  # one B all zero (its init): stays zero, as upstream leaves it
        lora = lora.replace(b={**lora.b, m0: jnp.zeros_like(lora.b[m0])})
        iv = Interventions(lora=lora)
        eps = float(rng.uniform(0.05, 1))
        xp = A.perturb(iv, eps, jax.random.PRNGKey(trial), "per_matrix")
        for part in ("a", "b"):
            for m in lora.modules:
                x, p = _rows(getattr(lora, part)[m]), _rows(getattr(xp.lora, part)[m])
                nx = np.linalg.norm(x, axis=1)
                np.testing.assert_allclose(np.linalg.norm(p, axis=1), nx, rtol=RTOL, atol=1e-30)
                live = nx > 0
                cos = np.sum(x * p, 1)[live] / nx[live] ** 2
                np.testing.assert_allclose(cos, np.sqrt(1 - eps ** 2), atol=1e-5)
        np.testing.assert_array_equal(xp.lora.b[m0], 0.0)
        # the update's norm is not kept in this mode (why "update" is the default)
        assert brute_norm(xp) != pytest.approx(brute_norm(iv), rel=1e-3)


def _old_steering_perturb(iv: Interventions, eps: float, key: jax.Array) -> Interventions:
    """The pre-update-norm formula on the raw tree (upstream's steering noise on v)."""
    y = A.random_like(iv, key)
    coef = A.tree_dot(y, iv) / A.tree_dot(iv, iv)
    y = jax.tree.map(lambda a, b: a - coef * b, y, iv)
    y = A.tree_scale(y, A.tree_norm(iv) / A.tree_norm(y))
    return jax.tree.map(lambda a, b: np.sqrt(1 - eps ** 2) * a + eps * b, iv, y)


@pytest.mark.parametrize("mode", A.LORA_NOISE)
def test_steering_noise_unchanged(mode):
    rng = np.random.default_rng(8)
    for trial in range(6):
        iv = Interventions(steer=random_steer(rng))
        eps, key = float(rng.uniform(0, 1)), jax.random.PRNGKey(100 + trial)
        np.testing.assert_allclose(A.perturb(iv, eps, key, mode).steer.vectors,
                                   _old_steering_perturb(iv, eps, key).steer.vectors, rtol=1e-5, atol=1e-6)


def test_unknown_noise_mode():
    iv = Interventions(lora=random_lora(np.random.default_rng(9)))
    with pytest.raises(ValueError, match="lora_noise"):
        A.perturbation_grid(iv, [0.1], [0], "full")


def test_vmap_and_jit_agree_with_eager():
    rng = np.random.default_rng(10)
    iv = Interventions(lora=random_lora(rng), steer=random_steer(rng))
    for mode in A.LORA_NOISE:
        stacked, ee, ss = A.perturbation_grid(iv, [0.0, 0.4, 1.0], [3, 4], mode)
        assert list(ee) == pytest.approx([0.0, 0.0, 0.4, 0.4, 1.0, 1.0]) and list(ss) == [3, 4, 3, 4, 3, 4]
        jitted = jax.jit(lambda e, k: A.perturb(iv, e, k, mode))
        for i in (0, 3, 5):
            one = jitted(jnp.float32(ee[i]), jax.random.PRNGKey(int(ss[i])))
            for x, y in zip(jax.tree.leaves(index(stacked, i)), jax.tree.leaves(one)):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(y))))
        for x, y in zip(jax.tree.leaves(index(stacked, 0)), jax.tree.leaves(iv)):  # eps 0 is the original
            np.testing.assert_allclose(x, y, rtol=1e-6)
    norms = jax.jit(jax.vmap(A.update_norm))(stacked)
    np.testing.assert_allclose(norms, [float(A.update_norm(index(stacked, i))) for i in range(6)], rtol=1e-6)


def test_versions_build_what_the_stacks_hold():
    rng = np.random.default_rng(11)
    iv = Interventions(lora=random_lora(rng), steer=random_steer(rng))
    v = A.rescaled_versions(iv, [0.0, 1.5, 4.0])
    assert len(v) == 3
    for x, y in zip(jax.tree.leaves(v.materialise()), jax.tree.leaves(A.rescale_to_norms(iv, [0.0, 1.5, 4.0]))):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(A.version_norms(v), [0.0, 1.5, 4.0], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(A.version_norms(v, chunk=2), [0.0, 1.5, 4.0], rtol=RTOL, atol=1e-6)
    p, ee, ss = A.perturbed_versions(iv, [0.2, 0.9], [5, 6], "update")
    for i in range(4):
        one = A.perturb(iv, jnp.float32(ee[i]), jax.random.PRNGKey(int(ss[i])), "update")
        for x, y in zip(jax.tree.leaves(p.version(i)), jax.tree.leaves(one)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(y))))
