"""Run ``decoupled bench`` from a checkout: ``python benchmarks/bench.py [options]``.

Same options as the ``decoupled bench`` command (``--help``). The recorded results in
``benchmarks/results/<machine>/`` (``results.json``, ``results.md``, ``results.png``) were
made with the command written at the top of each ``results.md``; ``benchmarks/RESULTS.md``
summarizes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from decoupled.cli import main  # noqa: E402

if __name__ == "__main__":  # the command's own front door: a bad argument is one line, exit code 2
    sys.exit(main(["bench", *sys.argv[1:]]))
