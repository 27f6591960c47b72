"""Presenting benchmark results: progress display, ratios, the table, JSON, Markdown and a plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import layouts, machine
from .peers import REFERENCE

COLUMNS = ("contender", "ms", "IQR ms", "vs fused", "B/p moved", "GB/s", "% bw", "state B/p")


_ISA = {16: "AVX-512", 8: "AVX2", 1: "scalar codes"}
"""The instruction set behind a count of vector lanes of the native kernel's 8-bit loop."""


class Progress:
    """A progress bar on stderr (rich when installed, plain lines otherwise)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self._rich = None
        self._last_plain = 0.0
        if enabled:
            try:
                from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress

                self._rich = RichProgress(
                    TextColumn("[bold]bench[/]"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    TextColumn("{task.description}"),
                    console=None,
                    transient=True,
                )
            except ImportError:
                pass

    def __enter__(self):
        if self._rich is not None:
            self._rich.__enter__()
            self._task = self._rich.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def update(self, description: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, description=description)
        elif time.monotonic() - self._last_plain > 2:
            self._last_plain = time.monotonic()
            print(f"bench {self.done}/{self.total}: {description}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.advance(self._task)


def _case_key(row: dict) -> tuple:
    return (row["size"], row["layout"], row["dtype"])


def add_ratios(rows: list[dict], bound_gbs: float, cache_bytes: int | None = None) -> None:
    """Add to each timed row ``ratio_vs_fused`` (reference time / row time), ``pct_of_bandwidth``
    and ``fits_in_cache``: whether its working set (:func:`layouts.working_set_bytes`) fits in
    ``cache_bytes``, the last-level cache, so that its GB/s may be the cache's, not memory's."""
    reference = {_case_key(r): r["ms"] for r in rows if r["name"] == REFERENCE and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        ref = reference.get(_case_key(r))
        r["ratio_vs_fused"] = ref / r["ms"] if ref else None
        r["pct_of_bandwidth"] = 100 * r["effective_gbs"] / bound_gbs
        working_set = layouts.working_set_bytes(r["numel"], r["dtype"], r["state_bytes_per_param"])
        r["fits_in_cache"] = cache_bytes is not None and working_set <= cache_bytes


CACHE_MARK = "†"


def cache_note(result: dict) -> str | None:
    """The footnote for rows marked :data:`CACHE_MARK` (None when no row fits in the cache)."""
    cache = machine.largest_cache_bytes(result["machine"])
    if cache is None or not any(r.get("fits_in_cache") for r in result["rows"]):
        return None
    return (
        f"{CACHE_MARK} parameters, gradients and state together fit in the {cache / 2**20:.0f} MiB last-level "
        "cache: repeated steps can run from the cache, so GB/s and % bw measure the cache, not memory "
        "(and can exceed 100%); compare such rows with each other, not with the bandwidth."
    )


def cases(rows: list[dict]) -> list[tuple]:
    seen: dict[tuple, None] = {}
    for r in rows:
        seen.setdefault(_case_key(r) + (r["numel"], r["tensors"]), None)
    return list(seen)


def _cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["label"], "-", "-", "-", "-", "-", "-", r.get("reason", "")[:60]]
    ratio = r.get("ratio_vs_fused")
    name = r["label"] + (f" ({r['note']})" if r.get("note") else "")
    return [
        name,
        f"{r['ms']:.2f}",
        f"{r['ms_p25']:.2f}-{r['ms_p75']:.2f}",
        f"{ratio:.2f}x" if ratio else "-",
        f"{r['ideal_bytes_per_param']:.3g}",
        f"{r['effective_gbs']:.1f}",
        f"{r['pct_of_bandwidth']:.0f}%" + (f" {CACHE_MARK}" if r.get("fits_in_cache") else ""),
        f"{r['state_bytes_per_param']:g}",
    ]


def _title(case: tuple) -> str:
    size, layout, dtype, numel, tensors = case
    what = "1 tensor" if tensors == 1 else f"{tensors} tensors (GPT-2 shapes)"
    return f"{size} parameters ({numel:,}), {what}, {dtype}"


def _pages(hp: dict) -> str:
    """The report's line on memory pages (machine.huge_pages)."""
    asks = "asks for them (THP_MEM_ALLOC_ENABLE=1)" if hp["torch_allocator"] else "does not ask for them"
    return f"Memory pages: transparent huge pages `{hp['system']}`; torch's allocator {asks}."


