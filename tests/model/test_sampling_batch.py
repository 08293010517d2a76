"""Evaluation-scale sampling: mixed interventions in one batch, prefix sharing, early stop,
per-row keys and the memory check, on tiny random fp32 models of both families."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, qwen2_config, to_emjax
from emjax import model as M
from emjax.errors import EmjaxError
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.interventions.arithmetic import rescale_to_norms
from emjax.model import row_hooks as R
from emjax.model import row_shrink as shrink
from emjax.model import sampling as S


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])
def tiny(request):
    hf = (build_hf(qwen2_config(tied=True), seed=31) if request.param == "qwen2"
          else build_hf(gemma2_config(), seed=32, weight_scale=3.0))
    return to_emjax(hf)


def _members(cfg):
    """none, one steering direction at two norms (a stacked tree), and a LoRA on other layers."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    steer = init_steering(cfg, layers=(1,), alpha=2.0)
    steer = Interventions(steer=steer.replace(vectors=jax.random.normal(k1, steer.vectors.shape)))
    two_norms = R.unstack(rescale_to_norms(steer, [1.0, 3.0]))
    lora = init_lora(cfg, k2, rank=2, alpha=4.0, modules=("q_proj", "v_proj", "down_proj"), layers=(0, 2))
    lora = Interventions(lora=lora.replace(b={m: 0.3 * jax.random.normal(k3, b.shape) for m, b in lora.b.items()}))
    return [None, *two_norms, lora]


def _prompts(cfg, lengths=(3, 7, 5)):
    rng = np.random.default_rng(9)
    return [rng.integers(1, cfg.vocab_size, n).tolist() for n in lengths]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mixed_batch_equals_each_intervention_alone(tiny, temperature):
    cfg, w = tiny
    members = _members(cfg)
    iset = R.intervention_set(cfg, members)
    prompts = _prompts(cfg)
    # rows: every prompt under every member, in one call, two samples each; ids fix each row's draws
    rows = [(p, k) for p in range(len(prompts)) for k in range(len(members))]
    ids = [[100 * p + 10 * k + s for s in range(2)] for p, k in rows]
    kw = dict(max_new_tokens=8, temperature=temperature, seed=3)
    mixed = S.generate(w, cfg, [prompts[p] for p, _ in rows], interventions=iset,
                       intervention_index=[k - 1 if members[k] is None else k for _, k in rows],
                       repeats=[2] * len(rows), row_ids=[i for pair in ids for i in pair], **kw)
    for k, iv in enumerate(members):  # each member alone, through the single-intervention path
        mine = [i for i, (_, kk) in enumerate(rows) if kk == k]
        alone = S.generate(w, cfg, prompts, interventions=iv, repeats=[2] * len(prompts),
                           row_ids=[j for i in mine for j in ids[i]], **kw)
        assert alone == [mixed[2 * i + s] for i in mine for s in range(2)], f"member {k}"
    if temperature:  # the interventions act: members disagree somewhere
        assert len({tuple(map(tuple, mixed[k * 2::2 * len(members)])) for k in range(len(members))}) > 1


def test_row_alone_equals_row_in_mixed_batch(tiny):
    cfg, w = tiny
    members = _members(cfg)
    iset = R.intervention_set(cfg, members)
    prompts = _prompts(cfg, (4, 6, 2, 5))
    index = [-1, 1, 2, 0]
    kw = dict(max_new_tokens=7, temperature=1.0, seed=11, interventions=iset)
    batch = S.generate(w, cfg, prompts, intervention_index=index, row_ids=[7, 8, 9, 10], **kw)
    alone = S.generate(w, cfg, prompts[2:3], intervention_index=index[2:3], row_ids=[9], **kw)
    assert alone[0] == batch[2]
    again = S.generate(w, cfg, prompts, intervention_index=index, row_ids=[7, 8, 9, 10], **kw)
    other = S.generate(w, cfg, prompts, intervention_index=index, row_ids=[7, 8, 9, 10], **{**kw, "seed": 12})
    assert again == batch and other != batch


def test_forward_with_per_row_interventions(tiny):
    """decoder.forward takes the same per-row set: each row's logits are its member's."""
    cfg, w = tiny
    members = _members(cfg)
    iset = R.intervention_set(cfg, members)
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (len(members), 6)), jnp.int32)
    rows = np.where([m is None for m in members], -1, np.arange(len(members)))  # none: -1 or its index
    got = M.forward(w, cfg, tokens, interventions=iset.select(rows))
    for i, iv in enumerate(members):
        want = M.forward(w, cfg, tokens[i:i + 1], interventions=iv)
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want[0]), atol=2e-5, rtol=1e-5)
    assert iset.select(rows).shared_prefix_layers(cfg) == min(m.shared_prefix_layers(cfg) for m in members if m)


