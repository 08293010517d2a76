"""One optimiser step of SFT + lambda * KL on an intervention, with prefix sharing.

    loss = CE(adapted; assistant tokens) / n_sft + lambda * scale * KL(base || adapted) / n_kl

(n_sft, n_kl: the step's token counts; with `sft_mean_over` / `kl_mean_over` "micro_batch" each
micro-batch's own, its terms added over the A micro-batches: upstream's trainers, see StepOptions.)

The intervention (an `Interventions` pytree) is the only trainable state; the base weights are
closed over and never differentiated. For an intervention whose lowest layer is k, the layers
below k are the frozen model's: they run once per batch without gradient (or come from the
frozen-model cache as `prefix`), and the KL batch's base and adapted passes share that prefix.
The base side of the KL is the same weights with the intervention switched off (no second copy
of the model), or the cached `base_hidden`.

With `StepOptions.steer_rows` "first" the training loss steers row 0 of each SFT and each KL
micro-batch only, as upstream's steering trainer did (its hook steered row 0 of its micro-batch
of 2 and of its KL batch of 8; `emjax.model.hooks.FirstRowSteering`); both losses are still
normalised over every row's tokens, so the unsteered rows dilute them exactly as upstream. The
evaluation losses (`eval_loss`, `eval_kl`) always steer every row.

Gradient accumulation runs the A micro-batches of a step under `lax.scan` inside one compiled
step; both losses are normalised by the token counts of the whole step, so the accumulated
gradient is exactly that of the full batch. Non-finite steps are skipped by
`optax.apply_if_finite` and counted, never written into the state.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from emjax.interventions.container import Interventions
from emjax.model.config import ModelConfig
from emjax.model.hooks import STEER_ROWS, FirstRowSteering, HookSource, SteerRows
from emjax.model.layers import NO_DOT_MERGER
from emjax.model.schema import Weights
from emjax.train.losses import KLReduction, MeanOver, kl_scale
from emjax.train.shared_prefix import frozen_pass, suffix_ce, suffix_kl


@flax.struct.dataclass
class SFTBatch:
    """A step's SFT rows as A micro-batches of b rows: all leaves [A, b, T, ...].

    targets[t] is the token predicted at position t and loss_mask[t] whether it counts (the
    assistant tokens); prefix, when given, is the frozen residual stream entering the first
    intervened layer ([A, b, T, D]) and replaces the prefix computation.
    """

    tokens: jax.Array
    mask: jax.Array
    targets: jax.Array
    loss_mask: jax.Array
    prefix: Optional[jax.Array] = None


@flax.struct.dataclass
class KLBatch:
    """A step's KL rows [A, b, T, ...]; KL is taken on every real token (mask).

    prefix / base_hidden, when given, come from the frozen-model cache: the residual entering
    the first intervened layer and the frozen model's final hidden state ([A, b, T, D]).
    """

    tokens: jax.Array
    mask: jax.Array
    prefix: Optional[jax.Array] = None
    base_hidden: Optional[jax.Array] = None


@flax.struct.dataclass
class TrainState:
    params: Interventions
    opt_state: optax.OptState
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static options of the compiled step.

    first_layer: k, where the frozen prefix ends: layers [0, k) run without the intervention and are
      shared (at most `shared_prefix_layers(params, cfg)`).
    remat: rematerialisation policy of the block body in the trained suffix.
    loss_chunk: sequence chunk of the loss computations (None: whole sequence at once).
    kl_reduction: "token_mean" or "upstream" (divide by V; see emjax.train.losses).
    attention: "xla" or "cudnn" in the trained suffix (see emjax.model.decoder.run_layers; training
      batches are right-padded, which the cuDNN path requires).
    steer_rows: the rows of each training micro-batch the steering vectors reach: "all", or "first"
      (row 0 only: upstream's defect, see the module docstring). The training loss only.
    unroll_layers: one traced block per layer instead of a layer loop (`run_layers`' `unroll`).
    sft_mean_over / kl_mean_over: "step" (default): each loss is a token mean over the step's A
      micro-batches, the full batch's exact gradient; "micro_batch": a token mean over each
      micro-batch's own tokens, the A of them added up. Upstream's trainers (transformers 4.52,
      whose Trainer divides by the accumulation steps only for models that take no loss kwargs,
      and Qwen2 does) did the latter for the KL term (KLRegularizedSFTTrainer: lambda then weighs
      A times a step mean) and, in the steering trainer with KL, for the SFT term too (its
      compute_loss drops num_items_in_batch); see configs/paper_14b.py.
    """

    first_layer: int = 0
    remat: Optional[str] = None
    loss_chunk: Optional[int] = None
    kl_reduction: KLReduction = "token_mean"
    attention: str = "xla"
    steer_rows: SteerRows = "all"
    unroll_layers: bool = False
    sft_mean_over: MeanOver = "step"
    kl_mean_over: MeanOver = "step"

    def __post_init__(self):
        if self.steer_rows not in STEER_ROWS:
            raise ValueError(f"steer_rows must be one of {STEER_ROWS}, got {self.steer_rows!r}")
        for name in ("sft_mean_over", "kl_mean_over"):
            if getattr(self, name) not in typing.get_args(MeanOver):
                raise ValueError(f"{name} must be one of {typing.get_args(MeanOver)}, got {getattr(self, name)!r}")


