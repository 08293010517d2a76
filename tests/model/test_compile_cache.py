"""The persistent compilation cache the CLI turns on: where it goes, how it is turned off, and that a
second process reuses a compiled program (a jitted function's cache entry is written, then read)."""

import os
import subprocess
import sys

from emjax.model.compile_cache import compile_cache_dir

PROGRAM = """
import time, jax, jax.numpy as jnp
from emjax.model.compile_cache import enable_compile_cache
print("DIR", enable_compile_cache())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * {k})
print("OUT", float(f(jnp.ones((64, 64)))))
"""


def test_where_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv("EMJAX_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("EMJAX_CACHE", str(tmp_path / "c"))
    assert compile_cache_dir() == str(tmp_path / "c" / "jax")
    monkeypatch.setenv("EMJAX_COMPILE_CACHE", str(tmp_path / "x"))
    assert compile_cache_dir() == str(tmp_path / "x")
    for off in ("off", "0", "none", ""):
        monkeypatch.setenv("EMJAX_COMPILE_CACHE", off)
        assert compile_cache_dir() is None


def test_a_second_process_reads_the_compiled_program(tmp_path):
    cache = tmp_path / "jax"
    env = dict(os.environ, EMJAX_COMPILE_CACHE=str(cache), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    run = lambda k: subprocess.run([sys.executable, "-c", PROGRAM.format(k=k)], env=env, capture_output=True,
                                   text=True, check=True).stdout
    first = run(3)
    assert f"DIR {cache}" in first
    entries = set(os.listdir(cache))
    assert entries, "the compiled program was not written"
    assert run(3).split("OUT")[1] == first.split("OUT")[1]
    assert set(os.listdir(cache)) == entries  # the same program: read back, nothing new written
    run(5)  # another program: a new entry
    assert len(set(os.listdir(cache))) > len(entries)
