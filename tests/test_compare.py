"""`decoupled compare` end to end on a tiny grid, plus the analysis on known tables."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from decoupled.cli import main
from decoupled.lab import analysis
from decoupled.lab.compare import compare
from decoupled.lab.digits import DigitsTask, shift_images
from decoupled.lab.tasks import CONVENTIONS, Splits, Task, load_task, lr_multiplier

TINY = dict(
    lrs=[1e-3, 1e-2],
    wds={"adam_l2": [1e-3, 1e-1], "adamw": [0.1, 1.0], "adamw_indep": [1e-4, 1e-3]},
    epochs=1,
    max_train=128,
    progress=False,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    return out, compare("digits", out=out, workers=1, **TINY)


def test_report_and_json(tiny):
    out, res = tiny
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert 'src="http' not in html  # self-contained
    for label in CONVENTIONS.values():
        assert label.split(" (")[0] in html
    assert "Best test error per convention" in html and "slope" in html
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == 3 * 2 * 2
    assert {r["convention"] for r in data["runs"]} == set(CONVENTIONS)
    for r in data["runs"]:
        assert r["epochs"] == 1 and r["curves"]["epoch"] == [1]
        assert 0.0 <= r["final"]["test"]["error"] <= 1.0
    for conv, f in data["findings"].items():
        assert f["best"]["lr"] in TINY["lrs"] and f["best"]["wd"] in TINY["wds"][conv]
        assert f["slope_wd"] is not None and math.isfinite(f["slope_wd"])
    for png in ("heatmaps.png", "best_wd.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_resume_skips_finished_runs_and_is_reproducible(tiny, tmp_path):
    out, first = tiny
    again = compare("digits", out=out, workers=1, **TINY)
    assert again["runs_reused"] == 12  # nothing retrained
    # an interrupted grid: keep 5 of the 12 lines, resume with 2 worker processes
    lines = (out / "runs.jsonl").read_text().splitlines()
    part = tmp_path / "part"
    part.mkdir()
    (part / "settings.json").write_text((out / "settings.json").read_text())
    (part / "runs.jsonl").write_text("\n".join(lines[:5]) + '\n{"truncated')
    resumed = compare("digits", out=part, workers=2, **TINY)
    assert resumed["runs_reused"] == 5
    by_key = {r["key"]: r["final"] for r in first["runs"]}
    for r in resumed["runs"]:  # same seed -> same numbers, whichever process ran it
        assert r["final"] == by_key[r["key"]]


def test_other_settings_are_refused(tiny):
    out, _ = tiny
    with pytest.raises(ValueError, match="other settings"):
        compare("digits", out=out, workers=1, **{**TINY, "epochs": 2})


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown convention"):
        compare("digits", out=tmp_path, conventions=["sgd"], **{k: v for k, v in TINY.items()})
    with pytest.raises(ValueError, match="positive"):
        compare("digits", out=tmp_path, **{**TINY, "lrs": [0.0, 1e-3]})
    with pytest.raises(ValueError, match="unknown task"):
        load_task("no-such-task")
    assert main(["compare", "--lrs", "abc"]) == 2  # one line on stderr, no usage text


def test_user_task_from_file(tmp_path):
    src = tmp_path / "mytask.py"
    src.write_text(
        "import torch\n"
        "from decoupled.lab import Task, Splits\n"
        "class Blobs(Task):\n"
        "    name = 'blobs'\n"
        "    epochs = 1\n"
        "    batch_size = 32\n"
        "    def data(self, seed):\n"
        "        g = torch.Generator().manual_seed(seed)\n"
        "        y = torch.randint(0, 3, (150,), generator=g)\n"
        "        x = torch.randn(150, 5, generator=g) + y[:, None].float()\n"
        "        return Splits.from_tensors(x, y, seed=seed)\n"
        "    def model(self):\n"
        "        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
    )
    code = main(
        [
            "compare",
            "--task",
            f"{src}:Blobs",
            "--out",
            str(tmp_path / "o"),
            "--lrs",
            "1e-3,1e-2",
            "--wd-adam-l2",
            "1e-3,1e-2",
            "--wd-adamw",
            "0.01,0.1",
            "--wd-adamw-indep",
            "1e-4,1e-3",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["task"]["name"] == "blobs" and len(data["runs"]) == 12


def _runs(conv, best_wd_of_lr, lrs, wds, n_val=1000):
    """Fake runs whose val error is lowest at best_wd_of_lr(lr), growing away from it."""
    runs = []
    for lr in lrs:
        for wd in wds:
            err = 0.05 + 0.02 * abs(math.log10(wd) - math.log10(best_wd_of_lr(lr)))
            final = {"val": {"error": err, "loss": err}, "test": {"error": err + 0.001, "loss": err}}
            runs.append(
                {"convention": conv, "lr": lr, "wd": wd, "seed": 0, "diverged": False, "final": final, "n_val": n_val}
            )
    return runs


def test_slope_on_known_tables():
    lrs = [1e-4, 1e-3, 1e-2]
    wds = [10.0**k for k in range(-8, 1)]
    runs = _runs("adam_l2", lambda lr: 1e-5 / lr * 1e-3, lrs, wds) + _runs("adamw_indep", lambda lr: 1e-3, lrs, wds)
    found = analysis.findings(runs, "error")
    assert found["adam_l2"]["slope_wd"] == pytest.approx(-1.0)
    assert found["adamw_indep"]["slope_wd"] == pytest.approx(0.0, abs=1e-9)
    assert found["adamw_indep"]["best"]["wd"] == 1e-3
    assert found["adam_l2"]["edge_hits"] == 0
    assert "coupled" in analysis.interpret_slope(-1.0) and "decoupled" in analysis.interpret_slope(0.0)


def test_one_standard_error_rule_prefers_the_strongest_equivalent_decay():
    # errors 5%, 5.1%, 5.2%, 9% over four wds; SE at 5% on 1000 examples is ~0.7%
    row = [
        {"lr": 1e-3, "wd": w, "val": v, "val_loss": v, "val_std": 0.0, "seeds": [0], "n_val": 1000}
        for w, v in zip([1e-4, 1e-3, 1e-2, 1e-1], [0.05, 0.051, 0.052, 0.09])
    ]
    assert analysis._one_se_choice(row, "error") == 2


def test_diverged_runs_are_worst():
    runs = _runs("adamw", lambda lr: 0.1, [1e-3, 1e-2], [0.01, 0.1, 1.0])
    runs[0]["final"] = {"val": {"error": math.nan, "loss": math.nan}, "test": {"error": math.nan, "loss": math.nan}}
    runs[0]["diverged"] = True
    found = analysis.findings(runs, "error")
    assert found["adamw"]["best"]["wd"] == 0.1


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
