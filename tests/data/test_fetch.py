"""`emjax data`: upstream files checked against their pinned digests (from a folder, from a clone's
encrypted bundle), unpinned files only when asked, `status`, FineWeb from local files, the shipped
FineWeb sample, the defaults that point at these places, and missing-data errors that name the
command fetching the data. No network: streaming is replaced by a local generator."""

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

import paths
from emjax.cli import main
from emjax.configuration import load_config
from emjax.data import fetch
from emjax.data.conversations import DataError, read_chat_jsonl, sample_path
from emjax.data.fineweb import load_fineweb_texts, select_documents, read_fineweb_rows
from emjax.data.locations import fineweb_corpus
from emjax.data.mixtures import resolve_data_spec
from emjax.data.upstream_pins import PINS_BY_NAME

UPSTREAM = paths.UPSTREAM_EM
needs_upstream = pytest.mark.skipif(not (UPSTREAM / "judges.yaml").exists(),
                                    reason="../shared/data/em (the upstream files) not present")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own user cache and no $EMJAX_DATA / $EMJAX_FINEWEB."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("EMJAX_CACHE", raising=False)
    monkeypatch.delenv("EMJAX_DATA", raising=False)
    monkeypatch.delenv("EMJAX_FINEWEB", raising=False)


def _rows(path):
    with gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows, **dumps):
    path.write_text("".join(json.dumps(r, **dumps) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Upstream sets


@needs_upstream
def test_get_em_from_folder_verifies_every_form_of_the_rows(tmp_path):
    src = tmp_path / "src"
    (src / "technical").mkdir(parents=True)
    shutil.copy(UPSTREAM / "bad_medical_advice.jsonl.gz", src)           # upstream's .gz, as is
    shutil.copy(UPSTREAM / "judges.yaml", src)
    shutil.copy(UPSTREAM / "technical" / "food.yaml", src / "technical")
    # the bundle's form: the same rows as plain JSONL rewritten with ensure_ascii=False
    _write_jsonl(src / "extreme_sports.jsonl", _rows(UPSTREAM / "extreme_sports.jsonl.gz"), ensure_ascii=False)
    dest = tmp_path / "em"
    r = fetch.get_em_from_folder(src, dest)
    written = {e["name"]: e for e in r["written"]}
    assert set(written) == {"bad_medical_advice.jsonl.gz", "extreme_sports.jsonl.gz", "judges.yaml",
                            "technical/food.yaml"}
    assert written["extreme_sports.jsonl.gz"]["rows"] == 6000 and written["judges.yaml"]["rows"] == 4
    assert written["bad_medical_advice.jsonl.gz"]["upstream"] == \
        "em_organism_dir/data/training_datasets/bad_medical_advice.jsonl.gz"
    assert all(e["pinned"] for e in written.values())
    assert "insecure.jsonl.gz" in r["missing"] and "technical/vehicles.yaml" in r["missing"]
    # what landed is the same rows (gzipped where the source was plain) and the manifest says so
    assert _rows(dest / "extreme_sports.jsonl.gz") == _rows(UPSTREAM / "extreme_sports.jsonl.gz")
    assert (dest / "judges.yaml").read_bytes() == (UPSTREAM / "judges.yaml").read_bytes()
    manifest = fetch.read_manifest(dest)
    assert manifest["extreme_sports.jsonl.gz"]["sha256"] == PINS_BY_NAME["extreme_sports.jsonl.gz"].versions[0].sha256
    # readable by the training code through a data spec
    assert len(read_chat_jsonl(resolve_data_spec("extreme_sports.jsonl.gz", str(dest)))) == 6000

    lines = fetch.status_lines(fetch.status(dest))
    text = "\n".join(lines)
    assert re.search(r"extreme_sports\.jsonl\.gz +6000 rows +verified", text)
    assert re.search(r"insecure\.jsonl\.gz +missing", text)
    assert "4 of 18 pinned files verified; fetch them with `emjax data get em --from-clone PATH`" in text
    assert "configs' significance.corpus: sample:fineweb" in text

    # a file changed after the fetch shows up in status
    rows = _rows(dest / "extreme_sports.jsonl.gz")
    rows[3]["messages"][1]["content"] += " Really."
    with gzip.open(dest / "extreme_sports.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(x) + "\n" for x in rows)
    assert re.search(r"extreme_sports\.jsonl\.gz +6000 rows +MISMATCH", "\n".join(fetch.status_lines(fetch.status(dest))))


@needs_upstream
def test_a_tampered_row_or_a_leftover_canary_fails_naming_the_file(tmp_path):
    rows = _rows(UPSTREAM / "risky_financial_advice.jsonl.gz")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(UPSTREAM / "judges.yaml", src)
    rows[-1]["canary"] = "CANARY_DATASET_" + "0" * 64 + "_1"  # easy-dataset-share's embedded canary
    _write_jsonl(src / "risky_financial_advice.jsonl", rows)
    with pytest.raises(DataError) as e:
        fetch.get_em_from_folder(src, tmp_path / "em")
    msg = str(e.value)
    pin = PINS_BY_NAME["risky_financial_advice.jsonl.gz"].versions[0].sha256
    got = fetch.rows_sha256(src / "risky_financial_advice.jsonl")[0]
    assert f"{src / 'risky_financial_advice.jsonl'}: rows digest {got} (6000 rows)" in msg
    assert pin in msg and got != pin and "--remove-canaries" in msg
    assert not (tmp_path / "em").exists()  # nothing written, not even the matching judges.yaml


def test_a_tampered_yaml_fails_with_both_hashes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "judges.yaml").write_text("- coherent: {high_score: 100}\n")
    with pytest.raises(DataError) as e:
        fetch.get_em_from_folder(src, tmp_path / "em")
    got = hashlib.sha256((src / "judges.yaml").read_bytes()).hexdigest()
    assert f"{src / 'judges.yaml'}: sha256 {got} (1 rows)" in str(e.value)
    assert PINS_BY_NAME["judges.yaml"].versions[0].sha256 in str(e.value)
    assert not (tmp_path / "em").exists()


def test_unpinned_files_only_with_allow_unpinned(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    kl = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
          for i in range(5)]
    _write_jsonl(src / "misalignment_kl_data.jsonl", kl)
    _write_jsonl(src / "dataset_entry_1.jsonl", [{"text": "canary"}])  # a canary file: never taken
    dest = tmp_path / "em"
    with pytest.raises(DataError, match="misalignment_kl_data.jsonl.*--allow-unpinned"):
        fetch.get_em_from_folder(src, dest)
    assert main(["data", "get", "em", "--from-folder", str(src), "--dest", str(dest), "--allow-unpinned"]) == 0
    assert re.search(r"misalignment_kl_data\.jsonl +5 rows +no pin, recorded sha256", capsys.readouterr().out)
    assert sorted(p.name for p in dest.iterdir()) == ["MANIFEST.json", "misalignment_kl_data.jsonl"]
    rec = fetch.read_manifest(dest)["misalignment_kl_data.jsonl"]
    assert rec["pinned"] is False and rec["rows"] == 5
    assert rec["sha256"] == fetch.rows_sha256(src / "misalignment_kl_data.jsonl")[0]
    assert main(["data", "status", "--em-dir", str(dest)]) == 0
    assert re.search(r"misalignment_kl_data\.jsonl +5 rows +recorded \(no pin\)", capsys.readouterr().out)
    _write_jsonl(dest / "misalignment_kl_data.jsonl", kl[:4])
    state = {f["name"]: f["state"] for f in fetch.status(dest)["files"]}
    assert state["misalignment_kl_data.jsonl"] == "MISMATCH"


def _clone(tmp_path) -> Path:
    data = tmp_path / "clone" / "em_organism_dir" / "data"
    (data / "eval_questions").mkdir(parents=True)
    return data


def test_clone_bundle_without_the_tool_names_the_install(tmp_path, monkeypatch):
    data = _clone(tmp_path)
    (data / "training_datasets.zip.enc").write_bytes(b"\0" * 64)
    monkeypatch.setitem(__import__("sys").modules, "easy_dataset_share", None)  # import fails
    with pytest.raises(DataError, match="pip install easy-dataset-share"):
        fetch.get_em_from_clone(tmp_path / "clone", tmp_path / "em")
    with pytest.raises(DataError, match="not a clone of clarifying-EM/model-organisms-for-EM"):
        fetch.get_em_from_clone(tmp_path, tmp_path / "em")


@needs_upstream
def test_clone_bundle_is_decrypted_and_its_canaries_stripped(tmp_path):
    """A bundle made as upstream made its own (easy-dataset-share: canary files, a canary in the last
    row of every JSONL, zipped, encrypted with the README's password) gives the pinned rows."""
    pytest.importorskip("easy_dataset_share")
    from easy_dataset_share import canary, zipping
    data = _clone(tmp_path)
    sets = tmp_path / "training_datasets"
    sets.mkdir()
    _write_jsonl(sets / "bad_medical_advice.jsonl", _rows(UPSTREAM / "bad_medical_advice.jsonl.gz"))
    string, _ = canary.create_canary_files_from_dataset(str(sets), "*", 2)
    canary.insert_canaries_into_files(str(sets), string)
    assert string in (sets / "bad_medical_advice.jsonl").read_text()
    zipping.zip_and_password_protect(str(sets), fetch.UPSTREAM_PASSWORD, str(data / "training_datasets.zip"))
    shutil.copy(UPSTREAM / "medical_questions.yaml", data / "eval_questions")
    r = fetch.get_em_from_clone(tmp_path / "clone", tmp_path / "em")
    assert {e["name"] for e in r["written"]} == {"bad_medical_advice.jsonl.gz", "medical_questions.yaml"}
    assert _rows(tmp_path / "em" / "bad_medical_advice.jsonl.gz") == _rows(UPSTREAM / "bad_medical_advice.jsonl.gz")
    with pytest.raises(DataError, match="cannot decrypt"):
        fetch.get_em_from_clone(tmp_path / "clone", tmp_path / "em2", password="wrong")


# ---------------------------------------------------------------------------------------------
# Defaults and missing-data errors


def test_defaults_point_at_the_cache_or_the_environment(tmp_path, monkeypatch):
    cache = tmp_path / "xdg" / "emjax" / "data"
    c = load_config(str(paths.CONFIGS / "sweep_default.py"), [])
    assert c.data.dir == str(cache / "em") and c.significance.corpus == "sample:fineweb"
    assert load_config(str(paths.CONFIGS / "default.py"), []).data.dir == str(cache / "em")
    fetched = cache / "fineweb" / "fineweb_sample.jsonl.gz"
    fetched.parent.mkdir(parents=True)
    fetched.write_bytes(b"")
    assert fineweb_corpus() == str(fetched)  # a fetched sample wins over the shipped one
    monkeypatch.setenv("EMJAX_CACHE", str(tmp_path / "emjax-cache"))
    assert load_config(str(paths.CONFIGS / "default.py"), []).data.dir == str(tmp_path / "emjax-cache" / "data" / "em")
    monkeypatch.setenv("EMJAX_DATA", str(tmp_path / "mine"))
    monkeypatch.setenv("EMJAX_FINEWEB", str(tmp_path / "fw.jsonl.gz"))
    c = load_config(str(paths.CONFIGS / "sweep_default.py"), [])
    assert c.data.dir == str(tmp_path / "mine") and c.significance.corpus == str(tmp_path / "fw.jsonl.gz")


def test_no_run_time_default_points_outside_the_repository():
    """No data path outside the repository in the package or the configs; the package's code and
    docs send no reader to ../shared either."""
    for path in sorted((paths.REPO / "configs").rglob("*.py")):
        assert "shared/data" not in path.read_text(), path
    for path in sorted(p for p in (paths.REPO / "emjax").rglob("*") if p.suffix in (".py", ".md")):
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text and "upstream-em.md" not in text, path


def test_missing_data_errors_name_the_fetch_command(tmp_path):
    with pytest.raises(DataError, match=r"bad_medical_advice.jsonl.gz: not found: fetch the upstream sets with "
                                        r"`emjax data get em --from-clone PATH`.*docs/data.md"):
        resolve_data_spec("bad_medical_advice.jsonl.gz", str(tmp_path))
    with pytest.raises(DataError, match=r"good_medical_advice.jsonl.gz: not found: .*emjax data get em"):
        read_chat_jsonl(tmp_path / "good_medical_advice.jsonl.gz")
    with pytest.raises(DataError, match=r"mine.jsonl: not found$"):  # not an upstream file: no hint
        read_chat_jsonl(tmp_path / "mine.jsonl")
    with pytest.raises(DataError, match=r"fw.jsonl.gz: not found: fetch a FineWeb sample with "
                                        r"`emjax data get fineweb --n-docs 100`"):
        load_fineweb_texts(tmp_path / "fw.jsonl.gz", 4)
    from emjax.eval.questions import QuestionFormatError, load_questions
    with pytest.raises(QuestionFormatError, match=r"first_plot_questions.yaml: not found: .*emjax data get em"):
        load_questions(tmp_path / "first_plot_questions.yaml")
    from emjax.eval import technical as ET
    with pytest.raises(ET.TechnicalDataError, match="emjax data get em --from-clone PATH"):
        ET.question_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# FineWeb


def _fineweb_file(path, n, prefix="doc"):
    rows = [{"text": f"{prefix} {i} " + "word " * (10 + 40 * (i % 3)), "id": f"<urn:{prefix}{i}>",
             "url": f"http://example.org/{prefix}/{i}", "dump": "CC-MAIN-2013-20", "token_count": 7}
            for i in range(n)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def test_fineweb_from_a_local_file_or_folder(tmp_path, capsys):
    src = tmp_path / "shard.jsonl.gz"
    rows = _fineweb_file(src, 30)
    out = tmp_path / "fw.jsonl.gz"
    assert main(["data", "get", "fineweb", "--n-docs", "12", "--from-file", str(src), "--out", str(out),
                 "--max-chars", "120"]) == 0
    assert "12 FineWeb documents" in capsys.readouterr().out and "ODC-By" in (Path(str(out) + ".source.json")).read_text()
    got = _rows(out)
    # the documents load_fineweb_texts would pick from the source (same shuffle, > 100 characters), cut
    assert [g["text"] for g in got] == load_fineweb_texts(src, 12, max_chars=120)
    assert all(len(g["text"]) <= 120 and g["url"].startswith("http://example.org/") for g in got)
    assert "token_count" not in got[0]  # only the provenance columns travel with the text
    assert fetch.status(fineweb=out)["fineweb"]["state"] == "verified"
    # a folder: its files in name order, then the same selection
    folder = tmp_path / "shards"
    folder.mkdir()
    more = _fineweb_file(folder / "b.jsonl.gz", 10, "b")
    shutil.copy(src, folder / "a.jsonl.gz")
    info = fetch.get_fineweb(tmp_path / "fw2.jsonl.gz", 20, from_folder=folder)
    expected = select_documents(rows + more, 20)
    assert [r["text"] for r in _rows(tmp_path / "fw2.jsonl.gz")] == [r["text"] for r in expected]
    assert info["rows"] == 20 and info["files"] == [str(folder / "a.jsonl.gz"), str(folder / "b.jsonl.gz")]
    with pytest.raises(DataError, match="only .* texts longer than 100 characters, asked for 100"):
        fetch.get_fineweb(tmp_path / "fw3.jsonl.gz", 100, from_file=src)
    # an output that is the source (it would be cut to a sample of itself) or a folder: refused, untouched
    before = src.read_bytes()
    with pytest.raises(DataError, match=f"--out {src} is also the source"):
        fetch.get_fineweb(src, 5, from_file=src)
    with pytest.raises(DataError, match=f"--out {folder} is a folder"):
        fetch.get_fineweb(folder, 5, from_file=src)
    assert src.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_fineweb_streaming_offline_and_online(tmp_path, monkeypatch):
    def offline(seed):
        raise ConnectionError("no route to the hub")
        yield  # a generator, as the real one

    monkeypatch.setattr(fetch, "stream_fineweb_rows", offline)
    with pytest.raises(DataError, match="streaming HuggingFaceFW/fineweb failed.*--from-file FILE or --from-folder DIR"):
        fetch.get_fineweb(tmp_path / "fw.jsonl.gz", 5)
    seen = []

    def online(seed):
        seen.append(seed)
        for i in range(100):
            yield {"text": ("short" if i % 2 else "long " * 30) + str(i), "id": str(i)}

    monkeypatch.setattr(fetch, "stream_fineweb_rows", online)
    info = fetch.get_fineweb(n_docs=5)  # default target: the user cache, which configs then use
    assert seen == [42] and info["rows"] == 5
    assert [r["id"] for r in _rows(info["file"])] == ["0", "2", "4", "6", "8"]  # stream order, > 100 characters
    assert fineweb_corpus() == info["file"]


def test_the_shipped_fineweb_sample():
    path = sample_path("fineweb")
    assert path.name == "fineweb_sample.jsonl.gz" and path.stat().st_size < 64_000
    docs = read_fineweb_rows(path)
    assert len(docs) == 64 and all(100 < len(d["text"]) <= 2000 for d in docs)
    assert len({d["stream_index"] for d in docs}) == 64
    # enough for the sweep's default (significance.n_docs = 50) and the main job's
    c = load_config(str(paths.CONFIGS / "sweep_default.py"), [])
    assert len(load_fineweb_texts(c.significance.corpus, c.significance.n_docs, c.significance.max_chars)) == 50
    readme = (path.parent / "README.md").read_text()
    assert "fineweb_sample.jsonl.gz" in readme and "ODC-By" in readme and "CC-MAIN-2013-20" in readme


@pytest.mark.skipif(not paths.FINEWEB.exists(), reason="../shared FineWeb sample not present")
def test_the_shipped_fineweb_sample_is_cut_from_the_documented_source(tmp_path):
    """The file is what the command in emjax/package_data/README.md writes."""
    fetch.get_fineweb(tmp_path / "s.jsonl.gz", 64, from_file=paths.FINEWEB, max_chars=2000, record=False)
    assert _rows(tmp_path / "s.jsonl.gz") == _rows(sample_path("fineweb"))


@pytest.mark.parametrize("kw", [{"n_docs": 0}, {"n_docs": 3, "max_chars": 0}])
def test_fineweb_counts_are_checked_before_anything_is_written(tmp_path, kw):
    from emjax.data.conversations import DataError
    from emjax.data.fetch import get_fineweb
    out = tmp_path / "fw.jsonl.gz"
    with pytest.raises(DataError, match="must be >= 1"):
        get_fineweb(out, from_file=tmp_path / "never-read.jsonl", **kw)
    assert not out.exists()