def markdown(result: dict) -> str:
    m, bw = result["machine"], result["bandwidth"]
    lines = [
        "# decoupled bench results",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m.get('memory_gib', {}).get('MemTotal', '?')} GiB, "
        f"caches {m.get('caches')}; device {m['device']}" + (f" ({m['gpu']['name']})" if "gpu" in m else "") + ".",
        *([_pages(hp)] if (hp := m.get("huge_pages")) else []),
        f"Software: Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v and k != "torch")
        + f"; decoupled commit {m.get('decoupled_commit')}.",
        *(
            [
                f"Native kernel: `{k['flags']}`, {k['lanes']}-lane vectors "
                f"({_ISA.get(k['lanes'], '?')}) in the 8-bit loop."
            ]
            if (k := m.get("native_kernel"))
            else []
        ),
        f"Date: {m['date']}. Load average before / after: {m.get('load_average')} / {m.get('load_average_after')}; "
        f"CPU share used by other processes just before / during the run: {m.get('other_load_before')} / "
        f"{m.get('other_load_during')}." + (f" **Warning: {m['busy_warning']}**" if m.get("busy_warning") else ""),
        "",
        f"Measured bandwidth: copy {bw['before']['copy_gbs']:.1f} GB/s, triad {bw['before']['triad_gbs']:.1f} GB/s, "
        f"in-place update {bw['before']['update_gbs']:.1f} GB/s (again at the end: {bw['after']['copy_gbs']:.1f}, "
        f"{bw['after']['triad_gbs']:.1f}, {bw['after']['update_gbs']:.1f}); "
        f"bound used for '% bw': {bw['bound_gbs']:.1f} GB/s.",
        "",
        f"'vs fused' is the time of `{REFERENCE}` (same size, layout, dtype) divided by the row's time: "
        "above 1.00x is faster. GB/s counts the ideal bytes per parameter of the row's format "
        "(parameter read and written, gradient read, each state tensor read and written). "
        "'ms' is the median step time and 'IQR' its interquartile range.",
        "",
    ]
    if result.get("partial"):
        lines += [
            "**Partial: written after the last case below finished; the run did not end (stopped or still "
            "running), so later cases and the bandwidth check at the end are missing.**",
            "",
        ]
    if note := cache_note(result):
        lines += [note, ""]
    for case in cases(result["rows"]):
        lines += [f"## {_title(case)}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in result["rows"]:
            if _case_key(r) == case[:3]:
                lines.append("| " + " | ".join(_cells(r)) + " |")
        lines.append("")
    if result.get("skipped"):
        lines += ["## Not timed", ""]
        lines += [f"- {name}: {reason}" for name, reason in result["skipped"]]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_cases = cases(result["rows"])
    cols = len({c[:2] for c in all_cases})
    dtypes = list(dict.fromkeys(c[2] for c in all_cases))  # in the order of the run (fp32 first)
    fig, axes = plt.subplots(len(dtypes), cols, figsize=(5.5 * cols, 0.28 * 20 * len(dtypes) + 1.5), squeeze=False)
    bound = result["bandwidth"]["bound_gbs"]
    colors = {
        "decoupled": "tab:blue",
        "torch": "tab:gray",
        "optimi": "tab:orange",
        "bitsandbytes": "tab:green",
        "torchao": "tab:red",
    }
    size_layouts = list(dict.fromkeys(c[:2] for c in all_cases))
    for i, dtype in enumerate(dtypes):
        for j, (size, layout) in enumerate(size_layouts):
            ax = axes[i][j]
            rows = [r for r in result["rows"] if _case_key(r) == (size, layout, dtype) and r["status"] == "ok"]
            names = [r["name"] for r in rows]
            bars = ax.barh(
                range(len(rows)), [r["effective_gbs"] for r in rows], color=[colors.get(r["family"], "k") for r in rows]
            )
            for bar, r in zip(bars, rows):
                if r.get("fits_in_cache"):  # hatched: may run from the cache (see cache_note)
                    bar.set_hatch("//")
                    bar.set_edgecolor("white")
            ax.set_yticks(range(len(rows)), names, fontsize=7)
            ax.invert_yaxis()
            ax.axvline(bound, color="k", linestyle="--", linewidth=1)
            ax.set_title(f"{size} {layout} {dtype}", fontsize=9)
            ax.set_xlabel("effective GB/s (dashed: measured bandwidth; hatched: fits in cache)", fontsize=7)
            for k, r in enumerate(rows):
                if r.get("ratio_vs_fused"):
                    ax.text(r["effective_gbs"], k, f" {r['ratio_vs_fused']:.2f}x", va="center", fontsize=6)
    fig.suptitle(f"One AdamW step: {result['machine']['cpu']} ({result['machine']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path, *, plot: bool = True) -> list[Path]:
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(result))
    if plot:
        try:
            globals()["plot"](result, out / "results.png")
            paths.append(out / "results.png")
        except ImportError as err:
            print(f"no plot: {err} (pip install matplotlib)", file=sys.stderr)
    return paths


def print_summary(result: dict) -> None:
    """The results table on stdout (rich when installed)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(result))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    bw = result["bandwidth"]
    console.print(
        f"bandwidth: copy {bw['before']['copy_gbs']:.1f} GB/s, triad {bw['before']['triad_gbs']:.1f} GB/s, "
        f"update {bw['before']['update_gbs']:.1f} GB/s "
        f"(bound {bw['bound_gbs']:.1f} GB/s); reference: {REFERENCE}"
    )
    for case in cases(result["rows"]):
        table = Table(title=_title(case), title_justify="left")
        for col in COLUMNS:
            table.add_column(col, justify="left" if col == "contender" else "right")
        for r in result["rows"]:
            if _case_key(r) == case[:3]:
                style = "bold" if r["family"] == "decoupled" else None
                table.add_row(*_cells(r), style=style)
        console.print(table)
    if note := cache_note(result):
        console.print(note)
    for name, reason in result.get("skipped", []):
        console.print(f"not timed: {name}: {reason}")
