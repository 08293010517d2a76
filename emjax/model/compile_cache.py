"""JAX's persistent compilation cache for emjax's commands.

A 14B training step, the frozen-cache encoder, the sweeps' vmapped suffix and the sampler each take
seconds to a minute to compile (a 40-step 14B run on an H200 spent 111 s of its 228 s compiling,
BENCHMARKS.md), and every command is its own process: without a cache each rerun, sibling run (general
and narrow, another lambda) and later stage compiles the same programs again. XLA's compiled programs
are keyed by the program, the devices and the jax version, so a reused entry is exactly what the compile
would give.

Where: $EMJAX_COMPILE_CACHE, else <emjax cache>/jax ($EMJAX_CACHE, else $XDG_CACHE_HOME/emjax, else
~/.cache/emjax). EMJAX_COMPILE_CACHE=off turns it off. Programs that compile in under a second are
not kept (ours: they cost less to rebuild than to read back).
"""

from __future__ import annotations

import os

OFF = ("off", "0", "none", "")


def compile_cache_dir() -> str | None:
    """The cache folder this process would use, or None when turned off."""
    path = os.environ.get("EMJAX_COMPILE_CACHE")
    if path is not None:
        return None if path.strip().lower() in OFF else os.path.expanduser(path)
    base = os.environ.get("EMJAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "emjax")
    return os.path.join(os.path.expanduser(base), "jax")


def enable_compile_cache() -> str | None:
    """Points JAX's persistent compilation cache at `compile_cache_dir()` (unless the user set
    jax_compilation_cache_dir already); returns the folder in use, None when off."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own setting wins
        return jax.config.jax_compilation_cache_dir
    path = compile_cache_dir()
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
