"""Decode attention as one Pallas (Triton) kernel reading layer i of the KV-cache stack in place.

In the XLA decode loop a layer's attention was about ten small kernels (a copy of the layer's
cache out of the stack, padding, two batched matmuls, masking, softmax pieces, a transpose),
roughly 1 ms per token on a 14B model (BENCHMARKS.md). Here one program per (row, kv head) streams
the layer's keys and values once, in blocks of `BLOCK_S` slots, with an online softmax
(flash-decoding without the split over slots: B x K programs already fill the GPU). float32
caches get full float32 dots (no tf32).

Each row reads only the blocks between its first and its last attended slot (`block_bounds`, from
the mask, a dynamic trip count): during decode the cache is allocated for the last step (P + N
slots) but a step t reads about P + t of them, so the work per step follows the filled length
(issue 24: 400 rows x 600 new tokens read 50.3 GB per step of a 640-slot cache where the filled
slots average 26.8 GB), and left padding in whole blocks is skipped too. A block inside the range
still applies the mask slot by slot. `full=True` is the previous kernel (every block; kept to
benchmark against).

The same function as `emjax.model.attention.attend` for one query per row, up to float rounding: the
probabilities are not normalised before the value product (the sum is divided at the end).
Used on GPUs only; `interpret=True` runs it anywhere, which is how the tests check it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from emjax.model.attention import MASKED_LOGIT
from emjax.model.config import ModelConfig

try:  # Pallas' Triton API moves between JAX releases; without it sampling uses XLA attention
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    AVAILABLE = all(hasattr(plgpu, n) for n in ("dot", "CompilerParams")) and hasattr(pl, "no_block_spec")
except ImportError:  # pragma: no cover
    AVAILABLE = False

BLOCK_S = 64  # cache slots per step; the cache length must be a multiple (see `cache_length`)
_Q_ROWS = 16  # query heads per kv head, zero-padded to Triton's smallest dot tile


def cache_length(n: int) -> int:
    """Slots to allocate for n tokens: rounded up to a multiple of BLOCK_S."""
    return -(-n // BLOCK_S) * BLOCK_S


def supported(cfg: ModelConfig, n_slots: int) -> bool:
    """Whether the kernel handles this shape (else use `emjax.model.attention.attend`)."""
    group = cfg.n_heads // cfg.n_kv_heads
    dh = cfg.head_dim
    return AVAILABLE and group <= _Q_ROWS and dh >= 16 and dh & (dh - 1) == 0 and n_slots % BLOCK_S == 0


def block_bounds(mask: jax.Array) -> jax.Array:
    """[B, 2] int32: per row, the first block holding an attended slot and one past the last one.

    mask: [B, S] bool (S a multiple of BLOCK_S). A row with no attended slot reads every block, so
    that it stays uniform over all slots like `attend` (decode never has one: a query sees itself).
    """
    b, s = mask.shape
    blocks = s // BLOCK_S
    anywhere = jnp.any(mask, axis=1)
    first = jnp.argmax(mask, axis=1).astype(jnp.int32)
    last = (s - 1 - jnp.argmax(mask[:, ::-1], axis=1)).astype(jnp.int32)
    lo = jnp.where(anywhere, first // BLOCK_S, 0)
    hi = jnp.where(anywhere, last // BLOCK_S + 1, blocks)
    return jnp.stack([lo, hi], axis=1).astype(jnp.int32)


def _kernel(layer_ref, bounds_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, *, scale: float,
            softcap: float | None):
    b, kh = pl.program_id(0), pl.program_id(1)
    layer = layer_ref[0]
    lo, hi = bounds_ref[b, 0], bounds_ref[b, 1]  # this row's blocks: a dynamic trip count
    q = q_ref[b, kh]  # [_Q_ROWS, Dh]
    tf32 = None if q.dtype != jnp.float32 else False  # float32 caches: full float32 dots

    def step(j, carry):
        m, l, acc = carry
        slots = pl.ds(pl.multiple_of(j * BLOCK_S, BLOCK_S), BLOCK_S)
        k = k_ref[layer, b, slots, kh, :]  # [BLOCK_S, Dh]
        v = v_ref[layer, b, slots, kh, :]
        logits = plgpu.dot(q, k, trans_b=True, allow_tf32=tf32) * scale  # [_Q_ROWS, BLOCK_S] float32
        if softcap is not None:
            logits = softcap * jnp.tanh(logits / softcap)
        logits = jnp.where(mask_ref[b, slots][None, :] != 0, logits, MASKED_LOGIT)  # all masked: uniform
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        p = jnp.exp(logits - m_new[:, None])
        corr = jnp.exp(m - m_new)
        acc = acc * corr[:, None] + plgpu.dot(p.astype(v.dtype), v, allow_tf32=tf32)
        return m_new, l * corr + jnp.sum(p, axis=1), acc

    dh = q.shape[-1]
    init = (jnp.full((_Q_ROWS,), -jnp.inf, jnp.float32), jnp.zeros((_Q_ROWS,), jnp.float32),
            jnp.zeros((_Q_ROWS, dh), jnp.float32))
    _, l, acc = jax.lax.fori_loop(lo, hi, step, init)
    o_ref[b, kh] = (acc / l[:, None]).astype(o_ref.dtype)


def attend_one_query_on_rows(q: jax.Array, k_all: jax.Array, v_all: jax.Array, layer: jax.Array, mask: jax.Array,
                             cfg: ModelConfig, interpret: bool = False, bounds: jax.Array | None = None,
                             full: bool = False) -> jax.Array:
    """`attend_one_query` with the rows split over `data` of the mesh set by `jax.set_mesh`: the
    kernel is not partitioned, so under `shard_map` each device runs it on its own rows (B must
    divide over `data`, the other mesh axes must be 1: weights replicated); a plain call without
    such a mesh."""
    if bounds is None:
        bounds = block_bounds(mask[:, 0, :])
    mesh = jax.sharding.get_abstract_mesh()
    data = 1 if mesh.empty else dict(mesh.shape).get("data", 1)
    if data == 1 or q.shape[0] % data:
        return attend_one_query(q, k_all, v_all, layer, mask, cfg, interpret, bounds, full)
    rows, stack = P("data"), P(None, "data")
    return jax.shard_map(lambda q, k, v, l, m, bd: attend_one_query(q, k, v, l, m, cfg, interpret, bd, full),
                         in_specs=(rows, stack, stack, P(), rows, rows), out_specs=rows, check_vma=False)(
        q, k_all, v_all, layer, mask, bounds)


@functools.partial(jax.jit, static_argnames=("cfg", "interpret", "full"))
def attend_one_query(q: jax.Array, k_all: jax.Array, v_all: jax.Array, layer: jax.Array, mask: jax.Array,
                     cfg: ModelConfig, interpret: bool = False, bounds: jax.Array | None = None,
                     full: bool = False) -> jax.Array:
    """Attention of one new token per row against layer `layer` of the cache stack.

    q: [B, 1, H, Dh]; k_all, v_all: [L, B, S, K, Dh] (S a multiple of BLOCK_S); layer: int32
    scalar; mask: [B, 1, S] bool (causal, validity and window already applied); bounds: [B, 2]
    int32 blocks each row reads, `block_bounds` of the mask when None (pass them to compute them
    once for all layers); full: read every block (the kernel before issue 24, for benchmarks).
    Returns [B, 1, H, Dh] in q's dtype.
    """
    b, _, h, dh = q.shape
    _, _, s, kvh, _ = k_all.shape
    group = h // kvh
    qg = q.reshape(b, kvh, group, dh).astype(k_all.dtype)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, _Q_ROWS - group), (0, 0)))
    if full:
        bounds = jnp.broadcast_to(jnp.asarray([0, s // BLOCK_S], jnp.int32), (b, 2))
    elif bounds is None:
        bounds = block_bounds(mask[:, 0, :])
    kernel = functools.partial(_kernel, scale=float(cfg.attn_scale),
                               softcap=None if cfg.attn_softcap is None else float(cfg.attn_softcap))
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b, kvh, _Q_ROWS, dh), q.dtype),
        grid=(b, kvh),
        in_specs=[pl.no_block_spec] * 6,
        out_specs=pl.no_block_spec,
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), bounds.astype(jnp.int32), qg, k_all, v_all,
      mask[:, 0, :].astype(jnp.int32))
    return out[:, :, :group].reshape(b, 1, h, dh)
