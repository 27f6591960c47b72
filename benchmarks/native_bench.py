"""Interleaved step times of the native kernels against torch.optim.AdamW(fused=True) (fp32).

Every contender steps its own copy of the same parameters (one flat tensor, or GPT-2's 148
tensors, at ``--size`` parameters in total); one round steps each contender once, in turn,
and each contender's time is the median over ``--rounds`` rounds after a warm-up, so a busy
moment of a shared machine slows every contender alike. Prints a Markdown table with the
ratio to the reference (above 1 is faster), the bytes moved per parameter (parameter read and
written, gradient read, state read and written) and the resulting GB/s, and writes JSON.

    PYTHONPATH=src python benchmarks/native_bench.py --size 64M --threads 2 --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

import torch

from decoupled.bench import layouts, peers
from decoupled.bench.native_peers import NativeFormats
from decoupled.formats import native

REFERENCE = "torch.optim.AdamW(fused=True) fp32"


def contenders(dtype_names: list[str], deepspeed: bool, arena: bool) -> list[tuple[str, torch.dtype, object]]:
    """(name, parameter dtype, factory) of every row."""
    f32, bf16 = torch.float32, torch.bfloat16
    rows = [(REFERENCE, f32, lambda ps: torch.optim.AdamW(ps, **peers.HYPER, fused=True))]
    rows += [
        ("native fp32 (torch layout)", f32, lambda ps: NativeFormats(ps, layout="torch")),
        ("native fp32, cautious decay (torch layout)", f32,
         lambda ps: NativeFormats(ps, layout="torch", cautious_decay=True)),
        ("native moments=bf16", f32, lambda ps: NativeFormats(ps, moments="bf16")),
        ("native moments=float8", f32, lambda ps: NativeFormats(ps, moments="float8")),
        ("native moments=8bit (tree)", f32, lambda ps: NativeFormats(ps, moments="8bit")),
    ]
    if "bf16" in dtype_names:
        rows += [
            ("torch.optim.AdamW(fused=True) bf16", bf16, lambda ps: torch.optim.AdamW(ps, **peers.HYPER, fused=True)),
            ("native bf16 params, kahan", bf16, lambda ps: NativeFormats(ps, param_rounding="kahan")),
            ("native bf16 params, stochastic", bf16, lambda ps: NativeFormats(ps, param_rounding="stochastic")),
            ("native bf16 params, stochastic, moments=float8", bf16,
             lambda ps: NativeFormats(ps, moments="float8", param_rounding="stochastic")),
        ]
    if arena:  # the same formats on the float32 arena (decoupled.formats.execute), as decoupled.AdamW runs them today
        import decoupled

        arena_rows = (
            ("moments=bf16", f32, dict(moments="bf16")),
            ("moments=8bit (tree)", f32, dict(moments="8bit")),
            ("bf16 params, stochastic", bf16, dict(param_rounding="stochastic")),
        )
        rows += [
            (f"arena {text}", dt, lambda ps, kw=kw: decoupled.AdamW(ps, **peers.HYPER, **kw))
            for text, dt, kw in arena_rows
            if dt == f32 or "bf16" in dtype_names
        ]
    if deepspeed:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        rows.append(("deepspeed DeepSpeedCPUAdam fp32", f32,
                     lambda ps: DeepSpeedCPUAdam(ps, **peers.HYPER, adamw_mode=True)))
    return rows


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim())


def measure(layout: str, n: int, rounds: int, rows) -> list[dict]:
    shapes = layouts.shapes_for(layout, n)
    numel = sum(torch.Size(s).numel() for s in shapes)
    live = []
    for name, dtype, make in rows:
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(dtype) * 1e-3
        opt = make(ps)
        opt.step()
        opt.step()
        live.append((name, dtype, opt, []))
    for _ in range(rounds):
        for _, _, opt, times in live:
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    ref = statistics.median(live[0][3])
    out = []
    for name, dtype, opt, times in live:
        ms = statistics.median(times) * 1e3
        moved = 3 * dtype.itemsize + 2 * state_bytes(opt) / numel  # B/param: p r+w, g r, state r+w
        out.append(dict(layout=layout, numel=numel, tensors=len(shapes), name=name, ms=ms,
                        iqr=[q * 1e3 for q in statistics.quantiles(times, n=4)[::2]], ratio=ref * 1e3 / ms,
                        bytes_per_param=moved, gbs=moved * numel / ms / 1e6))
    del live
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64M")
    ap.add_argument("--layouts", default="single,gpt2")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--arena", action="store_true", help="also time the formats on today's float32 arena")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    native.build.kernel()
    info = dict(cpu=platform.processor() or platform.machine(), torch=torch.__version__, threads=args.threads,
                build_seconds=native.build.BUILD_SECONDS, kernel_ready_seconds=time.perf_counter() - start)
    rows = contenders(args.dtypes.split(","), args.deepspeed, args.arena)
    n = layouts.parse_size(args.size)
    results = [r for layout in args.layouts.split(",") for r in measure(layout, n, args.rounds, rows)]
    print(f"{info}\n\n| layout | contender | ms | IQR | vs {REFERENCE} | B/param moved | GB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} ({r['tensors']}) | {r['name']} | {r['ms']:.1f} | {r['iqr'][0]:.1f}-{r['iqr'][1]:.1f} | "
              f"{r['ratio']:.2f}x | {r['bytes_per_param']:.2f} | {r['gbs']:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(info=info, results=results), f, indent=1)


if __name__ == "__main__":
    main()
