"""Training, KL and FineWeb data: reading, tokenising, padding and deterministic batching.

Pipeline (host side, numpy only; the trainer moves batches to devices):

    convs = read_chat_jsonl(path)                       # list of chats, validated line by line
    sft = tokenize_sft(convs, tokenizer, max_len=256)   # (ids [T], sft_mask [T]) rows
    batcher = Batcher(sft.rows, batch_size=2, seed=0)   # deterministic order, resumable
    batch = next(batcher)                               # pad_batch(...) dict, see below

**Shift convention** (`pad_batch`). For a batch of B rows padded on the right to width T:

    tokens[b, t]     int32  token t of row b (pad_id past the row's length)
    mask[b, t]       bool   tokens[b, t] is a real token (not padding)
    targets[b, t]    int32  tokens[b, t + 1]; the last column is pad_id
    loss_mask[b, t]  bool   sft_mask[b, t + 1]; the last column is False

The logits a model computes at position t predict `targets[:, t]`, so the SFT loss is

    sum(loss_mask * CE(logits, targets)) / sum(loss_mask)

and it covers exactly the assistant tokens (content and end-of-turn marker) of `sft_example`.
The KL term is taken at every real position, `mask` (each position's next-token distribution;
upstream also includes the last real position, whose target is unknown but whose distribution
is still compared).

Samples shipped with the package: `sample_path("bad_medical")` etc. (see emjax/data/README.md).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from emjax.chat import ChatFormatError

Message = dict[str, str]
Conversation = list[Message]
Row = tuple[np.ndarray, np.ndarray]  # (ids [T] int32, sft_mask [T] bool)
PathLike = Union[str, os.PathLike]

ROLES = ("system", "user", "assistant")
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file or data set that cannot be used as asked; the message names file and line."""


# --------------------------------------------------------------------------------------------
# Chat JSONL
# --------------------------------------------------------------------------------------------


def _open_binary(path: Path):
    """Open plain or gzip files; gzip is recognised by its magic bytes, not only the suffix."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def _iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed JSON) for each non-blank line of a (.gz) JSONL file."""
    with _open_binary(path) as f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if not text.strip():
                    continue  # blank lines (and the trailing newline) are not rows
                try:
                    yield lineno, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        except (OSError, EOFError) as e:  # corrupt or truncated gzip stream
            raise DataError(f"{path}: unreadable after line {lineno}: {e}") from e


