#!/usr/bin/env bash
# The GPU checks of issue 5 in one call, sized for a lent GPU machine (15 minutes of device time,
# a minute or two of it to start): the CUDA paths against torch and the loop backend, then the
# benchmark against torch.optim.AdamW(fused=True) and the measured copy bandwidth.
#
#   bash benchmarks/gpu_check.sh [OUT]       # OUT defaults to $OUT, else /tmp/gpu_check
#
# Needs python3 with torch (CUDA), triton, pytest and hypothesis, as the lent machines have; it
# installs nothing (they have no network): the package is read from src/ through PYTHONPATH.
# Writes tests.log, bench.log and bench/results.{json,md,png} to OUT; copy bench/ to
# benchmarks/results/<gpu-name>/ and summarize it with benchmarks/summarize.py.
# Each phase has its own time limit, so a hang in one still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu SIZES=64k: a dry run of this script without a GPU
sizes=${SIZES:-16M,128M}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
$py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

# 1. Correctness on the GPU (about 2 minutes): the compiled Triton kernel against the loop
#    backend on the same GPU; torch parity, the float64 reference and checkpoints with every
#    scenario's parameters on the GPU (DECOUPLED_TEST_DEVICE, tests/scenario.py); the compiled
#    backend (Inductor's Triton kernels).
{
    timeout 120 $py -m pytest -q -p no:cacheprovider tests/test_backends_triton.py -k "$device"
    echo "triton tests: exit $?"
    DECOUPLED_TEST_DEVICE=$device timeout 240 $py -m pytest -q -p no:cacheprovider --timeout 120 \
        tests/test_parity.py tests/test_reference.py tests/test_state_dict.py tests/test_backend_compiled.py
    echo "parity tests: exit $?"
} 2>&1 | tee "$out/tests.log" | grep -E "passed|failed|error|exit|FAILED|ERROR" | tail -30

# 2. Speed (about 4 minutes): every backend, format and installed peer at 16M and 128M
#    parameters, one tensor and GPT-2's 148 tensors, fp32 and bf16; bandwidth in the same run.
timeout 330 $py benchmarks/bench.py --device "$device" --sizes "$sizes" --budget 0.5 --rounds 2 \
    --out "$out/bench" --no-progress 2>&1 | tee "$out/bench.log" | tail -60
echo "bench: exit ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
