"""The base class of emjax's own errors.

Every error that reports bad input (a config key, a data file and line, a checkpoint tensor, an
adapter key, a question file) derives from `EmjaxError`, so the command line can print it as one
line and exit non-zero instead of showing a traceback (`emjax --debug ...` shows it). Each
subclass also derives from the builtin it refines (usually ValueError), so callers that catch
ValueError keep working.
"""

from __future__ import annotations


class EmjaxError(Exception):
    """Input emjax cannot use; the message names the file, line or key."""


def yaml_problem(e: Exception) -> str:
    """A PyYAML error in one line: "line L, column C: what is wrong" (its own message spans several
    lines, with the offending text and a caret)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")
