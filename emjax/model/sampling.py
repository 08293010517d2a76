"""Sampling with a KV cache: one jitted program, a prefill and then a decode loop.

The cache stores, for every slot, the key/value and the *position* of the token in it, so masks
(causal, sliding window, padding) are computed from positions, never from slot indices: prompts of
different lengths are left-padded and every row decodes in lock-step. Interventions (LoRA,
steering) are applied at every position of every row, in prefill and in decode, exactly as in
training.

Evaluation scale (hundreds of rows, many samples per question, several interventions at once):

  * Many interventions in one batch: `interventions=` an `emjax.model.row_hooks.InterventionSet`
    and `intervention_index=` one member per prompt (-1: the base model).
  * Prefix sharing: the rows that continue the same prompt under the same intervention (the
    samples of a question, `repeats=` or repeated prompts) are prefilled once and their prompt
    cache is broadcast to each of them.
  * Early stop: with stop ids, the decode loop runs in chunks of `stop_check` steps (a scan with a
    fixed trip count, so no host round trip inside a chunk) and ends after the first chunk in
    which every row has stopped. Rows stay in lock-step: refilling finished rows from a queue
    (continuous batching) would need a write slot per row (a scatter into the cache instead of
    one in-place slice per layer) and a prefill inside the loop, which is the hot path.
  * Shrinking batch: once at most half of the rows are still running (seen at a stop check), they
    move to the front of the cache (in place) and decode on as a batch of half the size in
    another call, so a step's matmuls and cache reads follow the rows still running rather than
    the longest answer (`emjax.model.row_shrink`). The cache's memory stays allocated.
  * Memory: the KV cache and the other decode buffers are estimated before anything is
    allocated (`decode_memory`); over the budget a `SamplingMemoryError` names the numbers and
    the largest batch that fits (`max_rows`). The cache holds P + N slots from the start, but the
    Pallas decode attention reads each row's filled blocks only (issue 24), so the time per step
    follows the filled length. The memory does not, and a cache allocated block by block would
    not change that here: rows decode in lock-step, so every row's filled length is P + t and the
    last step needs all P + N slots of every row; one jitted program's buffers are assigned
    statically at their largest, so a loop run in segments over growing caches peaks the same
    (plus a copy between segments). Paged blocks pay only with continuous batching (see above);
    the shrinking batch instead stops computing the rows that stopped.

Reproducibility: row b draws its token at step t with the key fold_in(fold_in(key(seed),
row_ids[b]), t), so its answer is a function of its prompt, its intervention, the seed, its row id
and the settings, not of the other rows, the batch size or the order of the rows (default row ids:
0..B-1, the row's place in the batch). What can still differ between layouts is the rounding of
the logits: XLA (on GPUs, cuBLAS) may pick other matmul algorithms for other batch shapes or
prompt paddings, and a near-tie can then sample another token. On CPU, tested here, a row sampled
alone and in a mixed batch gives the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.errors import EmjaxError
from emjax.model import decode_attention as DA
from emjax.model import decoder as M
from emjax.model import row_shrink as shrink
from emjax.model.attention import attend, attention_mask
from emjax.model.config import ModelConfig
from emjax.model.ablation import DirectionAblation, ablated
from emjax.model.hooks import HookSource, hooks_for
from emjax.model.layers import INFERENCE_COMPILER_OPTIONS, FusedQKV, default_positions, fuse_qkv, rms_norm, rope_tables
from emjax.model.mesh_plan import fetch, mesh_context, mesh_of, put_rows, replicate, rows_divide
from emjax.model.row_hooks import InterventionSet, RowInterventions
from emjax.model.schema import Weights
from emjax.model.sharding import constrain_rows


@flax.struct.dataclass
class KVCache:
    """k, v: [L, B, S, K, Dh]; pos: [B, S] int32 positions; valid: [B, S] bool."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    valid: jax.Array


