"""Device enrolment and listing, and the endpoints devices call with their own credential:
attributes, check-ins, notices (polled or streamed as server-sent events), targets and status
reports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from walle_registry import schemas as S
from walle_registry.broker import KEEPALIVE, RESYNC
from walle_registry.context import Registry
from walle_registry.errors import Forbidden
from walle_registry.routes.deps import DeviceP, Enroller, Reader, Reg
from walle_registry.services.deployments import DeviceReport

router = APIRouter()
PAGE = 1000  # notices per catch-up query of a stream


@router.post("/v1/devices/register", status_code=201, tags=["devices"])
def register(body: S.DeviceRegister, p: Enroller, reg: Reg) -> S.DeviceCredential:
    """A new device, with an enrolment token; an existing id is re-keyed only with that device's
    own credential or an admin token (an enrolment token cannot lock a device out)."""
    device_id, may_rekey = body.device_id, p.has("admin")
    if p.kind == "device":
        if device_id not in (None, p.name):
            raise Forbidden(f"this credential belongs to device {p.name}, not {device_id}")
        device_id, may_rekey = p.name, True
    did, secret, notices = reg.devices.register(device_id, body.attributes, may_rekey)
    reg.publish_notices(notices)
    return S.DeviceCredential(device_id=did, token=secret)


@router.get("/v1/devices", tags=["devices"])
def list_devices(_p: Reader, reg: Reg, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                 offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> list[S.DeviceOut]:
    cutoff = time.time() - reg.settings.online_window_s
    return [S.DeviceOut(id=d.id, attributes=d.attributes, registered_at=d.registered_at, last_seen=d.last_seen,
                        online=d.last_seen >= cutoff or reg.broker.is_connected(d.id), cursor=d.cursor,
                        targets=t) for d, t in reg.devices.page(limit, offset)]


@router.put("/v1/device/attributes", tags=["device"])
def put_attributes(body: S.Attributes, p: DeviceP, reg: Reg) -> dict[str, int]:
    notices = reg.devices.update_attributes(p.name, body)
    reg.publish_notices(notices)
    return {"notices": len(notices)}


@router.post("/v1/device/checkin", tags=["device"])
async def checkin(body: S.CheckIn, p: DeviceP, reg: Reg) -> S.CheckInOut:
    out = reg.devices.checkin_cached(p.name, body.metrics, body.cursor)  # memory only (written behind)
    if out is None:
        out = await run_in_threadpool(reg.devices.checkin, p.name, body.metrics, body.cursor)
    return S.CheckInOut(cursor=out[0], latest=out[1])


@router.get("/v1/device/notices", tags=["device"])
def notices(p: DeviceP, reg: Reg, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
            limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> S.NoticePage:
    rows = reg.devices.notices_after(p.name, after, limit)
    return S.NoticePage(notices=[S.Notice(**{k: v for k, v in n.items() if k != "device"}) for n in rows],
                        cursor=rows[-1]["seq"] if rows else after)


@router.get("/v1/device/targets", tags=["device"])
def targets(p: DeviceP, reg: Reg) -> list[S.Target]:
    return [S.Target(task=t.task, version=t.version, digest=t.manifest_digest, deployment=t.deployment_id)
            for t in reg.devices.targets(p.name) if t.version is not None]


@router.get("/v1/device/stream", tags=["device"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent notices"}})
async def stream(p: DeviceP, reg: Reg, cursor: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                 last_event_id: Annotated[str | None, Header(max_length=20)] = None) -> StreamingResponse:
    """Server-sent events: every notice after ``cursor`` (or ``Last-Event-ID``, or the device's
    acknowledged cursor), then live notices as they are committed; a comment every
    keep-alive interval."""
    start = cursor
    if start is None and last_event_id and last_event_id.isdigit() and int(last_event_id) <= S.SEQ_MAX:
        start = int(last_event_id)
    known = reg.devices.cursors.get(p.name)
    if known is None or reg.devices.latest.get(p.name) is None:  # warm the check-in fast path too
        known = await run_in_threadpool(reg.devices.cursor, p.name, True)
    if start is None:
        start = known
    queue = reg.broker.subscribe(p.name)
    reg.devices.touch(p.name)
    return StreamingResponse(_events(reg, p.name, start, queue), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/v1/device/reports", tags=["device"])
async def report(body: S.ReportIn, p: DeviceP, reg: Reg) -> S.ReportOut:
    """Answered once the report committed; concurrent reports share one transaction."""
    dup, dep_id = await reg.reports.submit(DeviceReport(p.name, body.task, body.version, body.status,
                                                        body.deployment_id, body.error, body.metrics, body.seq))
    return S.ReportOut(accepted=not dup, duplicate=dup, deployment_id=dep_id)


async def _events(reg: Registry, device_id: str, cursor: int, queue: asyncio.Queue[dict[str, Any]]
                  ) -> AsyncIterator[str]:
    seen: set[int] = set()
    last = cursor

    async def catch_up() -> AsyncIterator[str]:  # from the database, in pages
        nonlocal last
        while True:
            page = await run_in_threadpool(reg.devices.notices_after, device_id, last, PAGE)
            for n in page:
                seen.add(n["seq"])
                last = max(last, n["seq"])
                yield _sse(n)
            if len(page) < PAGE:
                break

    try:
        yield "retry: 2000\n: connected\n\n"
        # The queue was subscribed before this read: a notice missing from ``latest`` now reaches
        # the queue later, so a device already at the newest seq needs no catch-up query (the
        # common reconnect, e.g. a replica's devices moving to the others after it died).
        newest = reg.devices.latest.get(device_id)
        if newest is None or newest > cursor:
            async for event in catch_up():
                yield event
        while True:
            n = await queue.get()
            if n is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            if n is RESYNC:
                async for event in catch_up():
                    yield event
                continue
            seq = int(n["seq"])
            if seq in seen or seq <= cursor:
                continue
            seen.add(seq)
            if len(seen) > 4096:
                seen = set(sorted(seen)[-2048:])
            last = max(last, seq)
            yield _sse(n)
    finally:
        reg.broker.unsubscribe(device_id, queue)


def _sse(n: dict[str, Any]) -> str:
    data = json.dumps({k: v for k, v in n.items() if k != "device"}, separators=(",", ":"))
    return f"id: {n['seq']}\nevent: notice\ndata: {data}\n\n"


async def keepalive_ticker(reg: Registry, every: float, parts: int = 8) -> None:
    """Each stream gets a keep-alive comment every ``every`` seconds, spread over ``parts`` ticks."""
    part = 0
    while True:
        await asyncio.sleep(every / parts)
        reg.broker.keepalive(part, parts)
        part = (part + 1) % parts