def test_prefix_sharing_equals_unshared(tiny):
    cfg, w = tiny
    prompts = _prompts(cfg)
    kw = dict(max_new_tokens=6, temperature=1.0, seed=4)
    shared = S.sample(w, cfg, prompts, repeats=[3, 1, 2], **kw)
    flat = [p for p, r in zip(prompts, [3, 1, 2]) for _ in range(r)]
    unshared = S.sample(w, cfg, flat, share_prompts=False, **kw)
    detected = S.sample(w, cfg, flat, **kw)  # duplicates found without repeats
    assert shared.prefill_rows == detected.prefill_rows == 3 and unshared.prefill_rows == 6
    assert shared.tokens == unshared.tokens == detected.tokens
    # the same prompt under two interventions is two prefills
    iset = R.intervention_set(cfg, _members(cfg))
    two = S.sample(w, cfg, [prompts[0]] * 4, interventions=iset, intervention_index=[0, 1, 0, -1], **kw)
    assert two.prefill_rows == 3


def test_early_stop_equals_all_steps(tiny):
    cfg, w = tiny
    prompts = _prompts(cfg, (3, 7, 5, 4))
    kw = dict(max_new_tokens=11, temperature=1.0, seed=6)
    free = S.generate(w, cfg, prompts, **kw)
    # every row stops at its first token: the loop ends after the first chunk
    firsts = sorted({o[0] for o in free})
    early = S.sample(w, cfg, prompts, stop_ids=firsts, stop_check=3, **kw)
    full = S.sample(w, cfg, prompts, stop_ids=firsts, stop_check=0, **kw)
    assert early.tokens == full.tokens == [o[:1] for o in free]
    assert early.decode_steps == 3 and full.decode_steps == 11
    # rows stopping at different steps, the last steps one at a time (11 = 3 chunks of 3 + 2)
    stops = [free[0][4], free[1][1]]
    early = S.sample(w, cfg, prompts, stop_ids=stops, stop_check=3, **kw)
    full = S.sample(w, cfg, prompts, stop_ids=stops, stop_check=0, **kw)
    assert early.tokens == full.tokens and early.decode_steps <= full.decode_steps
    for o, f in zip(early.tokens, free):
        cut = min([f.index(s) + 1 for s in stops if s in f], default=len(f))
        assert o == f[:cut]


