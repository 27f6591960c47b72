"""Issue 14's targets, read from one ``benchmarks/gpu_check.sh`` output folder (Markdown on stdout).

    python benchmarks/gpu_summary.py OUT > OUT/summary.md

Reads ``OUT/tune.json`` (kernel timings, :mod:`gpu_tune`) and ``OUT/bench_*.json`` (``decoupled
bench`` runs); whatever is missing (a phase stopped by its time limit) is left out.

* bench: at each size and dtype, each row's ratio to ``torch.optim.AdamW(fused=True)`` measured
  interleaved in the same case; for formats also the ratio to the fused fp32 step of the same
  size (another case of the same run), ``bitsandbytes.optim.AdamW8bit``'s ratio, and the share
  of the measured bandwidth;
* tune: for each kernel, the default launch settings and the fastest ones, with the ratio to
  torch's fused fp32 kernel and the share of the copy bandwidth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FUSED = "torch.optim.AdamW(fused=True)"
BNB8 = "bitsandbytes.optim.AdamW8bit"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_lines(name: str, data: dict) -> list[str]:
    bw = data["bandwidth"]["bound_gbs"]
    lines = [f"### bench {name}" + (" (partial: stopped by its time limit)" if data.get("partial") else ""), ""]
    lines.append(f"bandwidth bound {bw:.0f} GB/s (fastest of copy, triad, update)")
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    fused32 = {r["size"]: r["ms"] for r in ok if r["name"] == FUSED and r["dtype"] == "fp32"}
    for case in dict.fromkeys((r["size"], r["layout"], r["dtype"]) for r in data["rows"]):
        rows = [r for r in data["rows"] if (r["size"], r["layout"], r["dtype"]) == case]
        bnb = next((r["ms"] for r in rows if r["name"] == BNB8 and r["status"] == "ok"), None)
        lines += [
            "",
            f"{case[0]} {case[1]} {case[2]}:",
            "",
            "| contender | ms | vs fused (same case) | vs fused fp32 | vs bnb 8bit | % bw | state B/p |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['name']} | {r.get('reason', '')[:80]} | | | | | |")
                continue
            ref32 = fused32.get(r["size"])
            cells = [
                r["name"],
                f"{r['ms']:.3f}",
                f"{r['ratio_vs_fused']:.2f}" if r.get("ratio_vs_fused") else "",
                f"{ref32 / r['ms']:.2f}" if ref32 else "",
                f"{bnb / r['ms']:.2f}" if bnb else "",
                f"{r['pct_of_bandwidth']:.0f}",
                f"{r['state_bytes_per_param']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for skipped, reason in data.get("skipped", []):
        lines.append(f"\nnot timed: {skipped}: {reason[:160]}")
    return lines


def tune_lines(data: dict) -> list[str]:
    bw = data.get("bandwidth", {})
    gpu = data["machine"].get("gpu", {})
    lines = [
        f"### kernels at {data['size']} (tune)",
        "",
        f"{gpu.get('name', data['machine']['device'])}; copy {bw.get('copy_gbs', 0):.0f} GB/s, "
        f"a += b {bw.get('update_gbs', 0):.0f} GB/s",
        "",
        "| kernel | params | moments | rounding | default ms | best ms (BLOCK x warps) | best vs fused fp32 "
        "| best vs fused same dtype | best % copy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in data["rows"]:
        groups.setdefault((r["kernel"], r["params"], r.get("moments", ""), r.get("rounding", "")), []).append(r)
    for key, rows in groups.items():
        best = min(rows, key=lambda r: r["ms"])
        where = f" ({best['block']} x {best['warps']})" if "block" in best else ""
        ratio = lambda x: f"{x:.2f}" if x is not None else ""  # noqa: E731
        lines.append(
            f"| {' | '.join(key)} | {rows[0]['ms']:.3f} | {best['ms']:.3f}{where} | {ratio(best['vs_fused_fp32'])} "
            f"| {ratio(best['vs_fused_same_dtype'])} | {ratio(best['pct_copy'])} |"
        )
    for e in data.get("errors", []):
        lines.append(f"\nerror: {json.dumps(e)[:300]}")
    if data.get("skipped"):
        lines.append(f"\nnot measured (deadline): {len(data['skipped'])} settings")
    return lines


def main(out: Path) -> int:
    lines: list[str] = []
    tune = _load(out / "tune.json")
    if tune:
        lines += tune_lines(tune) + [""]
    for path in sorted(out.glob("bench_*.json")):
        data = _load(path)
        if data:
            lines += bench_lines(path.stem.removeprefix("bench_"), data) + [""]
    print("\n".join(lines) if lines else "no results")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
