"""``decoupled bench --quick``: runs end to end and writes results with the promised fields.

Speed itself is never asserted (it is measured by the benchmark, not tested): only that every
number is there and sane (positive times, defined ratios, a bandwidth).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
import warnings

import pytest
import torch

from decoupled.bench import layouts, peers, run
from decoupled.bench.timing import make_params


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
    assert "partial" not in result and "Partial" not in (out / "results.md").read_text()
    bw = result["bandwidth"]
    assert bw["before"]["copy_gbs"] > 0 and bw["before"]["triad_gbs"] > 0 and bw["bound_gbs"] > 0


def test_the_memory_page_setting_is_recorded(result, monkeypatch):
    """2 MiB pages change every CPU step's speed (machine.huge_pages), so the record and the
    report say what this run had."""
    import os
    from pathlib import Path

    from decoupled.bench import machine

    hp = result["machine"]["huge_pages"]
    asked = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    assert hp["torch_allocator"] is asked
    if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
        assert hp["system"] in ("always", "madvise", "never")
    line = next(
        x for x in (Path(result["_out"]) / "results.md").read_text().splitlines() if x.startswith("Memory pages")
    )
    assert f"`{hp['system']}`" in line and ("asks for them" if asked else "does not ask") in line
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0" if asked else "1")
    assert machine.huge_pages()["torch_allocator"] is not asked


def test_the_native_kernel_build_is_recorded(result):
    """The quick run steps the formats on CPU, so the kernel is loaded: its flags and the width
    of its 8-bit loop's vectors are in the record and the report."""
    from pathlib import Path

    from decoupled.native import build

    if build.unavailable_reason() is not None:
        assert result["machine"]["native_kernel"] is None
        return
    kernel = result["machine"]["native_kernel"]
    assert kernel["lanes"] in (1, 8, 16) and "-march=" in kernel["flags"]
    assert f"{kernel['lanes']}-lane vectors" in (Path(result["_out"]) / "results.md").read_text()


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
        if r["status"] == "ok" and r["family"] in ("decoupled", "torch") and r["note"] != "state format":
            expected_state = {"fp32": 8, "bf16": 4}[r["dtype"]]
            assert r["state_bytes_per_param"] == expected_state, r
            assert r["ideal_bytes_per_param"] == {"fp32": 28, "bf16": 14}[r["dtype"]], r


def test_a_run_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    """Stopped during its second case (a time limit, Ctrl-C), the run has already written the
    first case's rows, marked partial; the last case is never written twice."""
    real, calls = run.time_case, []

    def stopped_in_the_second_case(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "time_case", stopped_in_the_second_case)
    argv = ("--quick", "--no-progress", "--dtypes", "fp32", "--sizes", "16k", "--only", "fused=True")
    with pytest.raises(KeyboardInterrupt):
        run.run(_args(*argv, "--out", str(tmp_path)))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["partial"] is True
    assert {r["layout"] for r in data["rows"]} == {"single"} and data["rows"]
    assert all(r["status"] == "ok" and r["ratio_vs_fused"] == 1.0 for r in data["rows"])
    assert (tmp_path / "results.md").read_text().count("**Partial") == 1
    assert not (tmp_path / "results.png").exists()


def test_rows_that_fit_in_the_cache_are_marked_and_explained(result):
    """The quick run's 16k-parameter steps fit in any last-level cache: each row says so, the
    Markdown marks its % bw and explains the mark; with a cache smaller than a row's working set
    (parameters + gradients + state) the same row is not marked."""
    from pathlib import Path

    from decoupled.bench import machine, report

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    assert machine.largest_cache_bytes(result["machine"]) > 16 * 2**10 * (2 * 4 + 8)
    assert all(r["fits_in_cache"] for r in rows)
    text = (Path(result["_out"]) / "results.md").read_text()
    assert f"% {report.CACHE_MARK} |" in text and "MiB last-level cache" in text

    fp32 = next(r for r in rows if r["name"] == "torch.optim.AdamW(fused=True)" and r["dtype"] == "fp32")
    working_set = fp32["numel"] * (4 + 4 + 8)  # fp32 parameter, gradient, two moments
    assert layouts.working_set_bytes(fp32["numel"], "fp32", fp32["state_bytes_per_param"]) == working_set
    for cache, fits in ((working_set, True), (working_set - 1, False)):
        copy = [dict(fp32)]
        report.add_ratios(copy, result["bandwidth"]["bound_gbs"], cache)
        assert copy[0]["fits_in_cache"] is fits
    small = {**result, "machine": {**result["machine"], "caches": {"L1d": "48K", "L2": "64K"}}, "rows": copy}
    assert machine.largest_cache_bytes(small["machine"]) == 64 * 2**10
    assert report.cache_note(small) is None and report.CACHE_MARK not in report.markdown(small)


