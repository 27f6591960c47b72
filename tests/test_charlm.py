"""The ``charlm`` task: data split, an untrained model's loss, a real learning check, and a tiny compare."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")  # decoupled.lab.compare's report needs the lab extra

from decoupled.lab.charlm import VOCAB, CharLMTask, decode, encode, load_text, split_chunks
from decoupled.lab.compare import compare
from decoupled.lab.tasks import load_task
from decoupled.lab.train import train_run

#: A model small enough for tests: 1 layer, width 32, context 32.
SMALL = dict(d_model=32, n_layer=1, n_head=2, context=32)


def test_registered_and_text_is_printable_ascii():
    task = load_task("charlm")
    assert isinstance(task, CharLMTask) and task.metric == "bpc" and task.metric_label("bpc") == "bits/char"
    text = load_text()
    assert len(text) > 300_000 and set(text) <= set(VOCAB) and len(VOCAB) == 96
    assert decode(encode(text[:500])) == text[:500]


def test_split_is_deterministic_disjoint_and_covers_the_text():
    n = len(load_text())
    a, b, other = split_chunks(n, seed=0), split_chunks(n, seed=0), split_chunks(n, seed=1)
    assert a == b and a != other
    owner = torch.full((n,), -1)
    for k, split in enumerate(("train", "val", "test")):
        for start, stop in a[split]:
            assert (owner[start:stop] == -1).all()  # no character in two splits
            owner[start:stop] = k
    assert (owner >= 0).all()  # every character is in one split
    shares = [(owner == k).float().mean().item() for k in range(3)]
    assert shares[0] == pytest.approx(0.9, abs=0.01) and shares[1] == pytest.approx(0.05, abs=0.01)

    task = CharLMTask(**SMALL)
    s1, s2 = task.data(0), task.data(0)
    for split in ("train", "val", "test"):
        x1, y1 = getattr(s1, split)
        x2, y2 = getattr(s2, split)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.shape[1] == 32 and x1.dtype == torch.long
        assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one character
    # the validation windows are text that the training windows never contain
    train_text = decode(s1.train[0].flatten())
    val_lines = [ln for ln in decode(s1.val[0].flatten()).split("\n") if len(ln) > 60]
    assert val_lines and sum(ln in train_text for ln in val_lines) < len(val_lines)


def test_untrained_loss_is_log2_vocab_bits():
    task = CharLMTask(**SMALL)
    data = task.data(0)
    torch.manual_seed(0)
    metrics = task.evaluate(task.model(), *data.val)
    assert metrics["bpc"] == pytest.approx(math.log2(len(VOCAB)), abs=0.15)
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / math.log(2))


def test_causal():
    """A character's logits do not depend on later characters."""
    task = CharLMTask(**SMALL)
    torch.manual_seed(0)
    model = task.model().eval()
    x = torch.randint(0, len(VOCAB), (2, 32))
    y = x.clone()
    y[:, 20:] = (y[:, 20:] + 1) % len(VOCAB)
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :20], model(y)[:, :20], atol=1e-6)
        assert not torch.allclose(model(x)[:, 20:], model(y)[:, 20:])


def test_training_lowers_validation_bits_per_char():
    torch.set_num_threads(1)
    task = CharLMTask(**SMALL, batch_size=32, epochs=1, warmup_epochs=0.1)
    data = task.data(0).limit_train(32 * 80)  # 80 steps
    untrained = task.evaluate((torch.manual_seed(0), task.model())[1], *data.val)["bpc"]
    run = train_run(task, data, convention="adamw", lr=1e-2, weight_decay=0.1, seed=0)
    assert not run["diverged"] and run["steps"] == 80
    # from log2(96) = 6.6 to below 4.7 bits, the entropy of the character frequencies: it uses context
    assert untrained > 6.3 and run["final"]["val"]["bpc"] < 4.7


def test_tiny_compare_labels_bits_per_char(tmp_path):
    task = CharLMTask(**{**SMALL, "d_model": 16, "context": 16}, batch_size=16, epochs=1)
    res = compare(
        task,
        out=tmp_path,
        lrs=[1e-3, 1e-2],
        wds={"adam_l2": [1e-4, 1e-2], "adamw": [0.1, 1.0], "adamw_indep": [1e-4, 1e-2]},
        max_train=64,
        workers=1,
        progress=False,
        extend=0,
        seeds=1,
    )
    assert res["metric"] == "bpc" and res["metric_label"] == "bits/char"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metric_label"] == "bits/char" and len(data["runs"]) == 12
    for r in data["runs"]:
        assert r["steps"] == 4 and 3.0 < r["final"]["test"]["bpc"] < 7.5
    for conv, f in data["findings"].items():  # the best cell's test number is that run's bits/char
        best = [
            r for r in data["runs"] if (r["convention"], r["lr"], r["wd"]) == (conv, f["best"]["lr"], f["best"]["wd"])
        ]
        assert f["best"]["test"] == pytest.approx(best[0]["final"]["test"]["bpc"])
    html = (tmp_path / "report.html").read_text()
    assert "test bits/char (mean" not in html and "<th>test bits/char</th>" in html  # one seed: no spread
    assert "Validation-selected test bits/char over the grid" in html and "error" not in html.split("<h2>")[1]
    assert "data:image/png;base64," in html
    assert data["settings"]["text_chars"] == len(load_text()) and data["settings"]["d_model"] == 16


def test_learning_curves_name_the_metric_by_its_label(monkeypatch):
    from decoupled.lab import plots

    seen = {}

    def capture(fig):
        seen["ylabel"], seen["title"] = fig.axes[1].get_ylabel(), fig.axes[1].get_title()
        return b""

    monkeypatch.setattr(plots, "to_png", capture)
    curves = {"adamw": {"epoch": [1, 2], "lr": 1e-2, "wd": 0.1, "train_loss": [2.0, 1.8], "val_bpc": [3.0, 2.5]}}
    plots.learning_curves(curves, "bpc", percent=False, label="bits/char")
    assert seen == {"ylabel": "bits/char", "title": "Validation bits/char (solid) and test (dashed)"}
