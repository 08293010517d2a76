"""emjax.timings: phases, compile taken out of the phase it fell in (JAX's own spans), nested phases,
a stage inside a stage counted once, earlier sessions added."""

import time

import jax
import jax.numpy as jnp
import pytest

from emjax.timings import KEYS, PHASES, Timings, phase


def _sums_to_total(s):
    assert sum(s[k] for k in PHASES) + s["other"] == pytest.approx(s["total"], abs=0.05)


def test_phases_compile_nesting_and_an_inner_stage(capsys):
    outer = Timings()
    with outer.running():
        with phase("load"):
            time.sleep(0.05)
        t0 = time.time()
        with phase("compute"):
            time.sleep(0.05)
            with phase("data"):  # pauses compute
                time.sleep(0.05)
            f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum() * 0.5)  # a fresh function: traced and compiled here
            f(jnp.arange(23.0)).block_until_ready()
        compute_wall = time.time() - t0
        inner = Timings()
        with inner.running():
            with phase("cache"):
                time.sleep(0.05)
        inner_s = inner.report()  # absorbed by the outer stage, not printed
    s = outer.report()
    assert set(s) == set(KEYS)
    assert 0.05 <= s["load"] < 0.5 and 0.05 <= s["data"] < 0.5 and s["compile"] > 0.005
    # the compute block's wall time is its compute, its data and the compiles inside it, each once
    assert s["compute"] + s["data"] + s["compile"] == pytest.approx(compute_wall, abs=0.03)
    assert s["compute"] >= 0.05
    assert s["cache"] == inner_s["cache"] >= 0.05 and inner_s["total"] <= s["total"]
    _sums_to_total(s)
    _sums_to_total(inner_s)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[emjax] time:")]
    assert len(lines) == 1 and f"total {s['total']:.1f} s" in lines[0]


def test_earlier_sessions_add_and_phase_without_a_stage_is_free():
    with phase("load"):  # no running Timings: nothing to mark, no error
        pass
    t = Timings(prior={"compute": 4.0, "total": 10.0})
    with t.running(), phase("compute"):
        time.sleep(0.02)
    s = t.stop()
    assert s["total"] >= 10.02 and s["compute"] >= 4.02
    assert t.seconds(session_only=True)["total"] < 1.0
    with pytest.raises(ValueError, match="unknown phase"):
        with t.phase("compile"):  # measured, never marked
            pass
