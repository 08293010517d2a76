"""The scoring forward: log P(answer + terminator | prompt) for every candidate answer, one prefill.

Each row of a batch is one right-padded judge prompt [P] followed by the N nodes of the
`ScoringTree` (the distinct prefixes of all candidate answers). Both run through every block in one
sequence of P + N tokens, a prefill plus a tree of short continuations sharing its KV cache:

* prompt tokens attend causally to the prompt (as in any prefill);
* a tree node attends to all real prompt tokens and to its own ancestors and itself, at position
  n_prompt + depth - 1, so its hidden state is exactly that of the last token of
  prompt + prefix in a plain forward pass (RoPE, sliding windows and soft-caps by position).

The matmuls run once over all P + N tokens of a layer; the attention is split (issue 24): the
prompt's P queries by causal attention over the prompt alone (cuDNN's fused flash attention on
GPUs, `attention="cudnn"`, or XLA with a mask), and only the N tree queries by an XLA attention
against the prompt's keys and values plus the tree's, under the tree mask ([B, N, P + N], not the
[B, P + N, P + N] mask and float32 logits of one XLA attention over everything, which is
`attention="joint"`, the layout before issue 24, kept to benchmark against). The prompt's keys and
values are computed once per layer and read by all N nodes; no cache is materialised across layers
(memory is one layer's activations). Logits are taken only at the last prompt token and the nodes
([B, N + 1, V] float32), normalised over the tokenizer's vocabulary (padded embedding rows are
excluded, as the sampler excludes them) and gathered into [B, S] sequence log-probabilities. Blocks
are the decoder's own (`emjax.model.decoder.block`).

Shared prefixes (`prefix_cache`, `answer_logprobs(prefix=...)`): where many prompts start with the
same Lp tokens (`prefix.plan_shared_prefix`), those run once per distinct prefix, keeping every
layer's keys and values ([L, G, Lp, K, Dh]); a row then holds only its body (the tokens after
Lp, at positions Lp...) and the tree, and its queries see its group's cached keys in front of its
own. cuDNN's causal mask is aligned to the top left, so the body's prompt attention puts Lp zero
queries in front (`_prompt_flash`); the tree's XLA attention takes the prefix keys as more columns.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.inference.local_judge.tree import ScoringTree
from emjax.model import decoder as M
from emjax.model.attention import attend, attention_mask, cudnn_attend, resolve_attention
from emjax.model.config import ModelConfig
from emjax.model.layers import INFERENCE_COMPILER_OPTIONS, default_positions, rope_tables
from emjax.model.mesh_plan import fetch, mesh_context, mesh_of, put_rows, replicate
from emjax.model.schema import Weights
from emjax.model.sharding import constrain_rows


@flax.struct.dataclass
class TreeArrays:
    """A `ScoringTree` on device (see its attributes); N nodes, S answers, K max tokens."""

    node_tokens: jax.Array  # [N] int32
    node_depth: jax.Array   # [N] int32
    ancestors: jax.Array    # [N, N] bool
    seq_rows: jax.Array     # [S, K] int32
    seq_tokens: jax.Array   # [S, K] int32
    seq_valid: jax.Array    # [S, K] bool
    seq_end: jax.Array      # [S] int32

    @classmethod
    def of(cls, tree: ScoringTree) -> "TreeArrays":
        return cls(*(jnp.asarray(getattr(tree, f)) for f in
                     ("node_tokens", "node_depth", "ancestors", "seq_rows", "seq_tokens", "seq_valid", "seq_end")))


def tree_masks(prompt_pos: jax.Array, prompt_mask: jax.Array, node_pos: jax.Array, ancestors: jax.Array,
               window: int | None, prefix_len: int = 0) -> tuple[jax.Array, jax.Array]:
    """(prompt [B, P, Lp + P], tree [B, N, Lp + P + N]) bool attention masks (see the module
    docstring); the first Lp keys are a shared prefix at positions 0..Lp-1 (`answer_logprobs`'s
    `prefix`; none by default).

    prompt_pos, prompt_mask: [B, P]; node_pos: [B, N]; ancestors: [N, N].
    """
    b, n = node_pos.shape
    key_pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(prefix_len, dtype=prompt_pos.dtype), (b, prefix_len)),
                               prompt_pos], axis=1)
    key_mask = jnp.concatenate([jnp.ones((b, prefix_len), bool), prompt_mask], axis=1)
    pp = attention_mask(prompt_pos, key_pos, key_mask, window)  # [B, P, Lp + P]
    tp = attention_mask(node_pos, key_pos, key_mask, window)     # [B, N, Lp + P]
    tt = attention_mask(node_pos, node_pos, jnp.ones((b, n), bool), window) & ancestors[None]
    return pp, jnp.concatenate([tp, tt], 2)


# "joint": one XLA attention over prompt + tree (before issue 24); "xla" / "cudnn": the prompt's
# own attention by XLA / by cuDNN's flash kernel, the tree's by XLA; "auto": cudnn where it applies
JUDGE_ATTENTION = ("auto", "xla", "cudnn", "joint")


def judge_attention(choice: str, cfg: ModelConfig, dtype) -> str:
    """The prompt attention `answer_logprobs` runs: "auto" takes cuDNN on GPUs for configs and
    dtypes it supports (no soft-cap or window, head_dim <= 128, 16-bit weights), XLA otherwise."""
    if choice not in JUDGE_ATTENTION:
        raise ValueError(f"judge attention must be one of {JUDGE_ATTENTION}, got {choice!r}")
    if choice != "auto":
        return choice
    sixteen = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if resolve_attention("auto", cfg) == "cudnn" and sixteen else "xla"


def _prompt_flash(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, cfg: ModelConfig,
                  implementation: str = "cudnn") -> jax.Array:
    """Causal flash attention of right-padded prompts whose first Lp keys are a shared prefix.

    q: [B, P, H, Dh] (the prompt's own queries); k, v: [B, Lp + P, K, Dh]; lengths: [B] real
    prompt tokens. cuDNN's causal mask is aligned top-left (query i sees keys 0..i), so Lp zero
    queries stand in front of the prompt's: its query i is then row Lp + i and sees the prefix and
    its own first i + 1 tokens, as a prefill of prefix + prompt would. The Lp extra rows cost
    attention FLOPs only (~Lp / P of the prompt's attention, no matmul). Returns [B, P, H, Dh].
    """
    lp = k.shape[1] - q.shape[1]
    if lp:
        q = jnp.concatenate([jnp.zeros((q.shape[0], lp) + q.shape[2:], q.dtype), q], axis=1)
    out = cudnn_attend(q, k, v, lengths + lp, cfg, implementation)[:, lp:]
    # padded query rows come out as anything: zeroed, so no NaN reaches the next layer's keys
    real = (jnp.arange(out.shape[1])[None, :] < lengths[:, None])[:, :, None, None]
    return jnp.where(real, out, jnp.zeros_like(out))


def _split_attention(q: jax.Array, k: jax.Array, v: jax.Array, p: int, lengths: jax.Array, prompt_mask: jax.Array,
                     tree_mask: jax.Array, cfg: ModelConfig, impl: str,
                     prefix_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """q, k, v: [B, P + N, ., Dh] of right-padded prompts of `lengths` then the tree; masks of
    `tree_masks`; prefix_kv: ([B, Lp, K, Dh] keys, values) of each row's shared prefix, which
    every query sees. Returns [B, P + N, H, Dh]."""
    if prefix_kv is not None:
        k, v = (jnp.concatenate([pre, x], axis=1) for pre, x in zip(prefix_kv, (k, v)))
    lp = k.shape[1] - q.shape[1]
    if impl == "cudnn":
        prompt_out = _prompt_flash(q[:, :p], k[:, :lp + p], v[:, :lp + p], lengths, cfg)
    else:
        prompt_out = attend(q[:, :p], k[:, :lp + p], v[:, :lp + p], prompt_mask, cfg)
    return jnp.concatenate([prompt_out, attend(q[:, p:], k, v, tree_mask, cfg)], axis=1)


@flax.struct.dataclass
class PrefixCache:
    """Keys and values of G shared prefixes of Lp tokens at every layer: k, v [L, G, Lp, K, Dh]."""

    k: jax.Array
    v: jax.Array

    @property
    def length(self) -> int:
        return self.k.shape[2]


@functools.partial(jax.jit, static_argnames=("cfg", "attention"), compiler_options=INFERENCE_COMPILER_OPTIONS)
def prefix_cache(weights: Weights, cfg: ModelConfig, tokens: jax.Array, attention: str = "xla") -> PrefixCache:
    """The prefill of G prefixes [G, Lp] (every token real, positions 0..Lp-1), keeping each
    layer's keys (after RoPE) and values; attention "cudnn" or "xla" (`judge_attention`)."""
    g, lp = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(lp, dtype=jnp.int32), (g, lp))
    real = jnp.ones((g, lp), bool)
    full = attention_mask(pos, pos, real, None)
    window = attention_mask(pos, pos, real, cfg.sliding_window) if cfg.sliding_window else full
    cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_theta, weights.embed.dtype, cfg.rope_scaling)

    def body(h, inp):
        w, is_sliding = inp
        kept = []

        def attn(q, k, v):
            kept.append((k, v))
            if attention == "cudnn":
                return cudnn_attend(q, k, v, jnp.full((g,), lp, jnp.int32), cfg)
            return attend(q, k, v, jnp.where(is_sliding, window, full), cfg)

        h = constrain_rows(M.block(w, h, cos, sin, attn, cfg, None))
        return h, kept[0]

    _, (k, v) = jax.lax.scan(body, M.embed(weights, cfg, tokens), (weights.layers, jnp.asarray(cfg.sliding_layers)))
    return PrefixCache(k, v)


