"""KV-cache sampling: greedy equals argmax of the full forward; filters behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, qwen2_config, to_emjax
from emjax.model import decode_attention as DA
from emjax import model as M
from emjax.model import sampling as S
from emjax.interventions import Interventions, init_lora, init_steering


def _greedy_reference(w, cfg, prompt, n, iv=None):
    """Argmax decoding by re-running the full forward on the growing sequence (no cache)."""
    toks = list(prompt)
    buf = np.zeros((1, len(prompt) + n), np.int32)
    for t in range(n):
        L = len(toks)
        buf[0, :L] = toks
        mask = np.arange(buf.shape[1]) < L  # right-padded to a fixed length: one compile
        logits = M.forward(w, cfg, jnp.asarray(buf), jnp.asarray(mask[None]), interventions=iv)
        toks.append(int(jnp.argmax(logits[0, L - 1])))
    return toks[len(prompt):]


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])
def tiny(request):
    hf = (build_hf(qwen2_config(tied=True), seed=21) if request.param == "qwen2"
          else build_hf(gemma2_config(), seed=22, weight_scale=3.0))
    return to_emjax(hf)


def _random_interventions(cfg, key):
    k1, k2, k3 = jax.random.split(key, 3)
    lora = init_lora(cfg, k1, rank=2, alpha=4.0, modules=("q_proj", "v_proj", "down_proj"), layers=(1, 2))
    lora = lora.replace(b={m: 0.05 * jax.random.normal(k2, b.shape) for m, b in lora.b.items()})
    steer = init_steering(cfg, layers=(1,), alpha=3.0)
    steer = steer.replace(vectors=jax.random.normal(k3, steer.vectors.shape))
    return Interventions(lora=lora, steer=steer)


@pytest.mark.parametrize("with_iv,attention", [
    (False, "xla"), (True, "xla"),
    pytest.param(True, "pallas", marks=pytest.mark.skipif(not DA.AVAILABLE, reason="no Pallas Triton API"))])
def test_greedy_cache_equals_full_forward(tiny, with_iv, attention):
    cfg, w = tiny
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (3, 9, 6)]
    iv = _random_interventions(cfg, jax.random.PRNGKey(4)) if with_iv else None
    out = S.generate(w, cfg, prompts, max_new_tokens=12, temperature=0.0, interventions=iv,
                     decode_attention=attention)  # "pallas": the GPU kernel, interpreted on CPU
    for p, o in zip(prompts, out):
        assert o == _greedy_reference(w, cfg, p, 12, iv)


@pytest.mark.skipif(not DA.AVAILABLE, reason="this JAX has no Pallas Triton API")
@pytest.mark.parametrize("seed", [0, 1])
def test_decode_attention_kernel_equals_attend(tiny, seed):
    """The Pallas kernel (interpreted) against M.attend on fresh random caches and masks,
    including fully masked rows and, for Gemma-2, the attention soft-cap."""
    cfg, _ = tiny
    rng = np.random.default_rng(seed)
    n_layers, b, s = 3, 3, DA.BLOCK_S * 2
    kv = lambda: jnp.asarray(rng.normal(size=(n_layers, b, s, cfg.n_kv_heads, cfg.head_dim)) * 3, jnp.float32)
    k_all, v_all = kv(), kv()
    q = jnp.asarray(rng.normal(size=(b, 1, cfg.n_heads, cfg.head_dim)) * 3, jnp.float32)
    mask = jnp.asarray(rng.random((b, 1, s)) < 0.5).at[1].set(False)
    layer = int(rng.integers(n_layers))
    got = DA.attend_one_query(q, k_all, v_all, jnp.int32(layer), mask, cfg, interpret=True)
    want = M.attend(q, k_all[layer], v_all[layer], mask, cfg)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_stop_ids_and_vocab_limit(tiny):
    cfg, w = tiny
    prompt = [[5, 6, 7]]
    free = S.generate(w, cfg, prompt, max_new_tokens=10, temperature=0.0)[0]
    stop = free[3]
    cut = S.generate(w, cfg, prompt, max_new_tokens=10, temperature=0.0, stop_ids=[stop])[0]
    assert cut == free[: free.index(stop) + 1]
    limited = S.generate(w, cfg, prompt, max_new_tokens=10, temperature=1.0, vocab_limit=7, seed=1)[0]
    assert max(limited) < 7


def test_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()
    assert kept(S._filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    assert kept(S._filter_logits(logits, 1.0, 0, 0.7)) == [True, True, False, False]
    assert kept(S._filter_logits(logits, 1.0, 0, 0.5)) == [True, False, False, False]
    assert kept(S._filter_logits(logits, 1.0, 0, 0.81)) == [True, True, True, False]


def test_sampling_distribution_and_seed(tiny):
    cfg, w = tiny
    a = S.generate(w, cfg, [[1, 2, 3]] * 4, max_new_tokens=6, temperature=1.0, seed=7)
    b = S.generate(w, cfg, [[1, 2, 3]] * 4, max_new_tokens=6, temperature=1.0, seed=7)
    c = S.generate(w, cfg, [[1, 2, 3]] * 4, max_new_tokens=6, temperature=1.0, seed=8)
    assert a == b and a != c


def test_decode_attention_choice(tiny):
    cfg, w = tiny
    gpu_kernel = jax.default_backend() == "gpu" and DA.AVAILABLE
    assert S._decode_kernel("auto", cfg, 20, 1) == ("pallas" if gpu_kernel else "xla")
    assert S._decode_kernel("auto", cfg, 20, 2) == "xla"  # the kernel is not partitioned
    assert S._decode_kernel("xla", cfg, 20, 1) == "xla"
    if jax.default_backend() != "gpu" and DA.AVAILABLE:
        assert S._decode_kernel("pallas", cfg, 20, 1) == "pallas_interpret"
    with pytest.raises(ValueError, match="decode_attention must be"):
        S._decode_kernel("flash", cfg, 20, 1)
    odd = cfg.replace(head_dim=24, n_heads=2, n_kv_heads=1)
    with pytest.raises(ValueError, match="does not support this model's heads"):
        S._decode_kernel("pallas", odd, 20, 1)
    assert S._decode_kernel("auto", odd, 20, 1) == "xla"
