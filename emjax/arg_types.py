"""Bounded argparse types: a numeric option out of range (or NaN) is refused by argparse itself,
as "argument --x: ..." with exit status 2, before any file is read, model loaded or request paid.

    p.add_argument("--samples", type=int_at_least(1), default=50)
    p.add_argument("--min-mass", type=float_in(0.0, 1.0), default=0.25)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= low."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value
    parse.__name__ = f"integer >= {low}"  # argparse names the type in its message
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] ((low, high] with low_open); NaN and infinities are refused."""
    def parse(text: str) -> float:
        value = _number(float, text)
        if value < low or (low_open and value == low) or value > high:
            left = "(" if low_open else "["
            right = "inf)" if high == math.inf else f"{high:g}]"
            raise argparse.ArgumentTypeError(f"{value:g} is outside {left}{low:g}, {right}")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
probability = float_in(0.0, 1.0)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2), as emjax's own
    errors are: "emjax main: error: argument --seeds: ... (emjax main --help)". Subparsers made by
    `add_subparsers().add_parser` are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SEED_LIMIT = 2 ** 32  # ours: every generator emjax seeds (numpy's, JAX's threefry keys) takes a 32-bit seed


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32)."""
    value = _number(int, text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is not a seed in [0, 2**32)")
    return value


seed.__name__ = "seed"