def test_state_format_rows(result):
    """The formats' rows report their own state bytes: bf16 moments 4 B, 8-bit about 2 B on a
    tensor of 16k elements (tensors under 4096 elements keep fp32 moments), Kahan +2 B."""
    rows = {(r["name"], r["layout"], r["dtype"]): r for r in result["rows"] if r["note"] == "state format"}
    state = {key: r["state_bytes_per_param"] for key, r in rows.items() if r["status"] == "ok"}
    assert state[("decoupled.AdamW(moments='bf16')", "single", "fp32")] == 4
    assert state[("decoupled.AdamW(moments='8bit')", "single", "fp32")] == 2 + 4 / 256 * 2  # codes + fp32 scales
    assert state[("decoupled.AdamW(param_rounding='kahan')", "single", "bf16")] == 6
    assert state[("decoupled.AdamW(param_rounding='stochastic')", "single", "bf16")] == 4
    assert 2 < state[("decoupled.AdamW(moments='8bit', param_rounding='stochastic')", "gpt2", "bf16")] <= 8
    for r in rows.values():
        assert r["ideal_bytes_per_param"] == 3 * {"fp32": 4, "bf16": 2}[r["dtype"]] + 2 * r["state_bytes_per_param"]


def test_unavailable_peers_are_listed_not_timed(result):
    timed = {r["name"] for r in result["rows"]}
    for name, reason in result["skipped"]:
        assert name not in timed and reason
    # the triton backend runs on CUDA only (outside the interpreter)
    if result["machine"]["device"] == "cpu":
        assert any(name == "decoupled backend=triton" for name, _ in result["skipped"])
    # every named peer is either timed or listed with its reason, never silently dropped
    skipped = {name for name, _ in result["skipped"]}
    for name in ("bitsandbytes.optim.AdamW", "bitsandbytes.optim.AdamW8bit", "torchao.optim.AdamW8bit"):
        assert (name in timed) != (name in skipped), name
    assert all(r["status"] == "ok" for r in result["rows"] if r["family"] in ("bitsandbytes", "torchao"))


def test_quick_leaves_out_contenders_that_compile(result):
    """--quick lists torch.compile (and torchao, which compiles its step) as not timed, with the rule."""
    reasons = dict(result["skipped"])
    expected = peers.compile_unavailable("cpu") or "--quick leaves it out unless --only names it"
    assert expected in reasons[peers.COMPILED]
    assert peers.COMPILED not in {r["name"] for r in result["rows"]}
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    (quick,) = [a for a in parser._actions if "--quick" in a.option_strings]
    assert "torch.compile" in quick.help and "unless --only names them" in quick.help


def _bench(tmp_path, *argv: str) -> dict:
    args = _args("--quick", "--no-progress", "--no-plot", "--layouts", "single", "--out", str(tmp_path), *argv)
    assert run.run(args) == 0
    return json.loads((tmp_path / "results.json").read_text())


