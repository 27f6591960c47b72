#!/bin/bash
# The default `decoupled compare` (and `explain`) on a second machine's CPU, pinned to 2 cores with 2 workers,
# as a quiet 2-core measurement. Run from the repository root; writes logs and results.json to $OUT (or ./out).
set -o pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export CUDA_VISIBLE_DEVICES= PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ lscpu; nproc; "$PY" -c "import sys, torch, sklearn, matplotlib, rich, scipy, numpy
print(sys.version); print('torch', torch.__version__, 'sklearn', sklearn.__version__, 'numpy', numpy.__version__)"
} > "$OUT/machine.txt" 2>&1
"$PY" -c "import decoupled.lab.compare, decoupled.lab.explain" >> "$OUT/machine.txt" 2>&1 || exit 1
CLI=("$PY" -c "import sys; from decoupled.cli import main; sys.exit(main())")
W=$(mktemp -d); cd "$W" || exit 1
TIME=(/usr/bin/time -v); [ -x /usr/bin/time ] || TIME=(bash -c 'time "$@"' time)
"${TIME[@]}" taskset -c 0,1 "${CLI[@]}" compare --workers 2 --no-progress > "$OUT/compare.log" 2>&1
cp runs/compare-nextchar/results.json "$OUT/results.json"
"${TIME[@]}" taskset -c 0,1 "${CLI[@]}" explain --no-progress > "$OUT/explain.log" 2>&1
cp runs/explain-nextchar/explain.json "$OUT/explain.json"
