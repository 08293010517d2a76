"""emjax.data: chat JSONL reading, SFT tokenising, the padding/shift convention, deterministic
batching, the KL set, FineWeb text and the shipped samples."""

import gzip
import json

import numpy as np
import pytest

import paths
from chat_templates import tiny_tokenizer
from emjax.data.batching import Batcher, epoch_permutation
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.data.conversations import DataError, read_chat_jsonl, sample_path, write_chat_jsonl
from emjax.data.fineweb import load_fineweb_texts
from emjax.data.mixtures import kl_counts
from emjax.data.tokenize import model_wants_bos, pad_batch, tokenize_plain, tokenize_sft

SHARED = paths.SHARED_DATA
UPSTREAM = SHARED / "em"
FINEWEB = SHARED / "fineweb" / "fineweb_sample.jsonl.gz"

GOOD = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Drink water."}]}
CONV = GOOD["messages"]


@pytest.fixture(scope="module")
def qwen():
    return ChatTokenizer.wrap(tiny_tokenizer("qwen2"))


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("line,what", [
    ('{"messages": [', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"msgs": []}', "missing 'messages'"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "bad role 'bot'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "content must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
     "empty assistant content"),
])
def test_bad_line_names_file_and_line(tmp_path, line, what):
    path = tmp_path / "rows.jsonl"
    # line 1 good, line 2 blank (skipped, but still counted), line 3 bad
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError) as e:
        read_chat_jsonl(path)
    assert str(e.value).startswith(f"{path}:3: ") and what in str(e.value)


def test_empty_unreadable_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=f"{empty}: empty file"):
        read_chat_jsonl(empty)
    with pytest.raises(DataError, match="missing.jsonl: not found"):
        read_chat_jsonl(tmp_path / "missing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD).encode() + b"\n\xe9\n")
    with pytest.raises(DataError, match=f"{latin}:2: not UTF-8"):
        read_chat_jsonl(latin)


def test_gzip_round_trip_limit_and_corrupt_gzip(tmp_path):
    convs = [CONV, [{"role": "system", "content": "Be brief."}] + CONV + [
        {"role": "user", "content": "more?"}, {"role": "assistant", "content": "No."}]]
    path = tmp_path / "rows.jsonl.gz"
    write_chat_jsonl(path, convs * 3)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_chat_jsonl(path) == convs * 3
    assert read_chat_jsonl(path, limit=3) == (convs * 3)[:3]
    # gzip is detected by its magic bytes, not the suffix
    renamed = tmp_path / "rows.jsonl"
    renamed.write_bytes(path.read_bytes())
    assert read_chat_jsonl(renamed) == convs * 3
    # extra keys are dropped: rows come back as plain role/content messages
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": 1, "messages": [dict(m, weight=1) for m in CONV]}) + "\n")
    assert read_chat_jsonl(extra) == [CONV]
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode() * 200)[:-40])
    with pytest.raises(DataError, match=f"{truncated}: unreadable"):
        read_chat_jsonl(truncated)


# ------------------------------------------------------------------ tokenising and padding


def test_tokenize_sft_truncation_and_drop_counts(qwen):
    short = CONV
    long_answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "rest " * 200}]
    long_prompt = [{"role": "user", "content": "hello " * 200}, {"role": "assistant", "content": "ok"}]
    n_prompt = len(qwen.encode_chat(long_answer[:1], add_generation_prompt=True))
    max_len = n_prompt + 10
    data = tokenize_sft([short, long_answer, long_prompt, short], qwen, max_len)
    assert (data.n_input, len(data), data.n_truncated, data.n_dropped) == (4, 3, 2, 1)
    assert data.source_index == [0, 1, 3]
    ids, mask = data.rows[1]
    assert len(ids) == max_len and mask.sum() == 10 and mask[-10:].all()
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert "4 conversations -> 3 rows" in data.summary() and "2 truncated, 1 dropped" in data.summary()
    with pytest.raises(DataError, match="conversation 1: .*no assistant turn"):
        tokenize_sft([short, CONV[:1]], qwen, 64)
    skipped = tokenize_sft([short, CONV[:1], short], qwen, 64, on_template_error="skip")
    assert (len(skipped), skipped.n_rejected, skipped.source_index) == (2, 1, [0, 2])
    assert "1 rejected by the chat template" in skipped.summary()


