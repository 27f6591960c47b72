#!/usr/bin/env bash
# The GPU checks of issues 5 and 14 in ONE device command of at most 8.5 minutes (every phase
# stops itself), sized for one lent H200 (15 minutes of device time, start-up included).
#
# The lead's call, from the repository root with .gpu_site/ prepared (below):
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_site"], timeout_s=570)
#
# The bench rows decoupled.AdamW(..., backend='triton') with a format time the formats' Triton
# executor once the formats' registry routes backend='triton' there (its EXECUTOR record);
# before, they time the arena with the triton backend. Phase 2 times the executor directly.
#
# .gpu_site/ (ignored through .git/info/exclude; about 15 MB) holds the peers the GPU machine
# lacks (it has no network): bitsandbytes 0.50.2 (only its CUDA 13.0/13.2 and CPU libraries),
# torchao 0.18.0 (without its _C*.so) and torch-optimi 0.3.3, unpacked from Python 3.12 wheels:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d /tmp/whl bitsandbytes==0.50.2 torchao==0.18.0 torch-optimi==0.3.3
#   mkdir -p .gpu_site && for w in /tmp/whl/*.whl; do unzip -qo "$w" -d .gpu_site; done
#   (cd .gpu_site && rm -rf test torchao/_C*.so && find bitsandbytes -name 'libbitsandbytes_*.so' \
#     ! -name '*cuda130.so' ! -name '*cuda132.so' ! -name '*cpu.so' -delete)
#
#   DEVICE=cpu SIZES=64k bash benchmarks/gpu_check.sh /tmp/dry   # a dry run of this script without a GPU
#
# Phases (time limits in seconds), each written to OUT as it finishes:
#   1. correctness, in parallel jobs (limit 130 each): the triton backend's kernel and the formats'
#      Triton executor compiled for the GPU against the loop backend / the arena on the same GPU;
#      parity, float64-reference and state-dict tests with parameters on the GPU
#      (DECOUPLED_TEST_DEVICE=cuda); the compiled backend's tests. Meanwhile every Triton kernel
#      variant of phase 2, and the compiled backend's and torchao's graphs at the bench's sizes,
#      compile once (Triton's and Inductor's disk caches serve them in phases 2 and 3).
#   2. kernels at 128M, one tensor (100): copy bandwidth, torch's fused step (fp32, bf16),
#      bitsandbytes AdamW8bit, the triton backend and every format of the Triton executor, over
#      BLOCK {1024,2048,4096} x num_warps {4,8} -> tune.json, tune.md (benchmarks/gpu_tune.py)
#   3. bench, one tensor, 128M then 16M, fp32 and bf16 (190): torch fused (the reference), ours by
#      default, backend=fused/triton/compiled, every format through the arena, the compiled backend
#      and the Triton executor (backend='triton'), bitsandbytes AdamW8bit, torchao AdamW8bit and
#      _AdamW(bf16_stochastic_round), optimi's Triton AdamW -> bench_single.json
#   4. bench, GPT-2's 148 tensors at 128M: ours (default, fused, triton, Triton executor) against
#      torch fused (60) -> bench_gpt2.json
#   5. summary.md: issue 14's targets from the above (benchmarks/gpu_summary.py), printed last
# Files back (at most 8): log.txt, summary.md, tune.json, tune.md, bench_single.json, bench_gpt2.json.
# Make plots and Markdown here from the bench JSON (decoupled.bench.report.write); record runs in
# benchmarks/results/<gpu-name>/ and summarize them with benchmarks/summarize.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .gpu_site ] && export PYTHONPATH=$PYTHONPATH:$PWD/.gpu_site
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
sizes=${SIZES:-128M,16M}
largest=${sizes%%,*}
log="$out/log.txt"
if [ "$device" = cpu ]; then  # dry run: Triton's interpreter, tiny sizes
    interp="env TRITON_INTERPRET=1" tune_size=4k tune_grid=2048x8 bw=4194304 warm_size=4k
else
    interp= tune_size=128M tune_grid=1024x4,1024x8,2048x4,2048x8,4096x4,4096x8 bw=268435456 warm_size=64k
fi

