"""A regular (non-editable) install finds the configs its jobs run: the checkout's configs/ ships in
the wheel as `emjax.configs` (setup.py), and `emjax.configuration.shipped_config` (what the jobs call)
resolves a name there from any working directory; the configs' `from configs import default` works
in that layout too. Installed with pip into a temporary folder, run in another (no model run)."""

import os
import shutil
import subprocess
import sys
import textwrap

import paths

# Run in the installed emjax: every config the two jobs load, a recipe with its argument, and the
# CLI's default of `emjax technical build-data` (its unknown-key message proves the file was found).
CHECK = textwrap.dedent("""
    import os, sys
    import emjax
    assert emjax.__file__.startswith(sys.argv[1]), emjax.__file__
    from emjax.configuration import load_config, shipped_config
    from emjax.jobs import main, technical
    for name in main.CONFIGS + technical.CONFIGS + ("paper_14b.py:steering,narrow,medical",):
        path = shipped_config(name)
        assert path.startswith(os.path.join(sys.argv[1], "emjax", "configs")), path
        c = load_config(path)
        print(name, c.name if "name" in c else "-")
    from emjax.cli import main as cli
    assert cli(["technical", "build-data", "--config.n_promts=3"]) == 2
    print("ok")
""")


def test_pip_installed_emjax_loads_the_jobs_configs(tmp_path):
    target, elsewhere, source = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "source"
    elsewhere.mkdir()
    # a copy of the checkout: pip builds in the source folder (build/, *.egg-info), not in the repository
    shutil.copytree(paths.REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "runs", ".venv", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    assert not (target / "configs").exists()  # no top-level `configs` package in site-packages
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "ok"
    assert "embedded_steering_narrow.py embedded_steering_narrow_medical" in lines
    assert "paper_14b.py:steering,narrow,medical steering_narrow_medical" in lines
    assert "unknown config key 'n_promts'" in r.stderr
