"""A refused load changes nothing (issue 10): every kind of corruption, at every position.

A good checkpoint is corrupted in one place at a time (each state tensor of each parameter,
each group, the top level), loaded with ``load_state_dict``, and the optimizer must raise
ValueError and be exactly as before: the same param group dicts with the same values, the same
state entries holding the same tensors with the same values, the parameters untouched. Then
the same for a load that fails after validation (a conversion or a user's post hook raising).
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

import decoupled

# name -> (class, constructor options, parameter dtype, complex parameter too)
CONFIGS = {
    "adamw": (decoupled.AdamW, dict(weight_decay=0.1), torch.float32, True),
    "adamw-amsgrad": (decoupled.AdamW, dict(weight_decay=0.1, amsgrad=True), torch.float32, True),
    "adam": (decoupled.Adam, dict(weight_decay=0.1), torch.float32, True),
    "adamw-bf16-moments": (decoupled.AdamW, dict(moments="bf16"), torch.float32, False),
    "adamw-8bit-moments": (decoupled.AdamW, dict(moments="8bit", amsgrad=True), torch.float32, False),
    "adamw-kahan": (decoupled.AdamW, dict(param_rounding="kahan"), torch.bfloat16, False),
}


def make(config, seed):
    cls, options, dtype, with_complex = CONFIGS[config]
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(64, 80, generator=g), torch.randn(7, generator=g), torch.randn(3, 4, generator=g)]
    ps = [p.to(dtype).requires_grad_() for p in ps]
    if with_complex:
        ps.append(torch.randn(2, 3, generator=g, dtype=torch.complex64).requires_grad_())
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3, "betas": (0.8, 0.99)}], lr=1e-2, **options)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    return opt, ps


@functools.cache
def good_state_dict(config):
    opt, _ = make(config, seed=1)
    return copy.deepcopy(opt.state_dict())


def snapshot(opt, ps):
    groups = [
        (g, {k: (v.clone() if isinstance(v, torch.Tensor) else copy.copy(v)) for k, v in g.items()})
        for g in opt.param_groups
    ]
    entries = {
        p: (e, {k: v for k, v in e.items()}, {k: v.clone() for k, v in e.items() if isinstance(v, torch.Tensor)})
        for p, e in opt.state.items()
    }
    return opt.param_groups, groups, opt.state, entries, [p.detach().clone() for p in ps]


def assert_unchanged(opt, ps, snap):
    group_list, groups, state, entries, values = snap
    assert opt.param_groups is group_list and [g for g, _ in groups] == opt.param_groups
    for g, contents in groups:
        assert g.keys() == contents.keys()
        for k, v in contents.items():
            now = g[k]
            if isinstance(v, torch.Tensor):
                assert torch.equal(now, v), k
            elif k == "params":
                assert all(a is b for a, b in zip(now, v)) and len(now) == len(v)
            else:
                assert now == v, k
    assert opt.state is state and set(opt.state) == set(entries)
    for p, (entry, objects, tensors) in entries.items():
        assert opt.state[p] is entry and entry.keys() == objects.keys()
        assert all(entry[k] is v for k, v in objects.items()), "a state tensor was replaced"
        assert all(torch.equal(entry[k], v) for k, v in tensors.items()), "a state tensor was written"
    for p, v in zip(ps, values):
        assert torch.equal(p.detach(), v)


# ---- corruptions ------------------------------------------------------------------------------


def _tensor_keys(entry):
    return [k for k, v in entry.items() if isinstance(v, torch.Tensor) and k != "step"]


def _nonnegative(key):
    return key in ("exp_avg_sq", "max_exp_avg_sq") or key.endswith("_absmax")


def _poke(value):
    def f(t):
        t = t.clone()
        t.view(-1)[t.numel() // 2] = value
        return t

    return f


def _complexify(t):
    return torch.complex(t.float(), torch.zeros_like(t.float())) if not t.is_complex() else t.real.clone()


# state tensor corruptions: (name, applies to (key, tensor), new value from the tensor, message)
TENSOR_CORRUPTIONS = [
    ("nan", lambda k, t: t.is_floating_point() or t.is_complex(), _poke(math.nan), "NaN or infinite"),
    ("inf", lambda k, t: t.is_floating_point() or t.is_complex(), _poke(math.inf), "NaN or infinite"),
    ("negative", lambda k, t: _nonnegative(k) and t.is_floating_point(), _poke(-1.0), "negative values"),
    ("sparse", lambda k, t: t.dim() > 0, lambda t: t.to_sparse(), "sparse_coo tensor; optimizer state is dense"),
    (
        "wrong shape",
        lambda k, t: True,
        lambda t: t.reshape(-1)[:-1].clone() if t.numel() > 1 else torch.zeros(5, dtype=t.dtype),
        "has shape",
    ),
    ("integer", lambda k, t: t.is_floating_point(), lambda t: t.to(torch.int64), "dtype torch.int64"),
    (
        "real/complex swapped",
        lambda k, t: k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") and (t.is_floating_point() or t.is_complex()),
        _complexify,
        "must its moments be|has dtype",
    ),
]
STEP_CORRUPTIONS = [
    ("int64 step", lambda s: s.to(torch.int64), "has dtype torch.int64"),
    ("bool step", lambda s: s.to(torch.bool), "has dtype torch.bool"),
    ("vector step", lambda s: s.reshape(1).expand(2).clone(), "must be a real scalar"),
    ("negative step", lambda s: -s, "non-negative whole number"),
    ("fractional step", lambda s: s + 0.5, "non-negative whole number"),
    ("nan step", lambda s: s * math.nan, "non-negative whole number"),
    ("sparse step", lambda s: s.reshape(1).to_sparse(), "must be a real scalar"),
    ("string step", lambda s: "3", "must be a number or a 0-d tensor"),
]
GROUP_CORRUPTIONS = [
    *[(f"no {k}", lambda g, k=k: g.pop(k), f"lacks \\['{k}'\\]") for k in ("lr", "betas", "eps", "weight_decay")],
    ("lr < 0", lambda g: g.update(lr=-1.0), "Invalid learning rate: -1.0"),
    ("lr nan", lambda g: g.update(lr=math.nan), "Invalid learning rate: nan"),
    ("lr inf", lambda g: g.update(lr=math.inf), "lr=inf"),
    ("lr 2-element tensor", lambda g: g.update(lr=torch.tensor([1e-3, 1e-3])), "Tensor lr must be 1-element"),
    (
        "tensor lr with foreach",
        lambda g: g.update(lr=torch.tensor(1e-3), foreach=True),
        "lr as a Tensor is not supported",
    ),
    ("beta1 = 1", lambda g: g.update(betas=(1.0, 0.99)), "Invalid beta parameter at index 0: 1.0"),
    ("three betas", lambda g: g.update(betas=(0.9, 0.99, 0.9)), "too many values to unpack"),
    ("eps nan", lambda g: g.update(eps=math.nan), "Invalid epsilon value: nan"),
    ("weight_decay < 0", lambda g: g.update(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    ("weight_decay inf", lambda g: g.update(weight_decay=math.inf), "weight_decay=inf"),
    ("fused and differentiable", lambda g: g.update(fused=True, differentiable=True), "`fused` does not support"),
    ("a parameter less", lambda g: g["params"].pop(), "parameters in the checkpoint but"),
    ("amsgrad without its maximum", lambda g: g.update(amsgrad=True), "lacks \\['max_exp_avg_sq'\\]"),
]
TOP_CORRUPTIONS = [
    (
        "a whole training checkpoint",
        lambda sd: {"optimizer": sd},
        "expected a mapping with keys 'state' and 'param_groups'",
    ),
    (
        "one group less",
        lambda sd: {**sd, "param_groups": sd["param_groups"][:1]},
        "has 1 param groups but this optimizer has 2",
    ),
    ("a stray state entry", lambda sd: {**sd, "state": {**sd["state"], 99: {}}}, "belong to no parameter"),
    (
        "an index in two groups",
        lambda sd: {
            **sd,
            "param_groups": [
                sd["param_groups"][0],
                {**sd["param_groups"][1], "params": [0, *sd["param_groups"][1]["params"][1:]]},
            ],
        },
        "appears twice",
    ),
]


def cases():
    for config in CONFIGS:
        sd = good_state_dict(config)
        for index, entry in sd["state"].items():
            for key in _tensor_keys(entry):
                for name, applies, change, pattern in TENSOR_CORRUPTIONS:
                    if applies(key, entry[key]):
                        yield pytest.param(
                            config, ("state", index, key, change), pattern, id=f"{config}-{name}-param{index}-{key}"
                        )
            for name, change, pattern in STEP_CORRUPTIONS:
                yield pytest.param(
                    config, ("state", index, "step", change), pattern, id=f"{config}-{name}-param{index}"
                )
        for g in range(len(sd["param_groups"])):
            for name, change, pattern in GROUP_CORRUPTIONS:
                if name == "amsgrad without its maximum" and sd["param_groups"][g]["amsgrad"]:
                    continue
                yield pytest.param(config, ("group", g, change), pattern, id=f"{config}-{name}-group{g}")
        for name, change, pattern in TOP_CORRUPTIONS:
            yield pytest.param(config, ("top", change), pattern, id=f"{config}-{name}")


def corrupt(sd, where):
    sd = copy.deepcopy(sd)
    if where[0] == "state":
        _, index, key, change = where
        sd["state"][index][key] = change(sd["state"][index][key])
    elif where[0] == "group":
        where[2](sd["param_groups"][where[1]])
    else:
        sd = where[1](sd)
    return sd


@pytest.mark.parametrize("config, where, pattern", list(cases()))
def test_a_refused_load_changes_nothing(config, where, pattern):
    bad = corrupt(good_state_dict(config), where)
    opt, ps = make(config, seed=2)
    before = snapshot(opt, ps)
    with pytest.raises(ValueError, match=f"Cannot load optimizer state dict: .*({pattern})"):
        opt.load_state_dict(bad)
    assert_unchanged(opt, ps, before)


def test_the_good_checkpoints_load():
    """The corruptions above start from checkpoints that do load (and then step)."""
    for config in CONFIGS:
        opt, ps = make(config, seed=2)
        opt.load_state_dict(good_state_dict(config))
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        assert all(torch.isfinite(torch.view_as_real(p) if p.is_complex() else p.float()).all() for p in ps)


NEEDS_RESTORING = (
    "needs core: load_state_dict runs inside statedict.restoring(self), so a failure after validation "
    "(a conversion, a post hook) puts the optimizer back"
)


@pytest.mark.parametrize("config", CONFIGS)
def test_a_load_that_fails_in_a_post_hook_changes_nothing(config):
    opt, ps = make(config, seed=2)
    before = snapshot(opt, ps)

    def hook(optimizer):
        raise RuntimeError("a user's post hook failed")

    handle = opt.register_load_state_dict_post_hook(hook)
    with pytest.raises(RuntimeError, match="post hook failed"):
        opt.load_state_dict(good_state_dict(config))
    handle.remove()
    assert_unchanged(opt, ps, before)


@pytest.mark.parametrize("failing_call", [1, 2, 3])
@pytest.mark.parametrize("config", ["adamw", "adamw-8bit-moments"])
def test_a_load_that_fails_in_a_conversion_changes_nothing(config, failing_call, monkeypatch):
    """The k-th conversion of a loaded entry to this optimizer's format raises (e.g. memory)."""
    from decoupled import formats

    real, calls = formats.convert_entry, []

    def convert(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            raise MemoryError("out of memory while converting")
        return real(*args, **kwargs)

    opt, ps = make(config, seed=2)
    before = snapshot(opt, ps)
    monkeypatch.setattr(formats, "convert_entry", convert)
    with pytest.raises(MemoryError):
        opt.load_state_dict(good_state_dict(config))
    assert_unchanged(opt, ps, before)
