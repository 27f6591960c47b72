"""``decoupled bench --quick``: runs end to end and writes results with the promised fields.

Speed itself is never asserted (it is measured by the benchmark, not tested): only that every
number is there and sane (positive times, defined ratios, a bandwidth).
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from decoupled.bench import layouts, run


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    args = _args("--quick", "--no-progress", "--dtypes", "fp32,bf16", "--sizes", "16k", "--out", str(out))
    assert run.run(args) == 0
    data = json.loads((out / "results.json").read_text())
    data["_out"] = str(out)
    return data


def test_files_and_record(result):
    from pathlib import Path

    out = Path(result["_out"])
    assert (out / "results.md").read_text().startswith("# decoupled bench results")
    assert (out / "results.png").stat().st_size > 0
    m = result["machine"]
    for key in ("cpu", "nproc", "python", "torch", "versions", "command", "date", "load_average"):
        assert key in m, key
    assert m["command"].startswith("decoupled bench --quick")
    bw = result["bandwidth"]
    assert bw["before"]["copy_gbs"] > 0 and bw["before"]["triad_gbs"] > 0 and bw["bound_gbs"] > 0


def test_rows_have_sane_numbers(result):
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    cases = {(r["layout"], r["dtype"]) for r in rows}
    assert cases == {("single", "fp32"), ("gpt2", "fp32"), ("single", "bf16"), ("gpt2", "bf16")}
    for r in rows:
        assert r["ms"] > 0 and r["ms_min"] <= r["ms"] <= r["ms_max"], r
        assert r["ms_p25"] <= r["ms"] <= r["ms_p75"], r
        assert r["samples"] >= 1
        assert r["ratio_vs_fused"] is not None and math.isfinite(r["ratio_vs_fused"]) and r["ratio_vs_fused"] > 0
        assert r["effective_gbs"] > 0 and r["pct_of_bandwidth"] > 0
    names = {r["name"] for r in rows}
    for expected in (
        "decoupled.AdamW()",
        "decoupled backend=loop",
        "decoupled backend=foreach",
        "decoupled backend=fused",
        "torch.optim.AdamW(foreach=False)",
        "torch.optim.AdamW(foreach=True)",
        "torch.optim.AdamW(fused=True)",
    ):
        assert expected in names, expected
    reference = [r for r in rows if r["name"] == "torch.optim.AdamW(fused=True)"]
    assert all(r["ratio_vs_fused"] == 1.0 for r in reference)


def test_bytes_per_parameter(result):
    """fp32 AdamW: 8 B of state and 28 B of traffic per parameter; bf16: half of each."""
    for r in result["rows"]:
        if r["status"] == "ok" and r["family"] in ("decoupled", "torch"):
            expected_state = {"fp32": 8, "bf16": 4}[r["dtype"]]
            assert r["state_bytes_per_param"] == expected_state, r
            assert r["ideal_bytes_per_param"] == {"fp32": 28, "bf16": 14}[r["dtype"]], r


def test_unavailable_peers_are_listed_not_timed(result):
    timed = {r["name"] for r in result["rows"]}
    for name, reason in result["skipped"]:
        assert name not in timed and reason
    # the triton backend runs on CUDA only (outside the interpreter)
    if result["machine"]["device"] == "cpu":
        assert any(name == "decoupled backend=triton" for name, _ in result["skipped"])


def test_gpt2_layout_shapes():
    shapes = layouts.gpt2(16 * 2**20)
    assert len(shapes) == 148
    assert abs(layouts.numel(shapes) / (16 * 2**20) - 1) < 0.1
    width = shapes[0][1]
    assert shapes[2:14] == layouts.gpt2_shapes(width, 1, 1, layers=1)[2:14]
    assert layouts.parse_size("16M") == 16 * 2**20 and layouts.parse_size("1000") == 1000


def test_command_line_reproduces_the_options():
    args = _args("--sizes", "16M", "--layouts", "gpt2", "--dtypes", "fp32")
    assert run.command_line(args) == "decoupled bench --sizes 16M --layouts gpt2 --dtypes fp32"


def test_cli_wires_bench():
    from decoupled import cli

    parser = cli.build_parser(["bench", "--quick"])
    args = parser.parse_args(["bench", "--quick", "--sizes", "4k"])
    assert args.quick and args.sizes == "4k"
