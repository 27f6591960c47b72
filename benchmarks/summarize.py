"""Write ``benchmarks/RESULTS.md`` (the README's table) from a recorded ``results.json``.

    python benchmarks/summarize.py benchmarks/results/cpu-2core-full/results.json > benchmarks/RESULTS.md

One compact table: for every size and layout, the step time of each implementation at fp32
(and bf16 below), its ratio to ``torch.optim.AdamW(fused=True)`` measured side by side in the
same run, its effective GB/s and the share of the measured bandwidth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from decoupled.bench import machine, report  # noqa: E402

ROWS = [  # (name in results.json, label in the table)
    ("decoupled.AdamW()", "`decoupled.AdamW` (auto)"),
    ("decoupled backend=fused", "`decoupled` fused"),
    ("decoupled backend=foreach", "`decoupled` foreach"),
    ("decoupled backend=loop", "`decoupled` loop"),
    ("decoupled backend=compiled", "`decoupled` compiled"),
    ("torch.optim.AdamW(fused=True)", "`torch.optim.AdamW(fused=True)`"),
    ("torch.optim.AdamW(foreach=True)", "`torch.optim.AdamW(foreach=True)`"),
    ("torch.optim.AdamW(foreach=False)", "`torch.optim.AdamW(foreach=False)`"),
    ("torch.compile(torch.optim.AdamW.step)", "`torch.compile`d `torch.optim.AdamW` step"),
    ("optimi.AdamW(foreach)", "`optimi.AdamW` (foreach)"),
    ("optimi.AdamW(for-loop)", "`optimi.AdamW` (for-loop)"),
    ("bitsandbytes.optim.AdamW", "`bitsandbytes.optim.AdamW`"),
    # lower-memory state
    ("decoupled.AdamW(moments='bf16')", "`decoupled.AdamW(moments='bf16')`"),
    ("decoupled.AdamW(moments='bf16', backend='compiled')", "`decoupled.AdamW(moments='bf16', backend='compiled')`"),
    ("decoupled.AdamW(moments='8bit')", "`decoupled.AdamW(moments='8bit')`"),
    ("decoupled.AdamW(param_rounding='kahan')", "`decoupled.AdamW(param_rounding='kahan')`"),
    (
        "decoupled.AdamW(param_rounding='kahan', backend='compiled')",
        "`decoupled.AdamW(param_rounding='kahan', backend='compiled')`",
    ),
    ("decoupled.AdamW(param_rounding='stochastic')", "`decoupled.AdamW(param_rounding='stochastic')`"),
    (
        "decoupled.AdamW(param_rounding='stochastic', backend='compiled')",
        "`decoupled.AdamW(param_rounding='stochastic', backend='compiled')`",
    ),
    (
        "decoupled.AdamW(moments='8bit', param_rounding='stochastic')",
        "`decoupled.AdamW(moments='8bit', param_rounding='stochastic')`",
    ),
    ("bitsandbytes.optim.AdamW8bit", "`bitsandbytes.optim.AdamW8bit`"),
    ("torchao.optim.AdamW8bit", "`torchao.optim.AdamW8bit`"),
    ("torchao.optim.AdamW4bit", "`torchao.optim.AdamW4bit`"),
    ("torchao.optim.AdamWFp8", "`torchao.optim.AdamWFp8`"),
    ("torchao.optim._AdamW(bf16_stochastic_round=True)", "`torchao.optim._AdamW(bf16_stochastic_round=True)`"),
]


def table(result: dict, dtype: str) -> list[str]:
    rows = [r for r in result["rows"] if r["dtype"] == dtype and r["status"] == "ok"]
    cases = list(dict.fromkeys((r["size"], r["layout"], r["numel"], r["tensors"]) for r in rows))
    head = "| implementation | state B/param | " + " | ".join(
        f"{size} {'1 tensor' if tensors == 1 else f'GPT-2 ({tensors} tensors)'}" for size, _, _, tensors in cases
    )
    lines = [head + " |", "|---|---|" + "---|" * len(cases)]
    for name, label in ROWS:
        mine = [x for x in rows if x["name"] == name]
        largest = max(mine, key=lambda x: (x["layout"] == "single", x["numel"]), default=None)
        cells = [f"{largest['state_bytes_per_param']:.2f}" if largest else "-"]
        for size, layout, _, _ in cases:
            r = next((x for x in rows if (x["name"], x["size"], x["layout"]) == (name, size, layout)), None)
            if r is None:
                cells.append("-")
                continue
            ratio, gbs, pct = r["ratio_vs_fused"], r["effective_gbs"], r["pct_of_bandwidth"]
            mark = report.CACHE_MARK if r["fits_in_cache"] else ""
            cells.append(f"{r['ms']:.1f} ms, **{ratio:.2f}x**, {gbs:.0f} GB/s ({pct:.0f}%{mark})")
        if any(c != "-" for c in cells[1:]):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(path: str) -> str:
    result = json.loads(open(path).read())
    m, bw = result["machine"], result["bandwidth"]
    report.add_ratios(result["rows"], bw["bound_gbs"], machine.largest_cache_bytes(m))  # also for older files
    out = [
        "# Benchmark results",
        "",
        "One `optimizer.step()` of AdamW (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),",
        "median of many after warm-up, every implementation stepping the same parameters, interleaved",
        "in rounds so that a slower moment of the machine hits all of them alike. Each cell: median",
        "ms/step, **the ratio to `torch.optim.AdamW(fused=True)` in the same run** (above 1 is faster),",
        "effective GB/s (ideal bytes of the format per parameter x parameters / time: 28 B for fp32,",
        "14 B for bf16; for other state formats, 3 x the weight's bytes + 2 x the state's) and its share",
        "of the measured memory bandwidth. State B/param: bytes of optimizer state per parameter, at the",
        "largest single-tensor size (8-bit formats keep tensors under 4096 elements in fp32).",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['memory_gib'].get('MemTotal')} GiB, "
        f"caches {m.get('caches')}. "
        f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in sorted(m["versions"].items()) if k != "torch" and v)
        + ". "
        f"{m['date']}.",
        f"Measured bandwidth in the same run: copy {bw['before']['copy_gbs']:.1f} GB/s, triad "
        f"{bw['before']['triad_gbs']:.1f} GB/s, in-place update {bw['before'].get('update_gbs', 0):.1f} GB/s "
        f"(at the end: {bw['after']['copy_gbs']:.1f} / {bw['after']['triad_gbs']:.1f} / "
        f"{bw['after'].get('update_gbs', 0):.1f}); bound used (the fastest): {bw['bound_gbs']:.1f} GB/s.",
        "Other processes' CPU share before / during the run: "
        f"{m.get('other_load_before')} / {m.get('other_load_during')}."
        + (f" **{m['busy_warning']}.**" if m.get("busy_warning") else ""),
        "",
        f"Command: `{m['command']}`",
        f"(full tables, spreads and the plot: `{path.rsplit('/', 1)[0]}/results.md`, `results.png`).",
        "",
        "## fp32 parameters and state",
        "",
        *table(result, "fp32"),
        "",
    ]
    if any(r["dtype"] == "bf16" for r in result["rows"]):
        out += ["## bf16 parameters and state (ratio to torch's fused at bf16)", "", *table(result, "bf16"), ""]
    if note := report.cache_note(result):
        out += [note, ""]
    if result.get("skipped"):
        out += [
            "Not timed: " + "; ".join(f"{n} ({why.split('(')[0].strip()})" for n, why in result["skipped"]) + ".",
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1]))
