"""`emjax data`: the upstream sets and a FineWeb sample, fetched into emjax's data folders and
checked (emjax.data.locations says where; docs/data.md how).

    get_em_from_clone(clone, dest)     a clone of clarifying-EM/model-organisms-for-EM: its
                                       encrypted bundle (needs easy-dataset-share) and eval questions
    get_em_from_folder(folder, dest)   a folder holding the files (.jsonl, .jsonl.gz, .yaml)
    get_fineweb(out, n_docs, ...)      streamed from the hub, or cut from a local file or folder
    status(em_dir, fineweb)            what is present, where, and whether it matches its pin

Every upstream file is checked against the digests of emjax.data.upstream_pins before anything is
written; a mismatch fails naming the file and both digests. Files without a pin (the bundle's KL
and technical sets, other question files) are taken only with `allow_unpinned` and recorded with
their digest. What was taken is recorded in `<dest>/MANIFEST.json`.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from emjax.data.conversations import DataError, PathLike, iter_json_lines
from emjax.data.fineweb import read_fineweb_rows, select_documents, stream_fineweb_rows, take_documents
from emjax.data.locations import GET_EM, SHIPPED_FINEWEB, data_dir, fineweb_corpus, fineweb_file
from emjax.errors import yaml_problem
from emjax.data.upstream_pins import PINS, PINS_BY_NAME, UPSTREAM_REPO, Pin, pin_for

MANIFEST = "MANIFEST.json"
# The password of upstream's README command, `easy-dataset-share unprotect-dir
# .../training_datasets.zip.enc -p model-organisms-em-datasets --remove-canaries` (public: the
# bundle keeps scrapers out, not readers).
UPSTREAM_PASSWORD = "model-organisms-em-datasets"
CANARY_FILES = "dataset_entry_*.jsonl"  # easy-dataset-share's canary files (its default pattern)
SUFFIXES = (".jsonl", ".jsonl.gz", ".yaml")
FINEWEB_LICENCE = "FineWeb (HuggingFaceFW/fineweb): ODC-By 1.0; the CommonCrawl terms of use also apply"


# ---------------------------------------------------------------------------------------------
# Digests


def rows_sha256(path: PathLike) -> tuple[str, int]:
    """sha256 over the rows of a JSONL(.gz) file, each as canonical JSON (sorted keys, no spaces,
    UTF-8) plus a newline, and the number of rows: the same for any whitespace, key order,
    escaping or compression of the same rows."""
    h, n = hashlib.sha256(), 0
    for _, obj in iter_json_lines(Path(path)):
        h.update(json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
        n += 1
    return h.hexdigest(), n


def bytes_sha256(path: PathLike) -> tuple[str, int]:
    """sha256 of the file's bytes, and its top-level items for a YAML list (else 0)."""
    data = Path(path).read_bytes()
    rows = 0
    if str(path).endswith(".yaml"):
        import yaml
        try:
            loaded = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise DataError(f"{path}: invalid YAML: {yaml_problem(e)}") from None
        rows = len(loaded) if isinstance(loaded, list) else 0
    return hashlib.sha256(data).hexdigest(), rows


def _kind(name: str) -> str:
    pin = PINS_BY_NAME.get(name)
    return pin.kind if pin else ("rows" if name.endswith((".jsonl", ".jsonl.gz")) else "bytes")


