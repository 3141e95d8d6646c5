"""Loads the compiled C kernels (``walle_cpu._kernels``); never raises on import.

``LIB``/``FFI`` are None when the extension is missing, and ``LOAD_ERROR`` says why in words a
person can act on (typically: no C compiler when walle was installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from walle_core import flags

FFI: Any = None
LIB: Any = None
LOAD_ERROR = ""

try:
    from walle_cpu._kernels import ffi as _ffi  # type: ignore[import-not-found,unused-ignore]
    from walle_cpu._kernels import lib as _lib  # type: ignore[import-not-found,unused-ignore]

    FFI, LIB = _ffi, _lib
    if flags.cpu_isa() and _lib.wl_set_isa(flags.cpu_isa().encode()) != 0:
        FFI = LIB = None
        LOAD_ERROR = (f"WALLE_CPU_ISA={flags.cpu_isa()} names a kernel variant this CPU or build "
                      f"does not have (this CPU's best: {_ffi.string(_lib.wl_isa_name()).decode()}; "
                      "unset it or pick avx512, avx2, neon or scalar)")
except ImportError as exc:  # the extension was not built
    marker = Path(__file__).with_name("_build_error.txt")
    if marker.exists():
        LOAD_ERROR = marker.read_text().strip()
    else:
        LOAD_ERROR = (
            f"the C kernels of the cpu backend are not built ({exc}); reinstall walle with a C "
            "compiler present (`pip install -e .` compiles them through cffi)"
        )
