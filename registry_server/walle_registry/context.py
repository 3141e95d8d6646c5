"""One replica's registry: the database, blob store, broker and in-memory caches, and the
resource services built on them (:mod:`walle_registry.services`).

The services are plain objects wired here once; HTTP routes reach them through
``request.app.state.registry`` (see :mod:`walle_registry.routes.deps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from walle_registry.auth import RateLimiter
from walle_registry.blobs import BlobStore, LocalBlobStore
from walle_registry.broker import InProcessBroker, PostgresBroker
from walle_registry.cache import BlobCache
from walle_registry.db import Database
from walle_registry.services.credentials import Credentials
from walle_registry.services.deployments import Deployments
from walle_registry.services.devices import Devices
from walle_registry.services.grants import Grants
from walle_registry.services.plugin_deployments import PluginDeployments
from walle_registry.services.publishing import Publishing
from walle_registry.services.results import Results
from walle_registry.services.rollout import Rollout
from walle_registry.settings import Settings


class Registry:
    def __init__(self, settings: Settings, blobs: BlobStore | None = None,
                 broker: InProcessBroker | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.database_url)
        self.db.migrate()
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobStore(settings.blob_dir)
        if broker is None:
            broker = PostgresBroker(self.db.url) if self.db.is_postgres else InProcessBroker()
        self.broker = broker
        self.limiter = RateLimiter(settings.device_rate_per_s, settings.device_burst)
        self.blob_cache = BlobCache(settings.blob_cache_item_bytes, settings.blob_cache_bytes)

        rollout = Rollout(self.db)
        self.credentials = Credentials(self.db, broker, settings.tmp_dir, settings.auth_cache_ttl_s)
        self.publishing = Publishing(self.db, self.blobs, self.credentials, settings.tmp_dir,
                                     settings.max_bundle_bytes)
        self.grants = Grants(self.db, self.publishing)
        self.devices = Devices(self.db, settings, self.credentials, rollout)
        self.deployments = Deployments(self.db, rollout, self.publishing, self.devices.activity)
        self.plugin_deployments = PluginDeployments(self.db, self.publishing, self.credentials, self.devices)
        self.results = Results(self.db, self.devices.activity)

        broker.on_control = self.credentials.on_control
        broker.on_notices = self.devices.observe_notices

    def start(self) -> None:
        self.broker.start()
        self.devices.start()

    def close(self) -> None:
        self.devices.close()
        self.broker.close()
        self.db.dispose()

    def publish_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        """Hand committed notices to the broker (this replica's check-ins see them at once)."""
        if notices:
            self.devices.observe_notices(notices)
            self.broker.publish(notices)
