"""The cpu backend's kernel variants tested below Python: a small C harness
(``plugins/cpu/tests/neon_kernels.c``) checks GEMM, element-wise and all Conv2D algorithms against
naive double loops.

* NEON: cross-compiled statically with Debian's ``gcc-aarch64-linux-gnu`` and run under
  ``qemu-aarch64`` (Debian ``qemu-user``), so the ARM variant is tested, not just written.
* x86: the same harness built natively and run once per variant this CPU supports.

``scripts/setup.sh`` installs the cross toolchain and qemu; without them the NEON test skips and
says why.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from walle_cpu import _build as cpu_build

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "plugins" / "cpu" / "walle_cpu" / "csrc"
HARNESS = ROOT / "plugins" / "cpu" / "tests" / "neon_kernels.c"
SOURCES = [str(CSRC / n) for n in cpu_build.SOURCES]
FLAGS = ["-O2", "-std=gnu11", "-fno-math-errno", f"-I{CSRC}"]


def _compile(cmd: list[str]) -> None:
    # a hang guard only: simd.c (every x86 variant) alone took over 300 s on a loaded 2-core machine
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


def _build(cc: str, out: Path, extra: list[str]) -> None:
    """The harness and every kernel source, one object each on all cores, then linked."""
    objs = [out.parent / f"{out.name}-{Path(src).stem}.o" for src in (str(HARNESS), *SOURCES)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_compile, [[cc, *FLAGS, *extra, "-c", src, "-o", str(obj)]
                                 for src, obj in zip((str(HARNESS), *SOURCES), objs, strict=True)]))
    _compile([cc, *extra, *map(str, objs), "-o", str(out), "-lm", "-lpthread"])


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def neon_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if cc is None or qemu is None:
        pytest.skip("NEON kernels need the Debian packages gcc-aarch64-linux-gnu and qemu-user "
                    "(scripts/setup.sh installs them)")
    out = tmp_path_factory.mktemp("neon") / "neon_kernels"
    _build(cc, out, ["-static"])
    return out


@pytest.mark.parametrize("isa", ["neon", "scalar"])
def test_aarch64_kernels_under_qemu(neon_binary: Path, isa: str) -> None:
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    assert qemu is not None
    out = _run([qemu, str(neon_binary), isa])
    assert f"isa: {isa}" in out


@pytest.fixture(scope="module")
def x86_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One native build serves every variant: the ISA is chosen at run time by the argument."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("x86") / "kernels"
    _build(cc, out, [])
    return out


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 variants only")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_x86_kernel_variants(x86_binary: Path, isa: str) -> None:
    res = subprocess.run([str(x86_binary), isa], capture_output=True, text=True, timeout=300)
    if res.returncode == 2:
        pytest.skip(f"this CPU lacks {isa}")
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout + res.stderr