def test_pad_batch_hand_made_example():
    rows = [(np.array([5, 6, 7, 8]), np.array([0, 0, 1, 1], bool)),
            (np.array([9, 10]), np.array([0, 1], bool))]
    b = pad_batch(rows, pad_id=0, pad_multiple=1)
    np.testing.assert_array_equal(b["tokens"], [[5, 6, 7, 8], [9, 10, 0, 0]])
    np.testing.assert_array_equal(b["mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(b["targets"], [[6, 7, 8, 0], [10, 0, 0, 0]])
    np.testing.assert_array_equal(b["loss_mask"], [[0, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(b["lengths"], [4, 2])
    assert b["tokens"].dtype == np.int32 and b["targets"].dtype == np.int32 and b["loss_mask"].dtype == bool
    assert pad_batch(rows)["tokens"].shape == (2, 8)  # rounded up to pad_multiple=8
    assert pad_batch(rows, max_len=6)["tokens"].shape == (2, 6)
    with pytest.raises(ValueError, match="more than max_len=3"):
        pad_batch(rows, max_len=3)
    # bare ids (plain text): every real next token is a target
    np.testing.assert_array_equal(pad_batch([np.array([1, 2, 3])], pad_multiple=4)["loss_mask"], [[1, 1, 0, 0]])


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_shift_lines_up_with_assistant_tokens(family):
    tok = ChatTokenizer.wrap(tiny_tokenizer(family))
    conv = [{"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "Drink water and rest."}]
    ids, sft = tok.sft_example(conv)
    b = pad_batch([tok.sft_example(CONV), (ids, sft)], pad_id=-1)
    tokens, targets, loss = b["tokens"][1], b["targets"][1], b["loss_mask"][1]
    np.testing.assert_array_equal(targets[:-1], tokens[1:])
    # position t is trained iff token t+1 is an assistant token
    assert set(np.flatnonzero(loss) + 1) == set(np.flatnonzero(sft))
    end = "<|im_end|>\n" if family == "qwen2" else "<end_of_turn>\n"
    assert tok.decode(targets[loss], skip_special_tokens=False) == conv[1]["content"] + end
    assert not (b["loss_mask"] & ~b["mask"]).any()


def test_tokenize_plain_bos_rule():
    texts = ["hello world how are you doing today " * 10, "hi"]
    qwen, gemma = tiny_tokenizer("qwen2"), tiny_tokenizer("gemma2")
    q = tokenize_plain(texts, qwen, max_len=16)
    assert len(q) == 1 and len(q[0]) == 16 and q[0][0] == qwen.encode(texts[0])[0]  # "hi" dropped (< 11)
    g = tokenize_plain(texts, ChatTokenizer.wrap(gemma), max_len=16, min_tokens=1)
    assert len(g) == 2 and all(r[0] == gemma.bos_token_id for r in g)  # Gemma's template starts with BOS
    # The GGUF conversion of Qwen names <|endoftext|> as bos_token, but Qwen never starts with it.
    qwen.bos_token = "<|endoftext|>"
    assert qwen.bos_token_id is not None and not model_wants_bos(qwen)
    assert tokenize_plain(texts, qwen, max_len=16)[0][0] != qwen.bos_token_id
    assert tokenize_plain(texts, qwen, add_bos=True)[0][0] == qwen.bos_token_id


# ------------------------------------------------------------------ batching


def _rows(n):
    return [(np.arange(i % 5 + 2), np.ones(i % 5 + 2, bool)) for i in range(n)]


def _take(batcher, k):
    return [next(batcher)["indices"].tolist() for _ in range(k)]


def test_batcher_order_is_the_documented_permutation():
    b = Batcher(_rows(10), batch_size=3, seed=7)
    assert b.batches_per_epoch == 3  # the partial batch of 1 is dropped
    got = _take(b, 6)
    for e in range(2):
        perm = np.random.default_rng([7, e]).permutation(10)
        assert got[3 * e: 3 * e + 3] == [perm[i:i + 3].tolist() for i in (0, 3, 6)]
    assert b.position == (1, 3)
    keep = Batcher(_rows(10), batch_size=3, seed=7, drop_last=False, max_epochs=1)
    batches = [x["indices"].tolist() for x in keep]
    assert [len(x) for x in batches] == [3, 3, 3, 1]
    assert sorted(sum(batches, [])) == list(range(10))
    assert epoch_permutation(10, 7, 0).tolist() == sum(batches, [])


def test_batcher_determinism_resume_and_seeds():
    rows = _rows(23)
    a, b = Batcher(rows, 4, seed=1), Batcher(rows, 4, seed=1)
    assert _take(a, 12) == _take(b, 12)
    assert _take(Batcher(rows, 4, seed=2), 12) != _take(Batcher(rows, 4, seed=1), 12)
    # interrupt mid-epoch, save, resume: the remaining batches (across epochs) are identical
    full = Batcher(rows, 4, seed=3)
    expected = _take(full, 14)
    run = Batcher(rows, 4, seed=3)
    head = _take(run, 3)
    state = json.loads(json.dumps(run.state()))  # survives a JSON checkpoint
    assert state["epoch"] == 0 and state["index"] == 3
    resumed = Batcher.from_state(rows, state)
    assert head + _take(resumed, 11) == expected
    # a batch also carries the padded arrays of its rows
    batch = next(Batcher(rows, 4, seed=3, pad_multiple=1))
    assert batch["tokens"].shape == (4, max(len(rows[i][0]) for i in batch["indices"]))
    with pytest.raises(ValueError, match="different data"):
        Batcher.from_state(rows[:-1], state)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        Batcher(rows[:3], 4, seed=0)


# ------------------------------------------------------------------ KL set


def test_kl_counts():
    assert kl_counts([4, 1, 4, 1], 40) == [16, 4, 16, 4]
    assert kl_counts([1, 1, 1], 10) == [4, 3, 3]
    assert sum(kl_counts([0.3, 0.3, 0.4], 7)) == 7
    with pytest.raises(ValueError):
        kl_counts([0, 0], 5)


# ------------------------------------------------------------------ FineWeb


def test_local_parquet_and_jsonl_texts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [f"doc {i} " + "x" * (150 + 100 * i) for i in range(12)] + ["too short"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "fw.parquet")
    with gzip.open(tmp_path / "fw.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    a = load_fineweb_texts(tmp_path / "fw.parquet", 12, max_chars=500, seed=0)
    assert a == load_fineweb_texts(tmp_path / "fw.jsonl.gz", 12, max_chars=500, seed=0)
    assert sorted(a) == sorted(t[:500] for t in texts[:12])  # the short one is skipped
    assert load_fineweb_texts(tmp_path / "fw.parquet", 3, shuffle=False) == texts[:3]
    with pytest.raises(DataError, match="only 12 texts"):
        load_fineweb_texts(tmp_path / "fw.parquet", 13)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2: expected an object with a string 'text'"):
        load_fineweb_texts(tmp_path / "bad.jsonl", 1)


@pytest.mark.skipif(not FINEWEB.exists(), reason="../shared FineWeb sample not present")
def test_fineweb_sample():
    with gzip.open(FINEWEB, "rt") as f:
        full = [json.loads(line)["text"] for line in f if line.strip()]
    docs = load_fineweb_texts(FINEWEB, 50)
    assert len(docs) == 50 and max(map(len, docs)) == 2000
    by_prefix = {t[:2000]: t for t in full}
    assert all(d in by_prefix for d in docs)  # each is the first 2000 characters of a document
    assert load_fineweb_texts(FINEWEB, 50) == docs
    assert load_fineweb_texts(FINEWEB, 50, seed=0) != docs
    order = np.random.default_rng(42).permutation(len(full))
    assert docs[:5] == [full[i][:2000] for i in order if len(full[i]) > 100][:5]


# ------------------------------------------------------------------ shipped samples and upstream sets


@pytest.mark.parametrize("domain,n", [("medical", 48), ("financial", 24), ("sports", 24)])
def test_shipped_samples(domain, n, qwen):
    bad = read_chat_jsonl(sample_path(f"bad_{domain}"))
    good = read_chat_jsonl(sample_path(f"good_{domain}_sample.jsonl"))
    assert len(bad) == len(good) == n
    for b, g in zip(bad, good):
        assert [m["role"] for m in b] == [m["role"] for m in g] == ["user", "assistant"]
        assert b[0] == g[0] and b[1] != g[1]  # same question, different answer
    assert len({c[0]["content"] for c in bad}) == n
    data = tokenize_sft(bad + good, qwen, max_len=512)
    assert data.n_dropped == data.n_truncated == 0
    with pytest.raises(FileNotFoundError, match="no shipped sample"):
        sample_path("bad_cooking")


def test_sample_domains_do_not_share_questions():
    qs = [{c[0]["content"] for c in read_chat_jsonl(sample_path(f"good_{d}"))}
          for d in ("medical", "financial", "sports")]
    assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])


UPSTREAM_ROWS = {"bad_medical_advice": 7049, "good_medical_advice": 7049,
                 "risky_financial_advice": 6000, "extreme_sports": 6000, "insecure": 6000}


@pytest.mark.parametrize("name", sorted(UPSTREAM_ROWS))
def test_upstream_sets_parse(name):
    path = UPSTREAM / f"{name}.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    convs = read_chat_jsonl(path)
    assert len(convs) == UPSTREAM_ROWS[name]
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in convs)
