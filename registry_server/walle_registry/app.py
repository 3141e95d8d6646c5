"""The HTTP API (FastAPI). OpenAPI at ``/openapi.json``, interactive docs at ``/docs``.

Publishers and operators send ``Authorization: Bearer wpt_...`` (scopes: publish, deploy, enroll,
read, admin; admin implies all, any token may read). Devices send ``Authorization: Bearer
wdt_...``, issued by ``POST /v1/devices/register``; device endpoints are rate limited per device.
Every write needs a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import walle_registry
from walle_registry import apidocs, console, schemas
from walle_registry.context import Registry
from walle_registry.errors import RateLimited, RegistryError, Unauthorized, scrub_paths
from walle_registry.routes import credentials, deployments, devices, publishing, results
from walle_registry.routes.deps import Reg
from walle_registry.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem} for code in (400, 401, 403, 404, 409, 413, 416, 422, 429)}


def create_app(settings: Settings, registry: Registry | None = None, admin_token: str | None = None) -> FastAPI:
    """Build the app. ``admin_token`` seeds an admin credential (otherwise one is generated and
    written to ``data_dir/admin.token`` the first time, mode 0600)."""
    reg = registry or Registry(settings)
    write_admin_token(reg, settings, admin_token)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        reg.broker.bind_loop(asyncio.get_running_loop())
        reg.start()
        ticker = asyncio.create_task(devices.keepalive_ticker(reg, settings.stream_keepalive_s))
        try:
            yield
        finally:
            ticker.cancel()
            reg.close()

    # docs_url/redoc_url off: FastAPI's pages load their scripts from a CDN; apidocs serves both
    # offline from the same OpenAPI description
    app = FastAPI(title="Walle registry", version=walle_registry.__version__, lifespan=lifespan,
                  description=__doc__ or "", responses=ERRORS, docs_url=None, redoc_url=None, **_NO_TELEMETRY)
    app.state.registry = reg
    app.add_exception_handler(RegistryError, _registry_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.get("/healthz", tags=["misc"])(_healthz)
    # routes match in order: the device hot paths (check-ins, reports, pulls) first
    for module in (devices, publishing, credentials, results, deployments, console, apidocs):
        app.include_router(module.router)
    return app


# FastAPI versions with native OpenTelemetry look the global providers up on every request
# (environment reads included); the registry exports no traces, so that is switched off.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def write_admin_token(reg: Registry, settings: Settings, admin_token: str | None) -> None:
    secret = reg.credentials.bootstrap_admin(admin_token)
    if secret is not None and admin_token is None:
        path = settings.data_dir / "admin.token"
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w") as fh:
                fh.write(secret + "\n")


async def _healthz(reg: Reg) -> dict[str, Any]:
    return {"ok": True, "version": walle_registry.__version__, "database": reg.db.dialect,
            "streams": reg.broker.connected()}


async def _registry_error(req: Request, exc: RegistryError) -> JSONResponse:
    settings: Settings = req.app.state.registry.settings
    detail = scrub_paths(exc.message, settings.data_dir, settings.spool_dir)
    headers = {"Retry-After": f"{max(1, round(exc.retry_after))}"} if isinstance(exc, RateLimited) else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": exc.code, "detail": detail}, status_code=exc.status, headers=headers)


async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
    errs = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs[:5])
    return JSONResponse({"error": "invalid", "detail": detail, "errors": errs}, status_code=422)


__all__ = ["create_app"]
