"""What torch's test/test_optim.py (TestOptimRenewed) checks with its optim_db table, run on
decoupled.Adam and decoupled.AdamW: the numerical checks. (The API checks, state dicts and
hooks, are in test_torch_optim_api.py.)

Each test follows the torch test of the same name: the same models, steps and tolerances,
over the table's CPU configurations and the implementations torch uses for that test.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau

import torch_table as tt

NO_DIFF = [i for i in tt.IMPLS if i.name != "differentiable"]  # torch leaves differentiable out (issue 116490)
NO_DIFF_FUSED = [i for i in NO_DIFF if i.name != "fused"]  # and fused, where complex is involved


def cases(impls, keep=lambda kwargs: True):
    return [
        pytest.param(name, kwargs, id=f"{name}-{desc}")
        for name in tt.NAMES
        for desc, kwargs in tt.all_inputs(name, impls)
        if keep(kwargs)
    ]


def loss_of(w, b, x):
    return (w.mv(x) + b).pow(2).sum()


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("with_lrsched", [True, False])
@pytest.mark.parametrize("name", tt.NAMES)
def test_forloop_goes_right_direction(name, contiguous, with_lrsched):
    for schedulers_c in tt.INFOS[name].scheduler_inputs if with_lrsched else [[]]:
        for inp in tt.optim_inputs(name):
            kwargs = {**inp.kwargs, "foreach": False}
            shape_w, shape_b = ((10, 5), (10,)) if contiguous else ((10, 5, 2), (10, 2))
            w, b = Parameter(torch.randn(shape_w)), Parameter(torch.randn(shape_b))
            if not contiguous:
                w, b = Parameter(w.data[..., 0]), Parameter(b.data[..., 0])
            x = torch.randn(5)
            opt = tt.OURS[name]([w, b], **kwargs)
            schedulers = [s(opt) for s in schedulers_c]
            initial = loss_of(w, b, x).item()
            for _ in range(20):
                opt.zero_grad()
                loss = loss_of(w, b, x)
                loss.backward()
                opt.step()
                for s in schedulers:
                    s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
            final = loss_of(w, b, x).item()
            assert (final > initial) if kwargs.get("maximize") else (final < initial), (inp.desc, initial, final)


@pytest.mark.parametrize("name", tt.NAMES)
def test_param_group_with_lrscheduler_goes_right_direction(name):
    for schedulers_c in tt.INFOS[name].scheduler_inputs:
        w, b, x = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10)), torch.randn(5)
        opt = tt.OURS[name]([{"params": [w]}, {"params": [b], "lr": 0.01}])
        schedulers = [s(opt) for s in schedulers_c]
        initial = loss_of(w, b, x).item()
        for _ in range(20):

            def closure(opt=opt, w=w, b=b, x=x):
                opt.zero_grad()
                loss = loss_of(w, b, x)
                loss.backward()
                return loss

            loss = opt.step(closure)
            for s in schedulers:
                s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
        assert loss_of(w, b, x).item() < initial


@pytest.mark.parametrize("num_dim", [0, 1, 2])
@pytest.mark.parametrize("name, kwargs", cases(NO_DIFF))
def test_tensor_lr(name, kwargs, num_dim):
    """A tensor lr of any shape with one element steps like the float lr (torch's assertEqual),
    and like torch's class with the same tensor lr."""
    w, b, x = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10)), torch.randn(5)
    copies = [[p.detach().clone().requires_grad_() for p in (w, b)] for _ in range(2)]
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    float_lr = tt.OURS[name]([w, b], lr=1e-3, **kwargs)
    try:
        tensor_lr = tt.OURS[name](copies[0], lr=torch.tensor(1e-3).reshape([1] * num_dim), **kwargs)
    except ValueError as err:
        assert "lr as a Tensor is not supported" in str(err)
        return
    theirs = tt.THEIRS[name](copies[1], lr=torch.tensor(1e-3).reshape([1] * num_dim), **kwargs)
    for _ in range(5):
        for opt, (pw, pb) in ((float_lr, (w, b)), (tensor_lr, copies[0]), (theirs, copies[1])):
            opt.zero_grad()
            loss_of(pw, pb, x).backward()
            opt.step()
        for a, c, t in zip((w, b), copies[0], copies[1]):
            torch.testing.assert_close(c, a)
            torch.testing.assert_close(c, t)


