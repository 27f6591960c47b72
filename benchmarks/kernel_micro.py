"""The native kernel's loops without Python: ns per element of one step, per state format, for
one or more builds (``-march`` targets or extra flags), and whether the builds compute the same
bits (a hash of the state after the timed steps). The last three rows are the memory floors: a
loop with the traffic of a step with float32, bf16 or 8-bit moments (28, 20, 16 bytes per
element) and almost no arithmetic, threaded as the kernel is; a format's distance from its floor
is what its arithmetic costs (at 64M, 2 threads, on the 2-core Intel Xeon: bf16 moments 0.49
against 0.45, 8-bit 0.48 against 0.39).

    python benchmarks/kernel_micro.py                                # this CPU, one core, 64K elements (in L2)
    python benchmarks/kernel_micro.py --march native,x86-64-v3,x86-64-v2
    python benchmarks/kernel_micro.py --elements 64M --threads 2     # memory-bound, every core
    python benchmarks/kernel_micro.py --elements 64M --threads 2 --rounds 3 \
        --flags=-DDECOUPLED_PAGE_AHEAD=0 --flags=                  # a knob off against the default

Each build is ``benchmarks/kernel_micro.cpp`` (which includes ``kernel.cpp`` with
``DECOUPLED_KERNEL_STANDALONE``) compiled with the flags of :mod:`decoupled.native.build`,
``-march`` replaced, plus one ``--flags`` set (one build per target and set). With ``--rounds``
the builds run in turn, round after round, and each case shows its median over the rounds: a
machine whose speed drifts within minutes (this project's VMs) then drifts under every build
alike, where builds run one after the other would each see another machine. A target the CPU
cannot run fails with an illegal instruction: pick targets this CPU has (``x86-64-v3`` is AVX2 +
FMA + F16C; ``x86-64-v2`` has no F16C, so the 8-bit loop runs the scalar codes).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from decoupled.bench.layouts import parse_size
from decoupled.native import build

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "kernel_micro.cpp"


def compile_for(march: str, extra: list[str], out: Path) -> Path:
    """The harness built for ``-march=<march>`` plus ``extra`` flags, at ``out``."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise SystemExit(f"no C++ compiler found (looked for {compiler!r}; set CXX to choose one)")
    flags = [f"-march={march}" if f == "-march=native" else f for f in build.FLAGS]
    include = Path(build.SOURCE).parent
    command = [compiler, *flags, *extra, "-DDECOUPLED_KERNEL_STANDALONE", f"-I{include}", str(SOURCE), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building for {march} failed:\n{done.stderr[-3000:]}")
    return out


def run(binary: Path, elements: int, steps: int, threads: int) -> dict[str, tuple[float, str]]:
    """{case: (ns per element, state hash)} from one run of a build."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(binary), str(elements), str(steps)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{binary.name} failed (exit {done.returncode}; an instruction set this CPU lacks?)")
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        name, ns, digest = line[:32].strip(), *line[32:].split()
        rows[name] = (float(ns), digest)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--march", default="native", help="comma-separated -march targets (default: native)")
    ap.add_argument(
        "--flags",
        action="append",
        help="extra compiler flags of one build, e.g. -mprefer-vector-width=512; repeat to compare "
        "builds (--flags= is the build without extra flags)",
    )
    ap.add_argument("--elements", default="64k", help="elements per step (k/M = 2**10/2**20; default 64k: in L2)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: about 2 s per case)")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads (default 1)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of every build, in turn (default 1)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    elements = parse_size(args.elements)
    steps = args.steps or max(5, int(2e9 / (elements * 1.0)) // 10)
    marches = list(dict.fromkeys(m.strip() for m in args.march.split(",") if m.strip()))
    flag_sets = list(dict.fromkeys(f.strip() for f in args.flags or [""]))
    builds = [
        (march if len(flag_sets) == 1 else f"{march} {flags or '(none)'}", march, flags)
        for march in marches
        for flags in flag_sets
    ]
    cpu = build._cpu_signature().splitlines()[0].split(":", 1)[-1].strip() or platform.processor()
    print(
        f"CPU: {cpu}; {elements:,} elements, {steps} steps, {args.threads} thread(s), {args.rounds} round(s); "
        f"flags: {' '.join(build.FLAGS)}"
    )
    runs: dict[str, list[dict[str, tuple[float, str]]]] = {label: [] for label, _, _ in builds}
    with tempfile.TemporaryDirectory() as tmp:
        binaries = {
            label: compile_for(march, flags.split(), Path(tmp) / f"kernel_micro_{i}")
            for i, (label, march, flags) in enumerate(builds)
        }
        for _ in range(args.rounds):
            for label, binary in binaries.items():
                runs[label].append(run(binary, elements, steps, args.threads))
    labels = list(runs)
    cases = list(runs[labels[0]][0])
    width = max(12, *(len(t) + 2 for t in labels))
    print(f"{'ns per element':32s}" + "".join(f"{t:>{width}s}" for t in labels))
    for case in cases:
        print(f"{case:32s}" + "".join(f"{statistics.median(r[case][0] for r in runs[t]):>{width}.3f}" for t in labels))
    differ = [c for c in cases if len({r[c][1] for t in labels for r in runs[t]}) > 1]
    if len(labels) > 1 or args.rounds > 1:
        print("same bits in every build" if not differ else f"DIFFERENT BITS: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
