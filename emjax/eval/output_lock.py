"""One writer per results file: an advisory lock beside the output (`<out>.lock`).

    with output_lock("judgements.jsonl", command="emjax judge ...", wait=False):
        ...  # the only process appending to judgements.jsonl

Two judge (or generate) runs on the same output would each send every pending request, paying
twice and writing every score twice. The lock is an `fcntl.flock` on `<out>.lock`, which holds
the holder's PID, host, start time and command (JSON) for the message a second run prints. A
second run is refused at once (`OutputBusyError`, naming the holder's PID and `--wait`), or with
`wait=True` blocks until the holder ends. The kernel releases a flock when its process dies, so
the lock of a killed run is stale by construction: the next run takes it over (and says whose
it was). The lock file is removed on release; a run that finds the file replaced after taking
the lock (removed by a holder ending at that moment) takes the lock of the new file instead.

Advisory: it binds emjax processes only, and over network file systems only as far as their
flock does. This module must not import jax: the judge stage runs without accelerators.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from emjax.errors import EmjaxError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class OutputBusyError(EmjaxError, BlockingIOError):
    """Another process holds the output's lock; the message names it and says what to do."""


def lock_path(out: str | os.PathLike[str]) -> str:
    return os.fspath(out) + LOCK_SUFFIX


def _holder(fd: int) -> dict[str, Any]:
    """The holder's record in the lock file ({} when empty or unreadable: a crash while writing)."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (its lock file names none)"
    return (f"PID {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"({info.get('command') or 'command unknown'})")


def pid_alive(pid: object) -> bool:
    """Whether a process with this PID exists on this host (signal 0 sends nothing)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _open_locked(path: str, out: str, wait: bool) -> int:
    """An fd of `path` holding its exclusive flock (the file as it is at the path now)."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _holder(fd)
                if not wait:
                    raise OutputBusyError(
                        f"{out} is being written by {_describe(info)}: a second run would pay for and "
                        f"write every pending result again; wait for it to end, or rerun with --wait "
                        f"(lock file {path})") from None
                print(f"waiting for {_describe(info)} to finish writing {out} ...", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the holder may have removed the file as we took its lock: lock the path's file
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str], command: str = "", wait: bool = False) -> Iterator[dict[str, Any]]:
    """Hold the lock of `out` for the block; yields this holder's record. See the module docstring.

    Raises OutputBusyError (without waiting, when another process holds it)."""
    out = os.fspath(out)
    path = lock_path(out)
    fd = _open_locked(path, out, wait)
    try:
        stale = _holder(fd)
        if stale and stale.get("pid") != os.getpid():
            # the flock was free, so its holder is gone (killed, or ended without removing the file)
            alive = pid_alive(stale.get("pid")) and stale.get("host") == socket.gethostname()
            log.warning("%s: taking over the lock left by %s%s", out, _describe(stale),
                        "" if alive else ", which is no longer running")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        try:
            yield me
        finally:
            with contextlib.suppress(OSError):  # removed while we hold the flock: no one else owns it
                os.unlink(path)
    finally:
        os.close(fd)
