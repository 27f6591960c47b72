"""`decoupled explain` on a tiny run: the measured decay is what the math says."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from decoupled.cli import main
from decoupled.lab.explain import explain


def test_explain_tiny(tmp_path):
    res = explain("digits", out=tmp_path, epochs=1, max_train=128, lr=1e-3, wd_adam_l2=1e-2, wd_adamw=0.5)
    s = res["summary"]
    # AdamW: every weight gets the same mean decay, lr_t * wd averaged over the (warmup + cosine) schedule
    w = s["adamw"]
    assert w["decay_p10"] == pytest.approx(w["decay_p90"], rel=1e-9)
    assert 0 < w["decay_median"] <= 1e-3 * 0.5
    deciles = w["decay_by_rms_decile"]
    assert max(deciles) == pytest.approx(min(deciles), rel=1e-9)
    # Adam + L2: spread over weights, largest for the smallest gradient history
    a = s["adam_l2"]
    assert a["decay_p90"] > 1.5 * a["decay_p10"]
    d = a["decay_by_rms_decile"]
    assert d[0] > d[-1]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Reading" in html
    data = json.loads((tmp_path / "explain.json").read_text())
    assert set(data["summary"]) == {"adam_l2", "adamw"} and data["reading"]
    assert "0.weight" in data["summary"]["adam_l2"]["per_tensor"]  # only decayed tensors are listed
    assert "1.weight" not in data["summary"]["adam_l2"]["per_tensor"]  # BatchNorm gain


def test_explain_command_errors(tmp_path, capsys):
    assert main(["explain", "--out", str(tmp_path), "--lr", "-1"]) == 2
    assert "positive" in capsys.readouterr().out
