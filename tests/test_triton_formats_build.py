"""The formats' Triton executor (:mod:`decoupled.formats.triton`) without running its kernel:
the formats it takes and the reasons it gives, its launch settings, the kernel compiled for a
Hopper GPU (sm_90) here without one, and its rows in ``decoupled bench``.

``tests/test_triton_formats.py`` runs the kernel itself against the arena (under the interpreter,
and on CUDA).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")


@pytest.mark.parametrize(
    ("moments", "words"),
    [
        ("param", None),
        ("fp32", None),
        ("bf16", None),
        ("8bit", None),  # the blockwise float8 code
        ("tree", "blockwise float8"),  # the legacy dynamic-tree code: converted on loading, never run
    ],
)
def test_moment_formats_it_runs(moments, words):
    """On CUDA parameters (a GPU is not needed to decide) the executor runs every moment format an
    option names, and refuses the legacy tree code with a reason that names what it runs."""
    import torch

    from decoupled import formats
    from decoupled.formats import triton as triton_formats

    fmt = formats.LEGACY[0] if moments == "tree" else formats.get(moments)
    reason = triton_formats.why_not(fmt, "nearest", {("cuda", torch.float32), ("cuda", torch.bfloat16)})
    assert reason is None if words is None else (reason is not None and words in reason), reason


@pytest.mark.parametrize(
    ("dtype", "moments", "rounding", "words"),
    [
        ("float64", "param", "nearest", "fp32, bf16 and fp16"),
        ("float16", "param", "stochastic", "bfloat16"),
        ("float32", "fp32", "nearest", "CUDA"),
    ],
)
def test_unsupported_reason(dtype, moments, rounding, words):
    import torch

    from decoupled import formats
    from decoupled.formats import triton as triton_formats

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and words == "CUDA":
        pytest.skip("this process runs the interpreter, which takes CPU tensors")
    p = torch.zeros(8, dtype=getattr(torch, dtype))
    reason = triton_formats.unsupported_reason(formats.get(moments), rounding, [p])
    assert reason is not None and words in reason
    assert triton_formats.why_not(formats.get(moments), rounding, {("cpu", p.dtype)}) == reason


@pytest.mark.parametrize(
    ("kernel", "env", "expected"),
    [
        ("formats", {}, (1024, 4)),
        ("formats", {"DECOUPLED_TRITON_FORMAT_BLOCK": "4096", "DECOUPLED_TRITON_FORMAT_NUM_WARPS": "8"}, (4096, 8)),
        ("formats", {"DECOUPLED_TRITON_FORMAT_BLOCK": "1000"}, "power of two"),
        ("formats", {"DECOUPLED_TRITON_FORMAT_BLOCK": "128"}, "power of two >= 256"),
        ("formats", {"DECOUPLED_TRITON_FORMAT_NUM_WARPS": "six"}, "1, 2, 4"),
        ("backend", {}, (1024, 4)),
        ("backend", {"DECOUPLED_TRITON_BLOCK": "2048", "DECOUPLED_TRITON_NUM_WARPS": "8"}, (2048, 8)),
        ("backend", {"DECOUPLED_TRITON_NUM_WARPS": "64"}, "1, 2, 4"),
    ],
)
def test_launch_config_from_environment(monkeypatch, kernel, env, expected):
    """Block size and warps per program of both Triton kernels, read at launch (tuning runs)."""
    from decoupled.backends import triton as triton_backend
    from decoupled.formats import triton as triton_formats

    for key in list(os.environ):
        if key.startswith("DECOUPLED_TRITON_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = triton_formats.launch_config if kernel == "formats" else triton_backend.launch_config
    if isinstance(expected, tuple):
        assert config() == expected
    else:
        with pytest.raises(ValueError, match=expected):
            config()


# (parameter, moment element types, kernel flags) compiled for Hopper without a GPU; MOMENTS=2 is
# the float8 code (uint8 codes)
HOPPER_CASES = [
    ("fp32", "u8", dict(MOMENTS=2, AMSGRAD=True, CAUTIOUS=True)),
    ("bf16", "bf16", dict(MOMENTS=1, PARAM_ROUNDING=2, RANDOM_WORDS=2, AMSGRAD=True, MAXIMIZE=True)),
    ("fp16", "u8", dict(MOMENTS=2, PARAM_ROUNDING=1, HAS_L2=True, HAS_DECAY=False)),
    ("bf16", "u8", dict(MOMENTS=2, PARAM_ROUNDING=2, RANDOM_WORDS=1)),
]


def _hopper_signature(arg_names, param: str, moment: str, constants: dict) -> dict[str, str]:
    """Triton's type string for each kernel argument (``constexpr`` for the flags)."""
    types = dict(ptr_table="*i64", numels="*i64", block_tensor="*i32", block_start="*i64")
    types.update(p_witness=f"*{param}", g_witness=f"*{param}", m_witness=f"*{moment}")
    types.update(first_block="i32", num_tensors="i32", seed="i64")
    return {name: "constexpr" if name in constants else types.get(name, "fp32") for name in arg_names}


def _compile_for_hopper(param: str, moment: str, flags: dict, even: bool):
    """The kernel compiled by Triton for sm_90 (1024 elements and 4 warps per program) here,
    without a GPU; skips where this Triton compiles differently."""
    import triton

    from decoupled.formats.triton import kernel

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"this Triton compiles differently ({err})")
    constants = dict(HAS_DECAY=True, HAS_L2=False, CAUTIOUS=False, AMSGRAD=False, MAXIMIZE=False, MOMENTS=0)
    constants.update(PARAM_ROUNDING=0, RANDOM_WORDS=0, ALIGNED=True, ROUND_BY_HAND=False, ROWS=4, EVEN=even)
    constants.update(flags)
    signature = _hopper_signature(kernel.format_kernel.arg_names, param, moment, constants)
    try:
        positions = {(list(signature).index(k),): v for k, v in constants.items()}
        source = ASTSource(kernel.format_kernel, signature, positions)
    except TypeError as err:
        pytest.skip(f"this Triton's ASTSource takes other arguments ({err})")
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False})