def digest(path: PathLike, kind: str) -> tuple[str, int]:
    """(sha256, rows) of a file: "rows" (JSONL rows) or "bytes" (the file)."""
    return rows_sha256(path) if kind == "rows" else bytes_sha256(path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# The upstream sets


def _candidates(folders: Iterable[Path]) -> dict[str, Path]:
    """name under the data folder -> source file, over `folders` in order (the first one found
    wins). Pinned files get their pinned name (`x.jsonl` -> `x.jsonl.gz`, `animals.yaml` ->
    `technical/animals.yaml`); others keep their file name. Canary files are left out."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or not path.name.endswith(SUFFIXES) or path.match(CANARY_FILES):
                continue
            pin = pin_for(path.name)
            found.setdefault(pin.name if pin else path.name, path)
    return found


def _mismatch(name: str, path: Path, pin: Pin, got: str, rows: int) -> str:
    want = " or ".join(f"{v.sha256} ({v.rows} rows, {v.origin})" for v in pin.versions)
    what = "rows digest" if pin.kind == "rows" else "sha256"
    msg = f"{path}: {what} {got} ({rows} rows) is not the pinned {want} of {name} (upstream {pin.upstream})"
    if pin.kind == "rows":
        msg += ("; a file extracted from upstream's bundle keeps easy-dataset-share's canary unless it was "
                "extracted with --remove-canaries")
    return msg


def get_em(folders: Iterable[PathLike], dest: PathLike | None = None, *, allow_unpinned: bool = False,
           source: str = "") -> dict[str, Any]:
    """Checks the upstream files found in `folders` against their pins and copies them into `dest`
    (default emjax.data.locations.data_dir()), JSONL as `.jsonl.gz`. Nothing is written unless
    every pinned file found matches.

    Returns {"dest", "written": [manifest entries], "missing": [pinned names not found],
    "skipped_unpinned": [names]}.
    Raises DataError naming each mismatching file with its digest and the pinned ones, or when
    nothing is taken.
    """
    dest = Path(dest or data_dir())
    found = _candidates(Path(f) for f in folders)
    checked, errors, skipped = [], [], []
    for name, path in found.items():
        pin = PINS_BY_NAME.get(name)
        if pin is None and not allow_unpinned:
            skipped.append(name)
            continue
        sha, rows = digest(path, _kind(name))
        version = pin.version(sha) if pin else None
        if pin is not None and version is None:
            errors.append(_mismatch(name, path, pin, sha, rows))
        checked.append((name, path, pin, version, sha, rows))
    if errors:
        raise DataError("upstream files that do not match their pins (nothing was written):\n  " + "\n  ".join(errors))
    if not checked:
        where = ", ".join(str(f) for f in folders)
        if skipped:
            raise DataError(f"{where}: only files emjax has no pinned hash for ({', '.join(skipped)}); "
                            "pass --allow-unpinned to take them")
        raise DataError(f"{where}: no upstream file of {UPSTREAM_REPO} found (looked for "
                        f"{', '.join(p.name for p in PINS[:5])}, ...; .jsonl, .jsonl.gz or .yaml)")
    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, path, pin, version, sha, rows in checked:
        _copy(path, dest / name)
        entries.append({"name": name, "upstream": pin.upstream if pin else None, "rows": rows, "sha256": sha,
                        "hash": _kind(name), "pinned": pin is not None, "origin": version.origin if version else None,
                        "source": str(path), "fetched": _now(), "via": source})
    _update_manifest(dest, entries)
    return {"dest": str(dest), "written": entries, "missing": [p.name for p in PINS if p.name not in found],
            "skipped_unpinned": skipped}


def _copy(src: Path, dst: Path) -> None:
    """Copy, gzipping a plain `.jsonl` source into a `.gz` destination (no name or time in the
    header, so the same rows give the same bytes); written whole, then renamed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    if dst.name.endswith(".gz") and not src.name.endswith(".gz"):
        with open(src, "rb") as f, open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as g:
            shutil.copyfileobj(f, g)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _update_manifest(dest: Path, entries: list[dict]) -> None:
    path = dest / MANIFEST
    files = read_manifest(dest)
    files.update({e["name"]: {k: v for k, v in e.items() if k != "name"} for e in entries})
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n")
    os.replace(tmp, path)


def read_manifest(dest: PathLike) -> dict[str, dict]:
    """name -> record of the files `emjax data get em` wrote into `dest` ({} if none)."""
    path = Path(dest) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise DataError(f"{path}: unreadable manifest ({e}); delete it and fetch again") from None


def get_em_from_folder(folder: PathLike, dest: PathLike | None = None, *, allow_unpinned: bool = False) -> dict:
    """`get_em` from a folder holding the files (searched recursively)."""
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: not a folder")
    return get_em([Path(folder)], dest, allow_unpinned=allow_unpinned, source=f"--from-folder {folder}")


def get_em_from_clone(clone: PathLike, dest: PathLike | None = None, *, allow_unpinned: bool = False,
                      password: str = UPSTREAM_PASSWORD) -> dict:
    """`get_em` from a clone of upstream: the training sets from its bundle (already extracted by
    upstream's README command if `training_datasets.zip.enc.extracted/` is there, else decrypted
    here with easy-dataset-share; clones from before 2025-07 have `training_datasets/`), the
    questions and judges from `em_organism_dir/data/eval_questions/`."""
    data = Path(clone) / "em_organism_dir" / "data"
    if not data.is_dir():
        raise DataError(f"{clone}: no em_organism_dir/data/: not a clone of {UPSTREAM_REPO}")
    bundle = data / "training_datasets.zip.enc"
    with tempfile.TemporaryDirectory(prefix="emjax-bundle-") as tmp:
        if (data / "training_datasets.zip.enc.extracted").is_dir():
            sets = data / "training_datasets.zip.enc.extracted"
        elif bundle.is_file():
            sets = decrypt_bundle(bundle, Path(tmp), password)
        elif (data / "training_datasets").is_dir():
            sets = data / "training_datasets"
        else:
            raise DataError(f"{data}: neither training_datasets.zip.enc nor training_datasets/ is there")
        return get_em([sets, data / "eval_questions"], dest, allow_unpinned=allow_unpinned,
                      source=f"--from-clone {clone}")


def decrypt_bundle(bundle: Path, out: Path, password: str = UPSTREAM_PASSWORD) -> Path:
    """Decrypts and extracts upstream's bundle into `out` and strips the tool's canaries, as
    `easy-dataset-share unprotect-dir BUNDLE -p PASSWORD --remove-canaries` does."""
    try:
        from easy_dataset_share import canary, zipping
    except ImportError:
        raise DataError(
            f"{bundle}: upstream's training sets are encrypted with its authors' tool: `pip install "
            f"easy-dataset-share` (or `pip install 'emjax[upstream-data]'`) and run `{GET_EM}` again, or "
            f"extract it yourself (`easy-dataset-share unprotect-dir {bundle} -p {UPSTREAM_PASSWORD} "
            "--remove-canaries`) and run the same command (the extracted folder is used)") from None
    try:
        zipping.unzip_and_decrypt(str(bundle), password, str(out))
    except ValueError as e:
        raise DataError(f"{bundle}: cannot decrypt it: {e}") from None
    canaries = canary.detect_canary_files(str(out), CANARY_FILES)
    string = canary.extract_canary_string_from_content(canaries[0]) if canaries else None
    canary.remove_canary_files(root_dir=str(out), canary_pattern=CANARY_FILES)
    if string:
        canary.remove_canaries_from_files(str(out), string)
    return out


# ---------------------------------------------------------------------------------------------
# FineWeb


def _source_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".parquet")))
    if not files:
        raise DataError(f"{folder}: no .jsonl, .jsonl.gz or .parquet file")
    return files


