"""How much device memory a training step needs, estimated before anything is compiled.

    est = estimate_training_memory(cfg, params, MemoryPlan(batch_size=8, seq_len=256, ...))
    print(est)                         # a table: term, GiB, and the total per device
    check_fits(est, device_bytes)      # raises MemoryFitError naming an option that would fit

Every term is bytes *per device* at the step's peak, which for `emjax.train.step` is the start of
the backward pass of one micro-batch: the frozen weights, the intervention with its optimiser
state and gradients, the saved activations of the trained suffix (SFT and KL rows of the
micro-batch alike, because one `value_and_grad` covers both), the loss buffers, the frozen
passes' outputs and the step's input batch. Transients that come and go before that point (the
frozen prefix pass, the KL base pass) are left out. Letters: b SFT rows and bk KL rows per
micro-batch, T the padded sequence length, A micro-batches per step, n = L - k trained blocks,
D, F, H, K, Dh, V the model's shapes (`emjax.model.schema`), q = H * Dh, kv = K * Dh, a the
activation itemsize (the weights' dtype), P the intervention's bytes, r the LoRA rank.

Terms:
  frozen weights           each leaf's bytes / the mesh axes sharding it (the real sharding rules,
                           `emjax.model.sharding.spec_for`)
  gathered layer (fsdp)    2 x one layer's matrices / tensor, with fsdp > 1: the layer in use and
                           the one prefetched (an assumption about XLA's schedule, not measured)
  intervention             P (replicated: the Trainer does not shard it)
  AdamW moments            2 P (optax adamw keeps mu and nu in the parameters' dtype)
  gradients                2 P (the accumulator carried by the micro-batch scan and the gradient
                           of the current micro-batch)
  hook copies              3 x 4 bytes x n x (one layer's intervention elements): the interventions
                           scattered onto the suffix's layer axis (`Interventions.layer_hooks`)
                           and what JAX saves to differentiate that scatter (a select mask and
                           two float32 copies)
  activations (SFT / KL)   n x b x T x S(policy) (and n x bk x T x S): what the backward keeps per
                           block, S below
  block recompute          one block's S(None) x max(b, bk) x T, twice under "dots" / "full":
                           the cotangents of the block being differentiated and, with remat, the
                           block's recomputed forward
  loss (CE / KL)           float32 logits: CE b x Tc x V x 4 (1 + c) (the saved exp and the
                           logits' gradient), KL bk x Tc x V x 4 (2 + c) (the saved base
                           probabilities and adapted log-probabilities, and the gradient);
                           Tc = loss_chunk or T, c = 1, or 3 with a final soft-cap (its tanh
                           saves two more). Plus the suffix output (a D per token) and, unchunked,
                           the final norm's float32 input (4 D + 8 per token); chunked, the
                           split copies of the loss inputs (2 a D per token)
  frozen passes            a D per token of each input that was not cached: the residual entering
                           layer k (SFT and KL rows) and the frozen final hidden state (KL rows)
  batch                    the step's A micro-batches as arguments: 10 bytes per SFT token
                           (int32 tokens and targets, bool masks), 5 per KL token, and with the
                           frozen cache a D per token of each cached slice (SFT prefix; KL prefix
                           and base hidden)

S, bytes per token per trained block, as JAX saves them (counted with
`jax.ad_checkpoint.saved_residuals` on Qwen2, Gemma-2 and Llama blocks, JAX 0.10; tests/train/test_memory.py
holds the formulas to those counts). N = the block's norms, counted in the weight schema (2, or 4
with post-attention and post-MLP norms as in Gemma-2); the attention scores cost
H T (4 s + a + 1) + 8 H with s = 1 float32 score array, 3 with a soft-cap (the tanh's), plus the
bf16 probabilities and the bool mask, and the softmax max and sum. Without remat the block is
"lean" (`emjax.model.decoder.block`): the norms and the MLP from gate and up to the down
projection are recomputed in the backward pass, so only their inputs are kept.
  None:   a N D [each norm's input] + a (q + 2 kv) [rotated q, k and v] + a 2 F [gate and up]
          + scores (XLA attention) or a q + 4 H (cuDNN: output and log-sum-exp, from the
          kernel's interface, not measured)
          + LoRA: a r per module but down_proj [x @ A]; a D if any of q/k/v, a D if any of
          gate/up [their normed input]; a q with o_proj [its input]
          (Before the lean block, emjax 2026-12-07: N (4 D + 8) for the norms' float32 inputs and
          statistics, 5 F-wide MLP arrays (SiLU) or 7 (tanh-GELU), and with LoRA down_proj's input
          and x @ A: 1.6-1.8x as much.)
  "dots": a D [the block input] + a (q + 2 kv + D + 2 F) [the frozen projections' outputs
          needed again: q, k, v, o, gate, up; with a post-MLP norm also down, a D]
          + LoRA: a r per module + a out per module [the delta (x @ A) @ B], except down_proj
          without a post-MLP norm [nothing nonlinear follows it]
  "full": a D [the block input only]
Under a mesh the rows of a micro-batch are split over `data` (the Trainer shards rows on `data`
only) and the arrays wide in heads, F or V over `tensor`.

Accuracy: the activation and loss formulas match JAX's saved residuals exactly
(tests/train/test_memory.py); XLA then adds temporaries of its own and fuses others away. Against
XLA's analysis of the whole compiled step on CPU in float32 (arguments + outputs - donated +
temporaries; tiny Qwen2 and Gemma-2, LoRA on every projection and steering, each remat policy, with
and without a loss chunk) the estimate was 1.0-1.5x the compiled size: it errs high, most where the
activations are smallest (steering, remat "full"); the test holds it within a factor 1.5 either way.
(bfloat16 on CPU runs through float32 temporaries, 1.2-1.7x the estimate, and says little about a
GPU.) The GPU measurement is `bench/train_memory.py` (Qwen2.5-14B shapes, measured peak / estimate
per remat policy): on an H200 (LoRA r32 on every projection, B=8, T=256, KL, cuDNN attention) the
measured peaks were 1.012 / 0.981 / 0.967 x the estimate for remat None / dots / full (None: the
block before it was lean; the lean block's peak is not measured on a GPU yet).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emjax.model.config import ModelConfig, dtype_from_name
from emjax.model.schema import PROJECTIONS, layer_leaves, map_leaves
from emjax.model.sharding import DEFAULT_RULES, MESH_AXES, Rules, ShardingError, spec_for
from emjax.train.inputs import TrainConfigError

GiB = 2 ** 30
_QKV, _GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


class MemoryFitError(TrainConfigError):
    """A training run whose estimated memory exceeds the device's; names an option that fits."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What sizes a training step, as the config and the step options give it.

    batch_size / kl_batch_size: rows b / bk of one micro-batch (kl_batch_size is used when kl).
    seq_len / kl_seq_len: padded row length T of the SFT / KL micro-batches (kl_seq_len None: T).
    grad_accum: A micro-batches per optimiser step.
    remat, loss_chunk, attention: as `emjax.train.step.StepOptions`.
    dtype: the weights' (and activations') dtype name.
    first_layer: k; layers [k, L) are trained.
    kl: whether the step has a KL term.
    cached_prefix / cached_kl: the frozen cache gives the SFT prefix / the KL prefix and base
      hidden states as batch inputs instead of computing them in the step.
    mesh: sizes of the mesh axes (data, fsdp, tensor); (1, 1, 1) is one device.
    runs: N interventions trained in one vmapped step (`emjax train --vmap-runs`): every term of a
      run's own (its intervention, optimiser state, activations, losses) is held N times; the
      frozen weights once, and the frozen passes and batch once when all runs share one data
      order (`shared_batch`), else N times.
    """

    batch_size: int
    seq_len: int
    kl_batch_size: int = 0
    kl_seq_len: Optional[int] = None
    grad_accum: int = 1
    remat: Optional[str] = None
    loss_chunk: Optional[int] = None
    attention: str = "xla"
    dtype: str = "bfloat16"
    first_layer: int = 0
    kl: bool = False
    cached_prefix: bool = False
    cached_kl: bool = False
    mesh: tuple[int, int, int] = (1, 1, 1)
    runs: int = 1
    shared_batch: bool = True

    @property
    def mesh_shape(self) -> dict[str, int]:
        return dict(zip(MESH_AXES, self.mesh))

    @property
    def devices(self) -> int:
        return math.prod(self.mesh)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes of a training step, term by term (see the module docstring)."""

    terms: dict[str, int]
    plan: MemoryPlan
    cfg: ModelConfig
    params: Any  # the intervention (arrays or ShapeDtypeStructs), kept to re-estimate variants

    @property
    def total(self) -> int:
        return int(sum(self.terms.values()))

    def table(self, device_bytes: int | None = None) -> str:
        p = self.plan
        head = (f"training memory per device (estimate): b={p.batch_size}"
                + (f", kl b={p.kl_batch_size}" if p.kl else "") + f", T={p.seq_len}, A={p.grad_accum}, "
                f"remat={p.remat}, loss_chunk={p.loss_chunk}, layers {p.first_layer}-{self.cfg.n_layers - 1}"
                f" trained, mesh data:{p.mesh[0]},fsdp:{p.mesh[1]},tensor:{p.mesh[2]}"
                + (f", {p.runs} runs in one vmapped step" if p.runs > 1 else ""))
        width = max(len(k) for k in self.terms)
        unit, scale = ("GiB", GiB) if self.total >= GiB else ("MiB", 2 ** 20)  # tiny CPU runs in MiB
        rows = [f"  {k:<{width}}  {v / scale:8.2f} {unit}" for k, v in self.terms.items() if v]
        rows.append(f"  {'total':<{width}}  {self.total / scale:8.2f} {unit}")
        if device_bytes:
            rows.append(f"  {'device limit':<{width}}  {device_bytes / scale:8.2f} {unit}")
        return "\n".join([head] + rows)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------------------------