def make_optimizer(lr: float, total_steps: int, warmup_steps: int = 5, weight_decay: float = 0.01,
                   max_grad_norm: float | None = 1.0, max_consecutive_nonfinite: int = 1000):
    """AdamW with linear warmup from 0 and linear decay to 0 (HF's `linear` schedule), global
    gradient clipping (HF's default max_grad_norm=1.0) and skipping of non-finite updates. A
    warmup longer than the run stays as long as asked: the run ends part-way up, as HF's does."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))], [warmup_steps])
    chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    chain.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    return optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=max_consecutive_nonfinite), schedule


@functools.partial(jax.jit, static_argnames=("cfg", "k", "with_base"))
def frozen_outputs(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array, k: int,
                   with_base: bool) -> tuple[jax.Array, jax.Array | None]:
    """What the frozen model computes for the cache: (prefix [b, T, D], final hidden or None)."""
    return frozen_pass(weights, cfg, tokens, mask, k, with_base)


def _suffix_kwargs(opts: StepOptions) -> dict:
    return dict(remat=opts.remat, attention=opts.attention, loss_chunk=opts.loss_chunk, unroll=opts.unroll_layers)


def kl_terms(params: HookSource, weights: Weights, cfg: ModelConfig, opts: StepOptions,
             kl: KLBatch) -> tuple[jax.Array, jax.Array]:
    """(summed KL(base || adapted), token count) of one KL micro-batch, sharing the frozen prefix."""
    k = opts.first_layer
    xk, xb = kl.prefix, kl.base_hidden
    if xk is None:
        xk, xb = frozen_pass(weights, cfg, kl.tokens, kl.mask, k, xb is None, opts.attention, opts.unroll_layers)
    return suffix_kl(params, weights, cfg, k, xk, kl.mask, xb, **_suffix_kwargs(opts))


def sft_terms(params: HookSource, weights: Weights, cfg: ModelConfig, opts: StepOptions,
              sft: SFTBatch) -> tuple[jax.Array, jax.Array]:
    """(summed CE on assistant tokens, token count) of one SFT micro-batch."""
    k = opts.first_layer
    x = sft.prefix
    if x is None:
        x, _ = frozen_pass(weights, cfg, sft.tokens, sft.mask, k, False, opts.attention, opts.unroll_layers)
    return suffix_ce(params, weights, cfg, k, x, sft.mask, sft.targets, sft.loss_mask, **_suffix_kwargs(opts))


def micro_loss(params: Interventions, weights: Weights, cfg: ModelConfig, opts: StepOptions,
               sft: SFTBatch, kl: KLBatch | None, lam: jax.Array, n_sft: jax.Array, n_kl: jax.Array):
    """Loss of one micro-batch (rows [b, T]), normalised by the whole step's token counts."""
    if opts.steer_rows == "first":  # the forward only: the gradient is still with respect to params
        params = FirstRowSteering(params)
    ce_sum, ce_n = sft_terms(params, weights, cfg, opts, sft)
    loss = ce_sum / jnp.maximum(n_sft, 1.0)
    metrics = {"sft_sum": ce_sum, "sft_tokens": ce_n}
    if kl is not None:
        kl_sum, kl_n = kl_terms(params, weights, cfg, opts, kl)
        loss = loss + lam * kl_scale(cfg, opts.kl_reduction) * kl_sum / jnp.maximum(n_kl, 1.0)
        metrics.update(kl_sum=kl_sum, kl_tokens=kl_n)
    return loss, metrics


