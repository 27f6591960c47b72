"""Self-contained HTML reports: one file, figures embedded as base64 PNG, no external assets."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import platform
from collections.abc import Iterable, Sequence
from typing import Any

# Implicitly concatenated so that no source line is over the length limit; the text is one stylesheet.
_CSS = (
    """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1120px;margin:2em auto;padding:0 1.2em;color:#222;line-height:1.5;background:#fcfcfa}
h1{font-size:1.7em;margin-bottom:.1em} """
    """h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}
.findings{background:#f1f6f7;border-left:5px solid #00798c;padding:.8em 1.2em;border-radius:4px}
.findings li{margin:.35em 0} .warn{background:#fff6e5;border-left:5px solid #edae49;padding:.6em 1em;border-radius:4px}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} """
    """th,td{padding:.3em .8em;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f4f4f2} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;border-radius:4px;background:white}
.cap{color:#555;font-size:.92em;margin-top:.2em} code{background:#f0f0ee;padding:0 .25em;border-radius:3px}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:middle}
footer{color:#888;font-size:.85em;margin-top:3em;border-top:1px solid #ddd;padding-top:.6em}
"""
)


def esc(x: Any) -> str:
    return html.escape(str(x))


def img(png: bytes, alt: str, caption: str = "") -> str:
    """An ``<img>`` with the PNG inlined, and an optional caption (HTML allowed)."""
    data = base64.b64encode(png).decode("ascii")
    cap = f'<div class="cap">{caption}</div>' if caption else ""
    return f'<figure style="margin:1em 0"><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped unless they are already ``Markup``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else esc(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Markup(str):
    """A string that is already HTML."""


def environment() -> dict[str, str]:
    """Versions and machine, recorded in every report."""
    import os

    import torch

    import decoupled

    return {
        "decoupled": decoupled.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def page(title: str, subtitle: str, body: str, env: dict[str, str] | None = None) -> str:
    """A full HTML document."""
    env = env or environment()
    foot = " · ".join(f"{esc(k)} {esc(v)}" for k, v in env.items())
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        f'<style>{_CSS}</style></head><body><h1>{esc(title)}</h1><p class="sub">{subtitle}</p>'
        f"{body}<footer>Made by <code>decoupled</code>. {foot}</footer></body></html>"
    )