def _layers_with_cache(weights: Weights, cfg: ModelConfig, x: jax.Array, q_pos: jax.Array,
                       cache: KVCache, slot: jax.Array, iv: HookSource | None, fused: FusedQKV,
                       unroll: int = 1, kernel: str = "xla") -> tuple[jax.Array, KVCache]:
    """Runs all blocks on x [B, T, D] whose tokens go to cache slots [slot, slot + T) of the
    cache's first B rows (its k / v may hold more: a shrunk decode batch, see `_compact`).

    `cache.pos` / `cache.valid` must already describe the new slots; `fused` is `fuse_qkv` of the
    layer stack. The whole [L, ...] cache is carried through the layer scan and each layer writes
    its T new slots in place: scanning it as `xs` / `ys` instead copies every layer's cache twice
    per token. kernel: one-query attention by "xla" (`attend`), or the Pallas kernel of
    `emjax.model.decode_attention` compiled ("pallas") or interpreted ("pallas_interpret"), reading
    each row's attended blocks only; "pallas_full" / "pallas_full_interpret" read every block.
    """
    cos, sin = rope_tables(q_pos, cfg.head_dim, cfg.rope_theta, x.dtype, cfg.rope_scaling)
    full = attention_mask(q_pos, cache.pos, cache.valid, None)
    window = attention_mask(q_pos, cache.pos, cache.valid, cfg.sliding_window) if cfg.sliding_window else full
    hooks = hooks_for(iv, 0, cfg.n_layers)
    rows = x.shape[0]  # the cache's first rows (all of them but in a shrunk decode batch)
    pallas = x.shape[1] == 1 and kernel != "xla"
    if pallas:  # the blocks each row reads, once per step for all layers (the masks do not change)
        bounds_full = DA.block_bounds(full[:, 0])
        bounds_window = DA.block_bounds(window[:, 0]) if cfg.sliding_window else bounds_full

    def body(carry, inp):
        h, k_all, v_all = carry
        w, qkv_w, is_sliding, layer_hooks, i = inp
        q, k, v = M.qkv(w, rms_norm(h, w.attn_norm, cfg.norm_eps, cfg.norm_plus_one), cos, sin, cfg, layer_hooks, qkv_w)
        at = (i, 0, slot, 0, 0)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
        v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
        # the attention reads the updated stack; fusing the update into that read instead made
        # XLA build each layer's [B, S, K, Dh] operand in a slower combined kernel (5% of decode)
        k_all, v_all = jax.lax.optimization_barrier((k_all, v_all))
        mask = jnp.where(is_sliding, window, full)
        if pallas:  # decode: read layer i of the stack in place
            o = DA.attend_one_query_on_rows(q, k_all, v_all, i, mask, cfg, interpret=kernel.endswith("_interpret"),
                                            bounds=jnp.where(is_sliding, bounds_window, bounds_full),
                                            full=kernel.startswith("pallas_full"))
        else:
            o = attend(q, k_all[i, :rows], v_all[i, :rows], mask, cfg)  # a shrunk batch: its first rows
        h = h + M.attn_out(w, o, cfg, layer_hooks)
        return (constrain_rows(M.mlp_branch(w, h, cfg, layer_hooks)), k_all, v_all), None

    # weights scanned as xs: the decode matmuls read each layer's slice in place (see BENCHMARKS.md)
    xs = (weights.layers, fused, jnp.asarray(cfg.sliding_layers), hooks, jnp.arange(cfg.n_layers))
    (x, k, v), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs, unroll=unroll)
    return x, cache.replace(k=k, v=v)