def train_step(state: TrainState, weights: Weights, sft: SFTBatch, kl: KLBatch | None, lam: jax.Array, *,
               cfg: ModelConfig, opts: StepOptions, tx: optax.GradientTransformation):
    """One optimiser step over A accumulated micro-batches. Returns (new state, metrics)."""
    n_sft = jnp.sum(sft.loss_mask).astype(jnp.float32)
    n_kl = jnp.sum(kl.mask).astype(jnp.float32) if kl is not None else jnp.float32(1.0)
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(grads, micro):
        s, k = micro
        n_s = jnp.sum(s.loss_mask).astype(jnp.float32) if opts.sft_mean_over == "micro_batch" else n_sft
        n_k = jnp.sum(k.mask).astype(jnp.float32) if k is not None and opts.kl_mean_over == "micro_batch" else n_kl
        (loss, m), g = grad_fn(state.params, weights, cfg, opts, s, k, lam, n_s, n_k)
        return jax.tree.map(jnp.add, grads, g), (loss, m)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, (losses, ms) = jax.lax.scan(accumulate, zeros, (sft, kl))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sft_loss = jnp.sum(ms["sft_sum"]) / jnp.maximum(n_sft, 1.0)
    metrics = {"loss": jnp.sum(losses), "sft_loss": sft_loss, "grad_norm": optax.tree.norm(grads),
               "skipped": jnp.logical_not(opt_state.last_finite), "lambda_kl": lam}
    if kl is not None:
        metrics["kl"] = jnp.sum(ms["kl_sum"]) / jnp.maximum(n_kl, 1.0)  # token-mean nats
    return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics


def compile_step(cfg: ModelConfig, opts: StepOptions, tx: optax.GradientTransformation, donate: bool = True):
    """The jitted step: step(state, weights, sft, kl, lam) -> (state, metrics)."""
    fn = functools.partial(train_step, cfg=cfg, opts=opts, tx=tx)
    return jax.jit(fn, donate_argnums=(0,) if donate else (), compiler_options=NO_DOT_MERGER)


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def eval_loss(params: Interventions, weights: Weights, sft: SFTBatch, *, cfg: ModelConfig,
              opts: StepOptions) -> tuple[jax.Array, jax.Array]:
    """(summed CE, token count) of one [b, T] batch under the intervention."""
    return sft_terms(params, weights, cfg, _eval_options(opts), sft)


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def eval_kl(params: Interventions, weights: Weights, kl: KLBatch, *, cfg: ModelConfig,
            opts: StepOptions) -> tuple[jax.Array, jax.Array]:
    """(summed KL(base || adapted), token count) of one [b, T] KL batch."""
    return kl_terms(params, weights, cfg, _eval_options(opts), kl)


def _eval_options(opts: StepOptions) -> StepOptions:
    """Evaluation's forward passes: no remat (nothing to differentiate) and the layer loop. They run a
    few times per run, and unrolling grows their compile with the layers (8 layers of the 14B
    forward: 16.5 s unrolled, 4.6 s as a loop, on an H100)."""
    return dataclasses.replace(opts, remat=None, unroll_layers=False)


def init_state(params: Interventions, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
