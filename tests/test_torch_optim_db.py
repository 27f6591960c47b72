"""decoupled.Adam and decoupled.AdamW through torch's own optimizer table (issue 10).

Every CPU configuration of ``optim_db``'s Adam and AdamW entries (``optim_inputs_func``), on
every implementation (``torch_table.IMPLS``), in float32 and float64, is run side by side with
torch's class for 7 steps (a step without gradients, a frozen parameter, an lr change), with
parameters *and every state tensor* compared after each step: the same bits where both run the
same implementation, torch's tolerance otherwise. Then a state-dict round trip in the middle of
the run, both ways, through ``torch.save``/``torch.load(weights_only=True)``. Then every
``optim_error_inputs_func`` entry: the same exception (or warning) type, torch's wording.
Entries the table lists only for CUDA are skipped here (marked, so they are counted).
"""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch

import torch_table as tt
from scenario import gradient, make_params

# torch's differentiable step reads .grad of the non-leaf parameters it updates under autograd
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")

STEPS = 7
NO_GRAD_STEP = 2  # every gradient None: the step is a no-op (torch's _compare_between)
FROZEN = range(3, 5)  # parameter 0 has no gradient (a frozen layer, as torch's test does)
LR_CHANGE_STEP = 5


def parameters(dtype: torch.dtype, impl: tt.Impl) -> list[torch.Tensor]:
    """A matrix, a vector, zero-size, transposed and channels-last tensors, a 0-d tensor (torch's
    foreach/fused edge case), and a complex matrix where the implementation takes complex."""
    kind = "edge" if impl.name == "fused" else "complex"
    ps = make_params(kind, dtype)
    ps.insert(2, torch.randn((), generator=torch.Generator().manual_seed(7), dtype=dtype).requires_grad_())
    return ps


def copies(ps: list[torch.Tensor], impl: tt.Impl) -> list[torch.Tensor]:
    """Fresh leaves with the same values and layout; with differentiable=True, non-leaf tensors
    (torch's differentiable step updates them in place under autograd)."""
    leaves = [torch.empty_like(p).copy_(p).detach().requires_grad_() for p in ps]
    return [p.clone() for p in leaves] if impl.name == "differentiable" else leaves


def set_grads(step: int, *param_lists: list[torch.Tensor]) -> None:
    for i, ref in enumerate(param_lists[0]):
        grad = None if step == NO_GRAD_STEP or (i == 0 and step in FROZEN) else gradient(step, i, ref.detach())
        for ps in param_lists:
            ps[i].grad = None if grad is None else grad.clone()


def change_lr(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].mul_(0.5)
        else:
            group["lr"] *= 0.5


def exact(name: str, impl: tt.Impl, kwargs: dict):
    """Which parameters must match to the bit: all, where both run the same implementation, but
    complex ones under Adam + L2 on the loop (torch's for-loop adds weight_decay * theta to the
    complex gradient in complex arithmetic, 1 ulp from ours; test_dropin.py holds the xfail)."""
    l2_on_complex = name == "Adam" and impl.name == "loop" and kwargs.get("weight_decay", 0) != 0
    return lambda p: impl.same_bits and not (l2_on_complex and p.is_complex())


def compare(pa, pb, oa, ob, *, exact, step: int, tol: dict | None = None) -> None:
    """Parameters and every state tensor of ``oa`` (ours) against ``ob`` (torch's): the same bits
    where ``exact(param)``, else within ``tol`` (torch's defaults)."""
    for i, (a, b) in enumerate(zip(pa, pb)):
        same_bits = exact(a)
        sa, sb = oa.state.get(a, {}), ob.state.get(b, {})
        assert list(sa) == list(sb), f"state keys of parameter {i}: {list(sa)} vs torch's {list(sb)}"
        for key, x, y in [("param", a, b), *((k, sa[k], sb[k]) for k in sb)]:
            what = f"{key} of parameter {i} after step {step}"
            if isinstance(y, torch.Tensor):
                assert (x.dtype, x.device, x.shape) == (y.dtype, y.device, y.shape), what
            tt.assert_close(x.detach(), y.detach(), same_bits=same_bits, what=what, **(tol or {}))


def parity_cases():
    for name in tt.NAMES:
        for dtype in (torch.float32, torch.float64):
            for inp in tt.optim_inputs(name):
                for impl in tt.IMPLS:
                    yield pytest.param(
                        name, inp.desc, impl, dtype, id=f"{name}-{inp.desc}-{impl.name}-{str(dtype)[6:]}"
                    )
            for inp in tt.cuda_only_inputs(name):
                yield pytest.param(
                    name,
                    inp.desc,
                    None,
                    dtype,
                    id=f"{name}-{inp.desc}-cuda-{str(dtype)[6:]}",
                    marks=pytest.mark.skip(reason="CUDA-only entry of torch's optim_db"),
                )


def config(name: str, desc: str, dtype: torch.dtype | None = None):
    return next(inp for inp in tt.optim_inputs(name, dtype=dtype) if inp.desc == desc)


@pytest.mark.parametrize("name, desc, impl, dtype", list(parity_cases()))
def test_steps_match_torch(name, desc, impl, dtype):
    kwargs = tt.kwargs_for(config(name, desc, dtype), impl)
    ps = parameters(dtype, impl)
    pa, pb = copies(ps, impl), copies(ps, impl)
    oa, ob = tt.OURS[name](pa, **kwargs), tt.THEIRS[name](pb, **tt.kwargs_for(config(name, desc, dtype), impl))
    for step in range(STEPS):
        set_grads(step, pa, pb)
        if step == LR_CHANGE_STEP:
            change_lr(oa)
            change_lr(ob)
        oa.step()
        ob.step()
        compare(pa, pb, oa, ob, exact=exact(name, impl, kwargs), step=step, tol=impl.tol)
    assert oa.state_dict()["param_groups"] == ob.state_dict()["param_groups"]


