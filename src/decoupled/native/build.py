"""Building and caching the native kernel (``kernel.cpp`` with ``codes.h`` and ``simd.h``).

The kernel is compiled on first use with :func:`torch.utils.cpp_extension.load` (g++ or clang
through ninja, as DeepSpeed builds its CPU Adam) with ``-O3 -march=native -fopenmp``: the
compiler vectorizes the loops for the CPU it runs on (AVX2, AVX-512 or NEON), and torch's
intra-op threads (OpenMP) share out the work. ``-ffp-contract=off`` keeps the float32
arithmetic exactly what the kernel spells out; ``-fno-trapping-math`` lets it vectorize the
rule's selects without AVX-512 (:data:`FLAGS`).

Why this way (measured on the project's 2-core AMD EPYC, Zen 4 with AVX-512, g++ 12):

* The source includes only ``ATen/Parallel.h`` and pybind11 and takes tensors as addresses:
  a trivial extension built in 6 s that way against 28 s including ``torch/extension.h``
  (which ``at::vec::Vectorized`` needs, with per-ISA builds and a dispatcher).
* Plain loops left to the compiler step the fp32 rule at 0.41 ns per element on one core
  of the 2-core AMD EPYC (256K parameters; 0.46 built for AVX2) against 0.63 ns for torch's
  own ``at::vec`` fused kernel (1M parameters, through Python), so ``at::vec`` would not be faster; the loops must
  avoid what GCC 12 does not vectorize (selects on a scalar bool, masked loads of
  coefficients: see ``update`` in kernel.cpp).
* The 8-bit loop alone is written with explicit vectors (``simd.h``: GCC vector extensions,
  16 lanes with AVX-512, 8 with AVX2): it mixes byte codes with float lanes and needs float16
  conversions, which GCC 12 vectorizes badly or not at all (1.5 against 0.77 ns per element).
  Every instruction set computes the same bits (``tests/test_native.py`` builds the AVX2 and
  the scalar paths with :data:`MARCH_VARIABLE` and compares).

Cache
    The built module lives in ``<root>/decoupled_native/<key>/`` where ``<root>`` is
    ``$DECOUPLED_NATIVE_DIR``, else ``$TORCH_EXTENSIONS_DIR``, else torch's default
    (``~/.cache/torch_extensions``), and ``<key>`` hashes the sources, the flags, the torch and
    Python versions and the CPU's model and feature flags (a ``-march=native`` build must not
    run on another CPU). The first build took 14-28 s on the 2-core machine (quiet to busy); a later
    process imports the built file directly (0.1 s). :data:`BUILD_SECONDS` holds this
    process's build time.

Without a compiler
    If the build fails, one warning says why and how to get the kernel, and
    :func:`unavailable_reason` returns the reason, so the formats keep running on their float32
    arena (:mod:`decoupled.formats.arena`). ``DECOUPLED_NATIVE=0`` skips the kernel (and the
    warning).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("kernel.cpp")
HEADERS = (Path(__file__).with_name("codes.h"), Path(__file__).with_name("simd.h"))
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _vendor() -> str:
    """The CPU's vendor (``/proc/cpuinfo``'s ``vendor_id``: ``GenuineIntel``, ``AuthenticAMD``), or ''."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")


PREFETCH = () if _vendor() != "AuthenticAMD" else ("-DDECOUPLED_PREFETCH_F32=0", "-DDECOUPLED_PAGE_AHEAD=0")
"""The software-prefetch distances that differ from kernel.cpp's on this CPU (part of :data:`FLAGS`)."""

FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    *(("-mprefer-vector-width=512",) if _X86 else ()),
    *PREFETCH,
)
"""The compiler flags. ``-fno-trapping-math`` lets GCC compute both sides of the kernel's selects
(the kernel never reads the floating-point exception flags): without it GCC 12 left the fused
loop scalar wherever AVX-512's masked instructions are missing (AVX2: 3.4 ns per element on one
core for the fp32 rule, against 0.46 with it). ``-mprefer-vector-width=512`` (x86 only; no
effect without AVX-512): GCC's tuning for Intel's AVX-512 cores vectorizes loops 8 lanes wide
unless told otherwise; 16 lanes stepped the dense formats faster at 64M parameters on the 2-core
Intel Xeon, the same bits, and on the 2-core AMD EPYC (Zen 4), whose tuning prefers 8 lanes too,
bf16 moments 0.67 -> 0.50 ns per element and Kahan-compensated bf16 weights 1.27 -> 0.75. On AMD
CPUs (:data:`PREFETCH`) only the 8-bit loop over bf16 parameters asks for software prefetch: the
distances that took the Intel Xeon's loops closer to its memory bound made the EPYC's other loops
slower (8-bit moments of float32 parameters 0.56-0.67 -> 0.43-0.53 ns per element without them;
kernel.cpp, "software prefetch", and ``benchmarks/RESULTS.md``)."""

