"""State is torch's state: same layout, and checkpoints move both ways mid-run."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import decoupled
from cases import backend_params, convention_params, make_optimizer
from decoupled import conventions
from scenario import assert_same, clone_params, gradient, make_params, two_groups

PAIRS = [(decoupled.AdamW, torch.optim.AdamW), (decoupled.Adam, torch.optim.Adam)]


def train(opt, params, steps, start=0):
    for step in range(start, start + steps):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p)
        opt.step()


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("flags", [{}, {"foreach": True}, {"fused": True}], ids=["default", "foreach", "fused"])
def test_layout_is_torchs(ours, theirs, amsgrad, flags):
    kind = "edge" if flags.get("fused") else "complex"
    pa, pb = clone_params(make_params(kind, torch.float32)), clone_params(make_params(kind, torch.float32))
    oa = ours(two_groups(pa, 0.1), weight_decay=0.1, amsgrad=amsgrad, **flags)
    ob = theirs(two_groups(pb, 0.1), weight_decay=0.1, amsgrad=amsgrad, **flags)
    train(oa, pa, 3)
    train(ob, pb, 3)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sb["state"]:
        assert list(sa["state"][k]) == list(sb["state"][k])  # same keys, same order
        for key, t in sb["state"][k].items():
            mine = sa["state"][k][key]
            assert (mine.dtype, mine.device, mine.shape) == (t.dtype, t.device, t.shape), key
            assert mine.stride() == t.stride(), f"{key} of {k} has strides {mine.stride()}, torch {t.stride()}"
            if flags:  # the same implementation on both sides: the same bits
                assert torch.equal(mine, t), key
            else:  # decoupled's default runs the fused kernel, torch's the loop: ulps apart
                torch.testing.assert_close(mine, t, rtol=1e-6, atol=1e-7)


def roundtrip(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("direction", ["torch->decoupled", "decoupled->torch"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_checkpoint_moves_both_ways_and_training_continues_identically(ours, theirs, direction, amsgrad):
    """Train 25 steps with one, save, load into the other, and continue: 50 steps = uninterrupted run."""
    first, second = (theirs, ours) if direction == "torch->decoupled" else (ours, theirs)
    kw = dict(weight_decay=0.1, amsgrad=amsgrad)
    params = make_params("complex", torch.float32)
    # uninterrupted reference run, 50 steps with the first class
    ref = clone_params(params)
    ref_opt = first(two_groups(ref, 0.1), **kw)
    train(ref_opt, ref, 50)
    # interrupted run: 25 steps with the first class, checkpoint, 25 steps with the second
    ps = clone_params(params)
    opt = first(two_groups(ps, 0.1), **kw)
    train(opt, ps, 25)
    checkpoint = roundtrip(opt.state_dict())
    resumed_params = clone_params(ps)
    resumed = second(two_groups(resumed_params, 0.1), **kw)
    resumed.load_state_dict(checkpoint)
    train(resumed, resumed_params, 25, start=25)
    assert_same(ref, resumed_params, ref_opt, resumed, step=49)


def test_lr_independent_state_round_trips():
    params = make_params("edge", torch.float64)
    ref = clone_params(params)
    ref_opt = decoupled.AdamW(ref, lr=1e-2, weight_decay=1e-3, lr_independent_decay=True, lr_max=2e-2)
    train(ref_opt, ref, 20)
    ps = clone_params(params)
    opt = decoupled.AdamW(ps, lr=1e-2, weight_decay=1e-3, lr_independent_decay=True, lr_max=2e-2)
    train(opt, ps, 10)
    sd = roundtrip(opt.state_dict())
    assert sd["param_groups"][0]["decay_scaling"] == "independent" and sd["param_groups"][0]["lr_max"] == 2e-2
    resumed_params = clone_params(ps)
    resumed = decoupled.AdamW(resumed_params, lr=1e-2, weight_decay=1e-3)  # plain: the checkpoint says lr-independent
    resumed.load_state_dict(sd)
    train(resumed, resumed_params, 10, start=10)
    assert_same(ref, resumed_params, ref_opt, resumed, step=19)


def test_checkpoint_with_the_older_lr_independent_spelling_loads_as_decay_scaling():
    """Checkpoints saved before decay_scaling said lr_independent_decay=True in their groups."""
    params = make_params("basic", torch.float64)
    ref = clone_params(params)
    ref_opt = decoupled.AdamW(ref, lr=1e-2, weight_decay=1e-3, decay_scaling="independent", lr_max=2e-2)
    train(ref_opt, ref, 6)
    ps = clone_params(params)
    opt = decoupled.AdamW(ps, lr=1e-2, weight_decay=1e-3, decay_scaling="independent", lr_max=2e-2)
    train(opt, ps, 3)
    sd = roundtrip(opt.state_dict())
    old = sd["param_groups"][0]
    del old["decay_scaling"]
    old["lr_independent_decay"] = True  # the previous release's layout
    resumed_params = clone_params(ps)
    resumed = decoupled.AdamW(resumed_params, lr=1e-2, weight_decay=1e-3, decay_scaling="independent", lr_max=2e-2)
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["decay_scaling"] == "independent"
    assert "lr_independent_decay" not in resumed.param_groups[0]
    train(resumed, resumed_params, 3, start=3)
    assert_same(ref, resumed_params, ref_opt, resumed, step=5, exact=lambda p: True)


def test_adam_checkpoint_into_adamw_becomes_decoupled():
    """As torch.optim.AdamW does, loading any checkpoint into AdamW keeps the decay decoupled."""
    p = torch.ones(3, requires_grad=True)
    source = torch.optim.Adam([p], weight_decay=0.1)
    train(source, [p], 2)
    target = decoupled.AdamW([torch.ones(3, requires_grad=True)])
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    assert target.param_groups[0]["decoupled_weight_decay"] is True


def test_old_checkpoint_with_float_step_loads():
    p = torch.ones(3, requires_grad=True)
    opt = decoupled.AdamW([p])
    train(opt, [p], 2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = 2.0  # checkpoints from torch < 1.12 stored a number
    for key in ("capturable", "differentiable", "fused", "foreach", "decoupled_weight_decay"):
        del sd["param_groups"][0][key]
    other = decoupled.AdamW([torch.ones(3, requires_grad=True)])
    other.load_state_dict(sd)
    (q,) = other.param_groups[0]["params"]
    assert torch.is_tensor(other.state[q]["step"]) and other.state[q]["step"].item() == 2.0
    assert other.param_groups[0]["decoupled_weight_decay"] is True


def test_amsgrad_switched_on_mid_run_starts_from_current_v():
    """torch raises KeyError here; the running maximum starts from the v the state already has."""
    p = torch.randn(6, requires_grad=True)
    opt = decoupled.AdamW([p], foreach=False)
    train(opt, [p], 3)
    v_before = opt.state[p]["exp_avg_sq"].clone()
    opt.param_groups[0]["amsgrad"] = True
    train(opt, [p], 1, start=3)
    v_now = opt.state[p]["exp_avg_sq"]
    assert torch.equal(opt.state[p]["max_exp_avg_sq"], torch.maximum(v_before, v_now))
    assert not torch.equal(v_before, v_now)


def test_a_loaded_optimizer_takes_new_parameters_in_a_later_group():
    """After a load, the state is a defaultdict as torch's: a parameter that had no state in the
    checkpoint (not stepped yet when it was saved) gets its state at its first step."""
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = decoupled.AdamW([{"params": [a]}, {"params": [b]}])
    a.grad = torch.ones(3)
    opt.step()
    again = decoupled.AdamW([{"params": [a]}, {"params": [b]}])
    again.load_state_dict(opt.state_dict())
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    again.step()
    assert again.state[b]["step"].item() == 1 and again.state[a]["step"].item() == 2


@pytest.mark.parametrize("case", backend_params(torch.float32))
def test_every_backend_resumes_a_checkpoint_bit_for_bit_in_torchs_layout(case):
    """Every registered backend (the case table): a checkpoint taken mid-run through torch.save
    resumes bit for bit, and its state is torch's layout (keys, dtypes, strides), so
    torch.optim.AdamW loads it too."""
    params = make_params(case.kind(), torch.float32)
    ref = clone_params(params)
    ref_opt = case.make(two_groups(ref, 0.1), weight_decay=0.1, amsgrad=True)
    train(ref_opt, ref, 6)
    ps = clone_params(params)
    opt = case.make(two_groups(ps, 0.1), weight_decay=0.1, amsgrad=True)
    train(opt, ps, 3)
    sd = roundtrip(opt.state_dict())
    theirs = torch.optim.AdamW(two_groups(clone_params(ps), 0.1), weight_decay=0.1, amsgrad=True)
    theirs.load_state_dict(copy.deepcopy(sd))
    for mine, loaded in zip(opt.state.values(), theirs.state.values()):
        assert list(mine) == list(loaded)
        for key, t in mine.items():
            assert (t.dtype, t.shape, t.stride()) == (loaded[key].dtype, loaded[key].shape, loaded[key].stride()), key
    resumed_params = clone_params(ps)
    resumed = case.make(two_groups(resumed_params, 0.1), weight_decay=0.1, amsgrad=True)
    resumed.load_state_dict(sd)
    train(resumed, resumed_params, 3, start=3)
    assert_same(ref, resumed_params, ref_opt, resumed, step=5, exact=lambda p: True)


@pytest.mark.parametrize("convention", convention_params())
def test_every_convention_survives_a_checkpoint(convention):
    """Every convention of the case table: the checkpoint names it (its group keys), a fresh
    optimizer of the same convention resumes bit for bit, and no warning is given."""
    params = make_params("basic", torch.float64)
    ref = clone_params(params)
    ref_opt = make_optimizer(ref, convention, lr=1e-2, weight_decay=0.1, foreach=False)
    train(ref_opt, ref, 8)
    ps = clone_params(params)
    opt = make_optimizer(ps, convention, lr=1e-2, weight_decay=0.1, foreach=False)
    train(opt, ps, 4)
    sd = roundtrip(opt.state_dict())
    assert conventions.of_group(sd["param_groups"][0]).key == convention.key
    resumed_params = clone_params(ps)
    resumed = make_optimizer(resumed_params, convention, lr=1e-2, weight_decay=0.1, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(sd)
    train(resumed, resumed_params, 4, start=4)
    assert_same(ref, resumed_params, ref_opt, resumed, step=7, exact=lambda p: True)
