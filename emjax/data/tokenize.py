"""Tokenising chats (SFT rows with a loss mask) and plain text, and padding rows into batches.

**Shift convention** (`pad_batch`). For a batch of B rows padded on the right to width T:

    tokens[b, t]     int32  token t of row b (pad_id past the row's length)
    mask[b, t]       bool   tokens[b, t] is a real token (not padding)
    targets[b, t]    int32  tokens[b, t + 1]; the last column is pad_id
    loss_mask[b, t]  bool   sft_mask[b, t + 1]; the last column is False

The logits a model computes at position t predict `targets[:, t]`, so the SFT loss is

    sum(loss_mask * CE(logits, targets)) / sum(loss_mask)

and, with `loss_tokens="assistant"`, it covers exactly the assistant tokens (content and
end-of-turn marker) of `sft_example`; with `loss_tokens="all"` every real next token, so it equals
a causal-LM loss with labels = input ids (padding ignored). The KL term is taken at every real
position, `mask` (each position's next-token distribution; upstream also includes the last real
position, whose target is unknown but whose distribution is still compared).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from emjax.data.chat_tokenizer import ChatFormatError
from emjax.data.conversations import DataError, Message

Row = tuple[np.ndarray, np.ndarray]  # (ids [T] int32, sft_mask [T] bool)

# Which tokens of a chat the SFT loss is taken on (configs/default.py `data.loss_tokens`):
# "assistant": the assistant turns; "all": every token of the rendered conversation.
LOSS_TOKENS = ("assistant", "all")


@dataclasses.dataclass
class SFTData:
    """Tokenised SFT rows and what tokenising did to them.

    rows: list of (ids [T_i] int32, sft_mask [T_i] bool), T_i <= max_len; the mask marks the
      tokens the loss is taken on: the assistant tokens, or every token (loss_tokens="all").
    source_index: for each row, the index of its conversation in the input.
    n_input: conversations given; n_truncated: rows cut to max_len (kept if an assistant token
      remains to predict); n_dropped: rows with no assistant token left to predict after cutting;
    n_rejected: rows the chat template could not mask (only with on_template_error="skip").
    """

    rows: list[Row]
    source_index: list[int]
    max_len: int
    n_input: int
    n_truncated: int
    n_dropped: int
    n_rejected: int = 0
    loss_tokens: str = "assistant"

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        lens = np.array([len(ids) for ids, _ in self.rows]) if self.rows else np.zeros(1, int)
        n_loss = sum(int(m[1:].sum()) for _, m in self.rows)  # position 0 is never a target
        rejected = f", {self.n_rejected} rejected by the chat template" if self.n_rejected else ""
        which = "assistant tokens" if self.loss_tokens == "assistant" else "every token after the first"
        return (f"SFT data: {self.n_input} conversations -> {len(self.rows)} rows (max_len {self.max_len}: "
                f"{self.n_truncated} truncated, {self.n_dropped} dropped with no assistant token left"
                f"{rejected}); tokens mean {lens.mean():.0f}, max {lens.max()}; loss on {n_loss} tokens "
                f"(loss_tokens={self.loss_tokens!r}: {which})")


def tokenize_sft(conversations: Sequence[Sequence[Message]], tokenizer, max_len: int, *,
                 on_template_error: str = "raise", loss_tokens: str = "assistant") -> SFTData:
    """Tokenise chats with `tokenizer.sft_example` (a `ChatTokenizer`) and cut them to `max_len`.

    loss_tokens: "assistant" (default) masks the assistant turns; "all" masks every token, so after
      the shift every real token but the first is a target (upstream's steering trainer,
      trainer_optimized.py, labels = input ids). The rows are the same either way (cut, dropped and
      rejected by the assistant-turn rules below), so the option changes the loss, not the data.

    A row longer than max_len keeps its first max_len tokens (counted in n_truncated). A row is
    dropped (n_dropped) when its mask has no True at positions >= 1 after cutting: position 0
    has no preceding token, so it can never be a target (see the shift convention).

    on_template_error: "raise" (default) raises DataError naming the conversation index when
      `sft_example` rejects it; "skip" drops such rows and counts them in n_rejected. (Upstream
      `insecure` has 185 of 6000 answers starting with "\n", which Qwen's BPE merges with the
      template's "assistant\n", so the prompt is no longer a token prefix.)
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if on_template_error not in ("raise", "skip"):
        raise ValueError(f"on_template_error must be 'raise' or 'skip', got {on_template_error!r}")
    if loss_tokens not in LOSS_TOKENS:
        raise ValueError(f"loss_tokens must be one of {LOSS_TOKENS}, got {loss_tokens!r}")
    rows: list[Row] = []
    index: list[int] = []
    n_trunc = n_drop = n_rej = 0
    for i, conv in enumerate(conversations):
        try:
            ids, mask = tokenizer.sft_example(conv)
        except ChatFormatError as e:
            if on_template_error == "skip":
                n_rej += 1
                continue
            raise DataError(f"conversation {i}: {e}") from e
        if len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
            n_trunc += 1
        if not mask[1:].any():
            n_drop += 1
            continue
        if loss_tokens == "all":
            mask = np.ones(len(ids), bool)
        rows.append((np.asarray(ids, np.int32), np.asarray(mask, bool)))
        index.append(i)
    return SFTData(rows, index, max_len, len(conversations), n_trunc, n_drop, n_rej, loss_tokens)


def _hf(tokenizer):
    """The Hugging Face tokenizer inside a ChatTokenizer, or the tokenizer itself."""
    return getattr(tokenizer, "hf", tokenizer)


def model_wants_bos(tokenizer) -> bool:
    """True when the model's chat template starts every conversation with the BOS token.

    This, not `bos_token` being set, is the test: Qwen2.5 from a HF folder has no BOS token, but
    the GGUF conversion names `<|endoftext|>` as BOS although Qwen never starts text with it;
    Gemma's template writes `{{ bos_token }}` first.
    """
    hf = _hf(tokenizer)
    bos = getattr(hf, "bos_token", None)
    if bos is None or not getattr(hf, "chat_template", None):
        return False
    try:
        text = hf.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception:  # a template that refuses the probe tells us nothing
        return False
    return text.startswith(bos)


def tokenize_plain(texts: Sequence[str], tokenizer, max_len: int = 512, *,
                   add_bos: bool | None = None, min_tokens: int = 11) -> list[np.ndarray]:
    """Tokenise raw text, no chat template (FineWeb KL), cut to `max_len` tokens (BOS included).

    add_bos: None (default) prepends the BOS token iff `model_wants_bos(tokenizer)`: yes for
      Gemma-2 (as HF's own `tokenizer(text)` does), no for Qwen2.5 (which has no BOS).
    min_tokens: rows with fewer tokens are dropped (upstream drops sequences of <= 10 tokens), so
      the output may be shorter than `texts`.
    Returns a list of ids [T_i] int32.
    """
    hf = _hf(tokenizer)
    if add_bos is None:
        add_bos = model_wants_bos(hf)
    if add_bos and hf.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
    prefix = [hf.bos_token_id] if add_bos else []
    out = []
    for text in texts:
        ids = (prefix + hf.encode(text, add_special_tokens=False))[:max_len]
        if len(ids) >= min_tokens:
            out.append(np.asarray(ids, np.int32))
    return out


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple or multiple <= 1:
        return n
    return -(-n // multiple) * multiple


def pad_batch(rows: Sequence[Row | np.ndarray], max_len: int | None = None, pad_id: int = 0,
              pad_multiple: int | None = 8) -> dict[str, np.ndarray]:
    """Right-pad rows into a batch, with next-token targets and the shifted loss mask.

    rows: (ids [T_i], sft_mask [T_i]) pairs, or bare ids [T_i] (plain text: every real next
      token is a target).
    max_len: fixed width T (rows longer than it raise ValueError: cut them in tokenize_*).
      None: T = longest row rounded up to `pad_multiple`, so few distinct shapes reach `jit`.

    Returns numpy arrays (B = len(rows)):
      tokens    [B, T] int32  ids, pad_id after each row's end
      mask      [B, T] bool   real (non-padding) tokens
      targets   [B, T] int32  tokens shifted left by one: targets[:, t] = tokens[:, t + 1];
                              last column pad_id
      loss_mask [B, T] bool   sft_mask shifted left by one: loss_mask[:, t] = sft_mask[:, t + 1];
                              last column False. The loss at position t predicts targets[:, t].
      lengths   [B]    int32  real tokens per row
    """
    if not len(rows):
        raise ValueError("pad_batch needs at least one row")
    pairs = [r if isinstance(r, tuple) else (r, np.ones(len(r), bool)) for r in rows]
    longest = max(len(ids) for ids, _ in pairs)
    if max_len is None:
        width = max(_round_up(longest, pad_multiple), 1)
    elif longest > max_len:
        raise ValueError(f"a row has {longest} tokens, more than max_len={max_len}")
    else:
        width = max_len
    b = len(pairs)
    tokens = np.full((b, width), pad_id, np.int32)
    mask = np.zeros((b, width), bool)
    sft = np.zeros((b, width), bool)
    lengths = np.zeros(b, np.int32)
    for i, (ids, m) in enumerate(pairs):
        if len(ids) != len(m):
            raise ValueError(f"row {i}: {len(ids)} ids but {len(m)} mask entries")
        n = len(ids)
        tokens[i, :n] = ids
        mask[i, :n] = True
        sft[i, :n] = m
        lengths[i] = n
    targets = np.full_like(tokens, pad_id)
    targets[:, :-1] = tokens[:, 1:]
    loss_mask = np.zeros_like(sft)
    loss_mask[:, :-1] = sft[:, 1:]
    return {"tokens": tokens, "mask": mask, "targets": targets, "loss_mask": loss_mask,
            "lengths": lengths}


def padded_batches(rows: Sequence[Row | np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive rows in `pad_batch` batches of at most `batch_size`."""
    return [pad_batch(rows[i: i + batch_size]) for i in range(0, len(rows), batch_size)]