def _stops_spread_out(free, n_ids=6):
    """Stop ids that end the rows of `free` at spread-out steps: tokens the first rows make late."""
    ids = []
    for f in free:
        ids += [t for t in f[len(f) // 2:] if t not in ids][:1]
    return ids[:n_ids]


def test_shrinking_batch_equals_lock_step(tiny):
    """Rows that stopped leave the batch (smaller batches of the running rows): the same answers as
    the batch kept whole, with mixed interventions (gathered by row) and prefix sharing."""
    cfg, w = tiny
    iset = R.intervention_set(cfg, _members(cfg))
    prompts = _prompts(cfg, (3, 7, 5, 4))
    kw = dict(max_new_tokens=24, temperature=1.0, seed=8, repeats=[12] * 4, interventions=iset,
              intervention_index=[-1, 0, 1, 2])
    free = S.generate(w, cfg, prompts, **kw)
    stops = _stops_spread_out(free)
    whole = S.sample(w, cfg, prompts, stop_ids=stops, stop_check=2, shrink_min_rows=0, **kw)
    shrunk = S.sample(w, cfg, prompts, stop_ids=stops, stop_check=2, shrink_min_rows=8, **kw)
    assert whole.batch_rows == (48,)
    assert len(shrunk.batch_rows) >= 2 and shrunk.batch_rows[0] == 48, shrunk.batch_rows
    assert all(a > b for a, b in zip(shrunk.batch_rows, shrunk.batch_rows[1:]))
    assert shrunk.tokens == whole.tokens
    assert shrunk.decode_steps == whole.decode_steps
    for o, f in zip(shrunk.tokens, free):  # each answer is the free run's, cut after its first stop
        cut = min([f.index(s) + 1 for s in stops if s in f], default=len(f))
        assert o == f[:cut]
    assert len({len(o) for o in shrunk.tokens}) > 3  # the stops are spread out


def test_compacting_the_cache_is_in_place(tiny):
    """The shrink moves the running rows to the front of the donated cache: the compiled program
    aliases the cache and holds no more than a layer's rows besides it."""
    cfg, w = tiny
    b, p, n = 16, 8, 56
    fused = jax.eval_shape(S.fuse_qkv, w.layers)
    state, _ = S._prefill.eval_shape(w, cfg, fused, jax.ShapeDtypeStruct((8, p), jnp.int32),
                                     jax.ShapeDtypeStruct((8, p), bool), jnp.arange(b, dtype=jnp.int32) % 8, None,
                                     jax.random.PRNGKey(0), jnp.arange(b, dtype=jnp.uint32), max_new_tokens=n)
    mem = S._compact_kv.lower(state.cache.k, state.cache.v, jax.ShapeDtypeStruct((8,), jnp.int32)).compile(
    ).memory_analysis()
    cache = state.cache.k.size * state.cache.k.dtype.itemsize
    layer_rows = cache // cfg.n_layers
    assert mem.alias_size_in_bytes >= 2 * cache  # k and v written in place
    assert mem.temp_size_in_bytes <= 2 * layer_rows + 2 ** 16, (mem.temp_size_in_bytes, layer_rows)


def test_shrink_sizes():
    assert shrink.smaller_sizes(400, 8, 64) == [200, 104]
    assert shrink.smaller_sizes(512, 8, 64) == [256, 128, 64]
    assert shrink.smaller_sizes(48, 8, 8) == [24, 16, 8]
    assert shrink.smaller_sizes(100, 8, 0) == [] and shrink.smaller_sizes(64, 8, 64) == []
    assert shrink.smallest_holding([200, 104], 150) == 200 and shrink.smallest_holding([200, 104], 20) == 104
    assert shrink.smallest_holding([200, 104], 201) is None


def test_memory_check_suggests_a_batch(tiny):
    cfg, w = tiny
    est = S.decode_memory(cfg, rows=10, prompt_rows=8, prompt_len=8, max_new_tokens=100, dtype=jnp.float32)
    assert est.slots == 128  # 108 tokens rounded up to the kernel's 64-slot blocks
    assert est.kv_cache == cfg.n_layers * 10 * 128 * cfg.n_kv_heads * cfg.head_dim * 2 * 4
    budget = est.fixed + 4 * est.per_row + est.per_row // 2
    assert S.max_rows(cfg, 8, 100, jnp.float32, budget, prompt_rows=8) == 4  # 8: prefills padded
    prompts = [[1, 2, 3]] * 2
    with pytest.raises(S.SamplingMemoryError, match=r"At most 4 rows fit") as e:
        S.generate(w, cfg, prompts, repeats=[5, 5], max_new_tokens=100, memory_budget=budget)
    assert isinstance(e.value, EmjaxError) and "10 rows x 128 cache slots" in str(e.value)
    with pytest.raises(S.SamplingMemoryError, match="Not even one row fits"):
        S.generate(w, cfg, prompts, max_new_tokens=100, memory_budget=est.fixed // 2)
    assert S.check_memory(cfg, 4, 8, 8, 100, jnp.float32, (budget, "test")).rows == 4  # fits: no error


def test_bad_indices(tiny):
    cfg, w = tiny
    iset = R.intervention_set(cfg, _members(cfg))
    with pytest.raises(ValueError, match="needs intervention_index"):
        S.generate(w, cfg, [[1, 2]], max_new_tokens=2, interventions=iset)
    with pytest.raises(ValueError, match=r"lie in \[-1, 4\)"):
        S.generate(w, cfg, [[1, 2]], max_new_tokens=2, interventions=iset, intervention_index=[4])
    with pytest.raises(ValueError, match="not iset.select"):
        S.generate(w, cfg, [[1, 2]], max_new_tokens=2, interventions=iset.select([0]))
    with pytest.raises(ValueError, match="row_ids"):
        S.generate(w, cfg, [[1, 2]], max_new_tokens=2, repeats=[2], row_ids=[1])


def test_settings_no_answer_can_be_sampled_with(tiny):
    cfg, w = tiny
    for kw, what in ((dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
                     (dict(top_p=0.0), r"top_p must be in \(0, 1\]"), (dict(top_p=float("nan")), "top_p"),
                     (dict(temperature=-1.0), "temperature must be a finite number"),
                     (dict(temperature=float("nan")), "temperature"), (dict(top_k=-1), "top_k must be >= 0")):
        with pytest.raises(ValueError, match=what):
            S.generate(w, cfg, [[1, 2]], **{"max_new_tokens": 3, **kw})
    # top_k at or past the vocabulary keeps every token, as transformers' does (it crashed in top_k)
    for k in (cfg.vocab_size, cfg.vocab_size + 5):
        assert S.generate(w, cfg, [[1, 2]], max_new_tokens=4, top_k=k, seed=3) == \
            S.generate(w, cfg, [[1, 2]], max_new_tokens=4, seed=3)


def test_a_cpu_call_far_past_host_memory_is_refused(tiny):
    """On a CPU the budget is the host's available memory: a request that would stall in the
    allocator (it hung for minutes) is a SamplingMemoryError at once."""
    cfg, w = tiny
    budget = S.default_memory_budget(jax.devices("cpu")[0])
    if budget is None:
        pytest.skip("no /proc/meminfo on this host")
    assert "available memory" in budget[1]
    with pytest.raises(S.SamplingMemoryError, match="Not even one row fits|At most"):
        S.generate(w, cfg, [[1, 2]], max_new_tokens=10 ** 9)

