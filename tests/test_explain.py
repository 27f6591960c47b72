"""`decoupled explain` on a tiny run: the measured decay is what each convention's math says."""

from __future__ import annotations

import inspect
import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import decoupled
from decoupled.conventions import CONVENTIONS
from decoupled.lab.explain import explain

#: The conventions this build of decoupled.AdamW can construct (corrected and cautious need the new keywords).
HAS_NEW = "decay_scaling" in inspect.signature(decoupled.AdamW).parameters
BUILT = [c for c in CONVENTIONS if HAS_NEW or c in ("adam_l2", "adamw", "adamw_indep")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    res = explain(
        "digits",
        out=out,
        conventions=BUILT,
        epochs=1,
        max_train=128,
        lr=1e-3,
        wd_adam_l2=1e-2,
        wd_adamw=0.5,
        progress=True,
    )
    return out, res


def test_decoupled_conventions_decay_every_weight_alike(tiny):
    _, res = tiny
    s = res["summary"]
    for key in BUILT:
        conv = CONVENTIONS[key]
        if conv.coupled or conv.cautious:
            continue
        w = s[key]
        assert w["decay_p10"] == pytest.approx(w["decay_p90"], rel=1e-9)
        assert max(w["decay_by_rms_decile"]) == pytest.approx(min(w["decay_by_rms_decile"]), rel=1e-9)
        # per step, the convention's own decay of lr_t (warmup + cosine): at most its value at peak lr
        peak = conv.decay_per_step(res["weight_decay"][key], 1e-3, lr_max=1e-3)
        assert 0 < w["decay_mean"] <= peak * (1 + 1e-9)
        assert len(w["schedule"]["mean"]) == 2 and max(w["schedule"]["mean"]) <= peak * (1 + 1e-9)
    # the default wd of every decoupled convention removes as much per step at peak lr as AdamW's
    assert s["adamw_indep"]["decay_mean"] == pytest.approx(s["adamw"]["decay_mean"], rel=1e-9)


def test_adam_l2_decays_rarely_used_weights_most(tiny):
    _, res = tiny
    a = res["summary"]["adam_l2"]
    assert a["decay_p90"] > 1.5 * a["decay_p10"]
    d = a["decay_by_rms_decile"]
    assert d[0] > d[-1]
    assert a["schedule"]["p10"][-1] <= a["schedule"]["median"][-1] <= a["schedule"]["p90"][-1]


@pytest.mark.skipif(not HAS_NEW, reason="decoupled.AdamW has no cautious_decay= in this build")
def test_cautious_share_per_tensor(tiny):
    _, res = tiny
    c = res["summary"]["adamw_cautious"]
    shares = [t["cautious_share"] for t in c["per_tensor"].values()]
    assert shares and all(0.0 < x < 1.0 for x in shares)
    plain = res["summary"]["adamw"]["decay_mean"]
    assert c["decay_mean"] < plain  # it skips the coordinates whose update disagrees with the weight


def test_report_labels_each_number(tiny):
    out, res = tiny
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Reading" in html
    data = json.loads((out / "explain.json").read_text())
    assert set(data["summary"]) == set(BUILT) and data["reading"]
    last = data["reading"][-1]
    for key in BUILT:  # "Test error: Adam + L2 x%; AdamW, PyTorch form y%": every number has its name
        assert f"{CONVENTIONS[key].label.split(' (')[0]} " in last
    assert "0.weight" in data["summary"]["adam_l2"]["per_tensor"]  # only decayed tensors are listed
    assert "1.weight" not in data["summary"]["adam_l2"]["per_tensor"]  # BatchNorm gain


def test_default_output_goes_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = explain("digits", epochs=1, max_train=64, progress=False)
    assert (tmp_path / "runs" / "explain-digits" / "report.html").is_file() and res["paths"]
