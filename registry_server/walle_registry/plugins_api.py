"""Backend plugin rollouts: which published plugin wheels go to which devices.

A *plugin deployment* names a published wheel (``POST /v1/plugins``) and a population, chosen
exactly like a task deployment's (device ids AND attribute filters AND a seeded-hash percentage,
see :mod:`walle_registry.policy`). It carries the publisher's Ed25519 signature over the wheel's
sha256 hex, checked against the trusted keys when the deployment is created, so a device can
verify the wheel against its own trusted keys before installing it.

* ``POST /v1/plugin-deployments`` (deploy), ``GET /v1/plugin-deployments`` (read, with per-status
  install counts), ``POST /v1/plugin-deployments/{id}/rollback`` (deploy: the device falls back to
  the plugin version of the newest earlier deployment that still targets it, or to none).
* ``GET /v1/device/plugins`` (device): the plugin versions this device should have, one per
  plugin name (the newest active deployment that targets the device wins).
* ``POST /v1/device/plugins/status`` (device): install status (``downloading``, ``installed``,
  ``error``, ``removed``), kept per device and plugin.

Tables: ``plugin_deployments`` and ``plugin_installs`` (models.py, migration 0003).
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from walle_core.task import SignatureError, UnknownKeyError
from walle_registry import policy
from walle_registry.api import Deployer, DeviceP, Reader
from walle_registry.errors import Conflict, Invalid, NotFound
from walle_registry.models import PluginDeployment, PluginInstall
from walle_registry.schemas import Filters, PluginWheel, Strict
from walle_registry.service import Registry


class PluginDeploymentCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    key_id: str = Field(min_length=1, max_length=64)
    signature: str = Field(min_length=1, max_length=512, description="base64 Ed25519 signature of the "
                                                                      "wheel's sha256 hex")
    device_ids: list[str] | None = Field(default=None, max_length=100_000)
    filters: Filters = Field(default_factory=Filters)
    percentage: float = Field(default=100.0, ge=0.0, le=100.0)
    seed: str | None = Field(default=None, max_length=128)


class PluginDeploymentOut(BaseModel):
    id: int
    name: str
    version: str
    key_id: str
    device_ids: list[str] | None
    filters: dict[str, Any]
    percentage: float
    seed: str
    state: str
    created_by: str
    created_at: float
    installs: dict[str, int] = {}  # status -> devices that reported it for this deployment


class DevicePlugin(PluginWheel):
    """One plugin version the device should have, with what it needs to verify the wheel."""

    signature: str
    deployment: int


class PluginStatusIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    status: Literal["downloading", "installed", "error", "removed"]
    error: str = Field(default="", max_length=4000)
    deployment: int | None = Field(default=None, ge=1, lt=2**31)


class PluginRollouts:
    """The service half (one DB transaction per call), on the registry's database."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def create(self, spec: PluginDeploymentCreate, by: str) -> PluginDeployment:
        row = self.reg.plugin(spec.name, spec.version)  # 404 unless published
        try:
            sig = base64.b64decode(spec.signature, validate=True)
        except ValueError:
            raise Invalid("plugin deployment rejected: signature is not base64") from None
        try:
            self.reg.keystore().verify(spec.key_id, sig, row.sha256.encode("ascii"))
        except (SignatureError, UnknownKeyError) as exc:
            raise Invalid(f"plugin deployment rejected: bad signature: {exc}") from None
        dep = PluginDeployment(
            name=row.name, version=row.version, key_id=spec.key_id, signature=spec.signature,
            device_ids=list(dict.fromkeys(spec.device_ids)) if spec.device_ids is not None else None,
            filters=spec.filters.model_dump(exclude_none=True), percentage=spec.percentage,
            seed=spec.seed or f"plugin:{row.name}", state="active", created_by=by, created_at=time.time())
        with self.reg.db.write() as s:
            s.add(dep)
        return dep

    def deployments(self, name: str | None = None) -> list[PluginDeploymentOut]:
        with self.reg.db.read() as s:
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
        with self.reg.db.write() as s:
            dep = s.get(PluginDeployment, dep_id)
            if dep is None:
                raise NotFound(f"plugin deployment {dep_id} not found")
            if dep.state == "rolled_back":
                raise Conflict(f"plugin deployment {dep_id} is already rolled back")
            dep.state = "rolled_back"
            return _out(dep, {})

    def for_device(self, device_id: str) -> list[DevicePlugin]:
        attrs = self.reg.get_device(device_id).attributes
        with self.reg.db.read() as s:
            deps = list(s.scalars(select(PluginDeployment).where(PluginDeployment.state == "active")
                                  .order_by(PluginDeployment.id.desc())))
        chosen: dict[str, PluginDeployment] = {}
        for dep in deps:  # newest first: the first deployment of a name that targets the device wins
            if dep.name not in chosen and policy.targeted(device_id, attrs, dep.device_ids, dep.filters, dep.seed,
                                                          dep.percentage):
                chosen[dep.name] = dep
        out = []
        for dep in sorted(chosen.values(), key=lambda d: d.name):
            row = self.reg.plugin(dep.name, dep.version)
            out.append(DevicePlugin(name=row.name, version=row.version, filename=row.filename, sha256=row.sha256,
                                    size=row.size, key_id=dep.key_id, signature=dep.signature, deployment=dep.id))
        return out

    def set_status(self, device_id: str, body: PluginStatusIn) -> None:
        with self.reg.db.write() as s:
            row = s.get(PluginInstall, (device_id, body.name))
            if row is None:
                row = PluginInstall(device_id=device_id, name=body.name)
                s.add(row)
            row.version, row.status, row.error = body.version, body.status, body.error
            row.deployment_id, row.updated_at = body.deployment, time.time()

    def installs(self, name: str) -> dict[str, tuple[str, str]]:
        """device -> (version, status) for one plugin."""
        with self.reg.db.read() as s:
            return {r.device_id: (r.version, r.status)
                    for r in s.scalars(select(PluginInstall).where(PluginInstall.name == name))}


