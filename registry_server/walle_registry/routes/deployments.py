"""Deployments of tasks and of backend plugins alike: create, list, status, pause, resume,
rollback, widen; and what a device asks about its plugins."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Query

from walle_registry import schemas as S
from walle_registry.routes.deps import DbId, Deployer, DeviceP, Reader, Reg
from walle_registry.services.deployments import deployment_dict

router = APIRouter()
TAGS: list[str | Enum] = ["deployments"]


@router.post("/v1/deployments", status_code=201, tags=TAGS)
def create_deployment(body: S.DeploymentCreate, p: Deployer, reg: Reg) -> S.DeploymentOut:
    dep, notices = reg.deployments.create(body, p.name)
    reg.publish_notices(notices)
    return S.DeploymentOut(**deployment_dict(dep))


@router.get("/v1/deployments", tags=TAGS)
def list_deployments(_p: Reader, reg: Reg, task: Annotated[str | None, Query(max_length=64)] = None,
                     ) -> list[S.DeploymentOut]:
    return [S.DeploymentOut(**deployment_dict(d)) for d in reg.deployments.find(task)]


@router.get("/v1/deployments/{dep_id}", tags=TAGS)
def deployment_status(dep_id: DbId, _p: Reader, reg: Reg) -> S.DeploymentStatus:
    return S.DeploymentStatus(**reg.deployments.status(dep_id))


@router.post("/v1/deployments/{dep_id}/pause", tags=TAGS)
def pause(dep_id: DbId, p: Deployer, reg: Reg) -> S.DeploymentOut:
    return S.DeploymentOut(**deployment_dict(reg.deployments.pause(dep_id, p.name)))


@router.post("/v1/deployments/{dep_id}/resume", tags=TAGS)
def resume(dep_id: DbId, p: Deployer, reg: Reg) -> S.DeploymentOut:
    dep, notices = reg.deployments.resume(dep_id, p.name)
    reg.publish_notices(notices)
    return S.DeploymentOut(**deployment_dict(dep))


@router.post("/v1/deployments/{dep_id}/rollback", tags=TAGS)
def rollback(dep_id: DbId, p: Deployer, reg: Reg) -> S.DeploymentOut:
    dep, notices = reg.deployments.rollback(dep_id, p.name)
    reg.publish_notices(notices)
    return S.DeploymentOut(**deployment_dict(dep))


@router.post("/v1/deployments/{dep_id}/widen", tags=TAGS)
def widen(dep_id: DbId, body: S.Widen, _p: Deployer, reg: Reg) -> S.DeploymentOut:
    dep, notices = reg.deployments.widen(dep_id, body.percentage)
    reg.publish_notices(notices)
    return S.DeploymentOut(**deployment_dict(dep))


# ---------------------------------------------------------------------------------- plugin rollouts


@router.post("/v1/plugin-deployments", status_code=201, tags=TAGS)
def create_plugin_deployment(body: S.PluginDeploymentCreate, p: Deployer, reg: Reg) -> S.PluginDeploymentOut:
    return reg.plugin_deployments.create(body, p.name)


@router.get("/v1/plugin-deployments", tags=TAGS)
def list_plugin_deployments(_p: Reader, reg: Reg, name: Annotated[str | None, Query(max_length=128)] = None,
                            ) -> list[S.PluginDeploymentOut]:
    return reg.plugin_deployments.find(name)


@router.post("/v1/plugin-deployments/{dep_id}/rollback", tags=TAGS)
def rollback_plugin_deployment(dep_id: DbId, _p: Deployer, reg: Reg) -> S.PluginDeploymentOut:
    return reg.plugin_deployments.rollback(dep_id)


@router.get("/v1/device/plugins", tags=["device"])
def device_plugins(p: DeviceP, reg: Reg) -> list[S.DevicePlugin]:
    return reg.plugin_deployments.for_device(p.name)


@router.post("/v1/device/plugins/status", tags=["device"])
def device_plugin_status(body: S.PluginStatusIn, p: DeviceP, reg: Reg) -> dict[str, bool]:
    reg.plugin_deployments.set_status(p.name, body)
    return {"accepted": True}
