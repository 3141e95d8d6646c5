"""Shared pieces of the device and end-to-end tests: a registry child process with a trusted
publisher key, the demo's purchase-intent model (trained once per session, small) and its bundles.

Imported by ``test_e2e*.py`` and ``test_device*.py`` (``from test_e2e_fixtures import *``); the
fixtures themselves are registered once per session by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from walle_core.plugins import registry
from walle_core.search import calibration_for
from walle_demo import scenario
from walle_demo.demo import Stack


@pytest.fixture(scope="session")
def intent_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, trained on a smaller sample (same code, same seed discipline)."""
    data = scenario.make_dataset(11, shoppers=120, sessions=5)
    model = scenario.train(data, 11, epochs=200)
    assert model.test_auc > 0.8, model.test_auc  # it learned something real
    return scenario.export_onnx(model, tmp_path_factory.mktemp("model") / "intent.onnx")


@pytest.fixture(scope="session")
def calibrated_backends() -> None:
    """A device calibrates each backend once, at its first install (tens of seconds on a fresh
    2-core machine, then cached); done up front here so the time limits of these tests measure
    rollouts and reconnects, not a first calibration."""
    for backend in registry().available():
        calibration_for(backend)


@pytest.fixture
def stack(tmp_path: Path, calibrated_backends: None) -> Iterator[Stack]:
    st = Stack.start(tmp_path / "world")
    try:
        yield st
    finally:
        st.close()


def publish(stack: Stack, model: Path, version: str, script: str | None = None) -> dict[str, Any]:
    bundle = scenario.build_bundle(stack.root / "bundles", model, version, stack.private_key, script=script)
    return dict(stack.admin.publish(bundle))


async def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    """Poll ``cond`` (sync; run in a thread so the devices keep running) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(cond)
        if last:
            return last
        await asyncio.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")


def ok_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["value"].get("user", {}).get("status") == "ok"]


# The fixtures above are not exported: tests/conftest.py registers them once for the whole session
# (a star import would define them again in every module, and the session-scoped model was then
# trained once per importing module).
__all__ = ["ok_results", "publish", "wait_for"]
