"""The triton backend against the loop backend: on the CPU under Triton's interpreter, and
compiled on a CUDA GPU when one is present.

``TRITON_INTERPRET=1`` must be set before Triton decorates the kernel, and must not leak into
the other tests of this pytest process, so every check runs in one subprocess per device (this
file run as a script), which prints one JSON line per case; the tests below read those lines.
On CUDA the same cases compare the compiled kernel with the loop backend on the same GPU.

Each case steps several tensors (sizes not multiples of the block size, a 1-element one, a
non-contiguous one, a zero-size one) for 20 steps with a gradient and lr that change every
step, and compares parameters and all state against the loop backend:

* fp32: every element within a few fp32 ulps (the kernel's sqrt is correctly rounded,
  torch's vectorized CPU sqrt is not always; everything else is in torch's order, FMAs
  included);
* bf16 / fp16 (moments kept in the parameter's dtype, as torch does): the kernel computes in
  fp32 and rounds once per stored tensor, so it is compared with the loop backend run in fp32
  on the same values and rounded to bf16/fp16 after every step (the same arithmetic), to
  within one rounding step, and loosely with the loop backend run in bf16/fp16 directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

DTYPES = ("float32", "bfloat16", "float16")
DECAYS = ("adamw", "adamw_indep", "adam_l2", "adamw_corrected", "adamw_cautious")  # decoupled.conventions keys
CASES = [
    (dtype, decay, amsgrad, maximize)
    for dtype in DTYPES
    for decay in DECAYS
    for amsgrad in (False, True)
    for maximize in (False, True)
    if (dtype != "float16" or (not amsgrad and not maximize))
    and (dtype == "float32" or decay in DECAYS[:3])  # the newer conventions differ only in their scalars
]
STEPS = 20
# 1030 elements: two blocks of 1024, the second one almost empty; the last one is transposed
SHAPES = [(1030,), (3, 7), (1,), (0,), (20, 33)]


def _run_case(dtype_name: str, decay: str, amsgrad: bool, maximize: bool, device: str = "cpu") -> dict:
    import torch

    from decoupled import backends, conventions
    from decoupled.rule import group_coefficients

    dtype = getattr(torch, dtype_name)

    def fresh(seed):
        gen = torch.Generator().manual_seed(seed)
        params = [torch.randn(s, generator=gen).to(device) for s in SHAPES]
        params[-1] = params[-1].t()  # non-contiguous
        return params

    def grads(step):
        gen = torch.Generator().manual_seed(1000 + step)
        scale = 2.0 if step % 4 == 0 else 0.5  # v rises and falls, so amsgrad's maximum matters
        out = [(torch.randn(s, generator=gen) * scale).to(device) for s in SHAPES]
        out[-1] = out[-1].t()
        return out

    def run(backend: str, compute_dtype, store_dtype):
        params = [p.to(store_dtype) for p in fresh(0)]
        state = {k: [torch.zeros_like(p) for p in params] for k in ("m", "v", "vmax")}
        steps = [torch.tensor(float(i % 2)) for i in range(len(params))]  # two step counts
        for k in range(STEPS):
            c = group_coefficients(
                lr=1e-2 * (1 + k % 3),
                beta1=0.9,
                beta2=0.999,
                eps=1e-8,
                weight_decay=0.1,
                convention=conventions.get(decay),
                lr_max=3e-2,
                amsgrad=amsgrad,
                maximize=maximize,
            )
            g = [x.to(store_dtype) for x in grads(k)]
            for t in steps:
                t += 1
            if compute_dtype == store_dtype:
                backends.BACKENDS[backend](params, g, state["m"], state["v"], state["vmax"], steps, c)
            else:  # compute in fp32, store rounded: the kernel's arithmetic, with the loop backend
                up = lambda ts: [t.to(compute_dtype) for t in ts]  # noqa: E731
                p32, m32, v32, vm32 = up(params), up(state["m"]), up(state["v"]), up(state["vmax"])
                backends.BACKENDS[backend](p32, up(g), m32, v32, vm32, steps, c)
                for dst, src in zip((params, state["m"], state["v"], state["vmax"]), (p32, m32, v32, vm32)):
                    for d, s in zip(dst, src):
                        d.copy_(s)
        return {"param": params, "exp_avg": state["m"], "exp_avg_sq": state["v"], "max_exp_avg_sq": state["vmax"]}

    def compare(a, b):
        """Max over tensors of max|a - b| / max|a| (0 for zero-size), and whether dtypes match."""
        worst = 0.0
        for key in a:
            for x, y in zip(a[key], b[key]):
                if x.dtype != y.dtype or x.shape != y.shape:
                    return {"error": f"{key}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"}
                if x.numel():
                    scale = x.double().abs().max().item() or 1.0
                    worst = max(worst, (x.double() - y.double()).abs().max().item() / scale)
        return {"rel": worst}

    triton_result = run("triton", dtype, dtype)
    out = {"case": [dtype_name, decay, amsgrad, maximize]}
    out["vs_loop"] = compare(run("loop", dtype, dtype), triton_result)
    if dtype != torch.float32:
        out["vs_loop_fp32_rounded"] = compare(run("loop", torch.float32, dtype), triton_result)
    finite = all(bool(t.isfinite().all()) for ts in triton_result.values() for t in ts)
    moved = any(not torch.equal(p, q.to(dtype)) for p, q in zip(triton_result["param"], fresh(0)) if p.numel())
    out["finite"], out["moved"] = finite, moved
    return out


def _main(device: str) -> None:
    assert (os.environ.get("TRITON_INTERPRET") == "1") == (device == "cpu")
    import torch

    from decoupled import backends, functional

    assert backends.get("triton").unsupported_reason(backends.kinds_of([torch.zeros(1, device=device)])) is None
    for case in CASES:
        print(json.dumps(_run_case(*case, device=device)), flush=True)
    # through the functional API, with complex parameters (updated as real pairs, like loop)
    results = {}
    for backend in ("loop", "triton"):
        gen = torch.Generator().manual_seed(3)
        p = torch.randn(513, dtype=torch.complex64, generator=gen).to(device)
        m, v, t = torch.zeros_like(p), torch.zeros_like(p), torch.zeros(())
        for _ in range(5):
            g = torch.randn(513, dtype=torch.complex64, generator=gen).to(device)
            functional.adamw(
                [p], [g], [m], [v], [], [t], lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, backend=backend
            )
        results[backend] = (p, m, v)
    rel = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(results["loop"], results["triton"]))
    print(json.dumps({"case": "complex64 via functional.adamw", "vs_loop": {"rel": rel}}), flush=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(
    scope="module",
    params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda(), reason="no CUDA GPU here"))],
)
def results(request) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if request.param == "cpu":
        env["TRITON_INTERPRET"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, request.param], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {json.dumps(r["case"]): r for r in lines}


# fp32: a few ulps after 20 steps; bf16/fp16 against the same arithmetic: one rounding step
# (2**-8 relative for bf16, 2**-11 for fp16) of the largest element; against the loop in
# bf16/fp16 arithmetic (which rounds every intermediate): a few percent.
TOLERANCE = {
    "float32": {"vs_loop": 1e-6},
    "bfloat16": {"vs_loop_fp32_rounded": 2**-8, "vs_loop": 0.1},
    "float16": {"vs_loop_fp32_rounded": 2**-11, "vs_loop": 1e-2},
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_triton_matches_loop(results, case):
    r = results[json.dumps(list(case))]
    assert r["finite"] and r["moved"], r
    for key, tol in TOLERANCE[case[0]].items():
        assert "error" not in r[key], r[key]
        assert r[key]["rel"] <= tol, (key, r[key], tol)


def test_triton_complex_params(results):
    r = results[json.dumps("complex64 via functional.adamw")]
    assert r["vs_loop"]["rel"] <= 1e-6


def test_triton_unsupported_without_gpu_or_interpreter():
    import torch

    from decoupled import backends

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs the interpreter")
    triton = backends.get("triton")
    reason = triton.unsupported_reason(backends.kinds_of([torch.zeros(1)]))
    assert reason is not None and "CUDA" in reason
    assert "float64" in triton.unsupported_reason(backends.kinds_of([torch.zeros(1, dtype=torch.float64)]))
    assert backends.resolve("auto", backends.kinds_of([torch.zeros(1)])).name == "fused"  # never triton on CPU


if __name__ == "__main__":
    _main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