@functools.partial(jax.jit, static_argnames=("cfg", "attention"), compiler_options=INFERENCE_COMPILER_OPTIONS)
def answer_logprobs(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array,
                    tree: TreeArrays, stop_ids: jax.Array, vocab_limit: jax.Array,
                    attention: str = "xla", prefix: PrefixCache | None = None,
                    row_group: jax.Array | None = None) -> jax.Array:
    """log P(answer s, then a stop token | prompt b): [B, S] float32.

    tokens, mask: [B, P] right-padded prompts (mask True for the real tokens, first; an all-False
    row is a filler whose output is meaningless). stop_ids: [E] int32 terminator tokens.
    vocab_limit: int32 scalar, tokens >= it are excluded from every softmax. attention: "xla",
    "cudnn" or "joint" (`judge_attention`). prefix, row_group: with a `prefix_cache` of G prefixes
    of Lp tokens and row_group [B] int32, row b's prompt is prefix[row_group[b]] followed by
    tokens[b] (its body, at positions Lp...); not with "joint".
    """
    b, p = tokens.shape
    n = tree.node_tokens.shape[0]
    lp = 0 if prefix is None else prefix.length
    if prefix is not None and attention == "joint":
        raise ValueError("a shared prefix needs the split attention (xla or cudnn), not joint")
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    prompt_pos = default_positions(mask) + lp
    node_pos = lp + lengths[:, None] + tree.node_depth[None, :] - 1
    positions = jnp.concatenate([prompt_pos, node_pos], axis=1)  # [B, P + N]
    masks = tree_masks(prompt_pos, mask, node_pos, tree.ancestors, None, lp)
    window = tree_masks(prompt_pos, mask, node_pos, tree.ancestors, cfg.sliding_window, lp) \
        if cfg.sliding_window else masks
    if attention == "joint":  # one [B, P + N, P + N] mask; the prompt never sees the tree
        joint = lambda m: jnp.concatenate([jnp.concatenate([m[0], jnp.zeros((b, p, n), bool)], 2), m[1]], 1)
        masks, window = (joint(masks),), (joint(window),)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, weights.embed.dtype, cfg.rope_scaling)
    x = M.embed(weights, cfg, jnp.concatenate([tokens, jnp.broadcast_to(tree.node_tokens, (b, n))], axis=1))
    cudnn_lengths = jnp.maximum(lengths, 1)  # filler rows: one (meaningless) token, no empty sequence

    def attn(m, prefix_kv):
        if attention == "joint":
            return lambda q, k, v: attend(q, k, v, m[0], cfg)
        return lambda q, k, v: _split_attention(q, k, v, p, cudnn_lengths, m[0], m[1], cfg, attention, prefix_kv)

    def body(h, inp):
        w, is_sliding, layer_prefix = inp
        m = jax.tree.map(lambda f, w: jnp.where(is_sliding, w, f), masks, window)
        prefix_kv = None if layer_prefix is None else tuple(x[row_group] for x in layer_prefix)  # [B, Lp, K, Dh]
        h = constrain_rows(M.block(w, h, cos, sin, attn(m, prefix_kv), cfg, None))
        return h, None

    # the stack scanned as xs: the loop's counter slices each layer in place (an index read from an
    # array made XLA copy every layer's matrices: 3.7% of the judge's GPU time, issue 24's profile)
    layer_prefix = None if prefix is None else (prefix.k, prefix.v)
    x, _ = jax.lax.scan(body, x, (weights.layers, jnp.asarray(cfg.sliding_layers), layer_prefix))
    # rows of the logits: the last prompt token, then the N nodes
    last = jnp.take_along_axis(x[:, :p], jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
    logits = M.unembed(weights, cfg, jnp.concatenate([last, x[:, p:]], axis=1))
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)  # [B, N + 1, V]
    token_lp = logp[:, tree.seq_rows, tree.seq_tokens]  # [B, S, K]
    token_lp = jnp.sum(jnp.where(tree.seq_valid[None], token_lp, 0.0), axis=-1)
    stop_lp = jax.nn.logsumexp(logp[:, :, stop_ids][:, tree.seq_end], axis=-1)  # [B, S]; stops gathered first
    return token_lp + stop_lp