def _out(dep: PluginDeployment, installs: dict[str, int]) -> PluginDeploymentOut:
    return PluginDeploymentOut(id=dep.id, name=dep.name, version=dep.version, key_id=dep.key_id,
                               device_ids=dep.device_ids, filters=dep.filters, percentage=dep.percentage,
                               seed=dep.seed, state=dep.state, created_by=dep.created_by,
                               created_at=dep.created_at, installs=installs)


def mount_plugin_rollouts(app: FastAPI, reg: Registry) -> PluginRollouts:
    """Add the plugin-rollout routes to ``app``."""
    svc = PluginRollouts(reg)
    app.state.plugin_rollouts = svc

    @app.post("/v1/plugin-deployments", status_code=201, tags=["deployments"])
    def create_plugin_deployment(body: PluginDeploymentCreate, p: Deployer) -> PluginDeploymentOut:
        return _out(svc.create(body, p.name), {})

    @app.get("/v1/plugin-deployments", tags=["deployments"])
    def list_plugin_deployments(_p: Reader, name: Annotated[str | None, Query(max_length=128)] = None,
                                ) -> list[PluginDeploymentOut]:
        return svc.deployments(name)

    @app.post("/v1/plugin-deployments/{dep_id}/rollback", tags=["deployments"])
    def rollback_plugin_deployment(dep_id: int, _p: Deployer) -> PluginDeploymentOut:
        if not 1 <= dep_id < 2**31:
            raise NotFound(f"plugin deployment {dep_id} not found")
        return svc.rollback(dep_id)

    @app.get("/v1/device/plugins", tags=["device"])
    def device_plugins(p: DeviceP) -> list[DevicePlugin]:
        return svc.for_device(p.name)

    @app.post("/v1/device/plugins/status", tags=["device"])
    def device_plugin_status(body: PluginStatusIn, p: DeviceP) -> dict[str, bool]:
        svc.set_status(p.name, body)
        return {"accepted": True}

    return svc


__all__ = ["DevicePlugin", "PluginDeploymentCreate", "PluginRollouts", "mount_plugin_rollouts"]