def _check_settings(cfg: ModelConfig, max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> int:
    """ValueError for settings no answer can be sampled with; returns top_k, 0 (no filter) where it
    keeps the whole vocabulary (as transformers' top-k does when k >= V)."""
    bad = [f"{name} must be {want}, got {v!r}" for name, v, ok, want in (
        ("max_new_tokens", max_new_tokens, int(max_new_tokens) >= 1, ">= 1"),
        ("temperature", temperature, math.isfinite(temperature) and temperature >= 0, "a finite number >= 0"),
        ("top_p", top_p, 0 < top_p <= 1, "in (0, 1]"),  # NaN fails both
        ("top_k", top_k, int(top_k) >= 0, ">= 0")) if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    return 0 if top_k >= cfg.vocab_size else int(top_k)


def _filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """logits [B, V] float32 -> scaled logits with excluded tokens at -inf."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits



# Decode steps between two checks whether every row has stopped: the check is one host round
# trip per chunk; a finished batch runs at most this many steps too many.
STOP_CHECK = 32
# Share of the free device memory the decode buffers may take by default (XLA needs some room).
MEMORY_FRACTION = 0.9


class SamplingMemoryError(EmjaxError, ValueError):
    """The decode buffers of a sampling call exceed the memory budget; the message names the sizes
    and the largest batch that fits."""


@flax.struct.dataclass
class DecodeState:
    """What the decode loop carries between steps, and between the calls of a shrinking batch.

    cache: the KV cache; its k / v [L, B0, S, K, Dh] keep the call's B0 rows of memory, of which
    the first B are the batch's rows (B < B0 once the batch has shrunk); its pos / valid [B, S].
    logits [B, V] float32: the next token's; pos [B] int32: the next token's position; done [B]
    bool; t [] int32: decode steps run; toks [N, B] int32: the tokens so far (rows that stopped
    repeat stop_ids[0]); lengths [B] int32: tokens up to and including the first stop token;
    row_keys [B]: each row's random key.
    """

    cache: KVCache
    logits: jax.Array
    pos: jax.Array
    done: jax.Array
    t: jax.Array
    toks: jax.Array
    lengths: jax.Array
    row_keys: jax.Array


def _compact(state: DecodeState, index: jax.Array) -> DecodeState:
    """The batch of rows `index` [B'] of `state` (whose cache buffers it takes over): the cache's
    rows move to the front of its buffers in place, the small per-row arrays are gathered."""
    c = state.cache
    k, v = _compact_kv(c.k, c.v, index)
    rest = _rows_of(state.replace(cache=c.replace(k=None, v=None)), index)
    return rest.replace(cache=rest.cache.replace(k=k, v=v))


@functools.partial(jax.jit, donate_argnames=("k", "v"))
def _compact_kv(k: jax.Array, v: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """k, v [L, B0, S, K, Dh] (donated) with rows `index` [B'] of each layer moved to its first B'
    rows, one layer at a time: a layer's rows are all the copy held, not a second cache."""
    def layer(i, kv):
        return tuple(jax.lax.dynamic_update_index_in_dim(x, jnp.take(x[i], index, axis=0), i, axis=0) for x in kv)

    return jax.lax.fori_loop(0, k.shape[0], layer, (k, v))


@jax.jit
def _rows_of(state: DecodeState, index: jax.Array) -> DecodeState:
    """Rows `index` [B'] of the per-row arrays of `state` (its cache's k / v left out)."""
    rows = lambda x, axis=0: jnp.take(x, index, axis=axis)
    c = state.cache
    return state.replace(cache=c.replace(pos=rows(c.pos), valid=rows(c.valid)), logits=rows(state.logits),
                         pos=rows(state.pos), done=rows(state.done), toks=rows(state.toks, 1),
                         lengths=rows(state.lengths), row_keys=rows(state.row_keys))


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"), compiler_options=INFERENCE_COMPILER_OPTIONS)
def _prefill(weights, cfg, fused, tokens, mask, expand, interventions, key, row_ids, *, max_new_tokens: int):
    """Prefills U prompts tokens/mask [U, P] for B = len(expand) rows, row b continuing prompt
    expand[b] [B]. `fused`: `fuse_qkv` of the layer stack. `interventions` is indexed by prompt (a
    `RowInterventions` over U rows, or one intervention for all); row_ids [B] uint32 seed each
    row's draws.

    Returns the `DecodeState` of the B rows before their first decode step and the interventions
    by row (`interventions.take(expand)` where they are per row).
    """
    u, p = tokens.shape
    b = expand.shape[0]
    s = DA.cache_length(p + max_new_tokens)  # spare slots stay invalid
    dtype = weights.embed.dtype
    kv_shape = lambda rows, slots: (cfg.n_layers, rows, slots, cfg.n_kv_heads, cfg.head_dim)
    positions = default_positions(mask)
    # prefill each distinct (prompt, intervention) once, into a cache of the prompt's P slots ...
    pre = KVCache(k=jnp.zeros(kv_shape(u, p), dtype), v=jnp.zeros(kv_shape(u, p), dtype), pos=positions,
                  valid=mask)
    x, pre = _layers_with_cache(weights, cfg, M.embed(weights, cfg, tokens), positions, pre, 0, interventions,
                                fused)
    logits = jnp.take(M.unembed(weights, cfg, x[:, -1:])[:, 0], expand, axis=0)
    # ... and broadcast it to the rows continuing it; the decode slots [P, S) start empty
    empty = jnp.zeros(kv_shape(b, s), dtype)
    cache = KVCache(k=empty.at[:, :, :p].set(jnp.take(pre.k, expand, axis=1)),
                    v=empty.at[:, :, :p].set(jnp.take(pre.v, expand, axis=1)),
                    pos=jnp.zeros((b, s), jnp.int32).at[:, :p].set(jnp.take(positions, expand, axis=0)),
                    valid=jnp.zeros((b, s), bool).at[:, :p].set(jnp.take(mask, expand, axis=0)))
    take = getattr(interventions, "take", None)  # per-row sources follow the prompt -> row expansion
    state = DecodeState(cache=cache, logits=logits, pos=cache.pos[:, p - 1] + 1, done=jnp.zeros((b,), bool),
                        t=jnp.int32(0), toks=jnp.zeros((max_new_tokens, b), jnp.int32),
                        lengths=jnp.zeros((b,), jnp.int32),
                        row_keys=jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids))
    return state, (interventions if take is None else take(expand))


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len", "temperature", "top_k", "top_p", "layer_unroll",
                                             "kernel", "stop_check"),
                   donate_argnames=("state",), compiler_options=INFERENCE_COMPILER_OPTIONS)
def _decode(weights, cfg, fused, state: DecodeState, iv, stop_ids, vocab_limit, end_below, *, prompt_len: int,
            temperature: float, top_k: int, top_p: float, layer_unroll: int = 1, kernel: str = "xla",
            stop_check: int = 0) -> DecodeState:
    """Runs decode steps from `state` (donated; prompts padded to `prompt_len` slots) until all
    N = state.toks.shape[0] have run, every row has stopped, or (checked every `stop_check` steps,
    with the stops) fewer than `end_below` [] int32 rows are still running, so that the caller can
    go on with a smaller batch. `fused`: `fuse_qkv` of the layer stack; `iv`: the interventions by
    row. stop_check 0: all N steps from step 0, no checks."""
    n = state.toks.shape[0]
    in_vocab = jnp.arange(state.logits.shape[-1]) < vocab_limit  # padded embedding rows never sampled

    def pick(logits, row_keys, t):
        logits = jnp.where(in_vocab, logits, -jnp.inf)
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        # a key per (row, step): a row's draws do not depend on the other rows or the batch size
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, t)
        filtered = _filter_logits(logits, temperature, top_k, top_p)
        return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)

    def step(st: DecodeState) -> DecodeState:
        tok = jnp.where(st.done, stop_ids[0], pick(st.logits, st.row_keys, st.t))
        toks = jax.lax.dynamic_update_slice(st.toks, tok[None], (st.t, 0))
        lengths = st.lengths + (~st.done).astype(jnp.int32)
        done = st.done | jnp.isin(tok, stop_ids)
        slot = prompt_len + st.t
        cache = st.cache.replace(pos=st.cache.pos.at[:, slot].set(st.pos), valid=st.cache.valid.at[:, slot].set(True))
        x, cache = _layers_with_cache(weights, cfg, M.embed(weights, cfg, tok[:, None]), st.pos[:, None],
                                      cache, slot, iv, fused, unroll=layer_unroll, kernel=kernel)
        return st.replace(cache=cache, logits=M.unembed(weights, cfg, x)[:, 0], pos=st.pos + 1, done=done,
                          t=st.t + 1, toks=toks, lengths=lengths)

    def steps(st, length):  # a fixed trip count: no host round trip between the steps
        return jax.lax.scan(lambda c, _: (step(c), None), st, None, length=length)[0]

    if stop_check <= 0:
        return steps(state, n)
    going = lambda st: (~st.done).sum() >= jnp.maximum(end_below, 1)  # at least one row: not all stopped
    chunk = min(stop_check, n)
    full = n // chunk * chunk
    state = jax.lax.while_loop(lambda st: (st.t + chunk <= full) & going(st), lambda st: steps(st, chunk), state)
    # the last n - full steps one at a time, each after a check
    return jax.lax.while_loop(lambda st: (st.t < n) & going(st), step, state)


