"""The frozen cache: bucketed, pipelined encoding equals one plain batch, only the rows a run draws are
encoded, the disk cache is reused by a rerun and a sibling run (bit-identical losses), not by another
model, layer or rows, and a corrupt or truncated file is detected and rebuilt."""

import json
import os

import numpy as np
import pytest

from tiny_run import tiny_config, tiny_model as make_tiny_model
from emjax.data.batching import Batcher
from emjax.data.tokenize import pad_batch
from emjax.train import frozen_cache as FC
from emjax.train.frozen_store import model_fingerprint, row_hash
from emjax.train.step import frozen_outputs
from emjax.train.trainer import Trainer


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def counted(monkeypatch):
    """Counts the rows handed to the encoder and the frozen passes run."""
    seen = {"rows": 0, "passes": 0, "shapes": set()}
    encode = FC.encode_rows

    def encode_rows(weights, cfg, rows, *a, **kw):
        seen["rows"] += len(rows)
        return encode(weights, cfg, rows, *a, **kw)

    def passes(weights, cfg, tokens, mask, k, with_base):
        seen["passes"] += 1
        seen["shapes"].add(tuple(tokens.shape))
        return frozen_outputs(weights, cfg, tokens, mask, k, with_base)

    monkeypatch.setattr(FC, "encode_rows", encode_rows)
    monkeypatch.setattr(FC, "frozen_outputs", passes)
    return seen


def _config(tmp_path, name, **train):
    return tiny_config(tmp_path, name, **{"lambda_kl": 0.5, "max_steps": 3, **train})


def _losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(l["sft_loss"], l.get("kl")) for l in map(json.loads, f) if "sft_loss" in l]


def _drawn(rows, batch_size, seed, n_batches):
    b = Batcher(rows, batch_size, seed)
    return {int(i) for _ in range(n_batches) for i in b.next_indices()}


def test_upcoming_rows_are_the_next_batches_rows():
    b = Batcher(list(range(23)), 4, seed=3, position=(1, 2))
    got = b.upcoming_rows(7)
    assert b.position == (1, 2)  # unchanged
    replay = Batcher(list(range(23)), 4, seed=3, position=(1, 2))
    want = sorted({int(i) for _ in range(7) for i in replay.next_indices()})
    assert got.tolist() == want and len(want) < 23
    assert b.upcoming_rows(0).size == 0 and b.upcoming_rows(100).tolist() == list(range(23))


