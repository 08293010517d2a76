"""Where a stage's seconds go: load, data, cache, compile and compute, printed as one line at the
end of the stage and written into its summary.

    timings = Timings()
    with timings.running():
        with phase("load"):
            model = load_model(source)
        with phase("compute"):
            ...
    summary["timings"] = timings.report()   # prints "[emjax] time: load 9.1 s, ..., total 161.6 s"

Compile is measured by JAX itself, not estimated: every jit trace, lowering to MLIR and XLA
compile reports its time span through `jax.monitoring` (the events under /jax/core/compile/).
The union of those spans is the compile time, and it is taken out of whatever phase it fell in,
so a first training step that compiles for 20 s and runs for 1 s adds 20 s to compile and 1 s to
compute. (This counts every compile: the step's, the evaluation's, the eager ops'; "first call
minus a steady call" would only estimate the first kind.) Time in no phase is "other".

`phase(name)` marks the innermost running Timings, so library code can mark its part without a
Timings passed in; a phase inside another pauses the outer one. A Timings that runs inside another
(a training run inside `emjax main`) is absorbed by it when it stops: the outer one counts the
inner one's phases, not its wall time twice. `prior` adds the seconds of earlier sessions of an
interrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Callable, Iterator, Mapping

PHASES = ("load", "data", "cache", "compile", "compute")
KEYS = PHASES + ("other", "total")
COMPILE_EVENTS = "/jax/core/compile/"

_compile_spans: list[tuple[float, float]] = []  # (start, end) in time.time() seconds, every thread
_running: list["Timings"] = []  # innermost last
_lock = threading.Lock()
_listening = False


def _listen() -> None:
    global _listening
    with _lock:
        if _listening:
            return
        from jax import monitoring

        def on_span(event: str, start: float, end: float, **_) -> None:
            if event.startswith(COMPILE_EVENTS):
                _compile_spans.append((start, end))

        monitoring.register_event_time_span_listener(on_span)
        _listening = True


def _merged(spans: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """The union of `spans` clipped to [lo, hi], as sorted disjoint intervals."""
    out: list[list[float]] = []
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _overlap(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


class Timings:
    """Seconds by phase of one stage (see the module docstring)."""

    def __init__(self, prior: Mapping[str, float] | None = None, label: str = "time"):
        _listen()
        self.prior = {k: float(prior.get(k, 0.0)) for k in KEYS} if prior else None
        self.label = label
        self._start = time.time()
        self._end: float | None = None
        self._phases: list[tuple[str, float, float]] = []  # closed intervals of this Timings' phases
        self._open: list[list] = []  # [name, start] of open phases, innermost last
        self._children: list[tuple[float, float, dict[str, float]]] = []

    @contextlib.contextmanager
    def running(self) -> Iterator["Timings"]:
        """Makes this the Timings that `phase` marks (and that absorbs Timings started inside)."""
        _running.append(self)
        try:
            yield self
        finally:
            _running.remove(self)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES or name == "compile":
            raise ValueError(f"unknown phase {name!r}; one of {[p for p in PHASES if p != 'compile']}")
        now = time.time()
        if self._open:  # pause the outer phase
            outer = self._open[-1]
            self._phases.append((outer[0], outer[1], now))
        self._open.append([name, now])
        try:
            yield
        finally:
            now = time.time()
            n, start = self._open.pop()
            self._phases.append((n, start, now))
            if self._open:
                self._open[-1][1] = now

    def stop(self) -> dict[str, float]:
        """Ends the stage (its total stops growing) and hands its seconds to the Timings it ran
        inside, if any; returns seconds()."""
        if self._end is None:
            self._end = time.time()
            parent = next((t for t in reversed(_running) if t is not self), None)
            if parent is not None:
                parent._children.append((self._start, self._end, self.seconds(session_only=True)))
        return self.seconds()

    def seconds(self, session_only: bool = False) -> dict[str, float]:
        """{load, data, cache, compile, compute, other, total} in seconds, with `prior`'s unless
        `session_only`."""
        end = self._end if self._end is not None else time.time()
        phases = self._phases + [(n, s, end) for n, s in self._open]
        children = _merged([(a, b) for a, b, _ in self._children], self._start, end)
        excluded = _merged(list(_compile_spans) + children, self._start, end)  # compile here, or a child's time
        out = dict.fromkeys(KEYS, 0.0)
        for name, a, b in phases:
            out[name] += (b - a) - _overlap(excluded, a, b)
        out["compile"] = _overlap(excluded, self._start, end) - _overlap(children, self._start, end)
        for _, _, seconds in self._children:
            for k in PHASES:
                out[k] += seconds[k]
        out["total"] = end - self._start
        out["other"] = max(0.0, out["total"] - sum(out[k] for k in PHASES))
        if self.prior and not session_only:
            out = {k: out[k] + self.prior[k] for k in KEYS}
        return {k: round(v, 2) for k, v in out.items()}

    def line(self, seconds: Mapping[str, float] | None = None) -> str:
        s = seconds or self.seconds()
        earlier = " (with earlier sessions)" if self.prior else ""
        return f"[emjax] {self.label}: " + ", ".join(f"{k} {s[k]:.1f} s" for k in KEYS) + earlier

    def report(self) -> dict[str, float]:
        """stop(), and the line printed by the outermost stage (process 0); returns the seconds."""
        seconds = self.stop()
        if not any(t is not self for t in _running) and _is_writer():
            print(self.line(seconds), flush=True)
        return seconds


def add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Two stages' seconds added key by key (e.g. the stages of a job)."""
    return {k: round(float(a.get(k, 0.0)) + float(b.get(k, 0.0)), 2) for k in KEYS}


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """`Timings.phase` of the innermost running Timings (nothing when none runs)."""
    if not _running:
        yield
        return
    with _running[-1].phase(name):
        yield


def in_phase(name: str) -> Callable:
    """Decorator: every call of the function is `phase(name)` (e.g. a data-reading helper)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return timed
    return wrap


def _is_writer() -> bool:
    import jax
    return jax.process_index() == 0
