"""ONNX backend node conformance: every node test case shipped in the ``onnx`` wheel, run
through Walle's ONNX backend adapter on the reference backend, then on every other available
backend (cpu, opencl, vulkan).

* cases using types Walle does not support (float8, bfloat16, int4, string, sequences, ...)
  and cases Walle rejects with an explicit ``UnsupportedOpError`` are skipped with the reason;
* cases listed in ``onnx_node/known_failures.txt`` are strict xfail (an unexpected pass fails
  the run, so the list cannot go stale);
* everything else must pass (same shape, dtype, and values within the case's rtol/atol).

``python tests/onnx_node/report.py --ort`` prints the counts next to onnxruntime's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "onnx_node"))

import node_cases as nc

KNOWN_FILE = Path(__file__).resolve().parent / "onnx_node" / "known_failures.txt"


def _known_failures() -> dict[str, str]:
    known: dict[str, str] = {}
    if KNOWN_FILE.exists():
        for line in KNOWN_FILE.read_text().splitlines():
            name, _, reason = line.partition("#")
            if name.strip():
                known[name.strip()] = reason.strip() or "known failure"
    return known


def _params() -> list[object]:
    known = _known_failures()
    params = []
    for case in nc.load_cases():
        marks = []
        if case.name in known:
            marks.append(pytest.mark.xfail(reason=known[case.name], strict=True))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_onnx_node(case: nc.NodeCase) -> None:
    outcome = nc.evaluate(case)
    if outcome.status == "skip":
        pytest.skip(outcome.reason)
    if outcome.status == "fail":
        pytest.fail(f"{outcome.reason}\n{outcome.detail}", pytrace=False)


def _accelerators() -> list[str]:
    from walle_core.plugins import registry

    available = {b.name for b in registry().available()}
    return [n for n in ("cpu", "opencl", "vulkan") if n in available]


@pytest.mark.parametrize("case", _params())
@pytest.mark.parametrize("backend", _accelerators())
def test_onnx_node_on_backend(backend: str, case: nc.NodeCase) -> None:
    """What passes on reference must pass on every real backend (ops it lacks fall back)."""
    outcome = nc.evaluate(case, lambda c: nc.run_walle(c, backend))
    if outcome.status == "skip":
        pytest.skip(outcome.reason)
    if outcome.status == "fail":
        pytest.fail(f"{outcome.reason}\n{outcome.detail}", pytrace=False)


def test_case_count() -> None:
    assert len(nc.load_cases()) >= 1800
