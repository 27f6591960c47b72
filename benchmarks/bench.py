"""Run ``decoupled bench`` from a checkout: ``python benchmarks/bench.py [options]``.

Same options as the ``decoupled bench`` command (``--help``). The recorded results in
``benchmarks/results/<machine>/`` (``results.json``, ``results.md``, ``results.png``) were
made with the command written at the top of each ``results.md``; ``benchmarks/RESULTS.md``
summarizes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from decoupled.bench import run  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=run.__doc__.split("\n\n")[0])
    run.add_arguments(parser)
    sys.exit(run.run(parser.parse_args()))
