"""One replica's registry: the database, blob store, broker and in-memory caches, and the
resource services built on them (:mod:`walle_registry.services`).

The services are plain objects wired here once; HTTP routes reach them through
``request.app.state.registry`` (see :mod:`walle_registry.routes.deps`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

from walle_registry.auth import RateLimiter
from walle_registry.blobs import BlobStore, open_store
from walle_registry.broker import InProcessBroker, PostgresBroker
from walle_registry.cache import BlobCache
from walle_registry.db import Database
from walle_registry.services.credentials import Credentials
from walle_registry.services.deployments import Deployments, ReportQueue
from walle_registry.services.devices import Devices
from walle_registry.services.grants import Grants
from walle_registry.services.plugin_deployments import PluginDeployments
from walle_registry.services.publishing import Publishing
from walle_registry.services.results import Results
from walle_registry.services.rollout import Rollout
from walle_registry.settings import Settings
from walle_registry.spool import Spool


def _remove_legacy_temp(settings: Settings) -> None:
    """Temp folders of releases before the spool (``data/tmp``, ``blobs/.tmp``) held only
    unfinished work: nothing in them is ever read again."""
    for old in (settings.data_dir / "tmp", settings.blob_dir / ".tmp"):
        shutil.rmtree(old, ignore_errors=True)


class Registry:
    def __init__(self, settings: Settings, blobs: BlobStore | None = None,
                 broker: InProcessBroker | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(settings.spool_dir)  # removes what a killed replica left behind
        _remove_legacy_temp(settings)
        self.db = Database(settings.database_url)
        self.db.migrate()
        self.blobs: BlobStore = blobs if blobs is not None else open_store(settings.blob_store, settings.blob_dir,
                                                                           self.spool.dir)
        if broker is None:
            broker = PostgresBroker(self.db.url) if self.db.is_postgres else InProcessBroker()
        self.broker = broker
        self.limiter = RateLimiter(settings.device_rate_per_s, settings.device_burst)
        self.enroll_limiter = RateLimiter(settings.enroll_rate_per_s, settings.enroll_burst)
        self.blob_cache = BlobCache(settings.blob_cache_item_bytes, settings.blob_cache_bytes)

        rollout = Rollout(self.db)
        self.credentials = Credentials(self.db, broker, settings.auth_cache_ttl_s)
        self.publishing = Publishing(self.db, self.blobs, self.credentials, self.spool.dir,
                                     settings.max_bundle_bytes)
        self.grants = Grants(self.db, self.publishing)
        self.devices = Devices(self.db, settings, self.credentials, rollout)
        self.deployments = Deployments(self.db, rollout, self.publishing, self.devices.activity)
        self.plugin_deployments = PluginDeployments(self.db, self.publishing, self.credentials, self.devices)
        self.results = Results(self.db, self.devices.activity, self.grants)
        self.reports = ReportQueue(self.deployments, self.publish_notices)

        self._lifespans = 0
        broker.on_control = self.credentials.on_control
        broker.on_notices = self._observe_notices
        broker.on_resync = self._resync
        broker.on_disconnect = self.db.recycle

    def start(self) -> None:
        """Called by every app lifespan that serves this registry (an ASGI test client may run
        a second one around the first); the last :meth:`close` shuts down."""
        self._lifespans += 1
        if self._lifespans == 1:
            self.broker.start()
            self.devices.start()

    def close(self) -> None:
        self._lifespans -= 1
        if self._lifespans > 0:
            return
        self.devices.close()
        self.broker.close()
        self.db.dispose()
        self.spool.close()

    def _observe_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        """Every committed notice, this replica's or another's: it moves the device's newest seq,
        and an install notice grants the device that release (no query on its first pull here)."""
        self.devices.observe_notices(notices)
        self.grants.observe_notices(notices)

    def _resync(self) -> None:
        """The broker's channel was down: notices and revocations of that gap were missed."""
        self.devices.forget_latest()
        self.credentials.auth_cache.clear()

    def publish_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        """Hand committed notices to the broker (this replica's check-ins see them at once)."""
        if notices:
            self._observe_notices(notices)
            self.broker.publish(notices)
