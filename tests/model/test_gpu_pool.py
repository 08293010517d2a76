"""The GPU memory share an `emjax` command lets JAX reserve: set where the user left it unset,
kept where they set it, and set by the CLI before any command runs."""

import os

import pytest

from emjax.cli import main
from emjax.model.gpu_pool import GPU_MEMORY_FRACTION, VARIABLE, reserve_gpu_memory


def test_set_only_where_unset():
    env = {}
    assert reserve_gpu_memory(env) == GPU_MEMORY_FRACTION and env == {VARIABLE: GPU_MEMORY_FRACTION}
    env = {VARIABLE: " "}  # blank counts as unset: JAX would fail to parse it
    assert reserve_gpu_memory(env) == GPU_MEMORY_FRACTION
    env = {VARIABLE: "0.5"}
    assert reserve_gpu_memory(env) == "0.5" and env[VARIABLE] == "0.5"
    assert 0.5 < float(GPU_MEMORY_FRACTION) < 1


@pytest.mark.parametrize("user", [None, "0.6"])
def test_the_cli_reserves_before_parsing(monkeypatch, user):
    if user is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, user)
    try:
        assert main(["launch-plan", "--help"]) == 0  # prints the help: no command ran
    except SystemExit as e:
        assert e.code == 0
    assert os.environ[VARIABLE] == (user or GPU_MEMORY_FRACTION)
