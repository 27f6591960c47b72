"""``decoupled bench``: time one AdamW step for every ``decoupled`` backend and the named peers.

For each size (about 1M, 16M and 128M parameters by default), layout (one flat tensor, and
GPT-2's 148 tensors scaled to that size) and parameter dtype (fp32, bf16 with bf16 state),
every contender steps the same parameters; the step time is the median of many after a
warm-up, with the spread. The machine's copy and triad bandwidth is measured in the same run,
so each row can say how close it is to the speed limit of a memory-bound update:

* ``ms``: median milliseconds per ``optimizer.step()`` (and the interquartile range);
* ``vs fused``: the time of ``torch.optim.AdamW(fused=True)`` at the same size, layout and
  dtype divided by this row's time (above 1 is faster than torch's fused kernel);
* ``B/p moved``: the bytes one step must move per parameter in the row's format (parameter read
  and written, gradient read, every state tensor read and written): 28 for fp32 AdamW, 20 with
  bf16 moments, about 16 with 8-bit ones;
* ``GB/s``: the ideal bytes of the row's format per parameter (parameter read and written,
  gradient read, every state tensor read and written: 28 B for fp32 AdamW, 14 B for bf16)
  times the parameter count, divided by the time;
* ``% bw``: that GB/s as a percentage of the measured bandwidth bound (the fastest of copy,
  triad and in-place update), marked when parameters, gradients and state fit in the
  last-level cache (then the step may run from the cache, and % bw can exceed 100);
* ``state B/p``: bytes of optimizer state per parameter.

Results go to ``results.json``, ``results.md`` and ``results.png`` in ``--out`` (default
``runs/bench``), with the machine, versions and the command line.

Example::

    decoupled bench                          # the full run (a few minutes on 2 cores)
    decoupled bench --sizes 16M --layouts gpt2 --dtypes fp32
    decoupled bench --quick                  # tiny sizes, few repeats (seconds)

Results go to ``runs/bench`` unless ``--out`` says otherwise. A bad argument (a size that does
not parse or is 0, a count below 1, an unknown layout, dtype or device, a device this build
cannot use, an ``--only`` word that names no contender) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..cli.args import UsageError, nonnegative_float, positive_float, positive_int
from ..native import build as native_build
from . import bandwidth, layouts, machine, peers, report
from .layouts import DTYPES
from .timing import Timing, make_params, time_case

QUICK = {
    "sizes": "64k",
    "repeats": 5,
    "min_repeats": 3,
    "warmup": 1,
    "budget": 0.2,
    "rounds": 1,
    "bandwidth_elements": 2**20,
}


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _sizes(text: str) -> str:
    """``--sizes``: comma-separated parameter counts, each >= 1 (k/M/G = 2**10/2**20/2**30)."""
    items = _split(text)
    if not items:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 16M")
    for item in items:
        try:
            n = layouts.parse_size(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a size: write a number of parameters, optionally followed by k, M or G "
                f"(2**10, 2**20, 2**30), e.g. 1M,16M"
            ) from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is {n} parameters; a size must be at least 1 parameter")
    return text


def _names(what: str, choices: tuple[str, ...]):
    """An argparse type for a comma-separated list of names from ``choices`` (returned as given)."""

    def check(text: str) -> str:
        items = _split(text)
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(choices)}"
            )
        return text

    return check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default="1M,16M,128M",
        help="parameter counts, e.g. 1M,16M,128M (k/M/G = 2**10/2**20/2**30)",
    )
    parser.add_argument(
        "--layouts",
        type=_names("layout", layouts.LAYOUTS),
        default=",".join(layouts.LAYOUTS),
        help="single (one tensor), gpt2 (GPT-2's 148 tensors)",
    )
    parser.add_argument(
        "--dtypes",
        type=_names("dtype", tuple(DTYPES)),
        default="fp32,bf16",
        help="parameter (and state) dtypes: fp32, bf16, fp16",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--only",
        default=None,
        help="time only contenders whose name contains one of these comma-separated words "
        "(the reference is always kept); each word must match a contender",
    )
    parser.add_argument("--repeats", type=positive_int, default=20, help="most timed steps per contender and case")
    parser.add_argument("--min-repeats", type=positive_int, default=5, help="fewest timed steps per contender and case")
    parser.add_argument(
        "--budget",
        type=positive_float,
        default=2.0,
        help="seconds of timed steps per contender and case (between the two limits above)",
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=2,
        help="untimed steps first, at least 1 (the first one allocates the state)",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds over the contenders")
    parser.add_argument(
        "--sequential", action="store_true", help="time contenders one after the other instead of interleaved"
    )
    parser.add_argument(
        "--bandwidth-elements",
        type=positive_int,
        default=256 * 2**20,
        help="float32 elements per array of the bandwidth test (1 GiB: well beyond the caches)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few repeats: checks that everything runs (numbers mean little); leaves out "
        "the contenders that compile on their first step (torch.compile, torchao: seconds to a minute "
        "each) unless --only names them",
    )
    parser.add_argument(
        "--out",
        default=str(Path("runs", "bench")),
        help="folder for results.json, results.md and results.png (default: runs/bench)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=nonnegative_float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS until other processes use under 20%% of the CPUs (shared machines)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def _apply_quick(args: argparse.Namespace, parser_defaults: dict) -> None:
    for key, value in QUICK.items():
        if getattr(args, key) == parser_defaults.get(key):
            setattr(args, key, value)


def _defaults() -> dict:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return vars(p.parse_args([]))


def _selected(contenders: list[peers.Contender], only: str | None) -> list[peers.Contender]:
    """The contenders ``--only`` names (and the reference); a word that matches none is a mistake."""
    if only is None:
        return contenders
    words = _split(only)
    unmatched = [w for w in words if not any(w in c.name for c in contenders)]
    if unmatched or not words:
        names = "; ".join(sorted({c.name for c in contenders}))
        what = f"{', '.join(map(repr, unmatched))} matches no contender" if words else "names no contender"
        raise UsageError(f"--only {only!r}: {what}; use words from their names: {names}")
    return [c for c in contenders if c.name == peers.REFERENCE or any(w in c.name for w in words)]


def _device(name: str | None) -> torch.device:
    """``--device``: cpu, or an accelerator this torch build has and can see (default: cuda if so)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu or cuda (cuda:N for the N-th GPU)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or device.type == "meta":
        raise UsageError(f"--device {name!r} cannot run the benchmark; use cpu or cuda")
    if not backend.is_available():
        why = " (this torch is a CPU-only build)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise UsageError(f"--device {name!r}: no {device.type} device is available here{why}; use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name!r}: there are {count} {device.type} device(s), numbered from 0")
    return device