def roundtrip(sd: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# torch's own state-dict tests leave differentiable out (pytorch issue 116490: its state holds
# autograd history that deepcopy and torch.save refuse), and so does this one.
ROUNDTRIP_IMPLS = [impl for impl in tt.IMPLS if impl.name != "differentiable"]


def roundtrip_cases():
    for name in tt.NAMES:
        for inp in tt.optim_inputs(name):
            for impl in ROUNDTRIP_IMPLS:
                for direction in ("ours->torch", "torch->ours"):
                    yield pytest.param(name, inp.desc, impl, direction, id=f"{name}-{inp.desc}-{impl.name}-{direction}")


@pytest.mark.parametrize("name, desc, impl, direction", list(roundtrip_cases()))
def test_state_dict_round_trip_mid_run(name, desc, impl, direction):
    """3 steps with one class, save, load into the other, 4 more steps: equal to 7 steps of the
    second class alone (and the loaded state dict is the saved one)."""
    first, second = (tt.OURS[name], tt.THEIRS[name]) if direction == "ours->torch" else (tt.THEIRS[name], tt.OURS[name])
    ps = parameters(torch.float32, impl)
    ref, pa = copies(ps, impl), copies(ps, impl)
    ref_opt = second(ref, **tt.kwargs_for(config(name, desc), impl))
    opt = first(pa, **tt.kwargs_for(config(name, desc), impl))
    for step in range(3):
        set_grads(step, ref, pa)
        ref_opt.step()
        opt.step()
    saved = roundtrip(opt.state_dict())
    pb = copies(pa, impl)
    resumed = second(pb, **tt.kwargs_for(config(name, desc), impl))
    resumed.load_state_dict(saved)
    loaded = resumed.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, entry in saved["state"].items():
        assert list(loaded["state"][index]) == list(entry)
        for key, value in entry.items():
            tt.assert_close(loaded["state"][index][key], value, same_bits=True, what=f"loaded {key} of {index}")
    for step in range(3, STEPS):
        set_grads(step, ref, pb)
        if step == LR_CHANGE_STEP:
            change_lr(ref_opt)
            change_lr(resumed)
        ref_opt.step()
        resumed.step()
    compare(pb, ref, resumed, ref_opt, exact=exact(name, impl, config(name, desc).kwargs), step=STEPS - 1, tol=impl.tol)


def error_cases():
    for name in tt.NAMES:
        for e in tt.error_inputs(name):
            yield pytest.param(name, e.optimizer_error_input.desc, id=f"{name}-{e.optimizer_error_input.desc}")
        for e in tt.cuda_only_error_inputs(name):
            yield pytest.param(
                name,
                e.optimizer_error_input.desc,
                id=f"{name}-{e.optimizer_error_input.desc}-cuda",
                marks=pytest.mark.skip(
                    reason="CUDA-only entry of torch's optim_db (tests/test_hyper.py checks it on CPU)"
                ),
            )


def raised(cls, error_input):
    """What constructing (and, for a step error, stepping) ``cls`` raises or warns: (type, message)."""
    inp = error_input.optimizer_error_input
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = cls(inp.params, **inp.kwargs)
            if error_input.error_on == tt.OptimizerErrorEnum.STEP_ERROR:
                opt.step()
        except Exception as err:  # noqa: BLE001 - compared with the table's expectation
            return type(err), str(err)
    matching = [w for w in caught if issubclass(w.category, error_input.error_type)]
    return (matching[0].category, str(matching[0].message)) if matching else None


@pytest.mark.parametrize("name, desc", list(error_cases()))
def test_error_inputs_raise_torchs_error(name, desc):
    error_input = next(e for e in tt.error_inputs(name) if e.optimizer_error_input.desc == desc)
    expected, pattern = error_input.error_type, error_input.error_regex
    judge = raised(tt.THEIRS[name], error_input)
    assert judge is not None and issubclass(judge[0], expected)  # the table is right about torch
    error_input = next(e for e in tt.error_inputs(name) if e.optimizer_error_input.desc == desc)  # fresh tensors
    mine = raised(tt.OURS[name], error_input)
    assert mine is not None, f"torch raises {judge}; we accept {desc!r}"
    assert mine[0] is judge[0], f"torch raises {judge[0].__name__}, we {mine[0].__name__}: {mine[1]}"
    assert re.search(pattern, mine[1]), f"our message {mine[1]!r} lacks torch's wording {pattern!r}"
    assert mine[1].startswith(judge[1].split(" (")[0].rstrip(".")), f"torch: {judge[1]!r}; ours: {mine[1]!r}"


def test_the_table_is_what_these_tests_expect():
    """Counts, so a torch upgrade that changes the table is noticed: 5 CPU configurations and 14
    CPU error inputs per class, capturable configurations only on CUDA, and skips that apply
    only under torch.compile (dynamo)."""
    for name in tt.NAMES:
        assert len(tt.optim_inputs(name)) == 5
        assert len(tt.error_inputs(name)) == 12 and len(tt.cuda_only_error_inputs(name)) == 2
        assert {inp.desc for inp in tt.cuda_only_inputs(name)} == {
            "capturable",
            "capturable, amsgrad",
            "Tensor lr with capturable and amsgrad",
            "Tensor lr, Tensor betas, with capturable and amsgrad",
            "Tensor lr, Tensor betas, with capturable",
        }
        assert set(tt.INFOS[name].supported_impls) == {"foreach", "differentiable", "fused"}
        for test in ("test_complex_2d", "test_defaults_changed_to_foreach", "test_fused_matches_forloop"):
            assert tt.skip_reason(name, test) is None