def validate_conversation(obj: Any) -> Conversation:
    """Check one upstream row `{"messages": [...]}` and return its messages as plain dicts.

    Raises ValueError (without location; the caller adds file and line) naming what is wrong.
    Only `role` and `content` of each message are kept.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise ValueError(f"missing 'messages' (keys: {sorted(obj)[:5]})")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    out: Conversation = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"message {j} is not an object")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {j}: bad role {m.get('role')!r:.40} (expected one of {ROLES})")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {j}: content must be a string, got {type(m.get('content')).__name__}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise ValueError(f"message {j}: empty assistant content")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant turn")
    return out


def read_chat_jsonl(path: PathLike, *, limit: int | None = None) -> list[Conversation]:
    """Read the upstream chat JSONL (plain or gzip): one `{"messages": [...]}` per line.

    Every line is validated; blank lines are skipped. With `limit`, reading stops after `limit`
    conversations (lines past that are not read, hence not validated).

    Raises:
      DataError: `"<file>:<line>: <what>"` for invalid JSON, a missing `messages`, a bad role,
        non-string content, an empty assistant answer or no assistant turn; `"<file>: ..."` for
        an unreadable, corrupt or empty file.
    """
    path = Path(path)
    convs: list[Conversation] = []
    if limit is not None and limit <= 0:
        return convs
    for lineno, obj in _iter_json_lines(path):
        try:
            convs.append(validate_conversation(obj))
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if limit is not None and len(convs) >= limit:
            break
    if not convs:
        raise DataError(f"{path}: empty file (no conversations)")
    return convs


def write_chat_jsonl(path: PathLike, conversations: Iterable[Sequence[Message]]) -> None:
    """Write conversations in the upstream format (gzip if `path` ends with .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for conv in conversations:
            f.write(json.dumps({"messages": list(conv)}, ensure_ascii=False) + "\n")


def sample_path(name: str) -> Path:
    """Path of a sample shipped in `emjax/data/`: "bad_medical" or "bad_medical_sample.jsonl".

    Samples: {bad,good}_{medical,financial,sports}_sample.jsonl (see emjax/data/README.md).
    """
    fname = name if name.endswith((".jsonl", ".yaml", ".md")) else f"{name}_sample.jsonl"
    folder = _sample_dir()
    p = folder / fname
    if not p.is_file():
        have = sorted(x.name for x in folder.iterdir() if x.name.endswith(".jsonl"))
        raise FileNotFoundError(f"no shipped sample {fname!r}; have {have}")
    return Path(str(p))  # package data is installed as plain files (editable or wheel)


def _sample_dir():
    """`emjax/data/` through importlib.resources, else next to this module.

    `emjax` has no `__init__.py`, so it is a namespace package; under a setuptools editable
    install its `__path__` holds a non-directory placeholder and `files("emjax")` raises.
    """
    try:
        return importlib.resources.files("emjax") / "data"
    except (TypeError, NotADirectoryError, ModuleNotFoundError):
        return Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------------------------
# Tokenising
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SFTData:
    """Tokenised SFT rows and what tokenising did to them.

    rows: list of (ids [T_i] int32, sft_mask [T_i] bool), T_i <= max_len; the mask marks the
      assistant tokens (what the model is trained to produce).
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

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        lens = np.array([len(ids) for ids, _ in self.rows]) if self.rows else np.zeros(1, int)
        n_assist = sum(int(m.sum()) for _, m in self.rows)
        rejected = f", {self.n_rejected} rejected by the chat template" if self.n_rejected else ""
        return (f"SFT data: {self.n_input} conversations -> {len(self.rows)} rows (max_len {self.max_len}: "
                f"{self.n_truncated} truncated, {self.n_dropped} dropped with no assistant token left"
                f"{rejected}); tokens mean {lens.mean():.0f}, max {lens.max()}; {n_assist} assistant tokens")


def tokenize_sft(conversations: Sequence[Sequence[Message]], tokenizer, max_len: int, *,
                 on_template_error: str = "raise") -> SFTData:
    """Tokenise chats with `tokenizer.sft_example` (a `ChatTokenizer`) and cut them to `max_len`.

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
        rows.append((np.asarray(ids, np.int32), np.asarray(mask, bool)))
        index.append(i)
    return SFTData(rows, index, max_len, len(conversations), n_trunc, n_drop, n_rej)


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


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Deterministic, resumable batching
# --------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of `epoch`: `np.random.default_rng([seed, epoch]).permutation(n)`, [n] int64.

    Depends only on (seed, epoch, n), so any epoch can be recomputed on resume.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


class Batcher:
    """Yields padded batches in a seed-determined order, epoch after epoch, and can resume.

    Epoch e visits rows in `epoch_permutation(n, seed, e)` order, `batch_size` rows per batch;
    `drop_last=True` drops the final partial batch of each epoch (all batches then have the same
    shape), `drop_last=False` yields it smaller. The position is (epoch, index of the next batch
    within that epoch); `state()` / `from_state()` carry it through a checkpoint so a resumed run
    sees exactly the batches the interrupted one would have seen.

    Iterating is endless unless `max_epochs` is set. Each batch is `pad_batch(...)` of its rows
    plus `indices` [B] int64 (row indices into `rows`).
    """

    def __init__(self, rows: Sequence[Row | np.ndarray], batch_size: int, seed: int, *,
                 drop_last: bool = True, max_epochs: int | None = None,
                 position: tuple[int, int] = (0, 0), **pad_kwargs: Any):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(rows) < batch_size:
            raise ValueError(f"{len(rows)} rows cannot fill one batch of {batch_size} (drop_last=True)")
        if not len(rows):
            raise ValueError("Batcher needs at least one row")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = drop_last
        self.max_epochs = max_epochs
        self.pad_kwargs = pad_kwargs
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)
        self.seek(*position)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, index within epoch) of the next batch."""
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        """Move to batch `index` of `epoch` (index == batches_per_epoch means the epoch's end)."""
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise ValueError(f"position ({epoch}, {index}) out of range "
                             f"({self.batches_per_epoch} batches per epoch)")
        self.epoch, self.index = int(epoch), int(index)

    def state(self) -> dict[str, int | bool]:
        """Small JSON/Orbax-friendly dict: position plus what must match on resume."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size, "drop_last": self.drop_last}

    @classmethod
    def from_state(cls, rows: Sequence[Row | np.ndarray], state: dict, **kwargs: Any) -> "Batcher":
        """Rebuild at the saved position; rows must be the same data set (checked by count)."""
        if len(rows) != int(state["n"]):
            raise ValueError(f"checkpoint data order was for {state['n']} rows, got {len(rows)}: "
                             "resuming on different data would not repeat the same batches")
        return cls(rows, int(state["batch_size"]), int(state["seed"]),
                   drop_last=bool(state["drop_last"]),
                   position=(int(state["epoch"]), int(state["index"])), **kwargs)

    def next_indices(self) -> np.ndarray:
        """Row indices [B] of the next batch; advances the position."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            raise StopIteration
        if self._perm_epoch != self.epoch:  # cache: one permutation per epoch
            self._perm_epoch, self._perm = self.epoch, epoch_permutation(self.n, self.seed, self.epoch)
        start = self.index * self.batch_size
        idx = self._perm[start: start + self.batch_size]
        self.index += 1
        return idx

    def __iter__(self) -> "Batcher":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx = self.next_indices()
        batch = pad_batch([self.rows[int(i)] for i in idx], **self.pad_kwargs)
        batch["indices"] = idx
        return batch


# --------------------------------------------------------------------------------------------
# KL set
# --------------------------------------------------------------------------------------------


def kl_counts(weights: Sequence[float], n_rows: int) -> list[int]:
    """Split n_rows over sources in proportion to weights (largest remainder; sums to n_rows)."""
    w = np.asarray(weights, float)
    if not len(w) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    exact = w / w.sum() * n_rows
    counts = np.floor(exact).astype(int)
    # ties go to the earlier source: stable sort on the negated remainder
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n_rows - counts.sum()]] += 1
    return counts.tolist()


