"""Auth as FastAPI dependencies, and the registry of the running app.

Publishers and operators send ``Authorization: Bearer wpt_...`` (scopes: publish, deploy, enroll,
read, admin; admin implies all, any token may read). Devices send ``Authorization: Bearer
wdt_...``, issued by ``POST /v1/devices/register``; device endpoints are rate limited per device.

The dependencies are coroutines: FastAPI runs plain ``def`` dependencies in the thread pool,
which would cost every request a thread hand-off before the endpoint even starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.concurrency import run_in_threadpool

from walle_registry.auth import Principal
from walle_registry.context import Registry
from walle_registry.errors import Forbidden, RateLimited, Unauthorized
from walle_registry.schemas import DB_ID_MAX


async def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


Reg = Annotated[Registry, Depends(registry)]


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return value.strip()


async def authenticate(reg: Registry, secret: str) -> Principal:
    """Cached credentials are checked on the event loop; a miss reads the database in a thread."""
    p = reg.credentials.cached_principal(secret)
    if p is None:
        p = await run_in_threadpool(reg.credentials.authenticate, secret)
    return p


# Bounded path and header parameters (the OpenAPI description states every bound).
DbId = Annotated[int, Path(ge=1, le=DB_ID_MAX)]
TaskName = Annotated[str, Path(min_length=1, max_length=64)]
Version = Annotated[str, Path(min_length=1, max_length=64)]
PluginName = Annotated[str, Path(min_length=1, max_length=128)]
Sha256 = Annotated[str, Path(min_length=64, max_length=64)]
AuthHeader = Annotated[str | None, Header(max_length=1024)]


async def principal(reg: Reg, authorization: AuthHeader = None) -> Principal:
    secret = bearer(authorization)
    if secret is None:
        raise Unauthorized("missing credential (Authorization: Bearer <token>)")
    return await authenticate(reg, secret)


def rate_limit(reg: Registry, p: Principal) -> None:
    wait = reg.limiter.take(p.name)
    if wait:
        raise RateLimited(f"device {p.name} is over its request rate; retry in {wait:.1f}s", wait)


def scope(name: str) -> Callable[..., Awaitable[Principal]]:
    async def dep(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if not p.has(name):
            raise Forbidden(f"this credential lacks the {name!r} scope")
        return p
    return dep


async def device(reg: Reg, p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.kind != "device":
        raise Forbidden("this endpoint is for device credentials")
    rate_limit(reg, p)
    return p


async def anyone(reg: Reg, p: Annotated[Principal, Depends(principal)]) -> Principal:
    """A device (rate limited) or a token that may read."""
    if p.kind == "device":
        rate_limit(reg, p)
    elif not p.has("read"):
        raise Forbidden("this credential can only enrol devices")
    return p


async def enroller(reg: Reg, p: Annotated[Principal, Depends(principal)]) -> Principal:
    """Who may call ``/v1/devices/register``: a token with the enroll scope (rate limited unless
    admin), or a device re-registering itself with its own credential."""
    if p.kind == "device":
        rate_limit(reg, p)
        return p
    if not p.has("enroll"):
        raise Forbidden("this credential lacks the 'enroll' scope")
    if not p.has("admin"):
        wait = reg.enroll_limiter.take(f"enroll:{p.name}")
        if wait:
            raise RateLimited(f"enrolment token {p.name!r} is over its registration rate; retry in {wait:.1f}s",
                              wait)
    return p


Publisher = Annotated[Principal, Depends(scope("publish"))]
Deployer = Annotated[Principal, Depends(scope("deploy"))]
Admin = Annotated[Principal, Depends(scope("admin"))]
Reader = Annotated[Principal, Depends(scope("read"))]
Enroller = Annotated[Principal, Depends(enroller)]
DeviceP = Annotated[Principal, Depends(device)]
AnyP = Annotated[Principal, Depends(anyone)]

