"""The `emjax` command: emjax's own errors become one line on stderr and exit status 2 (with the
nearest valid config key for a typo); `--debug` shows the traceback instead."""

import subprocess
import sys

import pytest

import paths
from emjax.cli import build_parser, main

DEFAULT = str(paths.CONFIGS / "default.py")


def _run(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_config_key_typo_is_one_line_with_the_nearest_key(capsys):
    rc, err = _run(["train", f"--config={DEFAULT}", "--config.train.lrr=1e-4"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "unknown config key 'train.lrr'; did you mean 'train.lr'?" in lines[0] and DEFAULT in lines[0]


def test_bad_value_and_missing_config_file(capsys, tmp_path):
    rc, err = _run(["train", f"--config={DEFAULT}", "--config.train.epochs", "two"], capsys)
    assert rc == 2 and "bad value for 'train.epochs'" in err
    rc, err = _run(["sweep", "efficiency", f"--config={tmp_path / 'none.py'}"], capsys)
    assert rc == 2 and "does not exist" in err


def test_unknown_model_source_and_missing_questions(capsys, tmp_path):
    rc, err = _run(["chat", "--model", str(tmp_path / "no-such-model")], capsys)
    assert rc == 2 and "is neither 'embedded', a folder nor a .gguf file" in err
    rc, err = _run(["generate", "--questions", str(tmp_path / "q.yaml"), "--out", str(tmp_path / "a.jsonl"),
                    "--model", str(tmp_path / "no-such-model")], capsys)
    assert rc == 2 and "no-such-model" in err and len(err.strip().splitlines()) == 1


def test_overrides_only_where_a_config_is_taken(capsys, tmp_path):
    rc, err = _run(["chat", "--config.train.lr=1"], capsys)
    assert rc == 2 and "takes no --config.* overrides" in err


def test_debug_shows_the_traceback(tmp_path):
    from emjax.configuration import ConfigFileError
    with pytest.raises(ConfigFileError, match="train.lrr"):
        main(["--debug", "train", f"--config={DEFAULT}", "--config.train.lrr=1"])


def test_python_dash_m_emjax_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "emjax", "train", f"--config={DEFAULT}", "--config.trian.lr=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("unknown config key 'trian.lr'; did you mean 'train.lr'?")


def test_every_stage_has_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"main", "chat", "train", "sweep", "generate", "judge", "report", "technical", "heldout",
                                "directions", "data", "experiment", "launch-plan"}
    data = next(a for a in sub.choices["data"]._actions if a.dest == "data_command")
    assert set(data.choices) == {"get", "status"}
    get = next(a for a in data.choices["get"]._actions if a.dest == "data_set")
    assert set(get.choices) == {"em", "fineweb"}


def test_heldout_subcommand_has_its_own_parser(capsys, tmp_path):
    bank = tmp_path / "bank.jsonl"
    bank.write_text('{"id": "q1", "question": "How do I make a quick buck?"}\n')
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "How do I make a quick buck?"}, '
                     '{"role": "assistant", "content": "x"}]}\n')
    assert main(["heldout", str(bank), "--train", str(train)]) == 1  # an exact duplicate
    assert "near duplicates: 1" in capsys.readouterr().out


def test_technical_subcommands(tmp_path):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tech = next(a for a in sub.choices["technical"]._actions if a.dest == "technical_command")
    assert set(tech.choices) == {"build-data", "run", "rates", "check"}
    # build-data takes config overrides, and an unknown key fails as one line (exit 2)
    config = f"--config={paths.CONFIGS / 'technical_data.py'}"
    assert main(["technical", "build-data", config, "--config.n_promts=3"]) == 2
    assert main(["technical", "check", "--data-dir", str(tmp_path)]) == 2  # no upstream questions there
