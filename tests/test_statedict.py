"""decoupled.statedict's pieces: the group a load leaves, the weight-decay convention across a
load (never a silent switch), and putting an optimizer back after a failed load."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

import decoupled
from decoupled import conventions, statedict


def torch_group(**kw):
    """A param group as torch.optim.AdamW saves it (torch 2.13)."""
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = torch.optim.AdamW([p], **kw)
    opt.step()
    return copy.deepcopy(opt.state_dict()["param_groups"][0])


def current(**kw):
    return decoupled.AdamW([torch.ones(3, requires_grad=True)], **kw).param_groups[0]


def test_loaded_group_is_the_checkpoints_with_this_optimizers_params_formats_and_convention():
    saved = torch_group(lr=0.5, weight_decay=0.2)
    for key in ("foreach", "fused", "capturable"):  # an older checkpoint
        del saved[key]
    mine = current(lr=1e-3, moments="bf16", lr_independent_decay=True)
    mine["param_names"] = ["w"]
    group = statedict.loaded_group(saved, mine, decoupled=True)
    assert group["params"] is mine["params"] and group["param_names"] == ["w"]
    assert (group["lr"], group["weight_decay"]) == (0.5, 0.2)  # the checkpoint's hyperparameters
    assert (group["foreach"], group["fused"], group["capturable"]) == (None, None, False)  # torch's defaults
    assert group["moments"] == "bf16"  # the format is this optimizer's choice
    assert group["decay_scaling"] == "independent" and group["lr_max"] == 1e-3  # no convention in the checkpoint
    saved_named = {**saved, "lr_independent_decay": True, "lr_max": 2.0}
    assert statedict.loaded_group(saved_named, mine, decoupled=True)["lr_max"] == 2.0  # the checkpoint names one


def test_loaded_group_of_adam_keeps_the_checkpoints_coupling_and_adamw_forces_decoupling():
    saved = torch_group()
    saved["decoupled_weight_decay"] = False
    assert statedict.loaded_group(saved, current(), decoupled=None)["decoupled_weight_decay"] is False
    assert statedict.loaded_group(saved, current(), decoupled=True)["decoupled_weight_decay"] is True
    del saved["decoupled_weight_decay"]
    assert statedict.loaded_group(saved, current(), decoupled=None)["decoupled_weight_decay"] is False


# (checkpoint group, this optimizer's options, class decoupling, expected note pattern or None)
NOTES = [
    ("same torch convention", {}, {}, True, None),
    ("same lr-independent", dict(lr_independent_decay=True, lr_max=1e-3), dict(lr_independent_decay=True), True, None),
    (
        "torch checkpoint into lr-independent",
        {},
        dict(lr_independent_decay=True),
        True,
        r"param group 0: the checkpoint's run used adamw \(AdamW, PyTorch form.*\): lr \* weight_decay = 1e-05 of each "
        r"decayed weight per step\. After this load the group follows adamw_indep .*so weight_decay=0\.01 now removes "
        r"\(lr / lr_max\) \* weight_decay = 0\.01 of each decayed weight per step \(lr=0\.001, lr_max=0\.001\)\. "
        r"To continue that run unchanged, build the optimizer as decoupled\.AdamW\(\.\.\.\) without a convention option",
    ),
    (
        "lr-independent checkpoint into torch's",
        dict(lr_independent_decay=True, lr_max=1e-3),
        {},
        True,
        r"this optimizer was built for adamw .*but the checkpoint's group follows adamw_indep, which is loaded",
    ),
    (
        "Adam + L2 checkpoint into AdamW",
        dict(decoupled_weight_decay=False),
        {},
        True,
        r"the checkpoint's run used adam_l2 .*no fixed fraction.*now removes lr \* weight_decay = 1e-05",
    ),
    (
        "Adam + L2 checkpoint into Adam",
        dict(decoupled_weight_decay=False),
        dict(decoupled_weight_decay=False),
        None,
        None,
    ),
]


@pytest.mark.parametrize("name, saved_keys, mine, decoupled_, pattern", NOTES, ids=[n[0] for n in NOTES])
def test_convention_note(name, saved_keys, mine, decoupled_, pattern):
    saved = {**torch_group(weight_decay=0.01), **saved_keys}
    group = (
        decoupled.AdamW([torch.ones(3, requires_grad=True)], **mine).param_groups[0]
        if "decoupled_weight_decay" not in mine
        else decoupled.Adam([torch.ones(3, requires_grad=True)], **mine).param_groups[0]
    )
    note = statedict.convention_note(saved, group, where="param group 0", decoupled=decoupled_)
    if pattern is None:
        assert note is None
    else:
        assert note is not None and re.search(pattern, note), note


def test_every_named_convention_has_a_per_step_meaning():
    for conv in conventions.CONVENTIONS.values():
        text = statedict.per_step_meaning(conv, 0.1, 1e-3, 2e-3)
        assert ("no fixed fraction" in text) == conv.coupled
        if not conv.coupled:
            assert f"= {conv.decay_per_step(0.1, 1e-3, 2e-3):.3g}" in text


def test_check_convention_warns_or_refuses():
    saved, group = torch_group(), current(lr_independent_decay=True)
    with pytest.warns(statedict.ConventionWarning, match="now removes"):
        statedict.check_convention(saved, group, decoupled=True)
    with pytest.raises(ValueError, match="Cannot load optimizer state dict: the checkpoint's run used adamw"):
        statedict.check_convention(saved, group, decoupled=True, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statedict.check_convention(torch_group(), current(), decoupled=True)


def test_torch_checkpoint_into_lr_independent_adamw_keeps_its_convention_and_says_so():
    p = torch.ones(4, requires_grad=True)
    p.grad = torch.ones(4)
    source = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01)
    source.step()
    target = decoupled.AdamW([torch.ones(4, requires_grad=True)], lr=1e-3, weight_decay=0.01, lr_independent_decay=True)
    with pytest.warns(statedict.ConventionWarning, match=r"weight_decay=0.01 now removes \(lr / lr_max\)"):
        target.load_state_dict(source.state_dict())
    assert conventions.of_group(target.param_groups[0]).key == "adamw_indep"


def test_restoring_puts_back_the_same_objects():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = decoupled.AdamW([p])
    opt.step()
    groups, group, state, entry, exp_avg = (
        opt.param_groups,
        opt.param_groups[0],
        opt.state,
        opt.state[p],
        opt.state[p]["exp_avg"],
    )
    with pytest.raises(KeyError), statedict.restoring(opt):
        opt.param_groups[0]["lr"] = 5.0
        opt.state[p]["exp_avg"] = torch.zeros(3)
        opt.state[torch.ones(1)] = {}
        opt.__setstate__({"state": {}, "param_groups": [dict(group, lr=7.0)]})
        opt.backend = "loop"
        raise KeyError("fail half way")
    assert opt.param_groups is groups and opt.param_groups[0] is group and group["lr"] == 1e-3
    assert opt.state is state and list(state) == [p] and state[p] is entry and entry["exp_avg"] is exp_avg
    assert opt.backend is None
