"""Where emjax keeps the data it does not ship, and the messages that say how to get it.

    data_dir()        the upstream sets: $EMJAX_DATA, else <cache>/em
    fineweb_file()    a FineWeb sample fetched by `emjax data get fineweb`: $EMJAX_FINEWEB, else
                      <cache>/fineweb/fineweb_sample.jsonl.gz
    fineweb_corpus()  the corpus configs use: $EMJAX_FINEWEB, else the fetched file if present,
                      else the 64 documents shipped with emjax ("sample:fineweb")

<cache> is emjax's cache folder plus `data/`: $EMJAX_CACHE (where the embedded model is kept too,
emjax.checkpoints.embedded), else $XDG_CACHE_HOME/emjax, else ~/.cache/emjax (the XDG convention;
ours: no dependency for it). No default points outside these places; `emjax data get` fills them
(docs/data.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from emjax.data.data_error import DataError

ENV_DATA = "EMJAX_DATA"
ENV_FINEWEB = "EMJAX_FINEWEB"
SHIPPED_FINEWEB = "sample:fineweb"
FINEWEB_NAME = "fineweb_sample.jsonl.gz"

GET_EM = "emjax data get em --from-clone PATH"
GET_FINEWEB = "emjax data get fineweb --n-docs 100"


def cache_root() -> Path:
    """emjax's data cache: $EMJAX_CACHE/data, else $XDG_CACHE_HOME/emjax/data, else ~/.cache/emjax/data."""
    if os.environ.get("EMJAX_CACHE"):
        return Path(os.environ["EMJAX_CACHE"]).expanduser() / "data"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "emjax" / "data"


def data_dir() -> str:
    """The folder of the upstream sets (`data.dir` of the configs): $EMJAX_DATA, else <cache>/em."""
    return os.environ.get(ENV_DATA) or str(cache_root() / "em")


def fineweb_file() -> str:
    """Where `emjax data get fineweb` writes (and configs look for) a FineWeb sample."""
    return os.environ.get(ENV_FINEWEB) or str(cache_root() / "fineweb" / FINEWEB_NAME)


def fineweb_corpus() -> str:
    """`significance.corpus` of the configs: $EMJAX_FINEWEB if set (even if missing: the error
    then says how to fetch it), else the fetched sample if present, else the shipped one."""
    path = fineweb_file()
    return path if os.environ.get(ENV_FINEWEB) or os.path.isfile(path) else SHIPPED_FINEWEB


def em_hint() -> str:
    return (f"fetch the upstream sets with `{GET_EM}` (a clone of clarifying-EM/model-organisms-for-EM) "
            f"or `emjax data get em --from-folder PATH`, or set ${ENV_DATA} to a folder holding them "
            f"(see docs/data.md; `emjax data status` shows what is present)")


def fineweb_hint() -> str:
    return (f"fetch a FineWeb sample with `{GET_FINEWEB}` (or `--from-file FILE` offline), or use the "
            f"64 documents shipped with emjax (significance.corpus={SHIPPED_FINEWEB}; see docs/data.md)")


def missing_data_message(path: str | os.PathLike[str]) -> str:
    """`<path>: not found`, with how to fetch it where it is an upstream file or lies in data_dir()."""
    from emjax.data.upstream_pins import pin_for

    path = os.fspath(path)
    msg = f"{path}: not found"
    in_data_dir = os.path.abspath(path).startswith(os.path.abspath(data_dir()) + os.sep)
    if pin_for(os.path.basename(path)) is not None or in_data_dir:
        msg += f": {em_hint()}"
    return msg


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """`path` is a folder that exists and can be written, or can be created (its nearest existing
    ancestor is a writable folder); DataError naming `what` and the path otherwise. Creates nothing."""
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise DataError(f"{what} {path}: {probe} is a file, not a folder")
    try:  # a real probe: os.access says yes to root on a read-only mount or a kernel file system
        fd, tmp = tempfile.mkstemp(prefix=".emjax-write-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = "" if probe == path else f" (its folder {probe} cannot be written)"
        raise DataError(f"{what} {path}: cannot be written{where} ({e.strerror or e}); choose another folder") from None