# The intervention


@dataclasses.dataclass(frozen=True)
class _Intervention:
    nbytes: int            # P
    per_layer_elems: int   # elements of one targeted layer's part
    lora_modules: tuple[str, ...]
    rank: int


def _describe(params) -> _Intervention:
    leaves = jax.tree.leaves(params)
    nbytes = int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves))
    lora, steer = getattr(params, "lora", None), getattr(params, "steer", None)
    per_layer = 0
    if lora is not None:
        per_layer += sum(math.prod(x.shape[1:]) for x in jax.tree.leaves((lora.a, lora.b)))
    if steer is not None:
        per_layer += math.prod(steer.vectors.shape[1:])
    return _Intervention(nbytes, per_layer, lora.modules if lora is not None else (),
                         lora.rank if lora is not None else 0)


# ---------------------------------------------------------------------------------------------
# Per-block activations


def block_stash_bytes(cfg: ModelConfig, remat: Optional[str], seq_len: int, itemsize: int,
                      lora_modules: Sequence[str] = (), rank: int = 0, attention: str = "xla"
                      ) -> tuple[float, float]:
    """Bytes per token that the backward keeps for one trained block under `remat`, as
    (replicated, split over `tensor`): the formulas S of the module docstring.

    seq_len: T, the key length of the XLA attention scores; itemsize: a.
    """
    a, D, F, H = itemsize, cfg.d_model, cfg.ffn_dim, cfg.n_heads
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    mods = set(lora_modules)
    out_width = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": D, "gate_proj": F, "up_proj": F,
                 "down_proj": D}
    if remat == "full":
        return float(a * D), 0.0
    if remat == "dots":
        rep = a * D * (2 + cfg.post_mlp_norm) + a * rank * len(mods)
        split = a * (q + 2 * kv + 2 * F)
        for m in mods:
            if m == "down_proj" and not cfg.post_mlp_norm:
                continue
            if out_width[m] == D:
                rep += a * D
            else:
                split += a * out_width[m]
        return float(rep), float(split)
    if remat is not None:
        raise ValueError(f"unknown remat policy {remat!r}; choose None, 'full' or 'dots'")
    # the lean block (emjax.model.decoder.block): norms and the MLP after gate/up are recomputed
    norms = sum(leaf.kind == "norm" for leaf in layer_leaves(cfg))
    rep = norms * a * D + a * rank * len(mods - {"down_proj"})
    rep += a * D * (bool(mods & set(_QKV)) + bool(mods & set(_GATE_UP)))
    split = a * (q + 2 * kv) + a * 2 * F + a * q * ("o_proj" in mods)
    if attention == "xla":
        s = 3 if cfg.attn_softcap is not None else 1
        split += H * seq_len * (4 * s + a + 1) + 8 * H
    else:  # cuDNN's fused kernel keeps its output (o_proj's input, counted above with o LoRA) and the LSE
        split += a * q * ("o_proj" not in mods) + 4 * H
    return float(rep), float(split)


