"""Suite-wide fixtures.

The shared fixtures of the registry tests (``test_registry_fixtures.py``: a PostgreSQL cluster, a
registry per test) and of the device and end-to-end tests (``test_e2e_fixtures.py``: the demo model,
calibrated backends, a live stack) are registered here, once. Their modules export only helpers:
a fixture star-imported into every test module is a new fixture per module, and the session-scoped
ones (``initdb`` + a PostgreSQL server, training the demo model) then ran once per module.

Without the registry's or the device's optional packages these modules skip themselves; their
fixtures are then simply not registered.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import settings

# CI (scripts/test.sh passes --hypothesis-profile=ci) draws the same examples on every run, so a
# landing never hinges on which random examples one run happened to draw; a plain ``pytest`` keeps
# exploring new ones each run. Every test's own settings (example counts, deadlines) still apply.
settings.register_profile("ci", derandomize=True, database=None)

with contextlib.suppress(pytest.skip.Exception):  # fastapi / sqlalchemy / alembic missing: test_registry_* skip
    from test_registry_fixtures import db_url, env, pg_cluster, sqlite_env  # noqa: F401
with contextlib.suppress(pytest.skip.Exception):  # fastapi / uvicorn missing: test_e2e_*, test_device_* skip
    from test_e2e_fixtures import calibrated_backends, intent_model, stack  # noqa: F401


# Tests held to wall-clock limits. scripts/test.sh runs them after the parallel pass (``pytest -n``),
# alone, so that another worker's load does not fail them: every test using a live registry and
# device fleet (these fixtures); others carry ``@pytest.mark.serial`` in their own module.
SERIAL_FIXTURES = frozenset({"stack", "fleet"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the ``serial`` tests (above), and groups for ``pytest -n N --dist loadgroup``: the
    tests of a module that share a module- or class-scoped fixture (a compiled C harness, a model
    converted once, a server) run on one worker, so the fixture is still made once; every other test
    goes to whichever worker is free. (First, so that xdist's own hook sees the groups.)"""
    for item in items:
        if SERIAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.serial)
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        scopes = {defs[-1].scope for defs in info.name2fixturedefs.values() if defs}
        if scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