MARCH_VARIABLE = "DECOUPLED_NATIVE_MARCH"
"""Environment variable naming the ``-march`` target instead of ``native``: a build that runs on
every CPU of a mixed cluster (``x86-64-v3``: AVX2), or the other instruction sets' code paths
in the tests (``x86-64-v2`` has no F16C, so it runs the scalar codes)."""

HOW_TO_GET_IT = (
    "install a C++ compiler with OpenMP (e.g. `apt install g++`) and ninja (`pip install ninja`), then "
    "start Python again; set DECOUPLED_NATIVE=0 to use the arena path without this warning"
)

BUILD_SECONDS: float | None = None
"""Seconds this process spent compiling the kernel (None: it was loaded from the cache or not built)."""

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = {line.split(":", 1)[0].strip(): line for line in text.splitlines() if ":" in line}
    return "\n".join(lines[k] for k in wanted if k in lines) + platform.machine()


def _flags() -> tuple[str, ...]:
    """The compiler flags: :data:`FLAGS`, with the ``-march`` target of :data:`MARCH_VARIABLE`."""
    march = os.environ.get(MARCH_VARIABLE) or "native"
    return tuple(f"-march={march}" if flag == "-march=native" else flag for flag in FLAGS)


def cache_dir() -> Path:
    """Where this CPU's, torch's and this source's build of the kernel is kept."""
    root = os.environ.get("DECOUPLED_NATIVE_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root) / "decoupled_native" / _key()


def _key() -> str:
    h = hashlib.sha256()
    parts = [p.read_bytes() for p in (SOURCE, *HEADERS)]
    parts += [s.encode() for s in (" ".join(_flags()), torch.__version__, sys.version, _cpu_signature())]
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def module_name() -> str:
    return f"decoupled_native_{_key()}"


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _precheck() -> str | None:
    if os.environ.get("DECOUPLED_NATIVE", "1") == "0":
        return "the native CPU kernels are switched off (DECOUPLED_NATIVE=0)"
    if sys.platform == "win32":
        return "the native CPU kernels are built with g++/clang flags, which MSVC does not take (Windows)"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler found (looked for {compiler!r}; set CXX to choose one)"
    return None


def _build() -> ModuleType:
    global BUILD_SECONDS
    from torch.utils.cpp_extension import load

    directory, name = cache_dir(), module_name()
    built = directory / f"{name}.so"
    if built.exists():
        return _import(built, name)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module = load(
        name=name,
        sources=[str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=list(_flags()),
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    BUILD_SECONDS = time.perf_counter() - start
    return module


def _short(err: BaseException) -> str:
    """The first line of ``err`` and its first compiler error line, if any."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = (lines[0] if lines else type(err).__name__).split(": [")[0][:120]  # ninja's command line after ": ["
    detail = next((line for line in lines[1:] if "error" in line.lower()), "")
    return f"{type(err).__name__}: {first}" + (f" ({detail[:200]})" if detail else "")


def kernel() -> ModuleType | None:
    """The compiled kernel module, built on the first call; None (with one warning) when it cannot be."""
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        reason = _precheck()
        module = None
        if reason is None:
            try:
                module = _build()
            except Exception as err:  # a failing compiler raises RuntimeError, OSError, ImportError...
                reason = f"the native CPU kernels could not be built ({_short(err)})"
        _state["module"], _state["reason"] = module, reason
        if reason is not None and os.environ.get("DECOUPLED_NATIVE", "1") != "0":
            warnings.warn(
                f"decoupled: {reason}; state formats run on the slower float32 arena path. To get the fast "
                f"path, {HOW_TO_GET_IT}.",
                RuntimeWarning,
                stacklevel=3,
            )
        return module


def description() -> dict | None:
    """What this process's kernel was built with, without building it: the flags, the vector
    lanes of its 8-bit loop (16: AVX-512, 8: AVX2, 1: the scalar codes) and this process's build
    seconds (None: loaded from the cache); None if the kernel has not been loaded."""
    module = _state.get("module")
    if module is None:
        return None
    return {"flags": " ".join(_flags()), "lanes": int(getattr(module, "LANES", 1)), "build_seconds": BUILD_SECONDS}


def unavailable_reason() -> str | None:
    """Why the kernel cannot run in this process (building it first if needed), or None."""
    kernel()
    return _state["reason"]  # type: ignore[return-value]


def reset() -> None:
    """Forget this process's build result, so the next :func:`kernel` tries again (for tests)."""
    with _lock:
        _state.clear()
