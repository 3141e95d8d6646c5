"""Backend plugin rollouts: which published plugin wheels go to which devices.

A *plugin deployment* names a published wheel and a population, chosen exactly like a task
deployment's (device ids AND attribute filters AND a seeded-hash percentage, see
:mod:`walle_registry.policy`). It carries the publisher's Ed25519 signature over the wheel's
sha256 hex, checked against the trusted keys when the deployment is created, so a device can
verify the wheel against its own trusted keys before installing it. The newest active deployment
of a plugin name that targets a device wins; a rolled-back one no longer counts, so the device
falls back to the newest earlier deployment that still targets it, or to none.
"""

from __future__ import annotations

import base64

from sqlalchemy import select

from walle_core.task import SignatureError, UnknownKeyError
from walle_registry import policy
from walle_registry.db import Database
from walle_registry.errors import Conflict, Invalid, NotFound
from walle_registry.models import PluginDeployment, PluginInstall
from walle_registry.schemas import DevicePlugin, PluginDeploymentCreate, PluginDeploymentOut, PluginStatusIn
from walle_registry.services.common import now
from walle_registry.services.credentials import Credentials
from walle_registry.services.devices import Devices
from walle_registry.services.publishing import Publishing


class PluginDeployments:
    """One DB transaction per call, on the registry's database."""

    def __init__(self, db: Database, publishing: Publishing, credentials: Credentials, devices: Devices) -> None:
        self.db, self.publishing, self.credentials, self.devices = db, publishing, credentials, devices

    def create(self, spec: PluginDeploymentCreate, by: str) -> PluginDeploymentOut:
        row = self.publishing.plugin(spec.name, spec.version)  # 404 unless published
        try:
            sig = base64.b64decode(spec.signature, validate=True)
        except ValueError:
            raise Invalid("plugin deployment rejected: signature is not base64") from None
        try:
            self.credentials.keystore().verify(spec.key_id, sig, row.sha256.encode("ascii"))
        except (SignatureError, UnknownKeyError) as exc:
            raise Invalid(f"plugin deployment rejected: bad signature: {exc}") from None
        dep = PluginDeployment(
            name=row.name, version=row.version, key_id=spec.key_id, signature=spec.signature,
            device_ids=list(dict.fromkeys(spec.device_ids)) if spec.device_ids is not None else None,
            filters=spec.filters.model_dump(exclude_none=True), percentage=spec.percentage,
            seed=spec.seed or f"plugin:{row.name}", state="active", created_by=by, created_at=now())
        with self.db.write() as s:
            s.add(dep)
        return _out(dep, {})

    def find(self, name: str | None = None) -> list[PluginDeploymentOut]:
        with self.db.read() as s:
            q = select(PluginDeployment).order_by(PluginDeployment.id)
            if name is not None:
                q = q.where(PluginDeployment.name == name)
            deps = list(s.scalars(q))
            counts: dict[int, dict[str, int]] = {}
            for inst in s.scalars(select(PluginInstall).where(PluginInstall.deployment_id.is_not(None))):
                assert inst.deployment_id is not None
                by_status = counts.setdefault(inst.deployment_id, {})
                by_status[inst.status] = by_status.get(inst.status, 0) + 1
        return [_out(d, counts.get(d.id, {})) for d in deps]

    def rollback(self, dep_id: int) -> PluginDeploymentOut:
        with self.db.write() as s:
            dep = s.get(PluginDeployment, dep_id)
            if dep is None:
                raise NotFound(f"plugin deployment {dep_id} not found")
            if dep.state == "rolled_back":
                raise Conflict(f"plugin deployment {dep_id} is already rolled back")
            dep.state = "rolled_back"
            return _out(dep, {})

    def for_device(self, device_id: str) -> list[DevicePlugin]:
        attrs = self.devices.get(device_id).attributes
        with self.db.read() as s:
            deps = list(s.scalars(select(PluginDeployment).where(PluginDeployment.state == "active")
                                  .order_by(PluginDeployment.id.desc())))
        chosen: dict[str, PluginDeployment] = {}
        for dep in deps:  # newest first: the first deployment of a name that targets the device wins
            if dep.name not in chosen and policy.targeted(device_id, attrs, dep.device_ids, dep.filters, dep.seed,
                                                          dep.percentage):
                chosen[dep.name] = dep
        out = []
        for dep in sorted(chosen.values(), key=lambda d: d.name):
            row = self.publishing.plugin(dep.name, dep.version)
            out.append(DevicePlugin(name=row.name, version=row.version, filename=row.filename, sha256=row.sha256,
                                    size=row.size, key_id=dep.key_id, signature=dep.signature, deployment=dep.id))
        return out

    def set_status(self, device_id: str, body: PluginStatusIn) -> None:
        with self.db.write() as s:
            row = s.get(PluginInstall, (device_id, body.name))
            if row is None:
                row = PluginInstall(device_id=device_id, name=body.name)
                s.add(row)
            row.version, row.status, row.error = body.version, body.status, body.error
            row.deployment_id, row.updated_at = body.deployment, now()

    def installs(self, name: str) -> dict[str, tuple[str, str]]:
        """device -> (version, status) for one plugin."""
        with self.db.read() as s:
            return {r.device_id: (r.version, r.status)
                    for r in s.scalars(select(PluginInstall).where(PluginInstall.name == name))}


def _out(dep: PluginDeployment, installs: dict[str, int]) -> PluginDeploymentOut:
    return PluginDeploymentOut(id=dep.id, name=dep.name, version=dep.version, key_id=dep.key_id,
                               device_ids=dep.device_ids, filters=dep.filters, percentage=dep.percentage,
                               seed=dep.seed, state=dep.state, created_by=dep.created_by,
                               created_at=dep.created_at, installs=installs)