def _out_folder(text: str) -> Path:
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {text!r} is a file; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {text!r}: cannot create the folder ({err.strerror})") from None
    return out


def _check_memory(sizes: list[int], device: torch.device) -> None:
    """Refuse sizes whose parameters, gradients and fp32 state (16 B per parameter) cannot fit in memory."""
    available = machine.available_bytes() if device.type == "cpu" else None
    largest = max(sizes)
    if available is not None and 16 * largest > available:
        raise UsageError(
            f"--sizes {layouts.format_size(largest)} needs about {16 * largest / 2**30:.1f} GiB (parameters, "
            f"gradients and state), more than the {available / 2**30:.1f} GiB available; choose smaller sizes"
        )


def _quick_rule(contenders: list[peers.Contender], only: str | None) -> list[peers.Contender]:
    """Under ``--quick``, contenders that compile on their first step are listed as not timed,
    unless ``--only`` names them: compiling takes longer than the rest of a quick run."""
    words = _split(only or "")
    return [
        replace(
            c, skip="compiles on its first step (seconds to a minute); --quick leaves it out unless --only names it"
        )
        if c.compiles and not c.skip and not any(w in c.name for w in words)
        else c
        for c in contenders
    ]


def _forget_compiled() -> None:
    """Drop what torch.compile cached for the previous case: compiled steps keep that case's
    tensors alive, and a function compiled afresh for each new optimizer would otherwise reach
    Dynamo's recompile limit (8) after a few cases and silently run eagerly."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


def _state_fits(params, contenders, available: int | None) -> bool:
    """Whether every contender's state fits at once: two moments of the parameters' size each (a
    third for optimi's Kahan buffer), the parameters and gradients, and two more for the temporaries
    of the foreach implementations, within 60% of the available memory."""
    if available is None:
        return True
    nbytes = sum(p.numel() * p.element_size() for p in params)
    per_contender = [3 if c.family == "optimi" and c.dtype != torch.float32 else 2 for c in contenders]
    return nbytes * (4 + sum(per_contender)) < 0.6 * available


def _row(case: dict, c: peers.Contender, result: Timing | str | None) -> dict:
    row = {**case, "name": c.name, "family": c.family, "label": c.label, "note": c.note}
    if isinstance(result, str):
        return {**row, "status": "error", "reason": result}
    assert result is not None
    n = case["numel"]
    element = layouts.element_bytes(case["dtype"])
    state_per_param = result.state_bytes / n
    # parameter read + written, gradient read, every state tensor read + written
    ideal = 3 * element + 2 * state_per_param
    ms = result.median
    return {
        **row,
        "status": "ok",
        "ms": ms,
        "ms_p25": result.quantile(0.25),
        "ms_p75": result.quantile(0.75),
        "ms_min": min(result.samples),
        "ms_max": max(result.samples),
        "samples": len(result.samples),
        "state_bytes_per_param": state_per_param,
        "state_dtypes": result.state_dtypes,
        "ideal_bytes_per_param": ideal,
        "effective_gbs": ideal * n / (ms * 1e-3) / 1e9,
    }


def command_line(args: argparse.Namespace) -> str:
    """The ``decoupled bench`` command that reproduces ``args`` (options left at their defaults omitted)."""
    defaults = _defaults()
    parts = ["decoupled", "bench"]
    if args.quick:
        parts.append("--quick")
    for key, value in vars(args).items():
        if key not in defaults or key == "quick" or value == defaults[key]:
            continue
        if args.quick and QUICK.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _result(args, info, contenders, rows, bw_before, bw_after) -> dict:
    """The run's record. ``bw_after`` None: written after a case, before the run ends
    (``"partial": true``), so that a run cut short keeps the cases it finished."""
    measured = [bw_before] if bw_after is None else [bw_before, bw_after]
    bound = max(b.bound_gbs for b in measured)
    report.add_ratios(rows, bound, machine.largest_cache_bytes(info))
    return {
        "machine": info,
        "bandwidth": {"before": bw_before.to_json(), "after": measured[-1].to_json(), "bound_gbs": bound},
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "reference": peers.REFERENCE,
        "skipped": sorted({(c.name, c.skip) for c in contenders if c.skip}),
        "rows": rows,
        **({"partial": True} if bw_after is None else {}),
    }


def run(args: argparse.Namespace) -> int:
    if args.quick:
        _apply_quick(args, _defaults())
    device = _device(args.device)
    sizes = [layouts.parse_size(s) for s in _split(args.sizes)]  # checked by the argument type
    layout_names, dtype_names = _split(args.layouts), _split(args.dtypes)
    _check_memory(sizes, device)
    contenders = _selected(peers.all_contenders(device, [DTYPES[d] for d in dtype_names]), args.only)
    if args.quick:
        contenders = _quick_rule(contenders, args.only)
    out = _out_folder(args.out)

    info = machine.describe(device)
    info["command"] = command_line(args)
    before = machine.other_load(0.5 if args.quick else 2.0)
    deadline = time.monotonic() + args.wait_quiet
    while before is not None and before > 0.2 and time.monotonic() < deadline:
        print(f"decoupled bench: other processes use {before:.0%} of the CPUs; waiting", file=sys.stderr)
        time.sleep(10)
        before = machine.other_load(2.0)
    info["other_load_before"] = before
    if device.type == "cpu" and before is not None and before > 0.2:
        info["busy_warning"] = (
            f"other processes kept {before:.0%} of the CPUs busy just before the run: they compete for "
            "the cores and memory bandwidth, so times are noisy"
        )
        print(f"decoupled bench: warning: {info['busy_warning']}", file=sys.stderr)
    during = machine.OtherLoad().start()

    cases = [(n, lay, dt) for n in sizes for lay in layout_names for dt in dtype_names]
    progress = report.Progress(len(cases) + 2, enabled=not args.no_progress)

    with progress:
        progress.update("bandwidth (copy, triad, update)")
        bw_before = bandwidth.measure(device, elements=args.bandwidth_elements)
        progress.advance()
        rows = []
        for index, (n, lay, dt) in enumerate(cases):
            shapes = layouts.shapes_for(lay, n)
            case = {
                "size": layouts.format_size(n),
                "layout": lay,
                "dtype": dt,
                "numel": layouts.numel(shapes),
                "tensors": len(shapes),
                "device": str(device),
            }
            progress.update(f"{case['size']} {lay} {dt}")
            _forget_compiled()
            params = make_params(shapes, DTYPES[dt], device)
            mine = [c for c in contenders if c.dtype == DTYPES[dt] and not c.skip]
            interleave = not args.sequential and _state_fits(params, mine, machine.available_bytes())
            results = time_case(
                mine,
                params,
                device,
                # a contender that compiles gets at least its own warm-up, so no timed step compiles
                warmup=max([args.warmup, *(c.warmup for c in mine)]),
                repeats=args.repeats,
                min_repeats=min(args.min_repeats, args.repeats),
                budget_s=args.budget,
                rounds=args.rounds,
                interleave=interleave,
                on_sample=lambda c, case=case: progress.update(
                    f"{case['size']} {case['layout']} {case['dtype']}: {c.label}"
                ),
            )
            case["interleaved"] = interleave
            rows += [_row(case, c, results.get(c.label)) for c in mine]
            del params, results
            _forget_compiled()
            gc.collect()
            if index < len(cases) - 1:  # a run cut short keeps the cases it finished
                report.write(_result(args, info, contenders, rows, bw_before, None), out, plot=False)
            progress.advance()
        progress.update("bandwidth again (drift check)")
        bw_after = bandwidth.measure(device, elements=args.bandwidth_elements)
        progress.advance()

    info["native_kernel"] = native_build.description()  # after the cases: loaded if any contender used it
    info["load_average_after"] = machine.load_average()
    info["other_load_during"] = during.stop()
    if device.type == "cpu" and (info["other_load_during"] or 0) > 0.2:
        warning = f"other processes kept {info['other_load_during']:.0%} of the CPUs busy during the run"
        info["busy_warning"] = "; ".join(filter(None, [info.get("busy_warning"), warning]))
        print(f"decoupled bench: warning: {warning}; times are noisy", file=sys.stderr)
    result = _result(args, info, contenders, rows, bw_before, bw_after)
    paths = report.write(result, out, plot=not args.no_plot)
    report.print_summary(result)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