def build_kl_set(sources: Sequence[tuple[PathLike | Sequence[Conversation], float]], n_rows: int,
                 seed: int) -> list[Conversation]:
    """The KL set: rows of good and bad advice from domains *other* than the training one.

    sources: (file path or list of conversations, weight) pairs, e.g.
      [(sample_path("good_financial"), 4), (sample_path("bad_financial"), 1), ...]; each source
      contributes `kl_counts(weights, n_rows)[i]` rows, drawn without replacement.
    Sampling is deterministic: source i uses `default_rng([seed, i])`, so changing one weight
    does not change what the other sources contribute; the result is shuffled with
    `default_rng([seed, len(sources)])` (so KL batches mix sources).
    Returns full chats (prompt + answer): the KL is taken on all non-padding tokens.

    Raises DataError if a source has fewer rows than it must contribute.
    """
    counts = kl_counts([w for _, w in sources], n_rows)
    picked: list[Conversation] = []
    for i, ((src, _), k) in enumerate(zip(sources, counts)):
        convs = read_chat_jsonl(src) if isinstance(src, (str, os.PathLike)) else list(src)
        if k > len(convs):
            name = src if isinstance(src, (str, os.PathLike)) else f"source {i}"
            raise DataError(f"KL set: {name} has {len(convs)} rows, needs {k} "
                            f"({n_rows} rows at the given weights)")
        take = np.random.default_rng([seed, i]).choice(len(convs), size=k, replace=False)
        picked.extend(convs[int(j)] for j in take)
    order = np.random.default_rng([seed, len(sources)]).permutation(len(picked))
    return [picked[int(j)] for j in order]


# --------------------------------------------------------------------------------------------
# FineWeb text
# --------------------------------------------------------------------------------------------


def _read_texts(path: Path, field: str) -> list[str]:
    """`field` of every row of a JSONL(.gz) or parquet file; names file and line on errors."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path, columns=[field]) if field in pq.read_schema(path).names else None
        if table is None:
            raise DataError(f"{path}: no column {field!r}")
        texts = table.column(field).to_pylist()
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad}: {field!r} is not a string")
        return texts
    texts = []
    for lineno, obj in _iter_json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string {field!r}")
        texts.append(obj[field])
    return texts


def _select_texts(texts: Iterable[str], n_docs: int | None, max_chars: int, min_chars: int) -> list[str]:
    """First n_docs texts longer than min_chars, each cut to its first max_chars characters."""
    out = []
    for t in texts:
        if n_docs is not None and len(out) >= n_docs:
            break
        if len(t) > min_chars:
            out.append(t[:max_chars])
    return out


def load_fineweb_texts(path: PathLike, n_docs: int | None, max_chars: int = 2000, seed: int = 42,
                       shuffle: bool = True, *, field: str = "text", min_chars: int = 100) -> list[str]:
    """Documents from a local FineWeb sample (JSONL, JSONL.gz or parquet with a `text` field).

    Order: `default_rng(seed).permutation(n)` of the file's rows if `shuffle`, else file order.
    Then the first `n_docs` texts longer than `min_chars` (upstream skips texts of <= 100
    characters), each cut to its first `max_chars` characters. The local shuffle is not the
    streaming buffer shuffle upstream uses, so the documents differ from upstream's.

    Raises DataError if fewer than n_docs texts qualify.
    """
    path = Path(path)
    texts = _read_texts(path, field)
    if shuffle:
        texts = [texts[int(i)] for i in np.random.default_rng(seed).permutation(len(texts))]
    out = _select_texts(texts, n_docs, max_chars, min_chars)
    if n_docs is not None and len(out) < n_docs:
        raise DataError(f"{path}: only {len(out)} texts longer than {min_chars} characters, "
                        f"asked for {n_docs}")
    return out


def stream_fineweb(n_docs: int, max_chars: int = 2000, seed: int = 42, shuffle: bool = True, *,
                   name: str = "sample-10BT", buffer_size: int = 1000, min_chars: int = 100) -> list[str]:
    """Documents streamed from the Hugging Face hub, as upstream does (needs network access).

    `load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)`, then
    `.shuffle(seed, buffer_size)` (datasets' default buffer 1000, as upstream), then as
    `load_fineweb_texts`. Upstream keeps the >100-character texts among the first n_docs
    streamed; this returns n_docs qualifying texts.
    """
    from datasets import load_dataset
    ds = load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)
    if shuffle:
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
    return _select_texts((row["text"] for row in ds), n_docs, max_chars, min_chars)
