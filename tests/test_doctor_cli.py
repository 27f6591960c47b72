"""`decoupled doctor` at the front door: every bad input is one line on stderr with its exit code, never a
traceback; a failing setup is the user's (exit 3); a setup imports its siblings; `--json | head` is quiet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from decoupled.cli import main

GOOD_SETUP = """
import torch
def make():
    m = torch.nn.Linear(3, 3)
    return torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1), m
def not_a_function():
    pass
value = 3
def returns_sgd():
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
def returns_int():
    return 7
def bad_total():
    m = torch.nn.Linear(2, 2)
    return {"optimizer": torch.optim.AdamW(m.parameters()), "total_steps": -5}
def unknown_key():
    m = torch.nn.Linear(2, 2)
    return {"optimizer": torch.optim.AdamW(m.parameters()), "total_step": 5}
def raises():
    raise RuntimeError("the user's own bug")
def model_only():
    return torch.nn.Linear(2, 2)
"""

FILES = {
    "setup.py": GOOD_SETUP,
    "syntax_error.py": "import torch\ndef make(:\n    pass\n",
    "failing_import.py": "import torch\nimport no_such_package_for_doctor\ndef make():\n    pass\n",
    "raises_at_import.py": "x = 1\nraise ValueError('broken at import')\n",
    "uses_sibling.py": "from sibling_helper_for_doctor import build\ndef make():\n    return build()\n",
    "sibling_helper_for_doctor.py": textwrap.dedent(
        """
        import torch
        def build():
            m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
            return torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-2), m
        """
    ),
    "misspelled.json": json.dumps({"learning_rat": 1e-3, "max_steps": 100}),
    "misspelled_optim.json": json.dumps({"learning_rate": 1e-3, "optim": "adamw_torh"}),
    "misspelled_scheduler.json": json.dumps({"lr_scheduler_type": "cosin"}),
    "ratio.json": json.dumps({"warmup_ratio": 0.1, "weight_decay": 0.1, "max_steps": 100}),
    "bad_value.json": json.dumps({"learning_rate": "fast"}),
    "bad_steps.json": json.dumps({"max_steps": 0}),
    "not_an_object.json": json.dumps([1, 2]),
    "broken.json": '{"learning_rate": 1e-3,\n',
    "good.json": json.dumps({"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_steps": 10, "max_steps": 1000}),
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a setup file's folder is put on sys.path
    return tmp_path


# (argv after "doctor", exit code, what the one line on stderr must say)
BAD = [
    ([], 2, "give a setup"),
    (["setup.py:make", "--total-steps", "-5"], 2, "argument --total-steps: must be at least 1, got -5"),
    (["setup.py:make", "--total-steps", "1.5"], 2, "'1.5' is not a whole number"),
    (["setup.py:make", "--steps-per-epoch", "0"], 2, "argument --steps-per-epoch: must be a finite number > 0"),
    (["setup.py:make", "--steps-per-epoch", "nan"], 2, "must be a finite number > 0"),
    (["setup.py:make", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["setup.py:make", "--training-args", "good.json"], 2, "not both"),
    (["setup.py:make", "--model", "setup.py:model_only"], 2, "--model goes with --training-args"),
    (["no_colon"], 2, "must look like 'package.module:name'"),
    (["missing.py:make"], 2, "setup file"),
    (["setup.py:nope"], 2, "has no attribute 'nope'"),
    (["setup.py:value"], 2, "is a int, not a function"),
    (["setup.py:not_a_function"], 2, "the setup returned NoneType"),
    (["setup.py:returns_sgd"], 2, "doctor cannot check: decoupled.check works on torch.optim.Adam/AdamW"),
    (["setup.py:returns_int"], 2, "the setup returned int"),
    (["setup.py:model_only"], 2, "the setup returned Linear; return an optimizer"),
    (["setup.py:bad_total"], 2, "the setup's total_steps must be a whole number >= 1, got -5"),
    (["setup.py:unknown_key"], 2, "got ['optimizer', 'total_step']"),
    (["syntax_error.py:make"], 3, "raised SyntaxError"),
    (["failing_import.py:make"], 3, "raised ModuleNotFoundError: No module named 'no_such_package_for_doctor'"),
    (["raises_at_import.py:x"], 3, "raised ValueError: broken at import"),
    (["setup.py:raises"], 3, "calling the setup raises raised RuntimeError: the user's own bug"),
    (["--training-args", "misspelled.json"], 2, "unknown TrainingArguments key 'learning_rat'"),
    (["--training-args", "misspelled_optim.json"], 2, "unknown optim 'adamw_torh'; did you mean 'adamw_torch'?"),
    (["--training-args", "misspelled_scheduler.json"], 2, "unknown lr_scheduler_type 'cosin'; did you mean 'cosine'?"),
    (["--training-args", "bad_value.json"], 2, "learning_rate must be a finite number >= 0, got 'fast'"),
    (["--training-args", "bad_steps.json"], 2, "max_steps must be a whole number >= 1 (or -1"),
    (["--training-args", "not_an_object.json"], 2, "expected a JSON object of TrainingArguments, got a JSON list"),
    (["--training-args", "broken.json"], 2, "broken.json:2:1: not valid JSON"),
    (["--training-args", "nothing_here.json"], 2, "cannot read 'nothing_here.json'"),
    (["--training-args", "good.json", "--model", "setup.py:value"], 2, "is a int, not a function"),
    (["--training-args", "good.json", "--model", "setup.py:returns_int"], 2, "returned int, not a torch.nn.Module"),
    (["--training-args", "good.json", "--model", "setup.py:raises"], 3, "the user's own bug"),
]


@pytest.mark.parametrize("argv, code, says", BAD, ids=[" ".join(a) or "no-args" for a, _, _ in BAD])
def test_bad_input_is_one_line_with_its_exit_code(folder, capsys, argv, code, says):
    if "--training-args" in argv:
        pytest.importorskip("transformers")
    assert main(["doctor", *argv]) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("decoupled doctor: error: ") and says in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_setup_error_names_the_file_and_line(folder, capsys):
    """A crash in the user's code says where, in the user's file (not in decoupled)."""
    assert main(["doctor", "setup.py:raises"]) == 3
    assert f"{folder / 'setup.py'}:20" in capsys.readouterr().err
    assert main(["doctor", "syntax_error.py:make"]) == 3
    assert f"{folder / 'syntax_error.py'}:2" in capsys.readouterr().err


def test_misspelled_key_names_the_nearest_installed_field(folder, capsys):
    transformers = pytest.importorskip("transformers")
    import dataclasses

    assert main(["doctor", "--training-args", "misspelled.json"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'learning_rate'?" in err
    assert "learning_rate" in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}


def test_a_setup_imports_its_sibling_module(folder, capsys):
    assert main(["doctor", "uses_sibling.py:make", "--json"]) == 0
    found = {f["code"] for f in json.loads(capsys.readouterr().out)}
    assert {"adam-l2", "decay-bias", "decay-norm"} <= found


def test_a_file_is_read_with_its_timescales(folder, capsys):
    """The text output has the findings, then each group's timescale next to the run."""
    assert main(["doctor", "setup.py:make", "--total-steps", "2000"]) == 0
    out = capsys.readouterr().out
    assert "decay timescale per param group" in out
    assert "10,000 steps" in out and "2,000 steps" in out and "longer than the run" in out


