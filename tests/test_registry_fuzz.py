"""Hostile HTTP input: schemathesis generates requests from /openapi.json (valid and invalid
bodies, parameters and headers) against the app, sent anonymously and with a device, a publisher
and an admin credential; none may get a 5xx, and afterwards the background work (the heartbeat
flush) and every listing still succeed. Skipped when schemathesis is not installed.
``WALLE_FUZZ_EXAMPLES=N`` raises the examples per operation (default 5, to keep the suite fast;
25 was run clean during development)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, make_env

from walle_core import flags

schemathesis = pytest.importorskip("schemathesis")

_state: dict[str, Any] = {}


class _Problems(logging.Handler):
    """Warnings and errors the registry logs (a failed heartbeat flush is one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[Env]:
    problems = _Problems()
    logging.getLogger("walle_registry").addHandler(problems)
    try:
        with make_env(Path(tempfile.mkdtemp(prefix="walle-fuzz-")), None, device_rate_per_s=0) as env:
            env.publish("fuzz", "1.0.0")
            dev = env.device("fuzz-dev", os="linux")
            env.deploy(task="fuzz", version="1.0.0", stages=[50, 100])
            _state["device"] = dev.token
            _state["publisher"] = env.admin.create_token("fuzz-publisher", ["publish", "deploy"])["token"]
            _state["problems"] = problems
            yield env
    finally:
        logging.getLogger("walle_registry").removeHandler(problems)


@pytest.fixture(scope="module")
def api_schema(fuzz_env: Env) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env.app).exclude(path="/v1/device/stream")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=flags.fuzz_examples(), deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any) -> None:
    if case.path == "/v1/device/stream":  # an endless event stream: covered by the SSE tests
        return
    if case.method == "DELETE":  # revoking would lock the fuzzer's own credentials out (tested elsewhere)
        return
    for token in (None, _state["device"], _state["publisher"], ADMIN):
        response = case.call(headers={"Authorization": f"Bearer {token}"} if token else {})
        assert response.status_code < 500, (token and token[:4], case.method, case.path, response.status_code,
                                            response.text[:500])


@given(body=st.binary(max_size=512), path=st.sampled_from(
    ["/v1/tasks", "/v1/deployments", "/v1/device/reports", "/v1/results", "/v1/keys", "/v1/device/checkin",
     "/v1/devices/register", "/v1/tokens", "/v1/blobs/" + "a" * 64, "/v1/deployments/1/widen"]),
    encoding=st.sampled_from([None, "gzip", "br"]))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_bytes_get_4xx(fuzz_env: Env, body: bytes, path: str, encoding: str | None) -> None:
    token = _state["device"] if path.startswith(("/v1/device/", "/v1/results")) else ADMIN
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    method = "PUT" if path.startswith("/v1/blobs/") else "POST"
    r = fuzz_env.http.request(method, path, content=body, headers=headers)
    assert r.status_code < 500, (path, body, r.status_code, r.text[:300])


def test_background_work_survives_the_fuzzing(fuzz_env: Env) -> None:
    """Runs after the fuzzing above: nothing it sent may break a later write or read."""
    fuzz_env.registry.devices.flush_activity()  # raises if a buffered heartbeat cannot be written
    for path in ("/v1/devices", "/v1/results?task=fuzz", "/v1/deployments", "/v1/deployments/1", "/v1/tasks",
                 "/v1/plugin-deployments", "/v1/tokens", "/v1/keys"):
        r = fuzz_env.http.get(path, headers=fuzz_env.admin.headers)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert fuzz_env.http.get("/console", cookies={"walle_console": ADMIN}).status_code == 200
    problems: _Problems = _state["problems"]
    assert [r.getMessage() for r in problems.records] == []