# run NAME LIMIT CMD...: CMD under a time limit, its output in $work/NAME.log with its exit status
run() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$work/$name.log" 2>&1
    printf '\n== %s: exit %s (%s s)\n' "$name" $? $((SECONDS - start)) >> "$work/$name.log"
}
keep() { for name in "$@"; do cat "$work/$name.log" >> "$log"; done; }

{
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    $py -c "import importlib.metadata as m; print(*(f'{d} {m.version(d)}' for d in ('bitsandbytes', 'torchao', 'torch-optimi')))" 2>&1 | tail -1
} > "$log" 2>&1

# 1. correctness, with the compilation of phases 2 and 3 alongside
run triton_tests 120 $py -m pytest -q -p no:cacheprovider --tb=short tests/test_backends_triton.py -k "$device" &
run format_tests 130 $py -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_formats.py -k "$device" &
parity() {  # NAME FILES...: tests with the scenarios' parameters on the device, one line per test
    run "$1" 130 env DECOUPLED_TEST_DEVICE="$device" $py -m pytest -v -p no:cacheprovider --tb=line --maxfail 30 \
        --timeout 100 "${@:2}"
}
parity parity_tests tests/test_parity.py &
parity state_tests tests/test_state_dict.py &
parity reference_tests tests/test_reference.py &
[ "$device" = cpu ] || parity compiled_tests tests/test_backend_compiled.py &
run warm_kernels 125 $interp $py benchmarks/gpu_tune.py --warm --out "$work/warm" --size "$warm_size" --grid "$tune_grid" --deadline 110 &
warm_only="backend=compiled,backend='compiled',torchao.optim.AdamW8bit,torchao.optim._AdamW("
[ "$device" = cpu ] || run warm_compiled 125 $py benchmarks/bench.py --device "$device" --sizes "$sizes" --layouts single \
    --dtypes fp32,bf16 --only "$warm_only" --min-repeats 1 --repeats 1 --rounds 1 --budget 0.01 \
    --bandwidth-elements 1048576 --out "$work/warm_bench" --no-plot --no-progress &
wait
keep triton_tests format_tests parity_tests state_tests reference_tests warm_kernels
[ "$device" = cpu ] || keep compiled_tests warm_compiled

# 2. kernels
run tune 100 $interp $py benchmarks/gpu_tune.py --out "$out" --size "$tune_size" --grid "$tune_grid" --deadline 80
keep tune

# 3. bench, one tensor
only="decoupled.AdamW(,backend=fused,backend=triton,backend=compiled,bitsandbytes.optim.AdamW8bit"
only="$only,torchao.optim.AdamW8bit,torchao.optim._AdamW(,cautious_decay,decay_scaling"
[ "$device" = cpu ] || only="$only,optimi.AdamW(triton)"  # optimi's Triton kernels: a CUDA contender only
run bench_single 190 $py benchmarks/bench.py --device "$device" --sizes "$sizes" --layouts single --dtypes fp32,bf16 \
    --only "$only" --budget 0.3 --rounds 2 --bandwidth-elements "$bw" --out "$work/bench_single" --no-plot --no-progress
keep bench_single
cp "$work/bench_single/results.json" "$out/bench_single.json" 2> /dev/null

# 4. bench, GPT-2's tensors
run bench_gpt2 60 $py benchmarks/bench.py --device "$device" --sizes "$largest" --layouts gpt2 --dtypes fp32,bf16 \
    --only "decoupled.AdamW(),backend=fused,backend=triton,backend='triton'" --budget 0.3 --rounds 2 \
    --bandwidth-elements "$bw" --out "$work/bench_gpt2" --no-plot --no-progress
keep bench_gpt2
cp "$work/bench_gpt2/results.json" "$out/bench_gpt2.json" 2> /dev/null

# 5. summary
{
    echo "# GPU check"
    echo
    grep -E "^(name|NVIDIA|python|bitsandbytes)" "$log"
    echo
    grep -E "^== |[0-9]+ (passed|failed)|FAILED|^ERROR" "$log" | head -80
    echo
    $py benchmarks/gpu_summary.py "$out"
} > "$out/summary.md" 2>&1
rm -rf "$work"
cat "$out/summary.md"
