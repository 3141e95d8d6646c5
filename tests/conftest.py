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

with contextlib.suppress(pytest.skip.Exception):  # fastapi / sqlalchemy / alembic missing: test_registry_* skip
    from test_registry_fixtures import db_url, env, pg_cluster, sqlite_env  # noqa: F401
with contextlib.suppress(pytest.skip.Exception):  # fastapi / uvicorn missing: test_e2e_*, test_device_* skip
    from test_e2e_fixtures import calibrated_backends, intent_model, stack  # noqa: F401

