"""The front door of `decoupled compare` and `decoupled explain`: a bad input is one line on stderr and exit 2."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from decoupled.cli import main

QUICK = ["--task", "digits", "--epochs", "1", "--max-train", "64", "--no-progress"]
GRID = ["--lrs", "1e-3", "--conventions", "adamw", "--wd-adamw", "0.1", "--seeds", "1", "--extend", "0"]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    return str(path)


ERRORS = [
    (["compare", "--epochs", "0"], "--epochs"),
    (["compare", "--workers", "0"], "--workers"),
    (["compare", "--seeds", "0"], "--seeds"),
    (["compare", "--max-train", "-3"], "--max-train"),
    (["compare", "--lrs", "abc"], "--lrs"),
    (["compare", "--lrs", "1e-3,0"], "--lrs"),
    (["compare", "--wd-adamw", "-1"], "--wd-adamw"),
    (["compare", "--conventions", "sgd"], "sgd"),
    (["compare", "--extend", "-1"], "--extend"),
    (["compare", "--task", "no-such-task"], "no-such-task"),
    (["compare", "--task", "nowhere.py:Task"], "does not exist"),
    (["compare", "--out", "FILE"], "is a file"),
    (["compare", *QUICK, *GRID, "--metric", "accuracy", "--workers", "1", "--out", "TMP"], "accuracy"),
    (["explain", "--lr", "-1"], "--lr"),
    (["explain", "--epochs", "0"], "--epochs"),
    (["explain", "--wd-adamw", "0"], "--wd-adamw"),
    (["explain", "--conventions", "adam_l2,sgd"], "sgd"),
    (["explain", "--out", "FILE"], "is a file"),
]


@pytest.mark.parametrize("argv, needle", ERRORS, ids=[" ".join(a[:3]) for a, _ in ERRORS])
def test_bad_input_is_one_line_and_exit_2(argv, needle, a_file, tmp_path, capsys):
    argv = [a_file if a == "FILE" else str(tmp_path / "o") if a == "TMP" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_crashing_user_task_is_a_setup_error(tmp_path, capsys):
    src = tmp_path / "broken.py"
    src.write_text(
        "from decoupled.lab import Task\n"
        "class Broken(Task):\n"
        "    def data(self, seed):\n"
        "        raise RuntimeError('no data here')\n"
        "    def model(self):\n"
        "        raise RuntimeError('unreachable')\n"
    )
    argv = ["compare", "--task", f"{src}:Broken", "--out", str(tmp_path / "o"), *GRID[:2], "--no-progress"]
    assert main(argv + ["--conventions", "adamw", "--wd-adamw", "0.1", "--workers", "2", "--seeds", "2"]) == 3
    err = capsys.readouterr().err.strip()
    assert "no data here" in err and len(err.splitlines()) == 1


def test_duplicate_grid_values_are_trained_once(tmp_path):
    argv = ["compare", *QUICK, "--lrs", "1e-3,1e-3,0.001", "--conventions", "adamw,adamw", "--seeds", "1"]
    argv += ["--wd-adamw", "0.1,0.1,1e-1", "--extend", "0", "--workers", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 1 and data["grid"]["lrs"] == [1e-3] and data["grid"]["conventions"] == ["adamw"]
