"""``decoupled bench``'s front door: every bad input is one line on stderr and exit code 2.

Each case runs the real command line through :func:`decoupled.cli.main`, in a fresh folder,
and checks the exit code, that stderr is one line saying what was wrong, and that nothing was
written. Nothing here times anything, except the one ``--quick`` run at the end.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from decoupled.bench import run
from decoupled.cli import main

# (arguments after `decoupled bench --quick --no-progress`, what stderr must say)
BAD = [
    (["--sizes", "4X"], "argument --sizes: '4X' is not a size.*k, M or G"),
    (["--sizes", "0"], "argument --sizes: '0' is 0 parameters; a size must be at least 1"),
    (["--sizes", "16k,-3"], "argument --sizes: '-3' is -3 parameters"),
    (["--sizes", ","], "argument --sizes: give at least one size"),
    (["--sizes", "1000G"], "needs about .* GiB .* more than the .* GiB available; choose smaller sizes"),
    (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--min-repeats", "two"], "argument --min-repeats: 'two' is not a whole number"),
    (["--warmup", "0"], "argument --warmup: must be at least 1, got 0"),
    (["--budget", "0"], "argument --budget: must be a finite number > 0"),
    (["--bandwidth-elements", "0"], "argument --bandwidth-elements: must be at least 1"),
    (["--wait-quiet", "-1"], "argument --wait-quiet: must be a finite number >= 0"),
    (["--layouts", "single,flat"], "argument --layouts: unknown layout 'flat'; choose from single, gpt2"),
    (["--dtypes", "fp8"], "argument --dtypes: unknown dtype 'fp8'; choose from fp32, bf16, fp16"),
    (["--device", "cuda"], "--device 'cuda': no cuda device is available here.*use --device cpu"),
    (["--device", "cuda:0"], "--device 'cuda:0': no cuda device is available here"),
    (["--device", "gpu"], "unknown device 'gpu'; use cpu or cuda"),
    (["--device", "meta"], "--device 'meta' cannot run the benchmark; use cpu or cuda"),
    (
        ["--only", "nosuchthing"],
        "--only 'nosuchthing': 'nosuchthing' matches no contender; use words from their names: .*fused=True",
    ),
    (["--only", "fused=True,nosuch"], "--only 'fused=True,nosuch': 'nosuch' matches no contender"),
    (["--only", ""], "--only '': names no contender; use words from their names"),
    (["--out", "a-file"], "--out 'a-file' is a file; give a folder"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) or "empty" for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    (tmp_path / "a-file").write_text("not a folder")
    code = main(["bench", "--quick", "--no-progress", *argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("decoupled bench: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_a_gpu_index_beyond_the_count_is_named(tmp_path, monkeypatch, capsys) -> None:
    """With one GPU visible (pretended here), cuda:1 is refused with the count."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["bench", "--quick", "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "decoupled bench: error: --device 'cuda:1': there are 1 cuda device(s), numbered from 0"
    assert list(tmp_path.iterdir()) == []


def test_default_output_goes_under_runs(tmp_path, monkeypatch, capsys) -> None:
    """A valid quick run exits 0 and writes into runs/bench (ignored by git), not the repository root."""
    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--no-progress", "--no-plot", "--sizes", "16k", "--layouts", "single", "--dtypes", "fp32"]
    assert main(["bench", *argv, "--only", "fused=True"]) == 0
    data = json.loads((tmp_path / "runs" / "bench" / "results.json").read_text())
    assert {r["name"] for r in data["rows"]} >= {"torch.optim.AdamW(fused=True)"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert parser.parse_args([]).out == "runs/bench"