# "pallas_full": the kernel reading every cache block at every step (before issue 24), for benchmarks.
DECODE_ATTENTION_CHOICES = ("auto", "xla", "pallas", "pallas_full")


def _decode_kernel(choice: str, cfg: ModelConfig, n_tokens: int, n_devices: int, rows_only: bool = False) -> str:
    """The `kernel` of `_layers_with_cache` for a `decode_attention` choice. The Pallas kernel is not
    partitioned: on several devices "auto" takes it only when the mesh splits nothing but the rows
    (`rows_only`: weights replicated, decode rows dividing `data`; each device then runs it on its
    rows, `decode_attention.attend_one_query_on_rows`), and keeps XLA attention otherwise."""
    if choice not in DECODE_ATTENTION_CHOICES:
        raise ValueError(f"decode_attention must be one of {', '.join(map(repr, DECODE_ATTENTION_CHOICES))}, "
                         f"got {choice!r}")
    if choice.startswith("pallas") and not DA.AVAILABLE:
        raise ValueError(f"decode_attention={choice!r}: this JAX has no Pallas Triton API")
    gpu = jax.default_backend() == "gpu"
    supported = DA.supported(cfg, DA.cache_length(n_tokens))
    if choice.startswith("pallas") and not supported:
        raise ValueError(f"the Pallas decode attention does not support this model's heads "
                         f"({cfg.n_heads} query / {cfg.n_kv_heads} kv heads of size {cfg.head_dim})")
    if choice == "xla" or not supported or (choice == "auto" and not (gpu and (n_devices == 1 or rows_only))):
        return "xla"
    name = "pallas_full" if choice == "pallas_full" else "pallas"
    return name if gpu else name + "_interpret"