def test_missing_peer_is_listed_with_its_reason(tmp_path, monkeypatch):
    for module in ("bitsandbytes", "torchao", "torchao.optim"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    data = _bench(tmp_path, "--sizes", "4k", "--dtypes", "fp32", "--only", "bitsandbytes,torchao")
    assert {r["name"] for r in data["rows"]} == {peers.REFERENCE}
    reasons = dict(data["skipped"])
    for name in ("bitsandbytes.optim.AdamW", "bitsandbytes.optim.AdamW8bit", "torchao.optim.AdamW4bit"):
        assert reasons[name].startswith("not installed (ModuleNotFoundError"), reasons[name]


def _fake_bitsandbytes() -> types.ModuleType:
    """A stand-in for bitsandbytes: AdamW steps (it is torch's), AdamW8bit has no kernel for the
    device, PagedAdamW falls back to AdamW with a warning (what bitsandbytes 0.50 does on CPU)."""

    def adamw(params, **kw):
        return torch.optim.AdamW(params, **kw)

    def adamw8bit(params, **kw):
        opt = torch.optim.AdamW(params, **kw)

        def step(closure=None):
            raise NotImplementedError("no kernel for cpu tensors in this fake")

        opt.step = step
        return opt

    def paged(params, **kw):
        warnings.warn("Paged optimizers are not supported on CPU. Falling back.", UserWarning, stacklevel=2)
        return torch.optim.AdamW(params, **kw)

    bnb = types.ModuleType("bitsandbytes")
    bnb.__version__ = "0.0-fake"
    bnb.optim = types.SimpleNamespace(AdamW=adamw, AdamW8bit=adamw8bit, PagedAdamW=paged, PagedAdamW8bit=adamw8bit)
    return bnb


def test_importable_peer_is_timed_and_one_that_cannot_step_is_listed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", _fake_bitsandbytes())
    data = _bench(tmp_path, "--sizes", "4k", "--dtypes", "fp32", "--only", "bitsandbytes")
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {peers.REFERENCE, "bitsandbytes.optim.AdamW"}
    assert rows["bitsandbytes.optim.AdamW"]["status"] == "ok" and rows["bitsandbytes.optim.AdamW"]["ms"] > 0
    assert rows["bitsandbytes.optim.AdamW"]["state_bytes_per_param"] == 8
    reasons = dict(data["skipped"])
    assert reasons["bitsandbytes.optim.AdamW8bit"] == (
        "bitsandbytes 0.0-fake: AdamW8bit cannot step cpu float32 tensors "
        "(NotImplementedError: no kernel for cpu tensors in this fake)"
    )
    assert reasons["bitsandbytes.optim.PagedAdamW"].startswith("bitsandbytes 0.0-fake: the same as AdamW on cpu")
    assert "cannot step" in reasons["bitsandbytes.optim.PagedAdamW8bit"]


def test_real_bitsandbytes_steps_or_says_why(tmp_path):
    """With bitsandbytes installed (the `peers` extra): each class is timed or listed with its
    reason, and the 8-bit state is ~2 bytes per parameter (two uint8 moments and a float32
    absmax per block of 256)."""
    pytest.importorskip("bitsandbytes")
    data = _bench(tmp_path, "--sizes", "64k", "--dtypes", "fp32", "--only", "bitsandbytes")
    rows = {r["name"]: r for r in data["rows"]}
    reasons = dict(data["skipped"])
    for name in ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit"):
        name = f"bitsandbytes.optim.{name}"
        assert (name in rows and rows[name]["status"] == "ok") != bool(reasons.get(name)), name
    if "bitsandbytes.optim.AdamW" in rows:
        assert rows["bitsandbytes.optim.AdamW"]["state_bytes_per_param"] == 8
    if "bitsandbytes.optim.AdamW8bit" in rows:
        r = rows["bitsandbytes.optim.AdamW8bit"]
        assert 2 + 8 / 256 <= r["state_bytes_per_param"] < 2.1, r
        assert r["ideal_bytes_per_param"] == 12 + 2 * r["state_bytes_per_param"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compiled_step_is_timed_when_named(tmp_path):
    """`--only compile` brings the torch.compile row back under --quick; its warm-up absorbs the
    compile (one tensor: ~4-10 s on 2 cores), so it is timed like any other row."""
    reason = peers.compile_unavailable("cpu")
    data = _bench(tmp_path, "--sizes", "4k", "--dtypes", "fp32", "--only", "compile")
    rows = {r["name"]: r for r in data["rows"]}
    if reason:  # no C++ compiler here: listed with the reason instead
        assert dict(data["skipped"])[peers.COMPILED] == reason
        return
    r = rows[peers.COMPILED]
    assert r["status"] == "ok" and r["samples"] >= 3 and r["state_bytes_per_param"] == 8, r
    # the warm-up took the compile: no timed step is anywhere near a compile's duration
    assert r["ms_max"] < 1000, r


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compiled_step_compiles_once_and_matches_eager():
    """lr is a float and the step count a tensor: the graph built on step 1 serves every later
    step, and it computes what the eager step computes."""
    if peers.compile_unavailable("cpu"):
        pytest.skip(peers.compile_unavailable("cpu"))
    import torch._dynamo

    (c,) = peers.compile_contenders(torch.device("cpu"), [torch.float32])
    assert c.compiles and c.warmup >= 2 and c.skip is None
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    shapes = [(64, 32), (32,)]
    compiled, eager = (make_params(shapes, torch.float32, torch.device("cpu")) for _ in range(2))
    opt, ref = c.make(compiled), torch.optim.AdamW(eager, **peers.HYPER, foreach=True)
    for _ in range(4):
        opt.step()
        ref.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_torchao_steps_or_says_why(tmp_path):
    """With torchao installed: its optimizers are timed (after compiling in the warm-up) or listed."""
    pytest.importorskip("torchao.optim")
    data = _bench(tmp_path, "--sizes", "64k", "--dtypes", "fp32", "--only", "torchao")
    rows = {r["name"]: r for r in data["rows"]}
    reasons = dict(data["skipped"])
    for name in ("AdamW8bit", "AdamW4bit", "AdamWFp8"):
        name = f"torchao.optim.{name}"
        assert (name in rows and rows[name]["status"] == "ok") != bool(reasons.get(name)), name


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
