"""cffi out-of-line API-mode build of ``walle_cpu._kernels`` (run by setup.py's cffi_modules).

The C sources live in ``csrc/``. x86 SIMD variants are compiled with per-region target options
inside ``simd.c``, so no global ``-m`` flag is needed and one binary runs on any x86-64 CPU.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = ["exec.c", "gemm.c", "nchwc.c", "pool.c", "simd.c"]

ABI_START = "/* ---- public ABI"
ABI_END = "/* ---- kinds, dtypes"


def public_abi() -> str:
    """The declarations cffi needs, read from wl.h so the ABI is written once."""
    header = (CSRC / "wl.h").read_text()
    return header[header.index(ABI_START):header.index(ABI_END)].split("\n", 1)[1]


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(public_abi())
    ffi.set_source(
        "walle_cpu._kernels",
        '#include "wl.h"',
        sources=[str((CSRC / s).relative_to(Path.cwd())) if (CSRC / s).is_relative_to(Path.cwd())
                 else str(CSRC / s) for s in SOURCES],
        include_dirs=[str(CSRC)],
        # headers and the per-ISA include: a change there must rebuild every object
        depends=[str(CSRC / h) for h in ("wl.h", "simd.inc", "nchwc.inc")],
        extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math",
                            "-fno-semantic-interposition", "-Wall", "-Wno-unused-function"],
        libraries=["m", "pthread"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