def test_training_args_with_transformers_4_warmup_ratio(folder, capsys):
    pytest.importorskip("transformers")
    assert main(["doctor", "--training-args", "ratio.json", "--json"]) == 0
    found = {f["code"]: f for f in json.loads(capsys.readouterr().out)}
    assert found["warmup-ratio"]["fix_args"] == {"warmup_ratio": None, "warmup_steps": 0.1}
    assert "no-warmup" not in found  # the 4.x ratio is still read as the warmup


COMMAND = [sys.executable, "-c", "import sys; from decoupled.cli import main; sys.exit(main())"]


def test_json_into_a_closed_pipe_is_quiet(folder):
    """`decoupled doctor --json | head -1`: the reader is gone before doctor writes (it closed at once)."""
    proc = subprocess.Popen(
        [*COMMAND, "doctor", "setup.py:make", "--json"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == ""


def test_json_piped_into_head(folder):
    command = " ".join(f"'{a}'" for a in [*COMMAND, "doctor", "setup.py:make", "--json"])
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{command} | head -1"], cwd=folder, capture_output=True, text=True
    )
    assert result.stdout == "[\n" and result.stderr == "" and result.returncode == 0


def test_a_setup_failure_in_a_real_process_has_no_traceback(folder):
    result = subprocess.run([*COMMAND, "doctor", "failing_import.py:make"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "failing_import.py:2" in result.stderr
