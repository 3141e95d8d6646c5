"""The web console: deployments with per-stage progress, device counts, errors, and buttons;
device pages (list, one device), releases and tasks, a deployment's history (console_pages.py,
read through console_data.py).

Server-rendered HTML (no JavaScript needed; the page refreshes itself every few seconds). Sign-in
takes a publisher token once (``/console?token=...[&next=/console/devices]`` or the form) and keeps it in an HttpOnly,
SameSite=Strict cookie; the buttons post forms that carry a CSRF value derived from that cookie.
Reading needs any token, the buttons need the ``deploy`` scope.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from walle_registry import console_data, console_pages
from walle_registry.auth import Principal
from walle_registry.context import Registry
from walle_registry.errors import Forbidden, RegistryError, Unauthorized
from walle_registry.routes.deps import Reg

COOKIE = "walle_console"
REFRESH_S = 5

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#1d2733;color:#fff;padding:14px 24px;font-size:20px;font-weight:600}
header small{font-weight:400;color:#9fb0c3;margin-left:12px;font-size:13px}
main{padding:20px 24px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:20px}
.tile{background:#fff;border-radius:8px;padding:12px 18px;min-width:110px;box-shadow:0 1px 2px #0002}
.tile b{display:block;font-size:24px}.tile span{color:#5b6b7c;font-size:12px;text-transform:uppercase}
.dep{background:#fff;border-radius:8px;padding:14px 18px;margin-bottom:14px;box-shadow:0 1px 2px #0002}
.dep h2{font-size:16px;margin:0 0 8px 0}.badge{display:inline-block;border-radius:10px;padding:2px 10px;
font-size:12px;color:#fff;margin-left:8px}.running{background:#1e88e5}.paused{background:#f9a825}
.completed{background:#43a047}.rolled_back{background:#8e24aa}
.stage{display:flex;align-items:center;gap:10px;margin:4px 0;font-size:13px}
.stage .lbl{width:150px}.bar{flex:1;height:14px;background:#e3e8ee;border-radius:7px;overflow:hidden;display:flex}
.ok{background:#43a047}.bad{background:#e53935}.pend{background:#90caf9}
.meta{color:#5b6b7c;font-size:12px;margin:4px 0 8px 0}.err{color:#c62828;font-size:12px;margin:2px 0}
form{display:inline}button{border:0;border-radius:5px;padding:5px 12px;margin-right:6px;cursor:pointer;
color:#fff;font-size:13px}.b-pause{background:#f9a825}.b-resume{background:#1e88e5}.b-rollback{background:#8e24aa}
.login{background:#fff;padding:24px;border-radius:8px;max-width:420px}input{width:100%;padding:6px;margin:8px 0}
"""


def _csrf(secret: str) -> str:
    return hashlib.sha256(("csrf:" + secret).encode()).hexdigest()[:32]


def _page(title: str, body: str, refresh: bool = False, section: str = "") -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    menu = console_pages.nav(section) if section else ""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title>"
        f"<style>{CSS}{console_pages.CSS}</style></head><body><header>Walle registry<small>{html.escape(title)}"
        f"</small></header>{menu}<main>{body}</main></body></html>")


def _login(message: str = "") -> HTMLResponse:
    msg = f"<p class='err'>{html.escape(message)}</p>" if message else ""
    return _page("sign in", f"<div class='login'><h2>Sign in</h2>{msg}<form method='post' action='/console/login'>"
                 "<label>Publisher token<input type='password' name='token' autocomplete='off'></label>"
                 "<button class='b-resume' type='submit'>Sign in</button></form></div>")