@pytest.mark.parametrize("name, kwargs", cases(NO_DIFF_FUSED))
def test_complex(name, kwargs):
    """Complex parameters step exactly as their view_as_real (mixed with a real one)."""
    complex_params = [
        torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
        torch.randn(10, dtype=torch.complex64, requires_grad=True),
        torch.randn(10, 5, requires_grad=True),
    ]
    real_params = [
        (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_() for p in complex_params
    ]
    complex_opt, real_opt = tt.OURS[name](complex_params, **kwargs), tt.OURS[name](real_params, **kwargs)
    for _ in range(3):
        for c, r in zip(complex_params, real_params):
            r.grad = torch.randn_like(r)
            c.grad = torch.view_as_complex(r.grad.clone()) if c.is_complex() else r.grad.clone()
        real_opt.step()
        complex_opt.step()
        # the same bits where the implementation is named; torch's tolerance where the default
        # picks by dtype (complex tensors cannot take the fused kernel, their real views can) and
        # on the for-loop with Adam's L2 term, which torch's loop (and ours, to match it bit for
        # bit) adds to a complex gradient in complex arithmetic (torch's own test_complex allows
        # its default tolerance there)
        complex_l2 = name == "Adam" and kwargs.get("weight_decay") and kwargs.get("foreach") is False
        tol = dict(rtol=0, atol=0) if "foreach" in kwargs and not complex_l2 else {}
        for c, r in zip(complex_params, real_params):
            torch.testing.assert_close(torch.view_as_real(c) if c.is_complex() else c, r, **tol)


def rosenbrock(t):
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("name, kwargs", cases(NO_DIFF_FUSED))
def test_complex_2d(name, kwargs):
    """A complex parameter and its real and imaginary parts as two parameters agree at every step."""
    a1 = torch.randn(2, dtype=torch.complex64, requires_grad=True)
    real, imag = a1.real.detach().clone().requires_grad_(), a1.imag.detach().clone().requires_grad_()
    opt1, opt2 = tt.OURS[name]([a1], **kwargs), tt.OURS[name]([real, imag], **kwargs)
    for _ in range(3):
        opt1.zero_grad()
        opt2.zero_grad()
        rosenbrock(a1).abs().backward()
        rosenbrock(torch.complex(real, imag)).abs().backward()
        torch.testing.assert_close(a1.grad.real, real.grad)
        torch.testing.assert_close(a1.grad.imag, imag.grad)
        opt1.step()
        opt2.step()
        torch.testing.assert_close(a1.real, real)
        torch.testing.assert_close(a1.imag, imag)


def derived_models(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    model.to(dtype=dtype)
    # torch's 0-d last parameter (pytorch issue 100701); zeros, not torch.empty's garbage, so
    # both models start alike
    empty = torch.zeros((), dtype=dtype, requires_grad=True)
    empty.grad = torch.rand_like(empty)
    return model, list(model.parameters()) + [empty]


def compare_between(name, flag, dtype, step_dtype=None):
    """torch's _test_derived_optimizers: ``flag`` False vs True over 7 iterations (no gradient at
    iteration 2, a frozen layer at 3-4), parameters and state compared and then re-aligned."""
    tol = tt.tolerance(name, f"test_{flag}_matches_forloop", dtype)
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    for inp in tt.optim_inputs(name, dtype=dtype):
        pairs = []
        for value in (False, True):
            model, params = derived_models(dtype)
            pairs.append((model, params, tt.OURS[name](params, **{**copy.deepcopy(inp.kwargs), flag: value})))
        for i in range(7):
            for model, _, opt in pairs:
                opt.zero_grad()
                model[2].requires_grad_(not 3 <= i < 5)
                if i != 2:
                    model(x).sum().backward()
                opt.step()
            (_, ref_params, ref_opt), (_, params, opt) = pairs
            for rp, p in zip(ref_params, params):
                for a, b in [(rp, p), *((ref_opt.state[rp][k], opt.state[p][k]) for k in ref_opt.state[rp])]:
                    if step_dtype is not None and a.shape == () and a is ref_opt.state[rp].get("step"):
                        assert a.dtype == b.dtype == step_dtype
                    torch.testing.assert_close(
                        b, a, **tol, msg=lambda m, i=i, desc=inp.desc: f"{desc}, iteration {i}: {m}"
                    )
                    with torch.no_grad():
                        b.copy_(a)  # re-aligned, as torch's TensorTracker does


@pytest.mark.parametrize("name", tt.NAMES)
def test_foreach_matches_forloop(name):
    compare_between(name, "foreach", torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", tt.NAMES)
def test_fused_matches_forloop(name, dtype):
    compare_between(name, "fused", dtype)


@pytest.mark.parametrize("default_dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("name", tt.NAMES)
def test_set_default_dtype_works_with_foreach(name, default_dtype):
    """torch runs this on CUDA; foreach runs on CPU here too: the step count is float64 under a
    float64 default dtype, else float32 (pytorch issue 110940)."""
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(default_dtype)
        compare_between(
            name,
            "foreach",
            torch.float64,
            step_dtype=torch.float64 if default_dtype == torch.float64 else torch.float32,
        )
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("name", tt.NAMES)
def test_fused_error_on_params_on_meta(name):
    with torch.device("meta"):
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
        )
    opt = tt.OURS[name](model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    opt.step()


@pytest.mark.parametrize("name, kwargs", cases(NO_DIFF))
def test_param_groups_weight_decay(name, kwargs):
    w, b, x = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10)), torch.randn(5)
    opt = tt.OURS[name]([dict(params=[w], **kwargs), dict(params=[b], **{**kwargs, "weight_decay": 0.0})])
    initial = loss_of(w, b, x).item()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_of(w, b, x)
        loss.backward()
        opt.step()
    assert (loss.item() > initial) if kwargs.get("maximize") else (loss.item() < initial)


@pytest.mark.parametrize("name, kwargs", cases(NO_DIFF))
def test_param_groups_lr(name, kwargs):
    kwargs = {**kwargs, "lr": kwargs.get("lr") or 1e-3}
    w, b, x = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10)), torch.randn(5)
    irrelevant = Parameter(torch.randn(2))
    before = irrelevant.detach().clone()
    opt = tt.OURS[name]([dict(params=[w, b], **kwargs), dict(params=[irrelevant])], lr=1e-28)
    initial = loss_of(w, b, x).item()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_of(w, b, x)
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    assert (loss.item() > initial) if kwargs.get("maximize") else (loss.item() < initial)
    torch.testing.assert_close(irrelevant, before)  # lr 1e-28: unchanged within float32's tolerance


@pytest.mark.parametrize("name, kwargs", cases(tt.IMPLS))
def test_step_is_noop_when_params_have_no_grad(name, kwargs):
    params = [torch.randn(2, 3) for _ in range(2)]
    old = [p.clone() for p in params]
    tt.OURS[name](params, **kwargs).step(lambda: torch.tensor([1.0]))
    assert all(torch.equal(p, o) for p, o in zip(params, old))


# torch's test leaves out weight decay: a decaying parameter moves whatever its gradient
@pytest.mark.parametrize("name, kwargs", cases(tt.IMPLS, keep=lambda kwargs: kwargs.get("weight_decay", 0) == 0))
def test_step_is_noop_for_zero_grads(name, kwargs):
    param = torch.randn((5, 1), requires_grad=True)
    old = param.detach().clone()
    if name == "AdamW":
        kwargs = {**kwargs, "lr": 1e-5}
    params = [param.clone()] if kwargs.get("differentiable") else [param]
    opt = tt.OURS[name](params, **kwargs)
    params[0].grad = torch.zeros_like(params[0])
    opt.step(lambda: torch.tensor([1.0]))
    torch.testing.assert_close(params[0], old)
