"""The registry's business logic, independent of HTTP: publishing, devices, deployments, results.

Every mutating method runs in one database transaction and returns the push notices it created;
the caller hands those to the broker *after* the commit, so a device is never told about a notice
it could not read back from the database.

Deployment rules (see docs/registry.md):

* population = device id list (if any) AND attribute filters AND seeded-hash percentage;
* stages are cumulative percentages of the population; a device is *assigned* (and notified)
  once its stage is reached; devices registering later join running/completed deployments;
* after each terminal report the current stages are evaluated: with at least
  ``min(min_sample, assigned)`` terminal reports, an error rate above ``error_threshold`` pauses
  the deployment; a success share of the assigned devices at or above ``success_threshold``
  advances to the next stage (or completes it);
* overlapping deployments of one task on one device: the highest ``priority`` wins, ties go to
  the newest deployment; a rolled-back deployment targets its ``previous_version`` instead.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walle_core.task import (
    BundleError,
    KeyStore,
    LimitError,
    Limits,
    SignatureError,
    UnknownKeyError,
    VerificationError,
    extract_bundle,
    load_public_key,
    read_manifest,
)
from walle_registry import auth, policy
from walle_registry.blobs import BlobInfo, BlobStore, LocalBlobStore
from walle_registry.broker import InProcessBroker, PostgresBroker
from walle_registry.cache import AuthCache, BlobCache, DeviceActivity, MonotoneMap
from walle_registry.db import Database
from walle_registry.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from walle_registry.models import (
    ApiToken,
    Assignment,
    Blob,
    Deployment,
    DeploymentCount,
    DeploymentEvent,
    Device,
    DeviceTarget,
    Notice,
    Plugin,
    PublisherKey,
    Release,
    Report,
    Result,
)
from walle_registry.schemas import Attributes, DeploymentCreate
from walle_registry.settings import Settings

OK_STATUSES = ("installed", "running")
ERROR_STATUSES = ("failed", "error")
TARGETING_STATES = ("running", "paused", "completed")
JOINABLE_STATES = ("running", "completed")
IN_CHUNK = 500
SHA_IN_TEXT = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("walle_registry.service")


def now() -> float:
    return time.time()


def _chunks(items: Sequence[str], n: int = IN_CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def notice_dict(n: Notice) -> dict[str, Any]:
    return {"seq": int(n.seq), "device": n.device_id, "task": n.task, "version": n.version,
            "digest": n.manifest_digest, "deployment": n.deployment_id, "action": n.action}


class Registry:
    """One replica's view of the registry (database + blob store + broker)."""

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
        self.broker.on_control = self._on_control
        self.broker.on_notices = self._observe_notices
        self.limiter = auth.RateLimiter(settings.device_rate_per_s, settings.device_burst)
        # In-memory state (see cache.py). With PostgreSQL other replicas may write too, so the
        # per-device integers are re-read after a few seconds; SQLite has a single writer process.
        shared = self.db.is_postgres
        self.auth_cache: AuthCache[auth.Principal] = AuthCache(ttl=settings.auth_cache_ttl_s)
        self.latest = MonotoneMap(ttl=5.0 if shared else None)  # device -> newest notice seq
        self.cursors = MonotoneMap(ttl=5.0 if shared else None)  # device -> acknowledged cursor
        self.activity = DeviceActivity()
        self.blob_cache = BlobCache(settings.blob_cache_item_bytes, settings.blob_cache_bytes)
        self._releases: dict[tuple[str, str], Release] = {}  # immutable rows
        self._release_blobs: dict[tuple[str, str], frozenset[str]] = {}
        self._grants: dict[str, frozenset[tuple[str, str]]] = {}  # device -> readable (task, version)
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self) -> None:
        self.broker.start()
        if self._flusher is None and self.settings.activity_flush_s > 0:
            self._stop.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name="walle-activity", daemon=True)
            self._flusher.start()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(10)
            self._flusher = None
        self.flush_activity()
        self.broker.close()
        self.db.dispose()

    def publish_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        if notices:
            self._observe_notices(notices)  # this replica's check-ins see them at once
            self.broker.publish(notices)

    def _observe_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        for n in notices:
            self.latest.raise_to(str(n["device"]), int(n["seq"]))

    def _on_control(self, message: dict[str, Any]) -> None:
        """A message from another replica (PostgreSQL broker): drop revoked credentials."""
        drop = message.get("drop_tokens")
        if isinstance(drop, list):
            self.auth_cache.drop(*(str(d) for d in drop))

    def _drop_credentials(self, *digests: str) -> None:
        self.auth_cache.drop(*digests)
        self.broker.publish_control({"drop_tokens": list(digests)})

    # ------------------------------------------------------------------ heartbeat write-behind

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.settings.activity_flush_s):
            try:
                self.flush_activity()
            except Exception as exc:  # database briefly unavailable: the batch was re-queued
                log.warning("flushing device activity failed: %s", exc)

    def flush_activity(self) -> None:
        """Write buffered last_seen / check-in metrics / cursors (one transaction)."""
        with self._flush_lock:
            seen, metrics, cursor = self.activity.take()
            if not seen:
                return
            try:
                with self.db.write() as s:
                    ids = sorted(seen)
                    conn = s.connection()  # Core executemany (the ORM would bulk-update by primary key)
                    conn.execute(update(Device).where(Device.id == bindparam("did")).values(last_seen=bindparam("t")),
                                 [{"did": d, "t": seen[d]} for d in ids])
                    if cursor:
                        conn.execute(update(Device).where(Device.id == bindparam("did"), Device.cursor < bindparam("cur"))
                                     .values(cursor=bindparam("cur")),
                                     [{"did": d, "cur": v} for d, v in sorted(cursor.items())])
                    if metrics:
                        merged: list[dict[str, Any]] = []
                        for chunk in _chunks(sorted(metrics)):
                            for did, old in s.execute(select(Device.id, Device.metrics).where(Device.id.in_(chunk))):
                                merged.append({"did": did, "m": {**(old or {}), **metrics[did]}})
                        if merged:
                            conn.execute(update(Device).where(Device.id == bindparam("did"))
                                         .values(metrics=bindparam("m", type_=Device.__table__.c.metrics.type)), merged)
            except BaseException:
                self.activity.give_back(seen, metrics, cursor)
                raise

    # ------------------------------------------------------------------ credentials

    def bootstrap_admin(self, secret: str | None = None) -> str | None:
        """Create an admin token when none exists; returns its secret (shown once)."""
        with self.db.write() as s:
            if s.scalar(select(func.count()).select_from(ApiToken)):
                if secret is None:
                    return None
                if s.scalar(select(ApiToken).where(ApiToken.token_hash == auth.hash_secret(secret))):
                    return secret
            secret = secret or auth.new_secret(auth.PUBLISHER_PREFIX)
            s.add(ApiToken(name="admin", token_hash=auth.hash_secret(secret), scopes="admin",
                           created_at=now(), revoked=False))
        return secret

    def create_token(self, name: str, scopes: list[str]) -> tuple[ApiToken, str]:
        secret = auth.new_secret(auth.PUBLISHER_PREFIX)
        tok = ApiToken(name=name, token_hash=auth.hash_secret(secret), scopes=" ".join(auth.parse_scopes(scopes)),
                       created_at=now(), revoked=False)
        with self.db.write() as s:
            s.add(tok)
        return tok, secret

    def list_tokens(self) -> list[ApiToken]:
        with self.db.read() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))

    def revoke_token(self, token_id: int) -> None:
        with self.db.write() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None:
                raise NotFound(f"token {token_id} not found")
            tok.revoked = True
            digest = tok.token_hash
        self._drop_credentials(digest)

    def cached_principal(self, secret: str) -> auth.Principal | None:
        """The principal for ``secret`` if it is cached (no database access)."""
        return self.auth_cache.get(auth.hash_secret(secret))

    def authenticate(self, secret: str) -> auth.Principal:
        digest = auth.hash_secret(secret)
        hit = self.auth_cache.get(digest)
        if hit is not None:
            return hit
        generation = self.auth_cache.generation
        principal: auth.Principal | None = None
        with self.db.read() as s:
            if secret.startswith(auth.DEVICE_PREFIX):
                dev = s.scalar(select(Device.id).where(Device.token_hash == digest))
                if dev is not None:
                    principal = auth.Principal("device", dev)
            else:
                tok = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
                if tok is not None and not tok.revoked:
                    principal = auth.Principal("token", tok.name, frozenset(tok.scopes.split()))
        if principal is None:
            raise Unauthorized("invalid or revoked credential")
        self.auth_cache.put(digest, principal, generation)
        return principal

    # ------------------------------------------------------------------ publisher keys

    def add_key(self, pem: str, name: str) -> PublisherKey:
        with tempfile.NamedTemporaryFile("w", suffix=".pub", dir=self.settings.tmp_dir) as fh:
            fh.write(pem)
            fh.flush()
            try:
                key = load_public_key(Path(fh.name))
            except BundleError as exc:
                raise Invalid(f"not an Ed25519 public key in PEM form: {exc}") from None
        store = KeyStore(None, [key])
        kid = store.ids()[0]
        with self.db.write() as s:
            existing = s.get(PublisherKey, kid)
            if existing is not None:
                return existing
            row = PublisherKey(key_id=kid, name=name, pem=pem, created_at=now())
            s.add(row)
        return row

    def list_keys(self) -> list[PublisherKey]:
        with self.db.read() as s:
            return list(s.scalars(select(PublisherKey).order_by(PublisherKey.created_at)))

    def remove_key(self, kid: str) -> None:
        with self.db.write() as s:
            row = s.get(PublisherKey, kid)
            if row is None:
                raise NotFound(f"key {kid} not found")
            s.delete(row)

    def keystore(self) -> KeyStore:
        keys = []
        for row in self.list_keys():
            with tempfile.NamedTemporaryFile("w", suffix=".pub", dir=self.settings.tmp_dir) as fh:
                fh.write(row.pem)
                fh.flush()
                keys.append(load_public_key(Path(fh.name)))
        return KeyStore(None, keys)

    # ------------------------------------------------------------------ blobs

    def _record_blob(self, s: Session, info: BlobInfo) -> None:
        """Insert the blob row unless it exists (concurrent uploads of shared files race here)."""
        s.execute(_insert_ignore(self.db.dialect, Blob, [{"sha256": info.sha256, "size": info.size,
                                                          "created_at": now()}], ["sha256"]))

    def put_blob(self, chunks: Iterable[bytes], sha256: str) -> BlobInfo:
        info = self.blobs.put(chunks, sha256, self.settings.max_bundle_bytes)
        self._insert_blob(info)
        return info

    def _insert_blob(self, info: BlobInfo) -> None:
        try:
            with self.db.write() as s:
                self._record_blob(s, info)
        except IntegrityError:
            pass  # a concurrent upload recorded the same content

    def blob_size(self, sha256: str) -> int:
        return self.blobs.size(sha256)

    # ------------------------------------------------------------------ publishing

    def publish_bundle(self, path: Path) -> tuple[Release, bool]:
        """Verify a signed bundle against the trusted publisher keys and store it.

        Returns ``(release, created)``; an identical re-upload returns the existing release with
        ``created=False``; different content for an existing version is a 409.
        """
        limits = Limits(max_bundle_bytes=self.settings.max_bundle_bytes)
        try:
            manifest = read_manifest(path, limits)
        except LimitError as exc:
            raise TooLarge(f"bundle rejected: {exc}") from None
        except BundleError as exc:
            raise Invalid(f"bundle rejected: {type(exc).__name__}: {exc}") from None
        existing = self._release_or_none(manifest.name, manifest.version)
        if existing is not None:
            return self._same_or_conflict(existing, manifest.digest()), False
        keys = self.keystore()
        if not keys.ids():
            raise Invalid("bundle rejected: no publisher keys are trusted yet (POST /v1/keys first)")
        staging = Path(tempfile.mkdtemp(prefix="publish-", dir=self.settings.tmp_dir))
        try:
            try:
                verified = extract_bundle(path, staging / "files", keys, limits)
            except (SignatureError, UnknownKeyError) as exc:
                raise Invalid(f"bundle rejected: bad signature: {exc}") from None
            except LimitError as exc:
                raise TooLarge(f"bundle rejected: {exc}") from None
            except VerificationError as exc:
                raise Invalid(f"bundle rejected: {type(exc).__name__}: {exc}") from None
            except BundleError as exc:
                raise Invalid(f"bundle rejected: {exc}") from None
            signature = _read_signature(path)
            infos = [self.blobs.put_file(staging / "files" / Path(*f.path.split("/")), f.sha256)
                     for f in verified.manifest.files]
            infos.append(self.blobs.put_file(path, verified.sha256))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        m = verified.manifest
        release = Release(task=m.name, version=m.version, manifest_digest=m.digest(),
                          manifest=verified.manifest_bytes.decode("utf-8"), signature=signature,
                          key_id=verified.key_id, bundle_sha256=verified.sha256,
                          bundle_size=path.stat().st_size, created_at=now())
        try:
            with self.db.write() as s:
                for info in infos:
                    self._record_blob(s, info)
                s.add(release)
        except IntegrityError:  # a concurrent publish of the same version won the race
            winner = self._release_or_none(m.name, m.version)
            if winner is None:
                for info in infos:
                    self._insert_blob(info)
                raise
            return self._same_or_conflict(winner, m.digest()), False
        return release, True

    @staticmethod
    def _same_or_conflict(existing: Release, digest: str) -> Release:
        if existing.manifest_digest != digest:
            raise Conflict(f"{existing.task} {existing.version} is already published with different "
                           f"content (manifest {existing.manifest_digest[:12]}); versions are immutable")
        return existing

    def _release_or_none(self, task: str, version: str) -> Release | None:
        cached = self._releases.get((task, version))
        if cached is not None:
            return cached
        with self.db.read() as s:
            rel = s.scalar(select(Release).where(Release.task == task, Release.version == version))
        if rel is not None:
            self._releases[(task, version)] = rel
        return rel

    def release_cached(self, task: str, version: str) -> Release | None:
        return self._releases.get((task, version))

    def release(self, task: str, version: str) -> Release:
        rel = self._release_or_none(task, version)
        if rel is None:
            raise NotFound(f"task {task} {version} is not published")
        return rel

    def releases(self, task: str | None = None) -> list[Release]:
        with self.db.read() as s:
            q = select(Release).order_by(Release.task, Release.id)
            if task is not None:
                q = q.where(Release.task == task)
            return list(s.scalars(q))

    def publish_plugin(self, path: Path, filename: str, kid: str, signature_b64: str) -> tuple[Plugin, bool]:
        """Accept a backend plugin wheel signed (Ed25519 over its sha256 hex) by a trusted key."""
        name, version = _wheel_name_version(path, filename)
        info = self.blobs.put_file(path)
        try:
            sig = base64.b64decode(signature_b64, validate=True)
        except ValueError:
            raise Invalid("plugin rejected: signature is not base64") from None
        try:
            self.keystore().verify(kid, sig, info.sha256.encode("ascii"))
        except (SignatureError, UnknownKeyError) as exc:
            raise Invalid(f"plugin rejected: bad signature: {exc}") from None
        row = Plugin(name=name, version=version, filename=filename, sha256=info.sha256, size=info.size,
                     key_id=kid, created_at=now())
        with self.db.read() as s:
            existing = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
        if existing is not None:
            if existing.sha256 != info.sha256:
                raise Conflict(f"plugin {name} {version} is already published with different content")
            return existing, False
        try:
            with self.db.write() as s:
                self._record_blob(s, info)
                s.add(row)
        except IntegrityError:
            with self.db.read() as s:
                winner = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
            if winner is None or winner.sha256 != info.sha256:
                raise Conflict(f"plugin {name} {version} is already published with different content") from None
            return winner, False
        return row, True

    def plugins(self) -> list[Plugin]:
        with self.db.read() as s:
            return list(s.scalars(select(Plugin).order_by(Plugin.name, Plugin.id)))

    def plugin(self, name: str, version: str) -> Plugin:
        with self.db.read() as s:
            row = s.scalar(select(Plugin).where(Plugin.name == name, Plugin.version == version))
        if row is None:
            raise NotFound(f"plugin {name} {version} not found")
        return row

    # ------------------------------------------------------------------ devices

    def register_device(self, device_id: str | None, attrs: Attributes) -> tuple[str, str, list[dict[str, Any]]]:
        """Create a device (or re-key an existing id) and join it to matching deployments."""
        did = device_id or f"dev-{uuid.uuid4().hex[:16]}"
        secret = auth.new_secret(auth.DEVICE_PREFIX)
        data = attrs.model_dump()
        old_hash: str | None = None
        with self.db.write(serial=True) as s:
            dev = s.get(Device, did)
            if dev is None:
                s.add(Device(id=did, token_hash=auth.hash_secret(secret), attributes=data, registered_at=now(),
                             last_seen=now(), cursor=0, metrics={}))
            else:
                old_hash = dev.token_hash
                dev.token_hash, dev.attributes, dev.last_seen = auth.hash_secret(secret), data, now()
            s.flush()
            notices = self._join_deployments(s, did, data)
        if old_hash is not None:  # re-keyed: the previous credential stops working now
            self._drop_credentials(old_hash)
        else:  # a new device: cursor 0, and its only notices are the ones just written
            self.cursors.raise_to(did, 0, loaded=True)
            self.latest.raise_to(did, max((int(n["seq"]) for n in notices), default=0), loaded=True)
        return did, secret, notices

    def update_attributes(self, device_id: str, attrs: Attributes) -> list[dict[str, Any]]:
        data = attrs.model_dump()
        with self.db.write(serial=True) as s:
            dev = self._device(s, device_id)
            dev.attributes, dev.last_seen = data, now()
            return self._join_deployments(s, device_id, data)

    @staticmethod
    def _device(s: Session, device_id: str) -> Device:
        dev = s.get(Device, device_id)
        if dev is None:
            raise NotFound(f"device {device_id} not found")
        return dev

    def _join_deployments(self, s: Session, did: str, attrs: dict[str, Any]) -> list[dict[str, Any]]:
        """Late joiners: assign the device to every running/completed deployment it matches."""
        deps = list(s.scalars(select(Deployment).where(Deployment.state.in_(JOINABLE_STATES))))
        have = set(s.scalars(select(Assignment.deployment_id).where(Assignment.device_id == did)))
        tasks: set[str] = set()
        for dep in deps:
            if dep.id in have or not policy.targeted(did, attrs, dep.device_ids, dep.filters, dep.seed, dep.percentage):
                continue
            stage = policy.stage_of(dep.seed, did, dep.stages)
            if stage <= dep.current_stage:
                self._insert_assignments(s, dep.id, [(did, stage)])
                tasks.add(dep.task)
        notices: list[dict[str, Any]] = []
        for task in sorted(tasks):
            notices += self._retarget(s, task, [did])
        return notices

    def devices(self, limit: int = 1000, offset: int = 0) -> list[tuple[Device, dict[str, str | None]]]:
        self.flush_activity()
        with self.db.read() as s:
            devs = list(s.scalars(select(Device).order_by(Device.id).limit(limit).offset(offset)))
            targets: dict[str, dict[str, str | None]] = defaultdict(dict)
            for chunk in _chunks([d.id for d in devs]):
                for t in s.scalars(select(DeviceTarget).where(DeviceTarget.device_id.in_(chunk))):
                    targets[t.device_id][t.task] = t.version
            return [(d, targets.get(d.id, {})) for d in devs]

    def device_count(self) -> int:
        with self.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(Device)) or 0)

    def get_device(self, device_id: str) -> Device:
        self.flush_activity()
        with self.db.read() as s:
            return self._device(s, device_id)

    def checkin_cached(self, device_id: str, metrics: dict[str, Any], cursor: int | None) -> tuple[int, int] | None:
        """A check-in answered from memory (no database access); None when the device's cursor or
        newest notice is not cached yet (then call :meth:`checkin`). The heartbeat itself is
        written behind (``activity_flush_s``)."""
        known, latest = self.cursors.get(device_id), self.latest.get(device_id)
        if known is None or latest is None:
            return None
        self.activity.note(device_id, now(), metrics, cursor)
        if cursor is not None and cursor > known:
            known = self.cursors.raise_to(device_id, cursor)
        return known, latest

    def checkin(self, device_id: str, metrics: dict[str, Any], cursor: int | None) -> tuple[int, int]:
        self._load_device_ints(device_id)
        out = self.checkin_cached(device_id, metrics, cursor)
        assert out is not None
        return out

    def _load_device_ints(self, device_id: str) -> None:
        with self.db.read() as s:
            dev_cursor = s.scalar(select(Device.cursor).where(Device.id == device_id))
            if dev_cursor is None:
                raise NotFound(f"device {device_id} not found")
            latest = s.scalar(select(func.max(Notice.seq)).where(Notice.device_id == device_id)) or 0
        self.cursors.raise_to(device_id, int(dev_cursor), loaded=True)
        self.latest.raise_to(device_id, int(latest), loaded=True)

    def device_cursor(self, device_id: str, warm: bool = False) -> int:
        """The cursor the device acknowledged (including check-ins not flushed yet); ``warm``
        also loads the newest notice seq, so the device's check-ins need no database access."""
        known = self.cursors.get(device_id)
        if known is None or (warm and self.latest.get(device_id) is None):
            self._load_device_ints(device_id)
            known = self.cursors.get(device_id) or 0
        return known

    def touch(self, device_id: str) -> None:
        """Record that the device was seen (written behind)."""
        self.activity.note(device_id, now())

    def notices_after(self, device_id: str, cursor: int, limit: int = 500) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(Notice).where(Notice.device_id == device_id, Notice.seq > cursor)
                             .order_by(Notice.seq).limit(limit))
            return [notice_dict(n) for n in rows]

    def targets(self, device_id: str) -> list[DeviceTarget]:
        with self.db.read() as s:
            self._device(s, device_id)
            return list(s.scalars(select(DeviceTarget).where(DeviceTarget.device_id == device_id)
                                  .order_by(DeviceTarget.task)))

    # Read permission is monotone: assignments are never deleted and a deployment's task,
    # version and previous version never change, so a grant, once seen, stays valid and is
    # cached; a miss re-reads the grants (one joined query) before refusing.

    def _load_grants(self, device_id: str) -> frozenset[tuple[str, str]]:
        with self.db.read() as s:
            rows = s.execute(select(Deployment.task, Deployment.version, Deployment.previous_version)
                             .join(Assignment, Assignment.deployment_id == Deployment.id)
                             .where(Assignment.device_id == device_id).distinct())
            grants = {(t, v) for t, v0, v1 in rows for v in (v0, v1) if v is not None}
        merged = frozenset(grants | self._grants.get(device_id, frozenset()))
        if len(self._grants) > 1_000_000:
            self._grants.clear()
        self._grants[device_id] = merged
        return merged

    def can_read_release_cached(self, device_id: str, task: str, version: str) -> bool:
        return (task, version) in self._grants.get(device_id, ())

    def can_read_release(self, device_id: str, task: str, version: str) -> bool:
        """Devices may pull a release they are (or were) targeted with."""
        if self.can_read_release_cached(device_id, task, version):
            return True
        return (task, version) in self._load_grants(device_id)

    def release_blobs(self, task: str, version: str) -> frozenset[str]:
        """Every digest a release's manifest names, plus its bundle (cached: releases are immutable)."""
        key = (task, version)
        blobs = self._release_blobs.get(key)
        if blobs is None:
            rel = self.release(task, version)
            blobs = frozenset(SHA_IN_TEXT.findall(rel.manifest)) | {rel.bundle_sha256}
            self._release_blobs[key] = blobs
        return blobs

    def device_may_read_blob_cached(self, device_id: str, sha256: str) -> bool:
        for key in self._grants.get(device_id, ()):
            blobs = self._release_blobs.get(key)
            if blobs is not None and sha256 in blobs:
                return True
        return False

    def device_may_read_blob(self, device_id: str, sha256: str) -> bool:
        if self.device_may_read_blob_cached(device_id, sha256):
            return True
        for task, version in self._load_grants(device_id):
            try:
                if sha256 in self.release_blobs(task, version):
                    return True
            except NotFound:
                continue
        return False

    # ------------------------------------------------------------------ deployments

    def create_deployment(self, spec: DeploymentCreate, by: str) -> tuple[Deployment, list[dict[str, Any]]]:
        self.release(spec.task, spec.version)  # 404 unless published
        with self.db.write(serial=True) as s:
            prev = s.scalar(select(Deployment.version).where(
                Deployment.task == spec.task, Deployment.state != "rolled_back",
                Deployment.version != spec.version).order_by(Deployment.id.desc()).limit(1))
            if prev is None:
                older = [r.version for r in s.scalars(select(Release).where(Release.task == spec.task))
                         if policy.version_key(r.version) < policy.version_key(spec.version)]
                prev = max(older, key=policy.version_key) if older else None
            t = now()
            dep = Deployment(
                task=spec.task, version=spec.version, previous_version=prev,
                device_ids=list(dict.fromkeys(spec.device_ids)) if spec.device_ids is not None else None,
                filters=spec.filters.model_dump(exclude_none=True), percentage=spec.percentage,
                seed=spec.seed or spec.task, stages=list(spec.stages), current_stage=0,
                success_threshold=spec.success_threshold, error_threshold=spec.error_threshold,
                min_sample=spec.min_sample, priority=spec.priority, state="running", reason="",
                created_by=by, created_at=t, updated_at=t)
            s.add(dep)
            s.flush()
            self._event(s, dep.id, "created", f"{spec.task} {spec.version} stages {spec.stages}")
            notices = self._assign_stage(s, dep)
            notices += self._evaluate(s, dep)
        return dep, notices

    def _population(self, s: Session, dep: Deployment) -> list[tuple[str, int]]:
        """(device id, stage) for every device the deployment targets."""
        q = select(Device.id, Device.attributes)
        out: list[tuple[str, int]] = []
        rows: Iterable[Any]
        if dep.device_ids is not None:
            rows = [r for chunk in _chunks(dep.device_ids) for r in s.execute(q.where(Device.id.in_(chunk)))]
        else:
            rows = s.execute(q)
        for did, attrs in rows:
            if policy.targeted(did, attrs or {}, dep.device_ids, dep.filters, dep.seed, dep.percentage):
                out.append((did, policy.stage_of(dep.seed, did, dep.stages)))
        return out

    def _assign_stage(self, s: Session, dep: Deployment) -> list[dict[str, Any]]:
        """Assign every targeted device whose stage has been reached and is not assigned yet."""
        have = set(s.scalars(select(Assignment.device_id).where(Assignment.deployment_id == dep.id)))
        new = [(did, st) for did, st in self._population(s, dep) if st <= dep.current_stage and did not in have]
        self._insert_assignments(s, dep.id, new)
        return self._retarget(s, dep.task, [did for did, _ in new])

    def _insert_assignments(self, s: Session, dep_id: int, rows: Sequence[tuple[str, int]]) -> None:
        """Assign devices (``(device id, stage)``) as ``notified`` and count them."""
        if not rows:
            return
        t = now()
        s.execute(insert(Assignment), [{"deployment_id": dep_id, "device_id": did, "stage": st, "status": "notified",
                                        "error": "", "updated_at": t} for did, st in rows])
        self._bump(s, dep_id, Counter((st, "notified") for _, st in rows))

    def _bump(self, s: Session, dep_id: int, deltas: Counter[tuple[int, str]]) -> None:
        """Add ``deltas[(stage, status)]`` to the deployment's counters (upsert)."""
        rows = [{"deployment_id": dep_id, "stage": st, "status": status, "n": n}
                for (st, status), n in sorted(deltas.items()) if n]
        if not rows:
            return
        s.connection().execute(self._count_upsert, rows)

    @functools.cached_property
    def _count_upsert(self) -> Any:
        """INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n, built once (executemany)."""
        keys = ["deployment_id", "stage", "status"]
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(DeploymentCount)
            return pg.on_conflict_do_update(index_elements=keys, set_={"n": DeploymentCount.n + pg.excluded.n})
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(DeploymentCount)
        return lite.on_conflict_do_update(index_elements=keys, set_={"n": DeploymentCount.n + lite.excluded.n})

    def _retarget(self, s: Session, task: str, device_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Recompute what each device should run for ``task``; write notices for the changes."""
        if not device_ids:
            return []
        s.flush()
        deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.task == task))}
        winners: dict[str, Deployment] = {}
        ranked: dict[str, list[Deployment]] = defaultdict(list)
        current: dict[str, tuple[str | None, int | None]] = {}
        for chunk in _chunks(list(dict.fromkeys(device_ids))):
            for did, assigned_to in s.execute(select(Assignment.device_id, Assignment.deployment_id).where(
                    Assignment.device_id.in_(chunk), Assignment.deployment_id.in_(list(deps)))):
                ranked[did].append(deps[assigned_to])
            for did, ver, target_dep in s.execute(select(DeviceTarget.device_id, DeviceTarget.version,
                                                         DeviceTarget.deployment_id).where(
                    DeviceTarget.device_id.in_(chunk), DeviceTarget.task == task)):
                current[did] = (ver, target_dep)
        for did, cands in ranked.items():
            for dep in sorted(cands, key=lambda d: (d.priority, d.id), reverse=True):
                if dep.state in TARGETING_STATES or (dep.state == "rolled_back" and dep.previous_version):
                    winners[did] = dep
                    break
        digests = {r.version: r.manifest_digest for r in s.scalars(select(Release).where(Release.task == task))}
        t = now()
        added: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        for did in dict.fromkeys(device_ids):
            dep_or_none = winners.get(did)
            if dep_or_none is None:
                version, dep_id = None, None
            else:
                version = dep_or_none.version if dep_or_none.state != "rolled_back" else dep_or_none.previous_version
                dep_id = dep_or_none.id
            cur = current.get(did)
            if cur is not None and cur == (version, dep_id):
                continue
            if cur is None and version is None:
                continue
            digest = digests.get(version) if version else None
            row = {"device_id": did, "task": task, "version": version, "manifest_digest": digest,
                   "deployment_id": dep_id, "updated_at": t}
            if cur is None:
                added.append(row)
            else:
                changed.append(row)
                if cur[0] == version:
                    continue  # same version under another deployment: nothing for the device to do
            fresh.append({"device_id": did, "task": task, "version": version, "manifest_digest": digest,
                          "deployment_id": dep_id, "action": "install" if version else "remove", "created_at": t})
        if added:
            s.execute(insert(DeviceTarget), added)
        if changed:
            s.execute(update(DeviceTarget), changed)  # bulk UPDATE by primary key (device_id, task)
        if not fresh:
            return []
        seqs = s.execute(insert(Notice).returning(Notice.seq, sort_by_parameter_order=True), fresh).scalars().all()
        return [{"seq": int(q), "device": n["device_id"], "task": task, "version": n["version"],
                 "digest": n["manifest_digest"], "deployment": n["deployment_id"], "action": n["action"]}
                for q, n in zip(seqs, fresh, strict=True)]

    def _event(self, s: Session, dep_id: int, kind: str, detail: str = "") -> None:
        s.add(DeploymentEvent(deployment_id=dep_id, kind=kind, detail=detail, at=now()))

    def _counts(self, s: Session, dep: Deployment) -> Counter[str]:
        """Status counts of the deployment's active stages, from the incremental counters."""
        rows = s.execute(select(DeploymentCount.status, func.sum(DeploymentCount.n)).where(
            DeploymentCount.deployment_id == dep.id, DeploymentCount.stage <= dep.current_stage)
            .group_by(DeploymentCount.status))
        return Counter({status: int(n) for status, n in rows if n})

    def _evaluate(self, s: Session, dep: Deployment, check_errors: bool = True) -> list[dict[str, Any]]:
        """Advance, complete or auto-pause a running deployment from its reports so far."""
        notices: list[dict[str, Any]] = []
        while dep.state == "running":
            counts = self._counts(s, dep)
            total = sum(counts.values())
            ok = sum(counts[k] for k in OK_STATUSES)
            bad = sum(counts[k] for k in ERROR_STATUSES)
            done = ok + bad
            need = min(dep.min_sample, total)
            if check_errors and done and done >= need and bad / done > dep.error_threshold:
                dep.state = "paused"
                dep.reason = (f"auto-paused: {bad} of {done} reports failed "
                              f"({bad / done:.0%} > error threshold {dep.error_threshold:.0%})")
                dep.updated_at = now()
                self._event(s, dep.id, "auto_paused", dep.reason)
                break
            if done < need or (total and ok / total < dep.success_threshold):
                break
            if dep.current_stage + 1 >= len(dep.stages):
                dep.state, dep.reason, dep.updated_at = "completed", "", now()
                self._event(s, dep.id, "completed", f"{ok} of {total} devices succeeded")
                break
            dep.current_stage += 1
            dep.updated_at = now()
            self._event(s, dep.id, "stage_advanced",
                        f"stage {dep.current_stage} ({dep.stages[dep.current_stage]:g}%) after {ok} of {total} succeeded")
            notices += self._assign_stage(s, dep)
        return notices

    def _locked_deployment(self, s: Session, dep_id: int) -> Deployment:
        dep = s.scalar(select(Deployment).where(Deployment.id == dep_id).with_for_update())
        if dep is None:
            raise NotFound(f"deployment {dep_id} not found")
        return dep

    def pause(self, dep_id: int, by: str) -> Deployment:
        with self.db.write() as s:
            dep = self._locked_deployment(s, dep_id)
            if dep.state != "running":
                raise Conflict(f"deployment {dep_id} is {dep.state}; only a running deployment can be paused")
            dep.state, dep.reason, dep.updated_at = "paused", f"paused by {by}", now()
            self._event(s, dep.id, "paused", dep.reason)
        return dep

    def resume(self, dep_id: int, by: str) -> tuple[Deployment, list[dict[str, Any]]]:
        with self.db.write(serial=True) as s:
            dep = self._locked_deployment(s, dep_id)
            if dep.state != "paused":
                raise Conflict(f"deployment {dep_id} is {dep.state}; only a paused deployment can be resumed")
            dep.state, dep.reason, dep.updated_at = "running", "", now()
            self._event(s, dep.id, "resumed", f"resumed by {by}")
            # Devices that registered while it was paused join now; the error gate is re-armed
            # for the next report (an operator's resume overrides the one that paused it).
            notices = self._assign_stage(s, dep)
            notices += self._evaluate(s, dep, check_errors=False)
        return dep, notices

    def rollback(self, dep_id: int, by: str) -> tuple[Deployment, list[dict[str, Any]]]:
        with self.db.write(serial=True) as s:
            dep = self._locked_deployment(s, dep_id)
            if dep.state == "rolled_back":
                raise Conflict(f"deployment {dep_id} is already rolled back")
            dep.state, dep.updated_at = "rolled_back", now()
            dep.reason = (f"rolled back by {by} to {dep.previous_version}" if dep.previous_version
                          else f"rolled back by {by} (no previous version: the task is removed)")
            self._event(s, dep.id, "rolled_back", dep.reason)
            devices = list(s.scalars(select(Assignment.device_id).where(Assignment.deployment_id == dep.id)))
            notices = self._retarget(s, dep.task, devices)
        return dep, notices

    def widen(self, dep_id: int, percentage: float) -> tuple[Deployment, list[dict[str, Any]]]:
        with self.db.write(serial=True) as s:
            dep = self._locked_deployment(s, dep_id)
            if dep.state == "rolled_back":
                raise Conflict(f"deployment {dep_id} is rolled back")
            if percentage < dep.percentage:
                raise Conflict(f"percentage can only grow ({dep.percentage:g}% -> {percentage:g}% refused)")
            dep.percentage, dep.updated_at = percentage, now()
            self._event(s, dep.id, "widened", f"{percentage:g}%")
            notices = self._assign_stage(s, dep) if dep.state in JOINABLE_STATES else []
            if dep.state == "completed":
                pass
        return dep, notices

    def deployment(self, dep_id: int) -> Deployment:
        with self.db.read() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
                raise NotFound(f"deployment {dep_id} not found")
            return dep

    def deployments(self, task: str | None = None) -> list[Deployment]:
        with self.db.read() as s:
            q = select(Deployment).order_by(Deployment.id.desc())
            if task:
                q = q.where(Deployment.task == task)
            return list(s.scalars(q))

    def status(self, dep_id: int) -> dict[str, Any]:
        with self.db.read() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
                raise NotFound(f"deployment {dep_id} not found")
            targeted = Counter(st for _, st in self._population(s, dep))
            per_stage: dict[int, Counter[str]] = defaultdict(Counter)
            for stage, status, n in s.execute(select(DeploymentCount.stage, DeploymentCount.status, DeploymentCount.n)
                                              .where(DeploymentCount.deployment_id == dep.id)):
                if n:
                    per_stage[int(stage)][status] += int(n)
            progress = []
            for i, pct in enumerate(dep.stages):
                c = per_stage.get(i, Counter())
                progress.append({"index": i, "percentage": pct, "targeted": targeted.get(i, 0),
                                 "assigned": sum(c.values()), "counts": dict(c),
                                 "succeeded": sum(c[k] for k in OK_STATUSES),
                                 "failed": sum(c[k] for k in ERROR_STATUSES),
                                 "active": i <= dep.current_stage})
            totals: Counter[str] = Counter()
            for c in per_stage.values():
                totals.update(c)
            events = [{"kind": e.kind, "detail": e.detail, "at": e.at} for e in s.scalars(
                select(DeploymentEvent).where(DeploymentEvent.deployment_id == dep.id)
                .order_by(DeploymentEvent.id.desc()).limit(20))]
            errors = [{"device": r.device_id, "status": r.status, "error": r.error, "at": r.created_at}
                      for r in s.scalars(select(Report).where(Report.deployment_id == dep.id,
                                                              Report.status.in_(ERROR_STATUSES))
                                         .order_by(Report.id.desc()).limit(10))]
            return {**deployment_dict(dep), "progress": progress, "counts": dict(totals), "events": events,
                    "errors": errors}

    # ------------------------------------------------------------------ reports and results

    def report(self, device_id: str, task: str, version: str, status: str, deployment_id: int | None,
               error: str, metrics: dict[str, Any], seq: int | None) -> tuple[bool, int | None, list[dict[str, Any]]]:
        """Record a device status report; returns (duplicate, deployment id, notices)."""
        t = now()
        with self.db.write(serial=True) as s:
            if seq is not None and s.scalar(select(Report.id).where(Report.device_id == device_id,
                                                                    Report.seq == seq)) is not None:
                self.activity.note(device_id, t)
                return True, deployment_id, []
            if deployment_id is None:
                deployment_id = s.scalar(select(DeviceTarget.deployment_id).where(
                    DeviceTarget.device_id == device_id, DeviceTarget.task == task))
            dep = self._locked_deployment(s, deployment_id) if deployment_id is not None else None
            if dep is not None and dep.task != task:
                raise Invalid(f"deployment {dep.id} is for task {dep.task}, not {task}")
            s.connection().execute(insert(Report), [{"device_id": device_id, "seq": seq, "deployment_id": deployment_id,
                                        "task": task, "version": version, "status": status, "error": error,
                                        "metrics": metrics, "created_at": t}])
            notices: list[dict[str, Any]] = []
            if dep is not None and version == dep.version:
                key = (Assignment.deployment_id == dep.id) & (Assignment.device_id == device_id)
                row = s.execute(select(Assignment.stage, Assignment.status).where(key)).first()
                if row is not None:
                    s.execute(update(Assignment).where(key).values(status=status, error=error, updated_at=t)
                              .execution_options(synchronize_session=False))
                    if row.status != status:
                        self._bump(s, dep.id, Counter({(int(row.stage), row.status): -1, (int(row.stage), status): 1}))
                    if status in OK_STATUSES + ERROR_STATUSES:
                        notices = self._evaluate(s, dep)
        # last_seen and the device's metrics summary are written behind; the report row (with
        # its metrics) committed above.
        self.activity.note(device_id, t, metrics)
        return False, deployment_id, notices

    def ingest_results(self, device_id: str, body: dict[str, Any], task: str, version: str) -> tuple[int, int]:
        items = body.get("items")
        if not isinstance(items, list):
            raise Invalid("a results batch is {\"items\": [{\"seq\": int, ...}, ...]}")
        if body.get("device") not in (None, device_id):
            raise Forbidden(f"this credential belongs to device {device_id}, not {body.get('device')!r}")
        batch_task = str(body.get("task") or task)
        batch_version = str(body.get("version") or version)
        rows: dict[int, dict[str, Any]] = {}
        t = now()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise Invalid(f"item {i} is not an object")
            seq = item.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**62:
                raise Invalid(f"item {i} needs an integer seq (0 <= seq < 2**62)")
            known = {"seq", "task", "version", "name", "key", "ts", "value"}
            value = item["value"] if "value" in item else {k: v for k, v in item.items() if k not in known}
            ts = item.get("ts", 0)
            rows[seq] = {
                "device_id": device_id, "seq": seq,
                "task": str(item.get("task") or batch_task)[:64], "version": str(item.get("version") or batch_version)[:64],
                "name": str(item.get("name", ""))[:128], "key": str(item.get("key", ""))[:256],
                "ts": float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0,
                "value": value, "received_at": t,
            }
        if not rows:
            return 0, 0
        with self.db.write() as s:
            existing: set[int] = set()
            seqs = list(rows)
            for i in range(0, len(seqs), IN_CHUNK):
                existing.update(int(x) for x in s.scalars(select(Result.seq).where(
                    Result.device_id == device_id, Result.seq.in_(seqs[i:i + IN_CHUNK]))))
            new = [rows[q] for q in seqs if q not in existing]
            if new:
                s.execute(_insert_ignore(self.db.dialect, Result, new, ["device_id", "seq"]))
        self.activity.note(device_id, t)
        return len(new), len(rows) - len(new) + (len(items) - len(rows))

    def results(self, task: str, version: str | None = None, device: str | None = None, after: int = 0,
                limit: int = 100) -> list[Result]:
        with self.db.read() as s:
            q = select(Result).where(Result.task == task, Result.id > after)
            if version:
                q = q.where(Result.version == version)
            if device:
                q = q.where(Result.device_id == device)
            return list(s.scalars(q.order_by(Result.id).limit(limit)))

    # ------------------------------------------------------------------ console summary

    def device_status_counts(self) -> dict[str, int]:
        cutoff = now() - self.settings.online_window_s
        self.flush_activity()
        with self.db.read() as s:
            total = int(s.scalar(select(func.count()).select_from(Device)) or 0)
            online = int(s.scalar(select(func.count()).select_from(Device).where(Device.last_seen >= cutoff)) or 0)
            by_status = {st: int(n) for st, n in s.execute(
                select(Assignment.status, func.count()).group_by(Assignment.status))}
        return {"total": total, "online": online, "offline": total - online, **{f"status:{k}": v for k, v in
                                                                                 by_status.items()}}


def _insert_ignore(dialect: str, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, for SQLite and PostgreSQL."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)


def deployment_dict(dep: Deployment) -> dict[str, Any]:
    return {k: getattr(dep, k) for k in (
        "id", "task", "version", "previous_version", "state", "reason", "current_stage", "stages", "percentage",
        "seed", "device_ids", "filters", "success_threshold", "error_threshold", "min_sample", "priority",
        "created_by", "created_at", "updated_at")}


def _read_signature(bundle: Path) -> str:
    """The SIGNATURE.json document of an (already verified) bundle, for devices to re-verify."""
    with tarfile.open(bundle, "r:gz") as tar:
        for info in tar:
            if info.name == "SIGNATURE.json":
                fh = tar.extractfile(info)
                assert fh is not None
                return fh.read(8192).decode("utf-8")
    raise Invalid("bundle rejected: bad signature: bundle is not signed")


def _wheel_name_version(path: Path, filename: str) -> tuple[str, str]:
    """Check a wheel's file name against its METADATA; return (name, version)."""
    if not filename.endswith(".whl") or "/" in filename or "\\" in filename:
        raise Invalid("plugin rejected: the file name must be a wheel name (NAME-VERSION-...-....whl)")
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        raise Invalid(f"plugin rejected: {filename!r} is not a wheel file name")
    name, version = parts[0], parts[1]
    try:
        with zipfile.ZipFile(path) as zf:
            meta_name = f"{name}-{version}.dist-info/METADATA"
            if meta_name not in zf.namelist():
                raise Invalid(f"plugin rejected: the wheel has no {meta_name}")
            info = zf.getinfo(meta_name)
            if info.file_size > 1 << 20:
                raise Invalid("plugin rejected: METADATA is too large")
            headers = HeaderParser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
    except zipfile.BadZipFile:
        raise Invalid("plugin rejected: not a zip archive (wheel)") from None
    meta_n = (headers.get("Name") or "").replace("-", "_").lower()
    if meta_n != name.lower() or headers.get("Version") != version:
        raise Invalid(f"plugin rejected: METADATA says {headers.get('Name')} {headers.get('Version')}, "
                      f"the file name says {name} {version}")
    return name, version


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
