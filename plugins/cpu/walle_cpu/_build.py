"""cffi out-of-line API-mode build of ``walle_cpu._kernels`` (run by setup.py's cffi_modules).

The C sources live in ``csrc/``. x86 SIMD variants are compiled with per-region target options
inside ``simd.c``, so no global ``-m`` flag is needed and one binary runs on any x86-64 CPU.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = ["exec.c", "gemm.c", "pool.c", "simd.c"]

CDEF = """
typedef struct { int32_t slot; int32_t pad; int64_t off; } wl_ref;
typedef struct wl_op {
    int32_t kind, fn, dtype, dtype2, n_in, algo;
    wl_ref *ins;
    wl_ref out;
    int64_t p[64];
    double f[8];
    void *aux;
    void *aux2;
} wl_op;
int wl_run(const wl_op *ops, int n_ops, char **slots, int nthreads, char *err, int errlen);
const char *wl_isa_name(void);
int wl_set_isa(const char *name);
int wl_gemm_nr(void);
void wl_pack_b(const float *b, int64_t k, int64_t n, int trans_b, float *out);
int64_t wl_packed_b_floats(int64_t k, int64_t n);
void wl_winograd_weights(const float *w, int64_t o, int64_t c, float *out);
void wl_pool_shutdown(void);
void wl_set_profile(double *buf);
"""


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "walle_cpu._kernels",
        '#include "wl.h"',
        sources=[str((CSRC / s).relative_to(Path.cwd())) if (CSRC / s).is_relative_to(Path.cwd())
                 else str(CSRC / s) for s in SOURCES],
        include_dirs=[str(CSRC)],
        # headers and the per-ISA include: a change there must rebuild every object
        depends=[str(CSRC / h) for h in ("wl.h", "simd.inc")],
        extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math",
                            "-fno-semantic-interposition", "-Wall", "-Wno-unused-function"],
        libraries=["m", "pthread"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
