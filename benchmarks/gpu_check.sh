#!/usr/bin/env bash
# The GPU checks of issue 5 in one call, sized for a lent GPU machine: one command of at most
# 10 minutes (this script stops itself after about 9) within 15 minutes of device time.
# The CUDA paths against torch and the loop backend, then the benchmark against
# torch.optim.AdamW(fused=True) and the measured copy bandwidth.
#
#   bash benchmarks/gpu_check.sh [OUT]       # OUT defaults to $OUT, else /tmp/gpu_check
#   DEVICE=cpu SIZES=64k bash benchmarks/gpu_check.sh /tmp/dry   # a dry run without a GPU
#
# Needs python3 with torch (CUDA), triton, pytest and hypothesis, as the lent machines have; it
# installs nothing (they have no network): the package is read from src/ through PYTHONPATH.
# Writes five files to OUT (the device tool brings back at most eight): log.txt, and
# results.json / results.md of two benchmark runs in quick/ and full/. Plots are left out;
# make them here from the JSON (decoupled.bench.report.write), copy the runs to
# benchmarks/results/<gpu-name>/ and summarize them with benchmarks/summarize.py.
# Every phase has its own time limit, so a hang in one still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
sizes=${SIZES:-16M,128M}
log="$out/log.txt"

{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

    # 1. Correctness (at most 4.5 minutes): the Triton kernel compiled for the GPU against the
    #    loop backend on the same GPU; torch parity, the float64 reference, checkpoints and the
    #    compiled backend (Inductor's Triton kernels) with the scenarios' parameters on the GPU.
    timeout 90 $py -m pytest -q -p no:cacheprovider tests/test_backends_triton.py -k "$device"
    echo "== triton tests: exit $?"
    DECOUPLED_TEST_DEVICE=$device timeout 180 $py -m pytest -q -p no:cacheprovider -x --timeout 120 \
        tests/test_parity.py tests/test_state_dict.py tests/test_reference.py tests/test_backend_compiled.py
    echo "== parity tests: exit $?"

    # 2. Speed. First the backends against torch's fused and foreach steps at every size
    #    (at most 2 minutes), then every contender at the largest size with what time is left.
    timeout 120 $py benchmarks/bench.py --device "$device" --sizes "$sizes" --budget 0.5 --rounds 2 \
        --only "AdamW(),backend=,fused=True,foreach=" --out "$out/quick" --no-plot --no-progress
    echo "== quick bench: exit $?"
    timeout 150 $py benchmarks/bench.py --device "$device" --sizes "${sizes##*,}" --budget 0.3 --rounds 2 \
        --out "$out/full" --no-plot --no-progress
    echo "== full bench: exit $?"
} > "$log" 2>&1
grep -E "^(name|NVIDIA|python)|passed|failed|error|^== |FAILED|ERROR|wrote " "$log" | tail -40
