#!/bin/bash
# The default `decoupled compare` (and `explain`) on a second machine's CPU, pinned to 2 cores with 2 workers,
# as a quiet 2-core measurement. Run from the repository root; writes logs and results to $OUT (or ./out).
# ALL=1 also runs both with all five conventions (adamw_corrected and adamw_cautious need decay_scaling=).
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
run() {  # name, then the command's arguments
    local name=$1; shift
    "${TIME[@]}" taskset -c 0,1 "${CLI[@]}" "$@" --no-progress > "$OUT/$name.log" 2>&1
}
run compare compare --workers 2
cp runs/compare-nextchar/results.json "$OUT/results.json"
run explain explain
cp runs/explain-nextchar/explain.json "$OUT/explain.json"
if [ "${ALL:-0}" = 1 ]; then
    ALL5=adam_l2,adamw,adamw_indep,adamw_corrected,adamw_cautious
    run compare_all compare --workers 2 --conventions $ALL5 --out runs/compare-all
    cp runs/compare-all/results.json "$OUT/results_all.json"
    run explain_all explain --conventions $ALL5 --out runs/explain-all
fi