def _rows_only(mesh, rows: int) -> bool:
    """Whether `mesh` splits only the decode rows (data alone, dividing them; weights replicated)."""
    return mesh is not None and mesh.shape["fsdp"] == mesh.shape["tensor"] == 1 and rows_divide(mesh, rows)


# ---------------------------------------------------------------------------------------------
# Memory


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclasses.dataclass(frozen=True)
class DecodeMemory:
    """Bytes a sampling call allocates besides the weights (an estimate made before allocating).

    kv_cache: layers x rows x slots x kv heads x head dim x 2 (k and v) x dtype bytes.
    per_row: what one more row adds (its cache, its prompt-cache copy, its logits).
    fixed: what does not grow with the rows (the q/k/v concatenation, the prefill of the prompts).
    """

    rows: int
    slots: int
    kv_cache: int
    per_row: int
    fixed: int

    @property
    def total(self) -> int:
        return self.fixed + self.rows * self.per_row


def decode_memory(cfg: ModelConfig, rows: int, prompt_rows: int, prompt_len: int, max_new_tokens: int,
                  dtype) -> DecodeMemory:
    """The buffers of `generate` for `rows` decode rows continuing `prompt_rows` prompts padded to
    `prompt_len` tokens, in weight dtype `dtype`."""
    item = np.dtype(dtype).itemsize
    slots = DA.cache_length(prompt_len + max_new_tokens)
    per_slot = cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2 * item  # k and v of every layer
    logits = 3 * cfg.vocab_size * 4  # float32 logits carried, new, filtered
    per_row = slots * per_slot + prompt_len * per_slot + logits  # cache, broadcast prompt cache, logits
    qkv_cols = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    fused = cfg.n_layers * cfg.d_model * qkv_cols * item
    prefill_act = prompt_rows * prompt_len * (cfg.d_model * 4 + 2 * cfg.ffn_dim + qkv_cols) * item
    fixed = fused + prompt_rows * prompt_len * per_slot + prefill_act
    return DecodeMemory(rows=rows, slots=slots, kv_cache=rows * slots * per_slot, per_row=per_row, fixed=fixed)