def test_bucketed_encoding_equals_one_unbucketed_batch(tiny_model, counted):
    cfg, w = tiny_model.cfg, tiny_model.weights
    rng = np.random.default_rng(0)
    rows = sorted((rng.integers(1, cfg.vocab_size, n).astype(np.int32) for n in rng.integers(2, 150, 40)), key=len)
    plan = FC.plan_batches([len(r) for r in rows], batch_tokens=1024)
    assert [i for s, e, _, _ in plan for i in range(s, e)] == list(range(len(rows)))  # every row once, in order
    assert all(len(rows[e - 1]) <= width for s, e, width, _ in plan)
    prefix, base = FC.encode_rows(w, cfg, rows, 2, True, batch_tokens=1024)
    # lengths up to 149: widths 64, 96, 128 and the cap 152, one row count each
    assert counted["shapes"] == {(b, width) for _, _, width, b in plan}
    assert {width for _, width in counted["shapes"]} <= {64, 96, 128, 152} and len(counted["shapes"]) <= 4
    # the reference: all rows in one batch at one width (another padding and batch than any bucket's)
    ref = pad_batch(rows, max_len=160)
    x, xb = frozen_outputs(w, cfg, ref["tokens"], ref["mask"], 2, True)
    off = 0
    for j, r in enumerate(rows):
        np.testing.assert_allclose(prefix[off: off + len(r)], np.asarray(x[j, : len(r)]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(base[off: off + len(r)], np.asarray(xb[j, : len(r)]), rtol=1e-5, atol=1e-5)
        off += len(r)
    assert off == len(prefix)


def test_short_run_encodes_only_drawn_rows_and_trains_as_without_cache(tiny_model, tmp_path, counted):
    t = Trainer(_config(tmp_path, "cached", max_steps=2, warmup_steps=0), tiny_model)
    tc = t.config.train
    s = t.run()
    train = _drawn(t.data.train, t.rows_per_step, tc.seed, 2)
    kl = _drawn(t.data.kl, tc.kl_batch_size * tc.grad_accum, tc.seed + 1, 2)
    assert set(t.cache_train.prefix) == train and len(train) < len(t.data.train)
    assert set(t.cache_kl.prefix) == set(t.cache_kl.base) == kl and len(kl) < len(t.data.kl)
    distinct = len({row_hash(t.data.train[i][0]) for i in train}) + len({row_hash(t.data.kl[i]) for i in kl})
    assert counted["rows"] == distinct
    assert any(f"0 rows reused from {tmp_path / 'cache' / 'frozen'}" in n and f"{len(kl)} encoded" in n
               for n in s["notes"])
    counted["rows"] = 0
    Trainer(_config(tmp_path, "uncached", max_steps=2, warmup_steps=0, frozen_cache=False), tiny_model).run()
    assert counted["rows"] == 0
    cached, uncached = np.array(_losses(tmp_path / "cached")), np.array(_losses(tmp_path / "uncached"))
    assert cached[1:, 1].min() > 1e-4  # the KL after the first update is far above the tolerance
    np.testing.assert_allclose(cached, uncached, rtol=1e-5, atol=1e-7)


def test_disk_cache_reused_by_rerun_and_sibling_not_by_other_model_layer_or_rows(tiny_model, tmp_path, counted):
    first = Trainer(_config(tmp_path, "first"), tiny_model)
    first.run()
    assert counted["rows"] > 0 and counted["passes"] > 0
    counted.update(rows=0, passes=0)
    again = Trainer(_config(tmp_path, "again"), tiny_model)
    notes = again.run()["notes"]
    assert counted["passes"] == 0  # no frozen forward at all
    n_train, n_kl = len(again.cache_train.prefix), len(again.cache_kl.prefix)
    assert f"frozen cache, frozen prefix: {n_train} rows reused from" in "\n".join(notes)
    assert f"frozen cache, KL base outputs: {n_kl} rows reused from" in "\n".join(notes)
    assert _losses(tmp_path / "again") == _losses(tmp_path / "first")  # bit for bit
    Trainer(_config(tmp_path, "sibling", lambda_kl=2.0), tiny_model).build_caches()  # the narrow run's sibling
    assert counted["passes"] == 0

    other_model = Trainer(_config(tmp_path, "other_model"), make_tiny_model(seed=42))
    other_model.build_caches()
    assert counted["rows"] == n_train + n_kl
    counted["rows"] = 0
    c = _config(tmp_path, "other_layer")
    c.intervention.layers = (1,)
    other_layer = Trainer(c, tiny_model)
    assert other_layer.k != first.k
    other_layer.build_caches()
    assert counted["rows"] == len(other_layer.cache_train.prefix) + len(other_layer.cache_kl.prefix)
    # other rows: 20 training rows, drawn in another order; the rows the first run encoded are reused
    counted["rows"] = 0
    c = _config(tmp_path, "other_rows")
    c.data.n_train = 20
    fewer = Trainer(c, tiny_model)
    fewer.build_caches()
    known = {row_hash(first.data.train[i][0]) for i in first.cache_train.prefix}
    new = {row_hash(fewer.data.train[i][0]) for i in fewer.cache_train.prefix} - known
    assert 0 < len(new) < len(fewer.cache_train.prefix)
    assert counted["rows"] == len(new)  # the KL rows are those of the first run


def test_corrupt_or_truncated_files_are_detected_and_rebuilt(tiny_model, tmp_path, counted):
    first = Trainer(_config(tmp_path, "first"), tiny_model)
    first.build_caches()
    root = tmp_path / "cache" / "frozen"
    entries = sorted(os.listdir(root))
    prefix_entry = next(e for e in entries if "-prefix-" in e)
    base_entry = next(e for e in entries if "-base-" in e)
    [flip] = [root / prefix_entry / f for f in os.listdir(root / prefix_entry) if f.endswith(".prefix.bin")]
    data = bytearray(flip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flip.write_bytes(bytes(data))
    [cut] = [root / base_entry / f for f in os.listdir(root / base_entry) if f.endswith(".base.bin")]
    cut.write_bytes(cut.read_bytes()[:-4096])
    counted["rows"] = 0
    second = Trainer(_config(tmp_path, "second"), tiny_model)
    notes = "\n".join(second.build_caches())
    assert "rows fail their crc32" in notes and "its index says" in notes and notes.count("removed") == 2
    assert counted["rows"] == len(first.cache_train.prefix) + len(first.cache_kl.prefix)  # all again
    for a, b in ((first.cache_train, second.cache_train), (first.cache_kl, second.cache_kl)):
        idx = sorted(a.prefix)
        for x, y in zip(a.gather(idx, 64), b.gather(idx, 64)):
            assert (x is None and y is None) or np.array_equal(x, y)  # the same rows, encoded again
    # an unreadable index is dropped too, and the repaired entry is reused as a whole
    [index] = [root / prefix_entry / f for f in os.listdir(root / prefix_entry) if f.endswith(".index.npz")]
    index.write_bytes(b"not an index")
    counted["rows"] = 0
    notes = "\n".join(Trainer(_config(tmp_path, "third"), tiny_model).build_caches())
    assert "unreadable" in notes and counted["rows"] == len(first.cache_train.prefix)
    counted["rows"] = 0
    Trainer(_config(tmp_path, "fourth"), tiny_model).build_caches()
    assert counted["rows"] == 0


def test_cache_off_switches(tiny_model, tmp_path, counted):
    t = Trainer(_config(tmp_path, "memory_only", frozen_cache_disk=False), tiny_model)
    notes = t.build_caches()
    assert "not kept on disk (train.frozen_cache_disk=False)" in notes[1]
    assert not os.path.exists(tmp_path / "cache" / "frozen") and "(in memory only)" in notes[-1]
    assert Trainer(_config(tmp_path, "off", frozen_cache=False), tiny_model).build_caches() == ["frozen cache: off"]
    c = _config(tmp_path, "elsewhere", frozen_cache_dir=str(tmp_path / "elsewhere"))
    Trainer(c, tiny_model).build_caches()
    assert len(os.listdir(tmp_path / "elsewhere")) == 2  # the prefix and the KL entries


def test_model_fingerprint_follows_the_weights_not_the_mesh(tiny_model):
    from emjax.checkpoints.load import model_on_mesh
    from emjax.model.mesh_plan import mesh_context

    fp = model_fingerprint(tiny_model.weights, tiny_model.cfg)
    sharded, plan = model_on_mesh(tiny_model, "data:2,fsdp:2,tensor:2")
    assert len(sharded.weights.layers.down_proj.sharding.device_set) == 8
    with mesh_context(plan.mesh):  # as the Trainer calls it
        assert model_fingerprint(sharded.weights, sharded.cfg) == fp
    assert model_fingerprint(make_tiny_model(seed=42).weights, tiny_model.cfg) != fp
    w = tiny_model.weights
    one_layer = w.replace(layers=w.layers.replace(down_proj=w.layers.down_proj.at[3, 0, 0].add(1e-3)))
    assert model_fingerprint(one_layer, tiny_model.cfg) != fp


def _store(root):
    from emjax.train.frozen_store import FrozenStore
    return FrozenStore(str(root), model_name="m", model_source="m", fingerprint="f", dtype="float32", k=1,
                       with_base=True)


def test_two_writers_of_the_same_rows_and_an_unwritable_folder(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 50, n).astype(np.int32) for n in (3, 5, 9)]
    hashes = [row_hash(r) for r in rows]
    lengths = [len(r) for r in rows]
    prefix, base = rng.normal(size=(17, 4)).astype(np.float32), rng.normal(size=(17, 4)).astype(np.float32)
    a, b = _store(tmp_path / "root").writer(hashes, lengths), _store(tmp_path / "root").writer(hashes, lengths)
    for w in (a, b):  # two runs that started at once, interleaved
        w.write(0, 2, prefix[:8], base[:8])
    for w in (b, a):
        w.write(2, 3, prefix[8:], base[8:])
    assert "MiB written" in a.commit(4) and "MiB written" in b.commit(4)
    store = _store(tmp_path / "root")
    assert len(store.shards()) == 1 and not any(f.endswith(".tmp") for f in os.listdir(store.dir))
    found, notes = store.find(set(hashes))
    assert not notes and np.array_equal(found[hashes[2]][0], prefix[8:]) and np.array_equal(found[hashes[1]][1], base[3:8])
    (tmp_path / "file").write_text("not a folder")
    w = _store(tmp_path / "file").writer(hashes, lengths)
    w.write(0, 3, prefix, base)
    assert w.commit(4).startswith("not kept on disk (")
