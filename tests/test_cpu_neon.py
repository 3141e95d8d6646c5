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

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from walle_cpu import _build

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "plugins" / "cpu" / "walle_cpu" / "csrc"
HARNESS = ROOT / "plugins" / "cpu" / "tests" / "neon_kernels.c"
SOURCES = [str(CSRC / n) for n in _build.SOURCES]
FLAGS = ["-O2", "-std=gnu11", "-fno-math-errno", f"-I{CSRC}"]


def _build(cc: str, out: Path, extra: list[str]) -> None:
    cmd = [cc, *FLAGS, *extra, str(HARNESS), *SOURCES, "-o", str(out), "-lm", "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


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


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 variants only")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_x86_kernel_variants(tmp_path: Path, isa: str) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path / "kernels"
    _build(cc, out, [])
    res = subprocess.run([str(out), isa], capture_output=True, text=True, timeout=300)
    if res.returncode == 2:
        pytest.skip(f"this CPU lacks {isa}")
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout + res.stderr