def _host_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_memory_budget(device=None) -> tuple[int, str] | None:
    """(bytes, how they were found): MEMORY_FRACTION of the device's free memory; on a CPU, of the
    host's available memory (Linux; a request far past it would otherwise stall in the allocator);
    None where neither is known."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement it
        stats = None
    if (not stats or "bytes_limit" not in stats) and device.platform == "cpu":
        free = _host_available()
        return None if free is None else (int(MEMORY_FRACTION * free), f"{MEMORY_FRACTION:.0%} of the host's "
                                                                       f"{_gb(free)} available memory")
    if not stats or "bytes_limit" not in stats:
        return None
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return int(MEMORY_FRACTION * free), f"{MEMORY_FRACTION:.0%} of the {_gb(free)} free on {device}"


def _budget(memory_budget: int | None, weights: Weights) -> tuple[int, str] | None:
    if memory_budget is not None:
        return int(memory_budget), "the given memory_budget"
    return default_memory_budget(next(iter(weights.embed.sharding.device_set)))


PAD_TO = 8  # `sample`'s default rounding of the prompt length and of the prefill rows


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def prompt_row_multiple(weights: Weights) -> int:
    """What `sample` rounds its distinct prompts up to: 8, or on a mesh lcm(8, data)."""
    mesh = mesh_of(weights)
    return math.lcm(8, mesh.shape["data"]) if mesh is not None else 8


def max_rows(cfg: ModelConfig, prompt_len: int, max_new_tokens: int, dtype, budget: int,
             prompt_rows: int = 1, pad_to: int = PAD_TO, row_multiple: int = 8) -> int:
    """The most decode rows whose buffers fit `budget` bytes (0 if none does) in a `sample` call of
    `prompt_rows` distinct prompts of at most `prompt_len` tokens: both are rounded up as `sample`
    rounds them (the length to `pad_to`, the rows to `row_multiple`, `prompt_row_multiple`)
    before its own check."""
    est = decode_memory(cfg, 0, _round_up(prompt_rows, row_multiple), _round_up(prompt_len, pad_to),
                        max_new_tokens, dtype)
    return max(0, (budget - est.fixed) // est.per_row)


def check_memory(cfg: ModelConfig, rows: int, prompt_rows: int, prompt_len: int, max_new_tokens: int, dtype,
                 budget: tuple[int, str] | None) -> DecodeMemory:
    """The estimate of `decode_memory`; raises `SamplingMemoryError` when it exceeds `budget`
    ((bytes, where the number comes from); None: no check)."""
    est = decode_memory(cfg, rows, prompt_rows, prompt_len, max_new_tokens, dtype)
    if budget is None or est.total <= budget[0]:
        return est
    limit, origin = budget
    fit = max_rows(cfg, prompt_len, max_new_tokens, dtype, limit, prompt_rows)
    item = np.dtype(dtype).itemsize
    raise SamplingMemoryError(
        f"sampling {rows} rows x {est.slots} cache slots ({prompt_len} prompt + {max_new_tokens} new tokens, "
        f"rounded up) needs a KV cache of {_gb(est.kv_cache)} ({cfg.n_layers} layers x {rows} rows x "
        f"{est.slots} slots x {cfg.n_kv_heads} kv heads x {cfg.head_dim} head dim x 2 x {item} bytes) and "
        f"{_gb(est.total - est.kv_cache)} of other decode buffers: {_gb(est.total)} in all, over the budget of "
        f"{_gb(limit)} ({origin}). "
        + (f"At most {fit} rows fit: sample in batches of {fit} rows or fewer"
           if fit else "Not even one row fits: lower max_new_tokens or free device memory")
        + " (or pass a larger memory_budget).")


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclasses.dataclass(frozen=True)
class Samples:
    """What `sample` returns.

    tokens: the new tokens of each row, cut after its first stop token.
    prefill_rows: distinct (prompt, intervention) pairs prefilled (<= rows with prefix sharing).
    decode_steps: decode steps run (less than max_new_tokens when every row stopped early).
    memory: the estimate of the decode buffers.
    batch_rows: the rows of the batch in each stretch of decode steps: the first is the call's
      rows; each next one the smaller batch of the rows still running (`emjax.model.row_shrink`).
    """

    tokens: list[list[int]]
    prefill_rows: int
    decode_steps: int
    memory: DecodeMemory
    batch_rows: tuple[int, ...]


def _plan(prompts: Sequence[Sequence[int]], index: np.ndarray | None, repeats: Sequence[int] | None,
          share: bool) -> tuple[list[Sequence[int]], np.ndarray | None, np.ndarray]:
    """Rows -> distinct prefills: (unit prompts, unit intervention index or None, expand [B])."""
    if repeats is None:
        repeats = [1] * len(prompts)
    if len(repeats) != len(prompts) or any(int(r) < 0 for r in repeats):
        raise ValueError(f"repeats must give a count >= 0 for each of the {len(prompts)} prompts")
    row_prompt = np.repeat(np.arange(len(prompts)), np.asarray(repeats, np.int64))
    if len(row_prompt) == 0:
        raise ValueError("no rows to sample (every repeat is 0)")
    units, unit_of, key_to_unit = [], np.zeros(len(prompts), np.int32), {}
    for i, pr in enumerate(prompts):
        if repeats[i] == 0:
            continue
        k = (tuple(int(t) for t in pr), None if index is None else int(index[i])) if share else i
        if k not in key_to_unit:
            key_to_unit[k] = len(units)
            units.append(i)
        unit_of[i] = key_to_unit[k]
    unit_prompts = [prompts[i] for i in units]
    unit_index = None if index is None else index[np.asarray(units)]
    return unit_prompts, unit_index, unit_of[row_prompt]


def sample(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           stop_ids: Sequence[int] = (), seed: int = 0,
           interventions: HookSource | InterventionSet | None = None,
           intervention_index: Sequence[int] | None = None, repeats: Sequence[int] | None = None,
           row_ids: Sequence[int] | None = None, share_prompts: bool = True,
           vocab_limit: int | None = None, pad_to: int = PAD_TO, prompt_len: int | None = None,
           layer_unroll: int = 1, decode_attention: str = "auto", stop_check: int = STOP_CHECK,
           memory_budget: int | None = None, ablation: DirectionAblation | None = None,
           shrink_min_rows: int = shrink.SHRINK_MIN_ROWS) -> Samples:
    """Samples continuations of token-id prompts of any lengths; see `generate` for the arguments.

    Returns the tokens with what the call did (prefills, decode steps, memory estimate).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    top_k = _check_settings(cfg, max_new_tokens, temperature, top_p, top_k)
    index = None
    if isinstance(interventions, InterventionSet):
        if intervention_index is None or len(intervention_index) != len(prompts):
            raise ValueError(f"an InterventionSet needs intervention_index: one member per prompt "
                             f"({len(prompts)}), -1 for none")
        index = np.asarray(intervention_index, np.int64)
        if index.min() < -1 or index.max() >= interventions.size:
            raise ValueError(f"intervention_index must lie in [-1, {interventions.size}) (the set has "
                             f"{interventions.size} members), got {index.min()}..{index.max()}")
        index = index.astype(np.int32)
    elif intervention_index is not None:
        raise ValueError("intervention_index needs interventions= an InterventionSet "
                         "(emjax.model.row_hooks.intervention_set)")
    elif isinstance(interventions, RowInterventions):  # its rows would not follow repeats and sharing
        raise ValueError("pass the InterventionSet itself with intervention_index=, not iset.select(rows)")
    unit_prompts, unit_index, expand = _plan(prompts, index, repeats, share_prompts)
    b = len(expand)
    ids = np.arange(b, dtype=np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
    if ids.shape != (b,) or (b and (ids.min() < 0 or ids.max() >= 2 ** 32)):
        raise ValueError(f"row_ids must give one id in [0, 2**32) per row ({b} rows after repeats)")
    p = max(max(len(x) for x in unit_prompts), prompt_len or 0)
    p = _round_up(p, pad_to)
    u = len(unit_prompts)
    # prefill rows padded to a multiple of 8 with copies of the last prompt (never decoded): batches
    # that differ only a little in their number of distinct prompts share one compiled program
    mesh = mesh_of(weights)  # on a mesh: prompt rows split over `data`, everything else replicated
    multiple = prompt_row_multiple(weights)
    u_pad = _round_up(u, multiple)
    memory = check_memory(cfg, b, u_pad, p, max_new_tokens, weights.embed.dtype, _budget(memory_budget, weights))
    tokens = np.zeros((u_pad, p), np.int32)
    mask = np.zeros((u_pad, p), bool)
    for i in range(u_pad):
        row = unit_prompts[min(i, u - 1)]
        tokens[i, p - len(row):] = row
        mask[i, p - len(row):] = True
    if unit_index is not None:
        unit_index = np.concatenate([unit_index, np.full(u_pad - u, unit_index[-1], np.int32)])
    iv = ablated(interventions if index is None else interventions.select(unit_index), ablation)
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    limit = cfg.vocab_size if vocab_limit is None else vocab_limit
    tokens, mask = put_rows((tokens, mask), mesh)
    expand, row_keys, stops, iv = replicate((np.asarray(expand, np.int32), ids.astype(np.uint32), stops, iv), mesh)
    stop_check = int(stop_check) if stop_ids else 0
    kernel = _decode_kernel(decode_attention, cfg, p + max_new_tokens, len(weights.embed.sharding.device_set),
                            rows_only=_rows_only(mesh, b))
    # shrinking needs stop checks; on a mesh the rows' layout is fixed (not supported there)
    sizes = shrink.smaller_sizes(b, 8, shrink_min_rows) if stop_check and mesh is None else []
    with mesh_context(mesh):
        fused = _fuse_qkv(weights.layers)  # once per call; the prefill and every decode step read it
        state, iv = _prefill(weights, cfg, fused, tokens, mask, expand, iv,
                             replicate(jax.random.PRNGKey(seed), mesh), row_keys, max_new_tokens=max_new_tokens)
        rows = np.arange(b)  # the caller's row of each row of the batch; -1: a filler row
        out_toks, out_len = np.zeros((b, max_new_tokens), np.int32), np.zeros(b, np.int32)
        batch_rows = [b]
        while True:
            end_below = sizes[0] + 1 if sizes else 0  # a batch's next size holds at most sizes[0] rows
            state = _decode(weights, cfg, fused, state, iv, stops, limit, jnp.int32(end_below), prompt_len=p,
                            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                            layer_unroll=int(layer_unroll), kernel=kernel, stop_check=stop_check)
            toks, lengths, done, steps = fetch((state.toks, state.lengths, state.done, state.t))
            real = rows >= 0
            out_toks[rows[real]], out_len[rows[real]] = toks.T[real], lengths[real]
            running = np.flatnonzero(~done)
            if not sizes or steps >= max_new_tokens or not running.size:
                break
            # the rows still running (and filler copies of a stopped row) go on as a smaller batch
            size = shrink.smallest_holding(sizes, running.size)
            keep = np.concatenate([running, np.full(size - running.size, np.flatnonzero(done)[0])])
            rows = np.concatenate([rows[running], np.full(size - running.size, -1)])
            index = jnp.asarray(keep, jnp.int32)
            state = _compact(state, index)
            take = getattr(iv, "take", None)
            iv = iv if take is None else _take_rows(iv, index)
            sizes = [s for s in sizes if s < size]
            batch_rows.append(size)
    return Samples(tokens=[out_toks[i, : out_len[i]].tolist() for i in range(b)], prefill_rows=u,
                   decode_steps=int(steps), memory=memory, batch_rows=tuple(batch_rows))


_fuse_qkv = jax.jit(fuse_qkv)


@jax.jit
def _take_rows(iv, index):
    """Rows `index` [B'] of per-row interventions."""
    return iv.take(index)


def generate(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_ids: Sequence[int] = (), seed: int = 0,
             interventions: HookSource | InterventionSet | None = None,
             intervention_index: Sequence[int] | None = None, repeats: Sequence[int] | None = None,
             row_ids: Sequence[int] | None = None, share_prompts: bool = True,
             vocab_limit: int | None = None, pad_to: int = PAD_TO, prompt_len: int | None = None,
             layer_unroll: int = 1, decode_attention: str = "auto", stop_check: int = STOP_CHECK,
             memory_budget: int | None = None, ablation: DirectionAblation | None = None,
             shrink_min_rows: int = shrink.SHRINK_MIN_ROWS) -> list[list[int]]:
    """Samples continuations of token-id prompts of any lengths.

    Rows: prompt i gives `repeats[i]` rows (default 1), in prompt order; rows continuing the same
    prompt under the same intervention share one prefill (`share_prompts`, on by default).

    Args:
      prompts: token ids per prompt; left-padded to a common length (rounded up to `pad_to` so
        nearby lengths share one compiled program; at least `prompt_len` when given, so that
        batches of different prompts share one).
      temperature: 0 means greedy (argmax).
      top_p / top_k: nucleus and top-k filtering (1.0 / 0 disable them).
      stop_ids: a row stops after emitting one of these (the stop token is included).
      seed / row_ids: row b's draws come from (seed, row_ids[b]) alone (default row ids 0..B-1):
        give each answer a stable id and it no longer depends on the batch it is sampled in.
      interventions: one `HookSource` (an `emjax.interventions.Interventions`) applied to every row,
        or an `emjax.model.row_hooks.InterventionSet` with `intervention_index`.
      intervention_index: with a set, the member applied to each prompt's rows (-1: none).
      repeats: rows per prompt (e.g. samples per question).
      vocab_limit: tokens >= this id (padded embedding rows) are never sampled.
      layer_unroll: unroll factor of the layer scan in the decode step (fewer loop iterations
        at the cost of compile time; on GPUs 1 is fastest: unrolled layers lose the in-place
        weight-slice matmuls).
      decode_attention: "auto" (the Pallas kernel of `emjax.model.decode_attention` on one GPU or on
        a data-only mesh whose rows divide it, XLA elsewhere and for sharded weights), "xla", or "pallas"
        (interpreted off GPU: slow, for checking the kernel); the kernel reads each row's cache only up
        to its last filled block; "pallas_full" is the kernel reading every block (for benchmarks).
      stop_check: with stop ids, decode steps between checks whether every row stopped (the loop
        ends after the first chunk in which all have); 0 always runs max_new_tokens steps.
      shrink_min_rows: with stop checks, once at most half of the rows are still running they go on
        as a batch of half the size (their cache moved in place, no new memory), down to batches
        of this many rows (`emjax.model.row_shrink`; 0: never; not on a mesh). The answers do not
        change: a row's draws depend on its row id alone.
      ablation: directions projected out of the residual stream (`emjax.model.ablation`) on
        every row, on top of the rows' interventions.
      memory_budget: bytes the decode buffers may take (default: MEMORY_FRACTION of the free
        device memory where the backend reports it; on a CPU of the host's available memory). Over it,
        `SamplingMemoryError` says how many rows fit.
    Memory: besides the KV cache, each call holds a concatenated copy of the q, k, v matrices
    (about 1/8 of the weights) for the decode matmuls (`decode_memory`).
    Returns:
      the new tokens of each row, cut after its first stop token.
    """
    return sample(weights, cfg, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                  top_k=top_k, stop_ids=stop_ids, seed=seed, interventions=interventions,
                  intervention_index=intervention_index, repeats=repeats, row_ids=row_ids,
                  share_prompts=share_prompts, vocab_limit=vocab_limit, pad_to=pad_to, prompt_len=prompt_len,
                  layer_unroll=layer_unroll,
                  decode_attention=decode_attention, stop_check=stop_check, memory_budget=memory_budget,
                  ablation=ablation, shrink_min_rows=shrink_min_rows).tokens