def saved_logit_arrays(cfg: ModelConfig, kind: str) -> int:
    """How many float32 [rows, T, V] arrays the backward keeps for the loss: CE 1 (the softmax's
    exp), KL 2 (the base probabilities and the adapted log-probabilities), each + 2 with a final
    soft-cap (the tanh's input and output, Gemma-2)."""
    return {"ce": 1, "kl": 2}[kind] + 2 * (cfg.final_softcap is not None)


# ---------------------------------------------------------------------------------------------
# The estimate


def _shard_factor(axes, shape, mesh_shape: Mapping[str, int], rules: Rules, name: str) -> int:
    spec = spec_for(axes, shape, types.SimpleNamespace(shape=dict(mesh_shape)), rules, name=name)
    return math.prod(mesh_shape[ax] for ax in spec if ax is not None)


def weight_bytes_per_device(cfg: ModelConfig, itemsize: int, mesh_shape: Mapping[str, int],
                            rules: Rules = DEFAULT_RULES) -> int:
    """Bytes of the frozen weights on one device under the sharding rules (mesh_shape: data, fsdp,
    tensor sizes); raises ShardingError naming a weight the mesh cannot shard."""
    sizes = map_leaves(cfg, lambda leaf, shape, axes: math.prod(shape) * itemsize
                       // _shard_factor(axes, shape, mesh_shape, rules, f"weight {leaf.name} {tuple(shape)}"))
    return int(sum(jax.tree.leaves(sizes)))


def estimate_training_memory(cfg: ModelConfig, params, plan: MemoryPlan,
                             rules: Rules = DEFAULT_RULES) -> MemoryEstimate:
    """Per-device bytes of one training step (see the module docstring for every term).

    params: the intervention (an `Interventions` of arrays, or of `jax.ShapeDtypeStruct` leaves,
      e.g. from `jax.eval_shape`). Raises ShardingError when the mesh cannot shard the weights.
    """
    p = plan
    mesh = p.mesh_shape
    data, tensor = mesh["data"], mesh["tensor"]
    a = np.dtype(dtype_from_name(p.dtype)).itemsize
    iv = _describe(params)
    n = cfg.n_layers - p.first_layer
    D, V = cfg.d_model, cfg.vocab_size
    b = math.ceil(p.batch_size / data)
    bk = math.ceil(p.kl_batch_size / data) if p.kl else 0
    T, Tk = p.seq_len, (p.kl_seq_len or p.seq_len) if p.kl else 0

    def stash(policy, t):
        rep, split = block_stash_bytes(cfg, policy, t, a, iv.lora_modules, iv.rank, p.attention)
        return rep + split / tensor

    def chunk(t):
        return min(p.loss_chunk, t) if p.loss_chunk else t

    terms: dict[str, float] = {}
    terms["frozen weights"] = weight_bytes_per_device(cfg, a, mesh, rules)
    if mesh["fsdp"] > 1:
        layer = sum(math.prod(l.shape(cfg)) for l in layer_leaves(cfg) if l.name in PROJECTIONS)
        terms["gathered layers (fsdp)"] = 2 * layer * a / tensor
    terms["intervention"] = iv.nbytes
    terms["AdamW moments"] = 2 * iv.nbytes
    terms["gradients"] = 2 * iv.nbytes
    terms["hook copies"] = 3 * 4 * n * iv.per_layer_elems
    terms["activations, SFT rows"] = n * b * T * stash(p.remat, T)
    terms["activations, KL rows"] = n * bk * Tk * stash(p.remat, Tk) if p.kl else 0
    rows_t = max(b * T, bk * Tk)
    terms["block recompute"] = (1 if p.remat is None else 2) * rows_t * stash(None, max(T, Tk))
    per_tok_out = a * D + (0 if p.loss_chunk else 4 * D + 8) + (2 * a * D if p.loss_chunk else 0)
    logit = lambda kind: 4 * (saved_logit_arrays(cfg, kind) + 1)  # + the logits' gradient
    terms["loss, CE"] = b * chunk(T) * V * logit("ce") / tensor + b * T * per_tok_out
    terms["loss, KL"] = (bk * chunk(Tk) * V * logit("kl") / tensor + bk * Tk * per_tok_out) if p.kl else 0
    frozen = (0 if p.cached_prefix else b * T) + (0 if p.cached_kl else 2 * bk * Tk)
    terms["frozen passes"] = frozen * a * D
    A = p.grad_accum
    batch = A * b * T * (10 + (a * D if p.cached_prefix else 0))
    batch += A * bk * Tk * (5 + (2 * a * D if p.cached_kl else 0))
    terms["batch"] = batch
    if p.runs > 1:  # what each vmapped run holds for itself
        shared = {"frozen weights", "gathered layers (fsdp)"}
        if p.shared_batch:
            shared |= {"frozen passes", "batch"}
        terms = {k: v if k in shared else p.runs * v for k, v in terms.items()}
    return MemoryEstimate({k: int(round(v)) for k, v in terms.items()}, plan, cfg, params)


# ---------------------------------------------------------------------------------------------
# Will it fit, and what would make it fit


@dataclasses.dataclass(frozen=True)
class Option:
    """A change to the run, as config keys, and the estimate under it."""

    keys: str
    estimate: MemoryEstimate


# Kinds of change, cheapest first by what each costs in step time (a judgement, not measured): a
# loss chunk recomputes only the unembedding; "dots" recomputes the elementwise work and the
# attention scores; smaller micro-batches run smaller matmuls, more of them; "full" runs the
# suffix's forward twice; FSDP adds weight gathers and needs more devices.
KINDS = ("loss_chunk", "remat=dots", "micro-batches", "remat=full", "fsdp")


def _variants(plan: MemoryPlan, n_devices: int) -> list[tuple[str, str, MemoryPlan]]:
    """(kind, config keys, plan) of each single change that lowers memory, cheapest first; within
    a kind the mildest change first."""
    out: list[tuple[str, str, MemoryPlan]] = []
    longest = max(plan.seq_len, plan.kl_seq_len or 0)
    if plan.loss_chunk is None:
        for c in (128, 64, 32, 16):
            if c < longest:
                out.append(("loss_chunk", f"train.loss_chunk={c}", dataclasses.replace(plan, loss_chunk=c)))
    if plan.remat is None:
        out.append(("remat=dots", "train.remat=dots", dataclasses.replace(plan, remat="dots")))
    f = 2
    while plan.batch_size % f == 0 and (not plan.kl or plan.kl_batch_size % f == 0):
        b, bk, acc = plan.batch_size // f, plan.kl_batch_size // f, plan.grad_accum * f
        if b % plan.mesh[0] or (plan.kl and bk % plan.mesh[0]):
            break  # rows must still split over `data`
        keys = (f"train.batch_size={b}" + (f", train.kl_batch_size={bk}" if plan.kl else "")
                + f", train.grad_accum={acc}")
        out.append(("micro-batches", keys, dataclasses.replace(
            plan, batch_size=b, kl_batch_size=bk if plan.kl else plan.kl_batch_size, grad_accum=acc)))
        f *= 2
    if plan.remat != "full":
        out.append(("remat=full", "train.remat=full", dataclasses.replace(plan, remat="full")))
    tensor, f = plan.mesh[2], 2
    while f * tensor <= n_devices:
        if f > plan.mesh[1]:  # every device on fsdp (rows are then not split: the Trainer puts them on data)
            mesh = f"fsdp:{f}" + (f",tensor:{tensor}" if tensor > 1 else "")
            out.append(("fsdp", f"mesh={mesh}", dataclasses.replace(plan, mesh=(1, f, tensor))))
        f *= 2
    return out


def fitting_options(estimate: MemoryEstimate, device_bytes: int, n_devices: int | None = None,
                    rules: Rules = DEFAULT_RULES) -> list[Option]:
    """The options under which the run fits `device_bytes` by the estimate, cheapest first: the
    mildest single change of each kind that fits; when none does, the kinds combined in order of
    cost (each at its strongest) up to the first combination that fits. Each is re-estimated."""
    n_devices = estimate.plan.devices if n_devices is None else n_devices

    def est(plan):
        try:
            return estimate_training_memory(estimate.cfg, estimate.params, plan, rules)
        except ShardingError:  # e.g. an fsdp size that does not divide D
            return None

    fits, kinds = [], set()
    for kind, keys, plan in _variants(estimate.plan, n_devices):
        e = est(plan) if kind not in kinds else None
        if e is not None and e.total <= device_bytes:
            fits.append(Option(keys, e))
            kinds.add(kind)
    if fits:
        return fits
    plan, keys = estimate.plan, []
    for kind in KINDS:
        strongest = [(k, v) for kd, k, v in _variants(plan, n_devices) if kd == kind][-1:]
        for k, v in strongest:
            e = est(v)
            if e is None:
                continue
            plan, keys = v, keys + [k]
            if e.total <= device_bytes:
                return [Option(", ".join(keys), e)]
    return []


def size_text(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2 ** 20:.1f} MiB"


def check_fits(estimate: MemoryEstimate, device_bytes: int, n_devices: int | None = None,
               rules: Rules = DEFAULT_RULES) -> None:
    """Raises MemoryFitError when the estimate exceeds `device_bytes`, naming the cheapest option
    that fits under the estimate (or saying that none of them does)."""
    if estimate.total <= device_bytes:
        return
    msg = (f"training needs about {size_text(estimate.total)} per device (estimate), the device has "
           f"{size_text(device_bytes)}")
    options = fitting_options(estimate, device_bytes, n_devices, rules)
    if options:
        best = options[0]
        msg += f"; it would fit with {best.keys} (estimate {size_text(best.estimate.total)})"
        others = [f"{o.keys} ({size_text(o.estimate.total)})" for o in options[1:4]]
        if others:
            msg += "; also " + "; ".join(others)
    else:
        msg += ("; no combination of loss_chunk, remat, smaller micro-batches and an FSDP mesh over the "
                f"{n_devices or estimate.plan.devices} devices fits")
    if estimate.plan.runs > 1:
        one = estimate_training_memory(estimate.cfg, estimate.params, dataclasses.replace(estimate.plan, runs=1),
                                       rules)
        msg += (f". This is {estimate.plan.runs} runs in one vmapped step; one run alone needs about "
                f"{size_text(one.total)}: fewer runs per --vmap-runs call also fit less memory")
    msg += (". Set train.memory_check=False to run anyway (config keys; on the command line "
            "--config.KEY=VALUE).\n" + estimate.table(device_bytes))
    raise MemoryFitError(msg)


# ---------------------------------------------------------------------------------------------
# The Trainer's use


def device_bytes_limit(device: jax.Device | None = None) -> int | None:
    """The allocator's limit of `device` (default: the first device), None where the backend does
    not report one (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without the call
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _round_up(n: int, m: int = 8) -> int:
    return -(-n // m) * m


def trainer_plan(trainer) -> MemoryPlan:
    """The plan of a `Trainer` (emjax.train.trainer) from its config, data and step options."""
    tc, data = trainer.config.train, trainer.data
    cache = trainer.cache_on()
    mesh = trainer.mesh
    sizes = tuple(int(mesh.shape[ax]) for ax in MESH_AXES) if mesh is not None else (1, 1, 1)
    return MemoryPlan(
        batch_size=tc.batch_size, seq_len=_round_up(max(len(r[0]) for r in data.train)),
        kl_batch_size=tc.kl_batch_size,
        kl_seq_len=_round_up(max(len(r) for r in data.kl)) if trainer.use_kl else None,
        grad_accum=tc.grad_accum, remat=trainer.opts.remat, loss_chunk=trainer.opts.loss_chunk,
        attention=trainer.opts.attention, dtype=jnp.dtype(trainer.model.weights.embed.dtype).name,
        first_layer=trainer.k, kl=trainer.use_kl, cached_prefix=cache and trainer.k > 0,
        cached_kl=cache and trainer.use_kl, mesh=sizes, runs=trainer.vmapped_runs,
        shared_batch=len(trainer.data_seeds) == 1)


def check_trainer_memory(trainer) -> tuple[MemoryEstimate, int | None]:
    """Prints the estimate of a `Trainer`'s step and, with train.memory_check and a device that
    reports its limit, raises MemoryFitError when it will not fit. Returns (estimate, the device's
    limit or None)."""
    est = estimate_training_memory(trainer.cfg, trainer.params0, trainer_plan(trainer))
    device = trainer.mesh.devices.flat[0] if trainer.mesh is not None else None
    limit = device_bytes_limit(device)
    print(est.table(limit) + ("" if limit else "\n  (device reports no memory limit: not checked)"))
    if limit and trainer.config.train.get("memory_check", True):
        check_fits(est, limit, n_devices=jax.device_count())
    return est, limit
