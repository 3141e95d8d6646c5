"""The cpu backend's int8 kernels (``csrc/qgemm.c``) below Python: the C harness
``plugins/cpu/tests/quant_kernels.c`` runs convolutions (regular, 1x1, strided, dilated, grouped,
depthwise) and matrix products on odd shapes with uint8/int8 activations and weights, per-tensor
and per-channel zero points and scales, fused clamps and int32 output, and compares them exactly
with naive loops.

* x86: built natively and run once per variant this CPU supports (AMX-INT8, AVX-512 VNNI, AVX-VNNI, AVX2,
  scalar); a variant the CPU lacks is skipped.
* NEON (``sdot``) and the portable loops: cross-compiled for aarch64 and run under
  ``qemu-aarch64``, like the fp32 kernels in ``test_cpu_neon.py``.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "plugins" / "cpu" / "walle_cpu" / "csrc"
HARNESS = ROOT / "plugins" / "cpu" / "tests" / "quant_kernels.c"
SOURCES = [str(CSRC / "qgemm.c"), str(CSRC / "threadpool.c")]
FLAGS = ["-O2", "-std=gnu11", "-fno-math-errno", "-Wall", "-Werror", f"-I{CSRC}"]


def _build(cc: str, out: Path, extra: list[str]) -> Path:
    cmd = [cc, *FLAGS, *extra, str(HARNESS), *SOURCES, "-o", str(out), "-lm", "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return out


def _check(cmd: list[str], isa: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode == 2:
        pytest.skip(f"this CPU lacks {isa}")
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout[-4000:] + res.stderr
    assert f"isa: {isa}" in res.stdout


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    return _build(cc, tmp_path_factory.mktemp("q") / "quant_kernels", [])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 variants only")
@pytest.mark.parametrize("isa", ["amx", "avx512vnni", "avxvnni", "avx2", "scalar"])
def test_x86_int8_kernels(native: Path, isa: str) -> None:
    _check([str(native), isa], isa)


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """qemu and one static aarch64 build, which runs every NEON variant (chosen by argument)."""
    cc = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if cc is None or qemu is None:
        pytest.skip("NEON kernels need the Debian packages gcc-aarch64-linux-gnu and qemu-user "
                    "(scripts/setup.sh installs them)")
    return qemu, _build(cc, tmp_path_factory.mktemp("q64") / "quant_kernels", ["-static"])


@pytest.mark.parametrize("isa", ["neon-dot", "scalar"])
def test_aarch64_int8_kernels_under_qemu(aarch64: tuple[str, Path], isa: str) -> None:
    qemu, out = aarch64
    _check([qemu, str(out), isa], isa)


POOL8 = [str(ROOT / "plugins" / "cpu" / "tests" / "pool8_kernels.c"), str(CSRC / "pool8.c"),
         str(CSRC / "threadpool.c")]


def _pool8(cc: str, out: Path, extra: list[str]) -> Path:
    cmd = [cc, *FLAGS, *extra, *POOL8, "-o", str(out), "-lm", "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return out


def test_pool8_native(tmp_path: Path) -> None:
    """8-bit max pooling (``pool8.c``: SSE2 stride-2 taps on x86) against naive loops."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    res = subprocess.run([str(_pool8(cc, tmp_path / "pool8", []))], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout[-4000:] + res.stderr


def test_pool8_aarch64_under_qemu(tmp_path: Path) -> None:
    """... and its NEON path (``vld2q_u8`` stride-2 taps) under qemu."""
    cc = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if cc is None or qemu is None:
        pytest.skip("NEON kernels need the Debian packages gcc-aarch64-linux-gnu and qemu-user "
                    "(scripts/setup.sh installs them)")
    out = _pool8(cc, tmp_path / "pool8", ["-static"])
    res = subprocess.run([qemu, str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout[-4000:] + res.stderr
