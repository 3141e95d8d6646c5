"""cffi out-of-line API-mode build of ``walle_cpu._kernels`` (run by setup.py's cffi_modules).

The C sources live in ``csrc/``, one file per op (``conv.c``, ``pool2d.c``, ...) plus the
executor, the thread pool and the ISA variants. x86 SIMD variants are compiled with per-region
target options inside ``simd.c``, so no global ``-m`` flag is needed and one binary runs on any
x86-64 CPU.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
# one file per op kind (and per conv algorithm), the executor, the thread pool, the ISA variants
SOURCES = sorted(p.name for p in CSRC.glob("*.c"))
HEADERS = sorted(str(p.relative_to(CSRC)) for p in (*CSRC.glob("*.h"), *CSRC.glob("isa/*.inc")))

ABI_START = "/* ---- cffi: begin ---- */"
ABI_END = "/* ---- cffi: end ---- */"


def public_abi() -> str:
    """The declarations cffi needs, read from wl.h: descriptor, per-kind parameter structs, codes
    and entry points are written once, for the C compiler and for Python alike."""
    header = (CSRC / "wl.h").read_text()
    return header[header.index(ABI_START) + len(ABI_START):header.index(ABI_END)]


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(public_abi())
    ffi.set_source(
        "walle_cpu._kernels",
        '#include "wl.h"',
        sources=[str((CSRC / s).relative_to(Path.cwd())) if (CSRC / s).is_relative_to(Path.cwd())
                 else str(CSRC / s) for s in SOURCES],
        include_dirs=[str(CSRC)],
        # headers and the per-ISA includes: a change there must rebuild every object
        depends=[str(CSRC / h) for h in HEADERS],
        extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math",
                            "-fno-semantic-interposition", "-Wall", "-Wno-unused-function"],
        libraries=["m", "pthread"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
