"""Kernel-level timings of one optimizer step on a GPU (issue 14): how far each Triton kernel is
from torch's fused step and from the copy bandwidth, and which launch settings serve it best.

At one size (default 128M parameters in one tensor, far beyond the L2 cache), in this order, each
measurement written to ``tune.json`` and ``tune.md`` as soon as it is taken (a run stopped by a
time limit keeps what it measured; ``--deadline`` stops it cleanly before):

1. copy bandwidth (``dst.copy_(src)``, bytes read + written) and in-place ``a += b``;
2. torch's fused AdamW kernel (``torch._fused_adamw_`` through the fused backend) on fp32 and on
   bf16 parameters (with bf16 state), the references;
3. ``bitsandbytes.optim.AdamW8bit`` (its ``step()``), when importable;
4. the triton backend's fp32 kernel and every format of the formats' Triton executor
   (:mod:`decoupled.formats.triton`) at their default launch settings;
5. the same over BLOCK in {1024, 2048, 4096} x num_warps in {4, 8} (the environment variables
   ``DECOUPLED_TRITON_[FORMAT_]BLOCK`` / ``_NUM_WARPS``, read at launch).

Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls); on a
CPU (a dry run under ``TRITON_INTERPRET=1``) the median of three calls. GB/s counts the ideal
bytes of each format: parameter read and written, gradient read, every state tensor read and
written. ``first s``: the first call, compile included.

    python benchmarks/gpu_tune.py --out DIR [--size 128M] [--deadline 150]
    python benchmarks/gpu_tune.py --out /tmp/warm --size 64k --warm   # compile first (in parallel)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from decoupled import backends, formats  # noqa: E402
from decoupled.bench import machine  # noqa: E402
from decoupled.bench.layouts import format_size, parse_size  # noqa: E402
from decoupled.formats import triton as triton_formats  # noqa: E402

GRID = [(block, warps) for block in (1024, 2048, 4096) for warps in (4, 8)]
# (parameter dtype, moments, param_rounding), most wanted first
FORMATS = [
    ("float32", "8bit", "nearest"),
    ("float32", "bf16", "nearest"),
    ("bfloat16", "param", "stochastic"),
    ("bfloat16", "param", "kahan"),
    ("bfloat16", "8bit", "stochastic"),
    ("float32", "fp32", "nearest"),  # the same bytes as torch's fp32 step
    ("bfloat16", "param", "nearest"),  # bf16 moments to nearest: with the next, the cost of random bits
    ("bfloat16", "bf16", "nearest"),
]
ENV = {"backend": "DECOUPLED_TRITON", "formats": "DECOUPLED_TRITON_FORMAT"}


def coefficients():
    """AdamW's coefficients (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-2)."""
    from decoupled.rule import group_coefficients

    return group_coefficients(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2)  # torch's AdamW


