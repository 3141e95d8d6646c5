"""Server settings: where the database and the blobs live, and the limits the API enforces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Settings:
    """Everything :func:`walle_registry.app.create_app` needs.

    ``db_url`` defaults to SQLite (WAL) at ``data_dir/registry.db``; pass a ``postgresql+psycopg://``
    URL to run on PostgreSQL. Blobs live under ``data_dir/blobs`` unless a store is injected.
    """

    data_dir: Path
    db_url: str | None = None
    device_rate_per_s: float = 20.0  # token-bucket refill per device credential
    device_burst: int = 60
    enroll_rate_per_s: float = 10.0  # registrations per enrolment token (admins are not limited)
    enroll_burst: int = 200
    max_bundle_bytes: int = 256 << 20
    max_plugin_bytes: int = 128 << 20
    max_results_bytes: int = 16 << 20  # one results batch, decompressed
    stream_keepalive_s: float = 15.0
    online_window_s: float = 120.0  # a device seen this recently counts as online
    device_cache_ttl_s: float = 300.0  # per-device cursor / newest notice seq (PostgreSQL: a backstop)
    # cached credentials: a revocation or re-key drops them at once on every replica (broker control
    # messages; a replica whose LISTEN connection dropped clears its cache), so the TTL is a backstop
    auth_cache_ttl_s: float = 300.0
    activity_flush_s: float = 0.25  # heartbeat write-behind interval (last_seen, check-in metrics, cursor)
    blob_cache_item_bytes: int = 1 << 20  # blobs up to this size are served from memory
    blob_cache_bytes: int = 64 << 20
    # Behind nginx: authorised blob GETs answer with ``X-Accel-Redirect: <prefix>/ab/cd/<sha256>``
    # and nginx sends the file (sendfile, Range) from an internal location over ``blob_dir``.
    accel_redirect: str | None = None
    # ``s3://bucket[/prefix]?endpoint=http://host:port&region=...`` keeps blobs in an
    # S3-compatible store (credentials from boto3's usual sources); None = a folder under data_dir.
    blob_store: str | None = None
    # device check-ins, reports, manifests and blob hand-offs answered from the replica's caches
    # ahead of FastAPI when they can be (:mod:`walle_registry.fastpath`); the server enables it
    device_fast_path: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def spool_dir(self) -> Path:
        """Unfinished work of the running replicas (see :mod:`walle_registry.spool`)."""
        return self.data_dir / "spool"
