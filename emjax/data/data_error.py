"""`DataError`, the error of the data package, in a module of its own so that every data module
(conversations, locations, ...) can raise it without importing another (no import circle)."""

from __future__ import annotations

from emjax.errors import EmjaxError


class DataError(EmjaxError, ValueError):
    """A data file or data set that cannot be used as asked; the message names file and line."""
