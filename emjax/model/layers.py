"""Building blocks of the decoder that know nothing of interventions: RMSNorm, RoPE, padding
positions, and matmuls against the frozen, layer-stacked weights.

Numerics follow the Hugging Face implementations: RMSNorm in float32 (Llama, Qwen: cast back then
multiply by w; with `plus_one`, Gemma: multiply by (1 + w) in float32 then cast), RoPE tables in
float32 cast to the activation dtype, with Llama-3's frequency scaling where the config has it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from emjax.model.config import RopeScaling
from emjax.model.schema import PROJECTIONS, LayerWeights

# XLA options for programs made of large matmuls against frozen weights: on H100/H200, cuBLAS
# ran these shapes faster than XLA's Triton GEMMs (skinny decode matmuls at about twice the
# bandwidth; the 16-norm sweep 4% faster; BENCHMARKS.md). Backends other than GPU ignore them.
CUBLAS_GEMMS = {"xla_gpu_enable_triton_gemm": False}
# XLA's dot merger joins dots that share an operand when one of them is small, by concatenating
# their other operands: with frozen weights sliced from a layer stack that is a copy of weight
# matrices every layer (decode: the k and v weights at every token, 13% of decode time). Programs
# over frozen layer stacks turn it off. (On the LoRA r32 step it measured no difference: 0.3079 s
# without, 0.3087 s with, H100; the weight-sized copies of that step's profile were slices of the
# stacks at an index read from memory, `decoder.run_layers`.)
NO_DOT_MERGER = {"xla_disable_hlo_passes": "dot-merger"}
# Forward-only programs over the frozen stacks (decode, the local judge): both of the above.
INFERENCE_COMPILER_OPTIONS = {**CUBLAS_GEMMS, **NO_DOT_MERGER}


def rms_norm(x: jax.Array, w: jax.Array, eps: float, plus_one: bool) -> jax.Array:
    """RMSNorm over the last axis. x: [..., D], w: [D]."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:  # Gemma: scale in float32, cast at the end
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)  # Qwen/Llama: cast back, then scale


def default_positions(mask: jax.Array) -> jax.Array:
    """[B, T] bool -> [B, T] int32: index of each token among the row's real tokens."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """[Dh/2] float32 RoPE frequencies, scaled as transformers' `_compute_llama3_parameters` does
    (the same float32 operations) when `scaling` is given."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    old = scaling.original_max_position_embeddings
    low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)  # long waves: divided
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype,
                scaling: RopeScaling | None = None) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [B, T, Dh] in `dtype`, computed in float32 (rotate-half layout); `scaling`: the
    config's `rope_scaling`."""
    inv_freq = inverse_frequencies(head_dim, theta, scaling)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, N, Dh]; cos/sin: [B, T, Dh]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


@jax.custom_vjp
def _frozen_matmul(x: jax.Array, stack: jax.Array, i: jax.Array) -> jax.Array:
    """x [..., in] @ stack[i] [in, out] with the weight stack treated as a constant.

    Differentiating the plain `x @ stack[i]` inside the layer scan makes JAX save every
    layer's weight slice as a residual for the backward pass: a stacked copy of the frozen
    weights of the whole layer range (15 GB for half of a 14B model). Here the residual is the
    resident stack itself and the index, and the backward re-slices it. The weights get no
    gradient: emjax never trains base weights.
    """
    return x @ stack[i]


def _frozen_matmul_fwd(x, stack, i):
    return x @ stack[i], (stack, i)


def _frozen_matmul_bwd(res, g):
    stack, i = res
    return jnp.einsum("...o,io->...i", g, stack[i]), None, None


_frozen_matmul.defvjp(_frozen_matmul_fwd, _frozen_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def frozen_unembed(x: jax.Array, table: jax.Array, spec: str) -> jax.Array:
    """x [B, T, D] times the frozen unembedding table (spec "btd,vd->btv" for a tied [V, D] table,
    "btd,dv->btv" for an lm_head [D, V]): float32 logits [B, T, V].

    Why a custom VJP: the plain einsum's transpose multiplies the float32 logit gradient by the
    table, so XLA converts the whole table to float32 (3 GB at 14B) and runs a float32 (TF32) GEMM
    every step (8.6 ms, besides the conversion, of a 311 ms LoRA step on an H100). Here the
    gradient is rounded to the table's dtype first, as a bf16 model's autograd does, and the
    product accumulates in float32; for float32 weights nothing changes. The table gets no
    gradient (emjax never trains base weights).
    """
    return jnp.einsum(spec, x, table, preferred_element_type=jnp.float32)


def _frozen_unembed_fwd(x, table, spec):
    return frozen_unembed(x, table, spec), (table, jnp.zeros((0,), x.dtype))


def _frozen_unembed_bwd(spec, res, g):
    table, x_dtype = res
    lhs, rest = spec.split(",")
    tab, out = rest.split("->")
    dx = jnp.einsum(f"{out},{tab}->{lhs}", g.astype(table.dtype), table, preferred_element_type=jnp.float32)
    return dx.astype(x_dtype.dtype), None


frozen_unembed.defvjp(_frozen_unembed_fwd, _frozen_unembed_bwd)


@dataclasses.dataclass(frozen=True)
class FrozenMatrix:
    """Layer `i` of a stacked [L, in, out] weight, multiplied without copying the slice."""

    stack: jax.Array
    i: jax.Array

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        return _frozen_matmul(x, self.stack, self.i)


def layer_view(layers: LayerWeights, i: jax.Array) -> LayerWeights:
    """Layer i of the stack: matrices as FrozenMatrix views, small vectors sliced."""
    fields = {f.name: getattr(layers, f.name) for f in dataclasses.fields(layers)}
    return LayerWeights(**{k: (None if v is None else FrozenMatrix(v, i) if k in PROJECTIONS else v[i])
                           for k, v in fields.items()})


def matmul_bias(x: jax.Array, w: jax.Array | FrozenMatrix, bias: jax.Array | None = None) -> jax.Array:
    """x @ w (+ bias)."""
    y = x @ w
    if bias is not None:
        # Kept out of the matmul epilogue: a fused bias is a second operand sliced from a layer
        # stack, and XLA then copies the weight slice out of the stack before the matmul (every
        # layer, every decoded token: 3 copies per layer, 12% of decode time on a 14B model).
        y = jax.lax.optimization_barrier(y) + bias
    return y


class FusedQKV(NamedTuple):
    """The q, k and v projections as one matrix: w [..., D, (H + 2K) * Dh], bias [..., (H + 2K) * Dh]
    or None. For decode, where one matmul reads them at a better bandwidth than three skinny ones."""

    w: jax.Array
    bias: Optional[jax.Array]


def fuse_qkv(layers: LayerWeights) -> FusedQKV:
    """Concatenates the stacked q, k, v matrices (and biases): a copy of about 1/8 of the weights."""
    w = jnp.concatenate([layers.q_proj, layers.k_proj, layers.v_proj], axis=-1)
    bias = None if layers.q_bias is None else jnp.concatenate([layers.q_bias, layers.k_bias, layers.v_bias], -1)
    return FusedQKV(w, bias)