def get_fineweb(out: PathLike | None = None, n_docs: int = 100, *, from_file: PathLike | None = None,
                from_folder: PathLike | None = None, seed: int = 42, max_chars: int | None = None,
                record: bool = True) -> dict[str, Any]:
    """Writes n_docs FineWeb documents to `out` (JSONL.gz; default emjax.data.locations.fineweb_file())
    and, with `record`, their provenance beside it (`<out>.source.json`).

    Source: `from_file` or the files of `from_folder` (read in name order), shuffled by
    `default_rng(seed)` (emjax.data.fineweb.select_documents); else streamed from the hub as upstream
    reads it (HuggingFaceFW/fineweb sample-10BT, `.shuffle(seed, buffer_size=1000)`). Either way the
    first n_docs texts longer than 100 characters, whole or cut to `max_chars`, with FineWeb's id,
    url and dump (or stream_index) where the source has them.
    """
    if n_docs < 1:  # before any read, and nothing written
        raise DataError(f"--n-docs must be >= 1, got {n_docs}")
    if max_chars is not None and max_chars < 1:
        raise DataError(f"--max-chars must be >= 1, got {max_chars}")
    out = Path(out or fineweb_file())
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the file to write (.jsonl.gz)")
    if from_file is not None or from_folder is not None:
        files = [Path(from_file)] if from_file is not None else _source_files(Path(from_folder))
        same = [f for f in files if out.exists() and f.exists() and os.path.samefile(f, out)]
        if same:
            raise DataError(f"--out {out} is also the source {same[0]}: it would be rewritten with a sample of itself; "
                            "give --out another file")
        rows = [r for f in files for r in read_fineweb_rows(f)]
        docs = select_documents(rows, n_docs, max_chars, seed)
        source = {"files": [str(f) for f in files], "selection": f"default_rng({seed}).permutation of the rows"}
    else:
        try:
            docs = take_documents(stream_fineweb_rows(seed), n_docs, max_chars)
        except Exception as e:  # no network, no hub, datasets' own errors: all mean "use a local file"
            raise DataError(f"streaming HuggingFaceFW/fineweb failed ({type(e).__name__}: {e}); offline, pass "
                            "--from-file FILE or --from-folder DIR (FineWeb JSONL(.gz) or parquet files)") from None
        source = {"stream": "HuggingFaceFW/fineweb sample-10BT, split train",
                  "selection": f"datasets .shuffle(seed={seed}, buffer_size=1000), in stream order"}
    if len(docs) < n_docs:
        raise DataError(f"{source.get('files', source.get('stream'))}: only {len(docs)} texts longer than 100 "
                        f"characters, asked for {n_docs}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as g:
            for d in docs:
                g.write((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"--out {out}: cannot write it ({e.strerror or e})") from None
    sha, rows = rows_sha256(out)
    info = {"file": str(out), "rows": rows, "sha256": sha, "hash": "rows", "max_chars": max_chars, "min_chars": 100,
            "licence": FINEWEB_LICENCE, "fetched": _now(), **source}
    if record:
        Path(str(out) + ".source.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


# ---------------------------------------------------------------------------------------------
# Status


def _check(path: Path, kind: str, known: Iterable[str]) -> tuple[str, int | None]:
    """("verified" | "MISMATCH" | "missing", rows)."""
    if not path.is_file():
        return "missing", None
    try:
        sha, rows = digest(path, kind)
    except DataError:
        return "unreadable", None
    return ("verified" if sha in set(known) else "MISMATCH"), rows


def status(em_dir: PathLike | None = None, fineweb: PathLike | None = None) -> dict[str, Any]:
    """What is present: every pinned upstream file and every file the manifest records under
    `em_dir` (default data_dir()), each re-hashed now; the FineWeb sample at `fineweb` (default
    fineweb_file()) against its provenance record; and the corpus the configs use by default."""
    em = Path(em_dir or data_dir())
    manifest = read_manifest(em)
    files = []
    for pin in PINS:
        state, rows = _check(em / pin.name, pin.kind, (v.sha256 for v in pin.versions))
        files.append({"name": pin.name, "state": state, "rows": rows, "pinned": True})
    for name, rec in manifest.items():
        if name not in PINS_BY_NAME:
            state, rows = _check(em / name, rec.get("hash", _kind(name)), [rec.get("sha256")])
            files.append({"name": name, "state": state if state != "verified" else "recorded (no pin)",
                          "rows": rows, "pinned": False})
    fw = Path(fineweb or fineweb_file())
    record_path = Path(str(fw) + ".source.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    fw_state, fw_rows = _check(fw, "rows", [record["sha256"]] if record else [])
    if fw_state == "MISMATCH" and record is None:
        fw_state = "present (no provenance record)"
    return {"em_dir": str(em), "env_data": bool(os.environ.get("EMJAX_DATA")), "files": files,
            "fineweb": {"file": str(fw), "state": fw_state, "rows": fw_rows, "record": record},
            "corpus": fineweb_corpus()}


def status_lines(s: dict[str, Any]) -> list[str]:
    """`status` as the lines `emjax data status` prints."""
    where = "$EMJAX_DATA" if s["env_data"] else "the user cache; $EMJAX_DATA overrides"
    lines = [f"upstream sets: {s['em_dir']} ({where})"]
    for f in s["files"]:
        rows = f"{f['rows']:>6} rows" if f["rows"] is not None else " " * 11
        lines.append(f"  {f['name']:34s} {rows}  {f['state']}")
    n_ok = sum(f["state"] == "verified" for f in s["files"])
    lines.append(f"  {n_ok} of {len(PINS)} pinned files verified"
                 + ("" if n_ok == len(PINS) else f"; fetch them with `{GET_EM}` (docs/data.md)"))
    fw = s["fineweb"]
    rows = f", {fw['rows']} documents" if fw["rows"] is not None else ""
    lines.append(f"FineWeb sample: {fw['file']} ({fw['state']}{rows})")
    shipped = " (64 documents shipped with emjax)" if s["corpus"] == SHIPPED_FINEWEB else ""
    lines.append(f"  configs' significance.corpus: {s['corpus']}{shipped}")
    return lines
