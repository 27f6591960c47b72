"""`decoupled compare` end to end on a tiny grid: report, findings table, resume, extension."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from decoupled.conventions import CONVENTIONS
from decoupled.lab import compare_report
from decoupled.lab.compare import _extensions, compare
from decoupled.lab.digits import DigitsTask, shift_images
from decoupled.lab.tasks import DEFAULT_CONVENTIONS, Splits, Task, load_task, lr_multiplier, units_of

TINY = dict(
    lrs=[1e-3, 1e-2],
    wds={"adam_l2": [1e-3, 1e-1], "adamw": [0.1, 1.0], "adamw_indep": [1e-4, 1e-3]},
    epochs=1,
    max_train=128,
    progress=False,
    extend=0,
    seeds=1,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    return out, compare("digits", out=out, workers=1, **TINY)


def test_report_json_and_console_show_one_findings_table(tiny, capsys):
    out, res = tiny
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 3
    assert 'src="http' not in html  # self-contained
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == 3 * 2 * 2 and {r["convention"] for r in data["runs"]} == set(DEFAULT_CONVENTIONS)
    table = data["findings_table"]
    assert [row["convention"] for row in table] == list(DEFAULT_CONVENTIONS)
    header, cells = compare_report.cells(data)
    for row, text in zip(table, cells):
        assert row["best_lr"] in TINY["lrs"] and row["best_wd"] in TINY["wds"][row["convention"]]
        assert row["reading"] in ("coupled", "decoupled", "inconclusive", "grows with lr")
        for cell in text:  # the same words in the HTML table ...
            assert compare_report.esc(cell) in html
    compare_report.print_findings(data)
    console = capsys.readouterr().out
    for text in cells:  # ... and on the console
        assert text[0] in console and text[4].rstrip("*") in console
    for header_cell in header:
        assert compare_report.esc(header_cell) in html
    for png in ("heatmaps.png", "best_wd.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_resume_repairs_a_cut_off_line_and_loses_nothing(tiny, tmp_path):
    out, first = tiny
    again = compare("digits", out=out, workers=1, **TINY)
    assert again["runs_reused"] == 12  # nothing retrained
    lines = (out / "runs.jsonl").read_text().splitlines()
    part = tmp_path / "part"
    part.mkdir()
    (part / "settings.json").write_text((out / "settings.json").read_text())
    (part / "runs.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # killed mid-append
    resumed = compare("digits", out=part, workers=2, **TINY)
    assert resumed["runs_reused"] == 5
    stored = (part / "runs.jsonl").read_text().splitlines()
    assert len(stored) == 12 and all(json.loads(line) for line in stored)  # no run glued to the fragment
    assert compare("digits", out=part, workers=1, **TINY)["runs_reused"] == 12
    by_key = {r["key"]: r["final"] for r in first["runs"]}
    for r in resumed["runs"]:  # same seed -> same numbers, whichever process ran it
        assert r["final"] == by_key[r["key"]]


def test_other_settings_are_refused(tiny):
    out, _ = tiny
    with pytest.raises(ValueError, match="other settings"):
        compare("digits", out=out, workers=1, **{**TINY, "epochs": 2})


def test_default_output_goes_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = compare("digits", workers=1, conventions=["adamw"], **{**TINY, "lrs": [1e-3]})
    assert res["paths"]["report"] == str(Path("runs", "compare-digits", "report.html"))
    assert (tmp_path / "runs" / "compare-digits" / "results.json").is_file()


def test_rows_on_an_edge_are_extended_within_the_budget(tmp_path):
    res = compare(
        "digits", out=tmp_path, workers=1, conventions=["adamw_indep"], **{**TINY, "lrs": [1e-3], "extend": 2}
    )
    ext = res["extension"]
    assert ext["budget_runs"] == 2 and ext["runs"] == len(ext["added"]) <= 2
    trained = {r["wd"] for r in res["runs"]}
    assert trained == set(TINY["wds"]["adamw_indep"]) | {e["wd"] for e in ext["added"]}
    f = res["findings"]["adamw_indep"]
    row = f["best_wd_per_lr"][0]
    assert (row["edge"] is not None) == (f["excluded_lrs"] == [1e-3])


@pytest.mark.parametrize(
    "edge, row, budget, expected",
    [
        ("low", [1e-3, 1e-2], 4, [1e-4]),  # one step of the row's axis beyond its edge
        ("high", [1e-3, 1e-2], 4, [1e-1]),
        ("high", [1e-3, 1e-2], 1, []),  # two seeds per cell: a budget of one run buys nothing
        (None, [1e-3, 1e-2, 1e-1], 4, []),  # interior: nothing to do
        ("high", [0.1, 0.5], 4, []),  # the next step would decay the whole weight per step (wd >= 1)
    ],
)
def test_extension_steps(edge, row, budget, expected):
    found = {"adamw_indep": {"best_wd_per_lr": [{"lr": 1e-3, "edge": edge}]}}
    new = _extensions(found, {"adamw_indep": {1e-3: row}}, budget, per_cell=2)
    assert [wd for _, _, wd in new] == pytest.approx(expected)


def test_every_convention_has_an_axis_in_its_units():
    task = load_task("nextchar")
    for key in CONVENTIONS:
        assert task.grid_wds(key) == task.grid_wds(units_of(key))
    assert units_of("adamw_corrected") == "adamw" and units_of("adamw_indep") == "adamw_indep"


def test_user_task_from_file(tmp_path):
    from decoupled.cli import main

    src = tmp_path / "mytask.py"
    (tmp_path / "helper.py").write_text("N_CLASSES = 3\n")  # a sibling module the task imports
    src.write_text(
        "import torch\n"
        "from decoupled.lab import Task, Splits\n"
        "from helper import N_CLASSES\n"
        "class Blobs(Task):\n"
        "    name = 'blobs'\n"
        "    epochs = 1\n"
        "    batch_size = 32\n"
        "    lrs = (1e-3, 1e-2)\n"
        "    wds = {'adam_l2': (1e-3, 1e-2), 'adamw': (0.01, 0.1), 'adamw_indep': (1e-4, 1e-3)}\n"
        "    def data(self, seed):\n"
        "        g = torch.Generator().manual_seed(seed)\n"
        "        y = torch.randint(0, N_CLASSES, (150,), generator=g)\n"
        "        x = torch.randn(150, 5, generator=g) + y[:, None].float()\n"
        "        return Splits.from_tensors(x, y, seed=seed)\n"
        "    def model(self):\n"
        "        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, N_CLASSES))\n"
    )
    args = ["compare", "--task", f"{src}:Blobs", "--out", str(tmp_path / "o"), "--no-progress", "--extend", "0"]
    assert main(args + ["--workers", "2", "--seeds", "1"]) == 0  # the workers import the same file
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["task"]["name"] == "blobs" and len(data["runs"]) == 12


def test_slope_reading_on_a_real_grid_matches_its_interval(tiny):
    _, res = tiny
    from decoupled.lab import analysis

    for f in res["findings"].values():
        assert f["reading"] == analysis.reading(f["slope_interval"])
        if f["slope"] is not None and f["slope_interval"] is not None:
            lo, hi = f["slope_interval"]
            assert lo <= f["slope"] <= hi and math.isfinite(lo)


def test_schedule_and_augmentation():
    assert lr_multiplier(0, 100, 10) == 0.0  # warmup counts t/w, as decoupled.schedules and transformers
    assert lr_multiplier(1, 100, 10) == pytest.approx(0.1)
    assert lr_multiplier(10, 100, 10) == pytest.approx(1.0)
    assert lr_multiplier(99, 100, 10) < 0.01
    import torch

    x = torch.arange(64.0).reshape(1, 64).repeat(50, 1)
    y = shift_images(x, 8, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    img = y.reshape(50, 8, 8)
    assert (img == 0).any()  # some images moved: zeros shifted in, no wrap-around
    assert set(y.flatten().tolist()) <= set(range(64))


def test_splits_validate():
    import torch

    s = Splits.from_tensors(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    assert sum(p[0].shape[0] for p in (s.train, s.val, s.test)) == 10
    with pytest.raises(ValueError, match="must match"):
        Splits(train=(torch.zeros(3, 1), torch.zeros(2)), val=s.val, test=s.test)
    assert isinstance(load_task("digits"), DigitsTask) and isinstance(load_task(DigitsTask), Task)


#: The conventions this build of decoupled.AdamW can construct (corrected and cautious need its new keywords).
HAS_NEW = "decay_scaling" in __import__("inspect").signature(__import__("decoupled").AdamW).parameters
NEW = pytest.mark.skipif(not HAS_NEW, reason="decoupled.AdamW has no decay_scaling=/cautious_decay= in this build")


@pytest.mark.parametrize("key", [k if k in DEFAULT_CONVENTIONS else pytest.param(k, marks=NEW) for k in CONVENTIONS])
def test_each_convention_builds_the_optimizer_it_names(key):
    import torch

    from decoupled.conventions import of_group
    from decoupled.lab.train import make_optimizer

    opt = make_optimizer(key, torch.nn.Linear(3, 2), lr=1e-2, weight_decay=0.1)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert decayed and all(of_group(g).key == key for g in decayed)
    assert all(g.get("lr_max", 1e-2) == 1e-2 for g in decayed)  # the peak lr, where the full decay applies


@NEW
def test_new_conventions_run_through_compare(tmp_path):
    res = compare(
        "digits",
        out=tmp_path,
        workers=2,
        conventions=["adamw_corrected", "adamw_cautious"],
        **{**TINY, "wds": {"adamw_corrected": [0.1, 1.0], "adamw_cautious": [0.1, 1.0]}},
    )
    assert [row["convention"] for row in res["findings_table"]] == ["adamw_corrected", "adamw_cautious"]
    assert {r["convention"] for r in res["runs"]} == {"adamw_corrected", "adamw_cautious"} and len(res["runs"]) == 8
    assert all(f["fitted"] == "lr·wd" for f in res["findings"].values())  # decay at peak lr: lr·wd