def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    def __init__(self, args, device: torch.device) -> None:
        self.args, self.device, self.n = args, device, parse_size(args.size)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.deadline
        self._params: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
        self.result = {
            "machine": machine.describe(device),
            "size": format_size(self.n),
            "numel": self.n,
            "bandwidth": {},
            "rows": [],
            "skipped": [],
            "errors": [],
        }

    def late(self, what: str) -> bool:
        if time.monotonic() < self.deadline:
            return False
        self.result["skipped"].append(what)
        return True

    def write(self) -> None:
        (self.out / "tune.json").write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        (self.out / "tune.md").write_text(markdown(self.result))

    def measure(self, row: dict, fn, bytes_per_param: float, env: dict[str, str] | None = None) -> None:
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            _sync(self.device)
            start = time.perf_counter()
            fn()  # compiles
            _sync(self.device)
            first = time.perf_counter() - start
            if self.args.warm:
                print(f"compiled {row} in {first:.1f} s", flush=True)
                return
            ms = time_ms(fn, self.device)
        except Exception as err:  # record it and go on: one failing kernel must not end the run
            self.result["errors"].append({**row, "error": f"{type(err).__name__}: {err}"[:400]})
            print(f"error: {row}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            self.write()
            return
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        gbs = bytes_per_param * self.n / (ms * 1e-3) / 1e9
        row = {**row, "ms": ms, "first_s": first, "bytes_per_param": bytes_per_param, "gbs": gbs}
        self.result["rows"].append(row)
        add_ratios(self.result)
        print(json.dumps(row), flush=True)
        self.write()

    def params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A parameter ~ N(0, 0.02^2) and its gradient ~ N(0, 1e-3^2), made once per dtype on the
        device and shared by the measurements (each steps it further; the values stay typical)."""
        if dtype not in self._params:
            gen = torch.Generator(device=self.device).manual_seed(0)
            p = torch.randn(self.n, generator=gen, device=self.device) * 0.02
            g = torch.randn(self.n, generator=gen, device=self.device) * 1e-3
            self._params[dtype] = (p.to(dtype), g.to(dtype))
        return self._params[dtype]


def add_ratios(result: dict) -> None:
    rows = result["rows"]
    fused = {r["params"]: r["ms"] for r in rows if r["kernel"] == "torch fused"}
    copy = result["bandwidth"].get("copy_gbs")
    for r in rows:
        r["vs_fused_fp32"] = fused["float32"] / r["ms"] if "float32" in fused else None
        r["vs_fused_same_dtype"] = fused[r["params"]] / r["ms"] if r["params"] in fused else None
        r["pct_copy"] = 100 * r["gbs"] / copy if copy else None


def markdown(result: dict) -> str:
    m = result["machine"]
    gpu = m.get("gpu", {})
    bw = result["bandwidth"]
    lines = [
        f"# Kernel timings, {result['size']} parameters, one tensor",
        "",
        f"{gpu.get('name', m['device'])}, torch {m['torch']}, triton {m['versions'].get('triton')}, "
        f"CUDA {gpu.get('cuda')}, {m['date']}",
        "",
        f"copy {bw.get('copy_gbs', 0):.0f} GB/s, a += b {bw.get('update_gbs', 0):.0f} GB/s (bytes read + written)",
        "",
        "| kernel | params | moments | rounding | BLOCK | warps | ms | GB/s | % copy | vs fused fp32 "
        "| vs fused same dtype | first s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda x, spec: "" if x is None else format(x, spec)  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {r['kernel']} | {r['params']} | {r.get('moments', '')} | {r.get('rounding', '')} | "
            f"{r.get('block', '')} | {r.get('warps', '')} | {r['ms']:.3f} | {r['gbs']:.0f} | "
            f"{fmt(r['pct_copy'], '.0f')} | {fmt(r['vs_fused_fp32'], '.2f')} | "
            f"{fmt(r['vs_fused_same_dtype'], '.2f')} | {r['first_s']:.1f} |"
        )
    for e in result["errors"]:
        lines.append(f"\nerror: {e}")
    if result["skipped"]:
        lines.append("\nnot measured (deadline): " + "; ".join(result["skipped"]))
    return "\n".join(lines) + "\n"


def bandwidth(run: Run) -> None:
    n = max(run.n, 1 << 20)
    a = torch.empty(n, device=run.device)
    b = torch.rand(n, device=run.device)
    a.zero_()
    run.result["bandwidth"] = {
        "elements": n,
        "copy_gbs": 8 * n / (time_ms(lambda: a.copy_(b), run.device) * 1e-3) / 1e9,
        "update_gbs": 12 * n / (time_ms(lambda: a.add_(b), run.device) * 1e-3) / 1e9,
    }
    print(json.dumps(run.result["bandwidth"]), flush=True)
    run.write()


def torch_fused(run: Run, dtype_name: str) -> None:
    if backends.get("fused").unsupported_reason(frozenset({(run.device.type, getattr(torch, dtype_name))})):
        return
    p, g = run.params(getattr(torch, dtype_name))
    m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.tensor(10.0)
    c = coefficients()
    fn = lambda: backends.BACKENDS["fused"]([p], [g], [m], [v], [], [step], c)  # noqa: E731
    element = p.element_size()
    run.measure({"kernel": "torch fused", "params": dtype_name, "moments": "param"}, fn, 7 * element)


def bitsandbytes_8bit(run: Run) -> None:
    try:
        import bitsandbytes as bnb
    except Exception as err:
        run.result["errors"].append({"kernel": "bitsandbytes AdamW8bit", "error": f"not importable: {err}"[:300]})
        return
    p, g = run.params(torch.float32)
    param = torch.nn.Parameter(p)
    param.grad = g
    opt = bnb.optim.AdamW8bit([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    state_bytes = 2 * (1 + 4 / 256)  # two uint8 moments, a float32 absmax per 256
    row = {"kernel": "bitsandbytes AdamW8bit", "params": "float32", "moments": "8bit", "version": bnb.__version__}
    run.measure(row, opt.step, 12 + 2 * state_bytes)


def triton_backend(run: Run, block: int | None, warps: int | None) -> None:
    p, g = run.params(torch.float32)
    m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.tensor(10.0)
    c = coefficients()
    fn = lambda: backends.BACKENDS["triton"]([p], [g], [m], [v], [], [step], c)  # noqa: E731
    env = {} if block is None else {"DECOUPLED_TRITON_BLOCK": str(block), "DECOUPLED_TRITON_NUM_WARPS": str(warps)}
    from decoupled.backends.triton import launch_config

    shown = (block, warps) if block is not None else launch_config()
    run.measure({"kernel": "triton backend", "params": "float32", "block": shown[0], "warps": shown[1]}, fn, 28, env)


def format_executor(run: Run, case: tuple[str, str, str], block: int | None, warps: int | None) -> None:
    dtype_name, moments, rounding = case
    p, g = run.params(getattr(torch, dtype_name))
    fmt = formats.get(moments)
    state = {"step": torch.tensor(10.0)}
    for name in ("exp_avg", "exp_avg_sq"):
        state.update(formats.allocate(p, fmt, name))
    if rounding == "kahan":
        state.update(formats.compensation_buffer(p))
    state_bytes = sum(t.numel() * t.element_size() for k, t in state.items() if k != "step") / p.numel()
    c = coefficients()
    fn = lambda: triton_formats.step([p], [g], [state], c, moments=fmt, rounding=rounding)  # noqa: E731
    env = {}
    if block is not None:
        env = {"DECOUPLED_TRITON_FORMAT_BLOCK": str(block), "DECOUPLED_TRITON_FORMAT_NUM_WARPS": str(warps)}
    shown = (block, warps) if block is not None else triton_formats.launch_config()
    row = {"kernel": "formats.triton", "params": dtype_name, "moments": moments, "rounding": rounding}
    row.update(block=shown[0], warps=shown[1])
    run.measure(row, fn, 3 * p.element_size() + 2 * state_bytes, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="128M")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds; later measurements are skipped")
    parser.add_argument("--grid", default=",".join(f"{b}x{w}" for b, w in GRID), help="BLOCKxWARPS,...")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="only compile every kernel variant once (Triton caches them on disk for the timed run; use a small "
        "--size, which compiles the same kernels)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    grid = [tuple(int(x) for x in item.split("x")) for item in args.grid.split(",") if item]
    run = Run(args, device)
    steps = []
    if not args.warm:
        steps.append(("bandwidth", lambda: bandwidth(run)))
        steps += [(f"torch fused {d}", lambda d=d: torch_fused(run, d)) for d in ("float32", "bfloat16")]
        if device.type == "cuda":
            steps.append(("bitsandbytes AdamW8bit", lambda: bitsandbytes_8bit(run)))
    steps.append(("triton backend default", lambda: triton_backend(run, None, None)))
    steps += [(f"formats.triton {c} default", lambda c=c: format_executor(run, c, None, None)) for c in FORMATS]
    steps += [(f"triton backend {b}x{w}", lambda b=b, w=w: triton_backend(run, b, w)) for b, w in grid]
    steps += [
        (f"formats.triton {c} {b}x{w}", lambda c=c, b=b, w=w: format_executor(run, c, b, w))
        for c in FORMATS
        for b, w in grid
    ]
    for name, step in steps:
        if run.late(name):
            continue
        step()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.warm:
        run.write()
        print((run.out / "tune.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
