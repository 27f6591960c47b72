"""Bad inputs: each gets a clear error, and the optimizer and parameters are left as they were."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import decoupled


def params():
    return [torch.ones(3, requires_grad=True)]


# (constructor kwargs, exception, message pattern)
BAD_ARGUMENTS = [
    # torch's exception types and wording first (tests/test_hyper.py: an infinite lr warns, as torch accepts it)
    (dict(lr=-1e-3), ValueError, r"Invalid learning rate: -0.001 \(must be >= 0"),
    (dict(lr=math.nan), ValueError, r"Invalid learning rate: nan"),
    (dict(lr=torch.tensor([1e-3, 2e-3])), ValueError, r"Tensor lr must be 1-element \(got shape \(2,\)\)"),
    (dict(lr="0.001"), TypeError, r"'<=' not supported between instances of 'float' and 'str' \(lr='0.001'"),
    (dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 1.0 \(must be in \[0, 1\)"),
    (dict(betas=(-0.1, 0.999)), ValueError, r"Invalid beta parameter at index 0: -0.1"),
    (dict(betas=(0.9, 1.5)), ValueError, r"Invalid beta parameter at index 1: 1.5"),
    (dict(betas=(0.9, math.nan)), ValueError, r"Invalid beta parameter at index 1: nan"),
    (dict(betas=(0.9,)), IndexError, r"tuple index out of range \(betas=\(0.9,\): it must be a pair"),
    (dict(weight_decay=-0.01), ValueError, r"Invalid weight_decay value: -0.01"),
    (dict(fused=True, foreach=True), RuntimeError, r"`fused` and `foreach` cannot be `True` together"),
    (dict(fused=True, differentiable=True), RuntimeError, r"`fused` does not support `differentiable`"),
    (dict(lr_max=1e-3), ValueError, r"lr_max only applies with decay_scaling='independent' or 'corrected'"),
    (
        dict(decay_scaling="cubic"),
        ValueError,
        r"unknown decay_scaling='cubic'; choose one of \['lr', 'independent', 'corrected'\]",
    ),
    (dict(decay_scaling="corrected", lr_max=math.inf), ValueError, r"Invalid lr_max: inf"),
    (dict(decay_scaling="corrected", lr_independent_decay=True), ValueError, r"contradict each other"),
    (dict(lr_independent_decay=True, lr_max=-1.0), ValueError, r"Invalid lr_max: -1.0"),
    (dict(lr_independent_decay=True, lr=0.0), ValueError, r"Invalid lr_max in param group 0: 0.0"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD_ARGUMENTS, ids=[str(k) for k, _, _ in BAD_ARGUMENTS])
def test_bad_constructor_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        decoupled.AdamW(params(), **kwargs)


@pytest.mark.parametrize("cls", [decoupled.AdamW, decoupled.Adam])
def test_empty_and_duplicate_params(cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="more than one parameter group"):
        cls([{"params": [p]}, {"params": [p]}])


def test_bad_added_group_is_not_kept():
    opt = decoupled.AdamW(params())
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "lr": -1.0})
    assert len(opt.param_groups) == 1


def snapshot(opt, ps):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps]


def assert_untouched(opt, ps, before):
    state, values = before
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for k, entry in state["state"].items():
        for key, t in entry.items():
            assert torch.equal(now["state"][k][key], t), f"{key} of param {k} changed"
    for p, v in zip(ps, values):
        assert torch.equal(p.detach(), v)


def stepped_optimizer(**kw):
    ps = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(5, requires_grad=True)]
    opt = decoupled.AdamW([{"params": ps[:2]}, {"params": ps[2:]}], lr=1e-2, **kw)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt, ps


@pytest.mark.parametrize("backend", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_sparse_gradient_in_a_later_group_changes_nothing(backend):
    opt, ps = stepped_optimizer(**backend)
    before = snapshot(opt, ps)
    ps[0].grad = torch.randn_like(ps[0])
    ps[2].grad = torch.randn(5).to_sparse()
    with pytest.raises(
        RuntimeError,
        match=r"does not support sparse gradients \(parameter 0 of param group 1, shape \(5,\)\).*SparseAdam",
    ):
        opt.step()
    assert_untouched(opt, ps, before)


def test_sparse_gradient_error_names_the_parameter():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = decoupled.AdamW(emb.named_parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"parameter 'weight'.*sparse=False"):
        opt.step()


def test_fused_with_complex_params_says_why():
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = decoupled.AdamW([p], fused=True)
    p.grad = torch.randn_like(p)
    with pytest.raises(
        RuntimeError,
        match=r"`fused=True` requires all the params to be floating point Tensors .* but torch.complex64 and cpu",
    ):
        opt.step()
    assert not opt.state[p]  # nothing was initialized by the failed step


# (how to break a good state dict, message pattern)
def _del(path):
    def f(sd):
        obj = sd
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return f


def _set(path, value):
    def f(sd):
        obj = sd
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return f


BAD_STATE_DICTS = [
    ("not a state dict", lambda sd: sd.clear(), r"expected a mapping with keys 'state' and 'param_groups'"),
    ("one group missing", lambda sd: sd["param_groups"].pop(), r"has 1 param groups but this optimizer has 2"),
    (
        "param count",
        lambda sd: sd["param_groups"][0]["params"].pop(),
        r"param group 0 has 1 parameters in the checkpoint but 2",
    ),
    (
        "moment shape",
        _set(["state", 1, "exp_avg"], torch.zeros(7)),
        r"'exp_avg' of parameter 1 \(group 0, shape \(4,\)\) has shape \(7,\)",
    ),
    (
        "missing moment",
        _del(["state", 2, "exp_avg_sq"]),
        r"state of parameter 2 \(group 1, shape \(5,\)\) lacks \['exp_avg_sq'\]",
    ),
    (
        "negative step",
        _set(["state", 0, "step"], torch.tensor(-3.0)),
        r"'step' of parameter 0 .* non-negative whole number",
    ),
    ("vector step", _set(["state", 0, "step"], torch.ones(2)), r"'step' of parameter 0 .* must be a real scalar"),
    (
        "integer moment",
        _set(["state", 0, "exp_avg"], torch.zeros(3, 2, dtype=torch.long)),
        r"has dtype torch.int64; moments are floating point",
    ),
    ("stray entry", _set(["state", 99], {}), r"state has entries \[99\] that belong to no parameter"),
    ("bad lr", _set(["param_groups", 1, "lr"], -1.0), r"Invalid learning rate: -1.0 .* in param group 1"),
    ("bad betas", _set(["param_groups", 0, "betas"], (0.9, 1.0)), r"Invalid beta parameter at index 1: 1.0"),
    (
        "amsgrad without max",
        _set(["param_groups", 0, "amsgrad"], True),
        r"lacks \['max_exp_avg_sq'\] \(the group has amsgrad=True\)",
    ),
]


@pytest.mark.parametrize("name, corrupt, pattern", BAD_STATE_DICTS, ids=[n for n, _, _ in BAD_STATE_DICTS])
def test_bad_state_dict_is_refused_and_changes_nothing(name, corrupt, pattern):
    source, _ = stepped_optimizer()
    sd = copy.deepcopy(source.state_dict())
    corrupt(sd)
    target, ps = stepped_optimizer()
    before = snapshot(target, ps)
    with pytest.raises(ValueError, match=pattern):
        target.load_state_dict(sd)
    assert_untouched(target, ps, before)


def test_a_whole_training_checkpoint_gets_a_hint():
    opt, _ = stepped_optimizer()
    with pytest.raises(ValueError, match=r"checkpoint\['optimizer'\]"):
        opt.load_state_dict({"model": {}, "optimizer": opt.state_dict()})


def test_cuda_graph_capture_is_refused_clearly(monkeypatch):
    """Step counts are read on the host, so a capture must fail before anything changes."""
    opt, ps = stepped_optimizer()
    before = snapshot(opt, ps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph yet"):
        opt.step()
    assert_untouched(opt, ps, before)
