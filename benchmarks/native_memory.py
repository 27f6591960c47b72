"""Peak memory of creating and of loading formatted optimizer state, each in a fresh process.

For ``--size`` float32 parameters (default 50M), each case runs in its own subprocess and
reports the peak resident set (VmHWM) above the memory in use once the parameters (and
gradients) exist, next to the format's own state bytes:

* ``first step``: state allocated in the format and one native step (what the first
  ``optimizer.step()`` does);
* ``load``: a torch-layout fp32 checkpoint (``torch.save``; loaded with ``mmap=True``, so its
  pages are the file's, counted in VmHWM only as they are read) converted into the format,
  either piece by piece (``formats.base.transcode``) or with a float32 copy of each whole
  moment first (decode, then encode: what converting a checkpoint costs without it).

    PYTHONPATH=src python benchmarks/native_memory.py --size 50M
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASE = r"""
import json, sys, torch
from decoupled.formats import MOMENTS, allocate, native
from decoupled.formats.base import transcode
from decoupled.formats.dense import Dense
from decoupled.formats.float8 import BLOCKFLOAT8
from decoupled.rule import group_coefficients

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def peak():
    return status("VmHWM")

n, fmt_name, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
fmt = {**MOMENTS, "float8": BLOCKFLOAT8}[fmt_name]
torch.set_num_threads(1)
native.build.kernel()
allocate(torch.zeros(8), fmt, "exp_avg")  # imports (torch.distributed.tensor: about 40 MiB) before measuring
p = torch.randn(n)
g = torch.randn(n) if mode == "step" else None
base = status("VmRSS")  # the peak that follows is measured from the memory in use now
if mode == "step":
    state = {"step": torch.tensor(1.0), **allocate(p, fmt, "exp_avg"), **allocate(p, fmt, "exp_avg_sq")}
    c = group_coefficients(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, decay="decoupled")
    native.step([p], [g], [state], c, moments=fmt, rounding="nearest")
else:
    ckpt = torch.load(path, mmap=True)
    source = Dense("checkpoint", torch.float32)
    state = {}
    for moment in ("exp_avg", "exp_avg_sq"):
        if mode == "transcode":
            state.update(transcode(ckpt, source, fmt.for_param(p), p, moment))
        else:  # a float32 copy of the whole moment, then encoded
            state.update(fmt.for_param(p).encode(ckpt[moment].clone(), p, moment))
state_bytes = sum(t.numel() * t.element_size() for t in state.values() if t.dim())
print(json.dumps(dict(format=fmt_name, mode=mode, peak_above_params=peak() - base, state_bytes=state_bytes)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="50M")
    ap.add_argument("--formats", default="fp32,bf16,float8,8bit")
    ap.add_argument("--out")
    args = ap.parse_args()
    from decoupled.bench.layouts import parse_size

    n = parse_size(args.size)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ckpt.pt")
        subprocess.run([sys.executable, "-c", f"import torch; torch.save({{'exp_avg': torch.randn({n}), "
                        f"'exp_avg_sq': torch.rand({n})}}, {path!r})"], check=True)
        for fmt in args.formats.split(","):
            for mode in ("step", "transcode", "whole"):
                command = [sys.executable, "-c", CASE, str(n), fmt, mode, path]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr)
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ckpt_mib = 2 * n * 4 / 2**20
    print(f"{n:,} float32 parameters; peak RSS above parameters and gradients (MiB), and the state itself; "
          f"the loads include the checkpoint's {ckpt_mib:.0f} MiB of mmap'd file pages\n")
    print("| format | state | first step | load, piece by piece | load, whole float32 copy |\n|---|---|---|---|---|")
    by = {(r["format"], r["mode"]): r for r in results}
    mib = 2**20
    for fmt in args.formats.split(","):
        cells = [f"{by[(fmt, m)]['peak_above_params'] / mib:.0f}" for m in ("step", "transcode", "whole")]
        print(f"| {fmt} | {by[(fmt, 'step')]['state_bytes'] / mib:.0f} | {' | '.join(cells)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
