"""Peak host memory (RSS) of loading an optimizer checkpoint and of the first step (issue 10).

For each case a fresh Python process builds the parameters (``--params`` million float32
elements in 2M-element tensors) and their gradients, then measures one phase:

``load``
    ``torch.load(path, weights_only=True)`` of a checkpoint saved by the same optimizer after
    one step, then ``optimizer.load_state_dict``. Before: parameters, gradients and an
    optimizer that has not stepped (no state).
``step``
    the first ``optimizer.step()`` (state allocated, then updated). Before: parameters and
    gradients.

The peak is the process's high-water mark (``VmHWM`` of /proc/self/status), reset just
before the phase by writing 5 to /proc/self/clear_refs; the table shows it and what the
process holds after the phase (``VmRSS``), both above the resident set just before the phase.
The state itself is 8 bytes per parameter for fp32 moments (2 x 4), 4 for bf16 and about
2.03 for 8-bit: the ideal for both phases is the state plus a bounded scratch.

Usage (from a checkout)::

    python benchmarks/memory.py [--params 50] [--json out.json]

Linux only (procfs). Each case runs once; RSS is a per-process measure, so other processes on
the machine do not change it, but page-cache and allocator behaviour can move it by a few MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MiB = 2**20
CHUNK = 2_000_000  # elements per parameter tensor

# (label, optimizer, moments option of decoupled.AdamW)
CASES = [
    ("torch.optim.AdamW (fp32)", "torch", None),
    ("decoupled.AdamW moments='param' (fp32)", "decoupled", "param"),
    ("decoupled.AdamW moments='bf16'", "decoupled", "bf16"),
    ("decoupled.AdamW moments='8bit'", "decoupled", "8bit"),
]
PHASES = ("load", "step")


def _status(key: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux procfs is needed)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _setup(params_m: int, which: str, moments: str | None):
    import torch

    import decoupled

    torch.manual_seed(0)
    n = params_m * 1_000_000
    sizes = [CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else [])
    params = [torch.randn(s).requires_grad_() for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p)
    if which == "torch":
        opt = torch.optim.AdamW(params, lr=1e-3)
    else:
        opt = decoupled.AdamW(params, lr=1e-3, moments=moments)
    return params, opt


def worker(spec: dict) -> dict:
    """Run one (optimizer, moments, phase) in this process; return its memory figures in bytes."""
    import gc

    import torch

    torch.set_num_threads(1)
    params, opt = _setup(spec["params_m"], spec["which"], spec["moments"])
    if spec["phase"] == "save":
        opt.step()
        torch.save(opt.state_dict(), spec["path"])
        return {"bytes": os.path.getsize(spec["path"])}
    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    if spec["phase"] == "load":
        opt.load_state_dict(torch.load(spec["path"], weights_only=True))
    else:
        opt.step()
    gc.collect()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return {"peak": _status("VmHWM") - before, "after": _status("VmRSS") - before, "state": state}


def run_worker(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    import decoupled
    from decoupled.bench.machine import cpu_model, git_commit, memory_gib

    mem = memory_gib()
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {mem.get('MemTotal', 0):.1f} GiB RAM "
        f"({mem.get('MemAvailable', 0):.1f} available); Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"decoupled {decoupled.__version__} ({git_commit()}); 1 torch thread per process"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=50, help="million parameters (default 50)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, which, moments in CASES:
            path = os.path.join(tmp, f"{which}-{moments}.pt")
            base = dict(params_m=args.params, which=which, moments=moments, path=path)
            row = {"case": label, "checkpoint": run_worker({**base, "phase": "save"})["bytes"]}
            for phase in PHASES:
                row[phase] = run_worker({**base, "phase": phase})
            rows.append(row)
    header = (
        f"Peak RSS above the process's resident set before the phase, {args.params}M float32 parameters "
        f"(MiB; 'held' = still resident after the phase; 'state' = the optimizer's tensors)\n{machine()}\n"
    )
    lines = [
        "| optimizer | checkpoint | load: peak | load: held | first step: peak | first step: held | state |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["checkpoint"], r["load"]["peak"], r["load"]["after"], r["step"]["peak"], r["step"]["after"]]
        lines.append(
            f"| {r['case']} | " + " | ".join(f"{c / MiB:.0f}" for c in cells) + f" | {r['step']['state'] / MiB:.0f} |"
        )
    print(header + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "params_m": args.params, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
