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
import json
import shutil
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
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
from walle_registry.db import Database
from walle_registry.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from walle_registry.models import (
    ApiToken,
    Assignment,
    Blob,
    Deployment,
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
        self.limiter = auth.RateLimiter(settings.device_rate_per_s, settings.device_burst)

    def start(self) -> None:
        self.broker.start()

    def close(self) -> None:
        self.broker.close()
        self.db.dispose()

    def publish_notices(self, notices: Sequence[dict[str, Any]]) -> None:
        if notices:
            self.broker.publish(notices)

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

    def authenticate(self, secret: str) -> auth.Principal:
        digest = auth.hash_secret(secret)
        with self.db.read() as s:
            if secret.startswith(auth.DEVICE_PREFIX):
                dev = s.scalar(select(Device.id).where(Device.token_hash == digest))
                if dev is not None:
                    return auth.Principal("device", dev)
            else:
                tok = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
                if tok is not None and not tok.revoked:
                    return auth.Principal("token", tok.name, frozenset(tok.scopes.split()))
        raise Unauthorized("invalid or revoked credential")

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
        with self.db.read() as s:
            return s.scalar(select(Release).where(Release.task == task, Release.version == version))

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
        with self.db.write(serial=True) as s:
            dev = s.get(Device, did)
            if dev is None:
                s.add(Device(id=did, token_hash=auth.hash_secret(secret), attributes=data, registered_at=now(),
                             last_seen=now(), cursor=0, metrics={}))
            else:
                dev.token_hash, dev.attributes, dev.last_seen = auth.hash_secret(secret), data, now()
            s.flush()
            notices = self._join_deployments(s, did, data)
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
                s.add(Assignment(deployment_id=dep.id, device_id=did, stage=stage, status="notified",
                                 error="", updated_at=now()))
                tasks.add(dep.task)
        s.flush()
        notices: list[dict[str, Any]] = []
        for task in sorted(tasks):
            notices += self._retarget(s, task, [did])
        return notices

    def devices(self, limit: int = 1000, offset: int = 0) -> list[tuple[Device, dict[str, str | None]]]:
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
        with self.db.read() as s:
            return self._device(s, device_id)

    def checkin(self, device_id: str, metrics: dict[str, Any], cursor: int | None) -> tuple[int, int]:
        with self.db.write() as s:
            dev = self._device(s, device_id)
            dev.last_seen = now()
            if metrics:
                dev.metrics = {**(dev.metrics or {}), **metrics}
            if cursor is not None and cursor > dev.cursor:
                dev.cursor = cursor
            latest = s.scalar(select(func.max(Notice.seq)).where(Notice.device_id == device_id)) or 0
            return int(dev.cursor), int(latest)

    def touch(self, device_id: str) -> None:
        with self.db.write() as s:
            s.execute(update(Device).where(Device.id == device_id).values(last_seen=now()))

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

    def can_read_release(self, device_id: str, task: str, version: str) -> bool:
        """Devices may pull a release they are (or were) targeted with."""
        with self.db.read() as s:
            q = (select(func.count()).select_from(Assignment).join(Deployment, Deployment.id == Assignment.deployment_id)
                 .where(Assignment.device_id == device_id, Deployment.task == task,
                        (Deployment.version == version) | (Deployment.previous_version == version)))
            return bool(s.scalar(q))

    def device_may_read_blob(self, device_id: str, sha256: str) -> bool:
        with self.db.read() as s:
            q = (select(Release).join(Deployment, Deployment.task == Release.task)
                 .join(Assignment, Assignment.deployment_id == Deployment.id)
                 .where(Assignment.device_id == device_id,
                        (Deployment.version == Release.version) | (Deployment.previous_version == Release.version)))
            for rel in s.scalars(q):
                if rel.bundle_sha256 == sha256 or sha256 in rel.manifest:
                    return True
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
        t = now()
        new = [(did, st) for did, st in self._population(s, dep) if st <= dep.current_stage and did not in have]
        s.add_all([Assignment(deployment_id=dep.id, device_id=did, stage=st, status="notified", error="",
                              updated_at=t) for did, st in new])
        s.flush()
        return self._retarget(s, dep.task, [did for did, _ in new])

    def _retarget(self, s: Session, task: str, device_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Recompute what each device should run for ``task``; write notices for the changes."""
        if not device_ids:
            return []
        deps = {d.id: d for d in s.scalars(select(Deployment).where(Deployment.task == task))}
        winners: dict[str, Deployment] = {}
        ranked: dict[str, list[Deployment]] = defaultdict(list)
        current: dict[str, DeviceTarget] = {}
        for chunk in _chunks(list(device_ids)):
            for a in s.scalars(select(Assignment).where(Assignment.device_id.in_(chunk),
                                                        Assignment.deployment_id.in_(list(deps)))):
                ranked[a.device_id].append(deps[a.deployment_id])
            for tgt in s.scalars(select(DeviceTarget).where(DeviceTarget.device_id.in_(chunk),
                                                            DeviceTarget.task == task)):
                current[tgt.device_id] = tgt
        for did, cands in ranked.items():
            for dep in sorted(cands, key=lambda d: (d.priority, d.id), reverse=True):
                if dep.state in TARGETING_STATES or (dep.state == "rolled_back" and dep.previous_version):
                    winners[did] = dep
                    break
        digests = {r.version: r.manifest_digest for r in s.scalars(select(Release).where(Release.task == task))}
        t = now()
        fresh: list[Notice] = []
        for did in dict.fromkeys(device_ids):
            dep_or_none = winners.get(did)
            if dep_or_none is None:
                version, dep_id = None, None
            else:
                version = dep_or_none.version if dep_or_none.state != "rolled_back" else dep_or_none.previous_version
                dep_id = dep_or_none.id
            cur = current.get(did)
            if cur is not None and cur.version == version and cur.deployment_id == dep_id:
                continue
            if cur is None and version is None:
                continue
            digest = digests.get(version) if version else None
            if cur is None:
                s.add(DeviceTarget(device_id=did, task=task, version=version, manifest_digest=digest,
                                   deployment_id=dep_id, updated_at=t))
            else:
                changed_version = cur.version != version
                cur.version, cur.manifest_digest, cur.deployment_id, cur.updated_at = version, digest, dep_id, t
                if not changed_version:
                    continue  # same version under another deployment: nothing for the device to do
            fresh.append(Notice(device_id=did, task=task, version=version, manifest_digest=digest,
                                deployment_id=dep_id, action="install" if version else "remove", created_at=t))
        s.add_all(fresh)
        s.flush()
        return [notice_dict(n) for n in fresh]

    def _event(self, s: Session, dep_id: int, kind: str, detail: str = "") -> None:
        s.add(DeploymentEvent(deployment_id=dep_id, kind=kind, detail=detail, at=now()))

    def _counts(self, s: Session, dep: Deployment) -> Counter[str]:
        rows = s.execute(select(Assignment.status, func.count()).where(
            Assignment.deployment_id == dep.id, Assignment.stage <= dep.current_stage).group_by(Assignment.status))
        return Counter({status: int(n) for status, n in rows})

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
            for stage, status, n in s.execute(select(Assignment.stage, Assignment.status, func.count())
                                              .where(Assignment.deployment_id == dep.id)
                                              .group_by(Assignment.stage, Assignment.status)):
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
        with self.db.write(serial=True) as s:
            dev = self._device(s, device_id)
            dev.last_seen = now()
            if seq is not None and s.scalar(select(Report.id).where(Report.device_id == device_id,
                                                                    Report.seq == seq)) is not None:
                return True, deployment_id, []
            if deployment_id is None:
                deployment_id = s.scalar(select(DeviceTarget.deployment_id).where(
                    DeviceTarget.device_id == device_id, DeviceTarget.task == task))
            dep = self._locked_deployment(s, deployment_id) if deployment_id is not None else None
            if dep is not None and dep.task != task:
                raise Invalid(f"deployment {dep.id} is for task {dep.task}, not {task}")
            s.add(Report(device_id=device_id, seq=seq, deployment_id=deployment_id, task=task, version=version,
                         status=status, error=error, metrics=metrics, created_at=now()))
            if metrics:
                dev.metrics = {**(dev.metrics or {}), **metrics}
            notices: list[dict[str, Any]] = []
            if dep is not None and version == dep.version:
                a = s.get(Assignment, (dep.id, device_id))
                if a is not None:
                    a.status, a.error, a.updated_at = status, error, now()
                    s.flush()
                    if status in OK_STATUSES + ERROR_STATUSES:
                        notices = self._evaluate(s, dep)
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
            dev = s.get(Device, device_id)
            if dev is not None:
                dev.last_seen = t
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