def _stage_rows(st: dict[str, Any]) -> str:
    rows = []
    for stage in st["progress"]:
        targeted = max(stage["targeted"], stage["assigned"], 1)
        ok, bad = stage["succeeded"], stage["failed"]
        pend = max(stage["assigned"] - ok - bad, 0)
        w = [100.0 * x / targeted for x in (ok, bad, pend)]
        mark = "▶ " if stage["active"] else ""
        rows.append(
            f"<div class='stage'><span class='lbl'>{mark}stage {stage['index'] + 1} · {stage['percentage']:g}%</span>"
            f"<div class='bar'><div class='ok' style='width:{w[0]:.1f}%'></div><div class='bad' style='width:{w[1]:.1f}%'>"
            f"</div><div class='pend' style='width:{w[2]:.1f}%'></div></div>"
            f"<span>{ok} ok · {bad} failed · {stage['assigned']}/{stage['targeted']} reached</span></div>")
    return "".join(rows)


def _buttons(dep_id: int, state: str, csrf: str) -> str:
    out = []
    for action, allowed in (("pause", state == "running"), ("resume", state == "paused"),
                            ("rollback", state != "rolled_back")):
        if allowed:
            out.append(f"<form method='post' action='/console/deployments/{dep_id}/{action}'>"
                       f"<input type='hidden' name='csrf' value='{csrf}'>"
                       f"<button class='b-{action}' type='submit' id='{action}-{dep_id}'>{action}</button></form>")
    return "".join(out)


def device_tiles(reg: Registry) -> list[tuple[str, int]]:
    """Devices in total, online, offline and by health: each device counted once (not once per
    task or deployment it has)."""
    counts = reg.devices.status_counts()
    health = console_data.health_counts(console_data.devices(reg, limit=1_000_000))
    return [("devices", counts["total"]), ("online", counts["online"]), ("offline", counts["offline"]),
            *health.items()]


def render(reg: Registry, csrf: str, can_deploy: bool) -> HTMLResponse:
    body = [console_pages.tiles(device_tiles(reg))]
    deps = reg.deployments.find()[:20]
    if not deps:
        body.append("<p>No deployments yet.</p>")
    for dep in deps:
        st = reg.deployments.status(dep.id)
        errors = "".join(f"<div class='err'>{html.escape(e['device'])}: {html.escape(e['status'])} "
                         f"{html.escape(e['error'][:160])}</div>" for e in st["errors"][:5])
        reason = f" — {html.escape(st['reason'])}" if st["reason"] else ""
        counts_line = ", ".join(f"{k} {v}" for k, v in sorted(st["counts"].items())) or "no devices reached yet"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st["created_at"]))
        body.append(
            f"<div class='dep' id='dep-{dep.id}'><h2><a href='/console/deployments/{dep.id}'>#{dep.id} "
            f"{html.escape(dep.task)} {html.escape(dep.version)}</a>"
            f"<span class='badge {dep.state}'>{dep.state.replace('_', ' ')}</span></h2>"
            f"<div class='meta'>from {html.escape(str(st['previous_version']))} · {st['percentage']:g}% of targeted · "
            f"priority {st['priority']} · created {when} UTC by {html.escape(st['created_by'])}{reason}</div>"
            f"{_stage_rows(st)}<div class='meta'>{html.escape(counts_line)}</div>{errors}"
            f"<div>{_buttons(dep.id, dep.state, csrf) if can_deploy else ''}</div></div>")
    return _page("deployments", "".join(body), refresh=True, section="deployments")


def _who(reg: Registry, request: Request) -> tuple[Principal, str]:
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise Unauthorized("not signed in")
    return _publisher(reg, secret), secret


def _publisher(reg: Registry, secret: str) -> Principal:
    p = reg.credentials.authenticate(secret)
    if not p.has("read"):
        raise Forbidden("the console takes a publisher or operator token (not a device or enrolment token)")
    return p


def _signed_in(reg: Registry, secret: str, next_page: str = "/console") -> Response:
    """Set the cookie and go on to ``next_page`` (a console page only: never another site)."""
    _publisher(reg, secret)
    target = next_page if re.fullmatch(r"/console(/[A-Za-z0-9._/-]*)?", next_page) and ".." not in next_page else "/console"
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(COOKIE, secret, httponly=True, samesite="strict", max_age=12 * 3600)
    return resp


router = APIRouter(include_in_schema=False)