def pack_prompts(prompts: Sequence[Sequence[int]], rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens, mask [rows, length]: the prompts right-padded (real tokens first, as cuDNN's
    lengths need), filler rows all masked."""
    tokens = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), bool)
    for i, ids in enumerate(prompts):
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids)] = True
    return tokens, mask


def _dispatch(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], tree: TreeArrays,
              stop_ids: Sequence[int], vocab_limit: int, rows: int, length: int, attention: str,
              prefix: PrefixCache | None = None, groups: Sequence[int] | None = None) -> jax.Array:
    """Starts one batch on the device (asynchronously); [rows, S] log-probabilities."""
    if not prompts or len(prompts) > rows or max(map(len, prompts)) > length or min(map(len, prompts)) == 0:
        raise ValueError(f"need 1..{rows} non-empty prompts of at most {length} tokens")
    if (prefix is None) != (groups is None) or (groups is not None and len(groups) != len(prompts)):
        raise ValueError("a shared prefix needs one group id per prompt")
    mesh = mesh_of(weights)  # on a mesh: prompt rows split over `data` where they divide
    row_group = np.zeros(rows, np.int32)
    row_group[:len(prompts)] = groups if groups is not None else 0
    tokens, mask, row_group = put_rows((*pack_prompts(prompts, rows, length), row_group), mesh)
    tree, stops, limit = replicate((tree, np.asarray(list(stop_ids), np.int32), np.asarray(vocab_limit, np.int32)),
                                   mesh)
    with mesh_context(mesh):
        return answer_logprobs(weights, cfg, tokens, mask, tree, stops, limit,
                               attention=judge_attention(attention, cfg, weights.embed.dtype), prefix=prefix,
                               row_group=None if prefix is None else row_group)


def cache_prefixes(weights: Weights, cfg: ModelConfig, prefixes: Sequence[Sequence[int]], *, rows: int,
                   attention: str = "auto") -> PrefixCache:
    """`prefix_cache` of G prefixes of one length, their count padded up to a multiple of `rows`
    (repeats of the first; fewer compiled shapes). Starts on the device asynchronously."""
    if not prefixes or len({len(x) for x in prefixes}) != 1 or not prefixes[0]:
        raise ValueError("need one or more non-empty prefixes of one length")
    g = -(-len(prefixes) // rows) * rows
    tokens = np.asarray(list(prefixes) + [prefixes[0]] * (g - len(prefixes)), np.int32)
    mesh = mesh_of(weights)
    with mesh_context(mesh):
        return prefix_cache(weights, cfg, replicate(tokens, mesh), attention=judge_attention(attention, cfg,
                                                                                           weights.embed.dtype))


def score_batches(weights: Weights, cfg: ModelConfig, batches: Iterable[tuple], tree: TreeArrays,
                  stop_ids: Sequence[int], vocab_limit: int, *, attention: str = "auto",
                  prefix: PrefixCache | None = None) -> Iterator[np.ndarray]:
    """`score_prompts` of each (prompts, rows, length) in order, with the next batch started before
    the previous one is read back: the host packs and dispatches while the device computes (ours:
    a synchronised call per batch leaves the device idle for the host's share of every batch).
    With a `prefix` (`cache_prefixes`), each item is (bodies, rows, length, group ids): prompt i is
    prefix group ids[i] followed by bodies[i]."""
    in_flight: tuple[jax.Array, int] | None = None
    for prompts, rows, length, *groups in batches:
        started = (_dispatch(weights, cfg, prompts, tree, stop_ids, vocab_limit, rows, length, attention,
                             prefix, groups[0] if groups else None), len(prompts))
        if in_flight is not None:
            yield np.asarray(fetch(in_flight[0]), np.float64)[:in_flight[1]]
        in_flight = started
    if in_flight is not None:
        yield np.asarray(fetch(in_flight[0]), np.float64)[:in_flight[1]]


def score_prompts(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], tree: TreeArrays,
                  stop_ids: Sequence[int], vocab_limit: int, *, rows: int, length: int,
                  attention: str = "auto") -> np.ndarray:
    """[len(prompts), S] float64 answer log-probabilities for up to `rows` prompts of at most
    `length` tokens, padded to exactly [rows, length] (one compiled program per shape);
    attention: see `judge_attention`."""
    return next(score_batches(weights, cfg, [(prompts, rows, length)], tree, stop_ids, vocab_limit,
                              attention=attention))
