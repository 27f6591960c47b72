"""The drop-in defects of issue 10 outside torch's table: copies and pickles of the whole
optimizer (also one pickled by 0.1.0), hypergradients, torch's execution flags (fused=False,
fused=True with GradScaler's grad_scale/found_inf, capturable on CPU), and step-time checks.

Tests marked ``xfail(strict=True, reason="needs core: ...")`` fail until the optimizer class
takes the change named in the reason; they must then pass (strict), and the mark goes.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import math
import os
import pickle

import pytest
import torch

import decoupled
from decoupled import hyper
from decoupled.formats.rounding import NOISE
from scenario import clone_params, gradient, make_params

DATA = os.path.join(os.path.dirname(__file__), "data")
_spec = importlib.util.spec_from_file_location(
    "make_pickled_optimizers", os.path.join(DATA, "make_pickled_optimizers.py")
)
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)  # type: ignore[union-attr]

NEEDS_GETSTATE = (
    "needs core: __setstate__ rebuilds the optimizer's own attributes (backend, _checked) that torch's "
    "Optimizer.__getstate__ drops, so a deepcopy, pickle or torch.save copy (and one pickled by 0.1.0) steps"
)


def save_load(opt):
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o)), "torch.save": save_load}


def params_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def step_both(a, b, steps):
    """Step two optimizers (over their own parameters) with the same gradients and the same
    stochastic-rounding noise (seed and pool reset before each step); compare bits."""
    for step in steps:
        for pa, pb, g in zip(params_of(a), params_of(b), fixture.grads(step, params_of(a))):
            pa.grad, pb.grad = g.clone(), g.clone()
        for opt in (a, b):
            torch.manual_seed(step)
            NOISE.reset()
            opt.step()
        for i, (pa, pb) in enumerate(zip(params_of(a), params_of(b))):
            assert torch.equal(pa, pb), f"parameter {i} after step {step}"
            assert a.state[pa].keys() == b.state[pb].keys()
            for key, value in a.state[pa].items():
                assert torch.equal(value, b.state[pb][key]), f"{key} of parameter {i} after step {step}"


@pytest.mark.parametrize("method", COPIES)
@pytest.mark.parametrize("config", fixture.CONFIGS)
def test_a_copied_optimizer_steps_identically(config, method):
    opt = fixture.build(config)
    clone = COPIES[method](opt)
    assert all(a is not b for a, b in zip(params_of(opt), params_of(clone)))
    step_both(opt, clone, range(3, 6))


@pytest.mark.parametrize("config", fixture.CONFIGS)
def test_an_optimizer_pickled_by_0_1_0_steps_identically(config):
    """Unpickled from tests/data (0.1.0's layout), it steps as a fresh optimizer of today's code
    that loads its state dict."""
    old = torch.load(os.path.join(DATA, "pickled-optimizers-0.1.0.pt"), weights_only=False)["optimizers"][config]
    cls, options, _ = fixture.CONFIGS[config]
    fresh_params = [p.detach().clone().requires_grad_() for p in params_of(old)]
    groups = [{"params": fresh_params[:1]}, {"params": fresh_params[1:], "lr": 3e-3}]
    fresh = getattr(decoupled, cls)(groups, **options)
    fresh.load_state_dict(copy.deepcopy(old.state_dict()))
    step_both(fresh, old, range(3, 6))


# ---- hypergradients ---------------------------------------------------------------------------

CONVENTIONS = {
    "decoupled": (decoupled.AdamW, {}, torch.optim.AdamW),
    "lr-independent": (decoupled.AdamW, dict(lr_independent_decay=True, lr_max=2e-2), None),
    "coupled": (decoupled.Adam, {}, torch.optim.Adam),
}


def meta_loss(cls, options, lr, beta1, beta2, weight_decay, amsgrad):
    """As torch's _multistep_backprop_diff_hyperparams_fn: two differentiable steps of a tiny
    regression, then the loss, as a function of the tensor hyperparameters."""
    g = torch.Generator().manual_seed(0)
    params = torch.rand(10, generator=g, dtype=torch.float64, requires_grad=True).clone()
    opt = cls(
        [params],
        lr=lr,
        betas=(beta1, beta2),
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        differentiable=True,
        **options,
    )
    w = torch.linspace(-1.0, 2.0, 10, dtype=torch.float64)  # a different gradient for each element

    def loss():
        return ((params * w).sum() - 2.0).square()

    for _ in range(2):
        params.grad = torch.autograd.grad(loss(), params, create_graph=True)[0]
        opt.step()
    return loss()


def hyper_tensors():
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.01, 0.9, 0.99, 0.3)]


NEEDS_HYPERGRADIENTS = (
    "needs core: with differentiable=True the step keeps tensor lr, betas and weight_decay as tensors "
    "(hyper.step_values) so autograd reaches them, for every convention"
)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_hypergradients_pass_gradcheck(convention, amsgrad):
    cls, options, _ = CONVENTIONS[convention]
    torch.autograd.gradcheck(lambda *h: meta_loss(cls, options, *h, amsgrad), tuple(hyper_tensors()))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("convention", [c for c, v in CONVENTIONS.items() if v[2] is not None])
def test_hypergradients_equal_torchs(convention, amsgrad):
    """d loss / d hyperparameter equal to torch's differentiable step's (float64 throughout), for
    the hyperparameters torch's step can differentiate: with amsgrad, torch 2.13 raises an
    in-place error for tensor betas (and, coupled, for a tensor weight_decay), so those are
    floats there; test_hypergradients_pass_gradcheck covers them for ours."""
    ours, options, theirs = CONVENTIONS[convention]
    names = ("lr", "beta1", "beta2", "weight_decay")
    torch_cannot = {"beta1", "beta2"} | ({"weight_decay"} if convention == "coupled" else set())
    wanted = [n for n in names if not (amsgrad and n in torch_cannot)]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch's step counts then float64, like our coefficients
    try:
        grads = []
        for cls in (ours, theirs):
            hs = dict(zip(names, hyper_tensors()))
            for n in names:
                if n not in wanted:
                    hs[n] = hs[n].item()
            grads.append(torch.autograd.grad(meta_loss(cls, options, *hs.values(), amsgrad), [hs[n] for n in wanted]))
    finally:
        torch.set_default_dtype(old)
    for name, mine, judge in zip(wanted, *grads):
        torch.testing.assert_close(mine, judge, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"d loss / d {n}: {m}")


# ---- torch's execution flags ------------------------------------------------------------------


def run(cls, params, steps=10, **kwargs):
    opt = cls(params, lr=1e-2, weight_decay=0.1, **kwargs)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p.detach())
        opt.step()
    return opt


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_fused_false_runs_the_for_loop(name):
    """bf16 parameters tell torch's fused step (float32 arithmetic, rounded once) from its loop
    (each op rounded to bf16) on every CPU. In float32 and float64 both give the same bits on some
    CPUs (an Intel Xeon, torch 2.13), so neither can be the witness."""
    ours, theirs = getattr(decoupled, name), getattr(torch.optim, name)
    ps = make_params("edge", torch.bfloat16)
    fused, loop = clone_params(ps), clone_params(ps)
    run(theirs, fused, fused=True)
    run(theirs, loop, fused=False)
    assert not all(torch.equal(a, b) for a, b in zip(fused, loop)), "this case cannot tell fused from the loop"
    mine = clone_params(ps)
    run(ours, mine, fused=False)
    assert all(torch.equal(a, b) for a, b in zip(mine, loop))


NEEDS_AMP = (
    "needs core: fused=True sets _step_supports_amp_scaling and the step honours the optimizer's grad_scale "
    "(divides the gradients) and found_inf (no update, step counts unchanged), as torch's fused step"
)


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_fused_declares_amp_scaling(name):
    ours, theirs = getattr(decoupled, name), getattr(torch.optim, name)
    for kwargs in ({"fused": True}, {}, {"foreach": True}):
        judge = getattr(theirs([torch.ones(1, requires_grad=True)], **kwargs), "_step_supports_amp_scaling", False)
        assert (
            getattr(ours([torch.ones(1, requires_grad=True)], **kwargs), "_step_supports_amp_scaling", False) == judge
        )


@pytest.mark.parametrize("no_grad_scale", [False, True])
@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_fused_does_not_step_if_found_inf(name, no_grad_scale):
    """torch's test of the same name (CUDA in torch; torch's CPU fused kernel honours it too)."""
    params = [torch.ones(1, requires_grad=True) for _ in range(5)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = getattr(decoupled, name)(params, fused=True, weight_decay=0.1)
    opt.grad_scale = None if no_grad_scale else torch.ones(1)
    opt.found_inf = torch.ones(())
    opt.step()
    for p in params:
        assert torch.equal(p.detach(), torch.ones(1))
        if "step" in opt.state[p]:
            assert opt.state[p]["step"].item() == 0


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_fused_unscales_with_grad_scale(name):
    """GradScaler's fused path: scaled gradients and the scale on the optimizer; the update is
    torch's fused update of the unscaled gradients."""
    ps = make_params("edge", torch.float32)
    results = []
    for cls in (getattr(decoupled, name), getattr(torch.optim, name)):
        params = clone_params(ps)
        opt = cls(params, lr=1e-2, weight_decay=0.1, fused=True)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = gradient(step, i, p.detach()) * 1e-4 * 1024.0  # small: eps matters, so must the scale
            opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
            opt.step()
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def amp_run(cls, clip: bool):
    """A few GradScaler steps on CPU with an overflow at step 2 (and optional clipping, which
    unscales before the step)."""
    torch.manual_seed(3)
    model = torch.nn.Linear(8, 4)
    opt = cls(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    x = torch.randn(16, 8)
    grads = []
    for step in range(6):
        opt.zero_grad()
        loss = model(x).square().mean() * (math.inf if step == 2 else 1.0)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        grads.append([p.grad.clone() for p in model.parameters()])
    return list(model.parameters()), grads, scaler.get_scale(), opt


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_grad_scaler_on_cpu_matches_torch_fused(name, clip):
    """End to end with torch.amp.GradScaler (today through GradScaler's own unscale-and-skip for
    us, its fused path for torch: the same numbers; the direct tests below need the fused path)."""
    mine, judge = amp_run(getattr(decoupled, name), clip), amp_run(getattr(torch.optim, name), clip)
    for a, b in zip(mine[0], judge[0]):
        assert torch.equal(a, b)
    for step, (ga, gb) in enumerate(zip(mine[1], judge[1])):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb) if a.isfinite().all()), step
    assert mine[2] == judge[2]
    for p, q in zip(mine[0], judge[0]):
        assert torch.equal(mine[3].state[p]["step"], judge[3].state[q]["step"])


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_capturable_on_cpu_is_refused_at_step_as_torch_does(name, foreach):
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = getattr(decoupled, name)([p], capturable=True, foreach=foreach)
    with pytest.raises(
        AssertionError, match=r"If capturable=True, params and state_steps must be on supported devices"
    ):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state[p]


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_capturable_with_fused_runs_like_torch(name):
    ps = make_params("edge", torch.float32)
    mine, judge = clone_params(ps), clone_params(ps)
    a = run(getattr(decoupled, name), mine, capturable=True, fused=True)
    b = run(getattr(torch.optim, name), judge, capturable=True, fused=True)
    for x, y in zip(mine, judge):
        assert torch.equal(x, y) and torch.equal(a.state[x]["step"], b.state[y]["step"])


def test_adam_l2_on_complex_parameters_is_torchs_loop_to_the_bit():
    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(64, 32, generator=g, dtype=torch.complex64)
    mine, judge = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    run(decoupled.Adam, [mine], foreach=False)
    run(torch.optim.Adam, [judge], foreach=False)
    assert torch.equal(mine, judge)


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_negative_lr_from_a_schedule_warns_and_steps_like_torch(name):
    ps = make_params("basic", torch.float64)
    mine, judge = [p.detach().clone().requires_grad_() for p in ps], [p.detach().clone().requires_grad_() for p in ps]
    a, b = (
        run(getattr(decoupled, name), mine, steps=2, foreach=False),
        run(getattr(torch.optim, name), judge, steps=2, foreach=False),
    )
    for opt in (a, b):
        opt.param_groups[0]["lr"] = -1e-2
    for params in (mine, judge):
        for i, p in enumerate(params):
            p.grad = gradient(9, i, p.detach())
    with pytest.warns(hyper.HyperparameterWarning, match=r"Invalid learning rate: -0.01 .* in param group 0"):
        a.step()
    b.step()
    assert all(torch.equal(x, y) for x, y in zip(mine, judge))