@router.get("/console", response_class=HTMLResponse)
def console(request: Request, reg: Reg) -> Response:
    token = request.query_params.get("token")
    try:
        if token:
            return _signed_in(reg, token, request.query_params.get("next", "/console"))
        p, secret = _who(reg, request)
    except RegistryError as exc:
        return _login(exc.message if token or request.cookies.get(COOKIE) else "")
    return render(reg, _csrf(secret), p.has("deploy"))


def _signed_in_page(request: Request, reg: Reg, title: str, section: str,
                    build: Callable[[Principal, str], str]) -> Response:
    """A console page for a signed-in reader (else the sign-in form); ``build`` gets the
    principal and the CSRF value and returns the body."""
    try:
        p, secret = _who(reg, request)
        return _page(title, build(p, _csrf(secret)), refresh=True, section=section)
    except RegistryError as exc:
        if exc.status == 404:
            return HTMLResponse(html.escape(exc.message), status_code=404)
        return _login(exc.message if request.cookies.get(COOKIE) else "")


@router.get("/console/devices", response_class=HTMLResponse)
def devices_page(request: Request, reg: Reg) -> Response:
    def build(_p: Principal, _csrf_value: str) -> str:
        rows = console_data.devices(reg)
        return console_pages.devices_page(rows, console_data.health_counts(rows), time.time())

    return _signed_in_page(request, reg, "devices", "devices", build)


@router.get("/console/devices/{device_id}", response_class=HTMLResponse)
def device_page(device_id: str, request: Request, reg: Reg) -> Response:
    def build(_p: Principal, _csrf_value: str) -> str:
        return console_pages.device_page(console_data.device(reg, device_id), time.time())

    return _signed_in_page(request, reg, f"device {device_id}", "devices", build)


@router.get("/console/releases", response_class=HTMLResponse)
def releases_page(request: Request, reg: Reg) -> Response:
    def build(_p: Principal, _csrf_value: str) -> str:
        rows = console_data.releases(reg)
        return console_pages.releases_page(console_data.tasks(rows), rows)

    return _signed_in_page(request, reg, "releases", "releases", build)


@router.get("/console/deployments/{dep_id}", response_class=HTMLResponse)
def history_page(dep_id: int, request: Request, reg: Reg) -> Response:
    def build(p: Principal, csrf: str) -> str:
        st = reg.deployments.status(dep_id)
        buttons = _buttons(dep_id, st["state"], csrf) if p.has("deploy") else ""
        return console_pages.history_page(st, _stage_rows(st), buttons)

    return _signed_in_page(request, reg, f"deployment {dep_id}", "deployments", build)


@router.post("/console/login")
async def login(request: Request, reg: Reg) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    try:
        return _signed_in(reg, (form.get("token") or [""])[0].strip())
    except RegistryError as exc:
        return _login(exc.message)


@router.post("/console/deployments/{dep_id}/{action}")
async def act(dep_id: int, action: str, request: Request, reg: Reg) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    try:
        p, secret = _who(reg, request)
    except RegistryError as exc:
        return _login(exc.message)
    if (form.get("csrf") or [""])[0] != _csrf(secret):
        return HTMLResponse("CSRF check failed", status_code=403)
    if not p.has("deploy"):
        return HTMLResponse("this token lacks the deploy scope", status_code=403)
    by = f"{p.name} (console)"
    try:
        if action == "pause":
            await run_in_threadpool(reg.deployments.pause, dep_id, by)
        elif action == "resume":
            _, notices = await run_in_threadpool(reg.deployments.resume, dep_id, by)
            reg.publish_notices(notices)
        elif action == "rollback":
            _, notices = await run_in_threadpool(reg.deployments.rollback, dep_id, by)
            reg.publish_notices(notices)
        else:
            return HTMLResponse("unknown action", status_code=404)
    except RegistryError as exc:
        return HTMLResponse(html.escape(exc.message), status_code=exc.status)
    return RedirectResponse("/console", status_code=303)