@pytest.mark.parametrize("case", HOPPER_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]['MOMENTS']}")
def test_kernel_compiles_for_hopper_with_vector_stores(case):
    """Triton compiles the kernel for sm_90 here, without a GPU (which catches what its interpreter
    lets through, such as a global that is not constexpr); in the launch of full blocks a thread
    stores its consecutive elements of each stream with one instruction (a vector), where the
    launch of tails stores them one by one; nothing spills to local memory."""
    import re

    param, moment, flags = case
    counts = {}
    for even in (True, False):
        ptx = _compile_for_hopper(param, moment, flags, even).asm["ptx"]
        assert "ld.local" not in ptx and "st.local" not in ptx
        counts[even] = len(re.findall(r"st\.global\.", ptx))
    # a thread's 4 elements of a stream: one store instruction in a full block, 4 in a tail
    assert 2 * counts[True] <= counts[False], counts


FLOAT8_BYTES = 2 + 2 * 4 / 256  # a float8 moment per parameter and step: its code and scale, read and written
# (parameter, moment element types, kernel flags, bytes a step moves per parameter) of the steps
# that must stay memory-bound on an H200. Not here: bf16 weights with float8 moments written to
# nearest or stochastically (10.1 bytes, a budget of 80 instructions; 102 and 123 in Triton 3.9's
# code, docs/backends.md)
BUDGET_CASES = [
    ("fp32", "fp32", dict(MOMENTS=0), 28),
    ("fp32", "bf16", dict(MOMENTS=1, RANDOM_WORDS=1), 20),
    ("fp32", "u8", dict(MOMENTS=2), 12 + 2 * FLOAT8_BYTES),
    ("fp32", "u8", dict(MOMENTS=2, AMSGRAD=True, CAUTIOUS=True), 12 + 3 * FLOAT8_BYTES),
    ("bf16", "bf16", dict(MOMENTS=1, PARAM_ROUNDING=2, RANDOM_WORDS=2), 14),
    ("bf16", "bf16", dict(MOMENTS=0, PARAM_ROUNDING=1), 18),
    ("bf16", "u8", dict(MOMENTS=2, PARAM_ROUNDING=1), 10 + 2 * FLOAT8_BYTES),
]


def _fast_path(sass: str) -> list[str]:
    """The opcodes of the main function of an ``nvdisasm`` listing that run when no correctly
    rounded division or square root takes its slow path: without the blocks that a predicated
    branch jumps over when they hold a ``CALL`` (to the slow path), the subroutines, and NOPs."""
    import re

    lines = []
    for line in sass.splitlines():
        if "__internal_" in line and line.strip().endswith(":"):  # the first subroutine
            break
        lines.append(line)
    ops, i = [], 0
    while i < len(lines):
        branch = re.match(r"\s+/\*[0-9a-f]+\*/\s+@!?P\d\s+BRA\s+`\((\.L_x_\d+)\)", lines[i])
        if branch:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == branch.group(1) + ":"), i)
            if any("CALL" in line for line in lines[i + 1 : end]):
                i = end
                continue
        op = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", lines[i])
        if op and op.group(1) != "NOP":
            ops.append(op.group(1))
        i += 1
    return ops


@pytest.mark.parametrize("case", BUDGET_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]['MOMENTS']}-{c[3]:.1f}B")
def test_step_fits_the_instruction_budget_of_its_bytes(case, tmp_path):
    """A memory-bound step: at 4.3 TB/s an H200 SM moves about 16 bytes per clock and issues 128
    thread-instructions, so a step that moves B bytes per element may spend about 8 B instructions
    on it. Counted in sm_90 SASS (Triton 3.9 compiles it here; ``nvdisasm`` from Triton's CUDA
    backend) on the path that runs when no division or square root needs its slow path, over the
    8 elements each of the 128 threads of a program updates."""
    import subprocess
    from pathlib import Path

    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not nvdisasm.exists():
        pytest.skip("this Triton has no nvdisasm")
    param, moment, flags, step_bytes = case
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(_compile_for_hopper(param, moment, flags, True).asm["cubin"])
    sass = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    ops = _fast_path(sass)
    assert "FFMA" in ops and any(op.startswith("STG") for op in ops)  # the listing was read
    assert len(ops) / 8 <= 8 * step_bytes, (len(ops) / 8, 8 * step_bytes)


def test_bench_lists_the_executor_rows_without_a_gpu():
    """``decoupled bench`` has a row for every ``backend='triton'`` option set of its tables (state
    formats and conventions, per parameter dtype), listed with the reason where it cannot run
    (here: no CUDA GPU)."""
    import torch

    from decoupled.bench import peers

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs the interpreter, which takes CPU tensors")
    dtypes = [torch.float32, torch.bfloat16]
    rows = peers.decoupled_contenders(torch.device("cpu"), dtypes)
    mine = [c for c in rows if "backend='triton'" in c.name]
    tables = [options for dt in dtypes for table in (peers.FORMATS, peers.CONVENTIONS) for options in table.get(dt, ())]
    expected = [options for options in tables if options.get("backend") == "triton"]
    assert expected and len(mine) == len(expected), [c.name for c in mine]
    assert all(c.skip and "CUDA" in c.skip for c in mine), [(c.name, c.skip) for c in mine]
