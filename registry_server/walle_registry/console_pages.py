"""HTML of the console's pages besides the deployment board: devices (list and one device),
releases and tasks, and one deployment's history. Plain server-rendered HTML; every value from
the database or a device goes through :func:`esc`."""

from __future__ import annotations

import html
import time
from typing import Any

from walle_registry.console_data import DeviceDetail, DeviceRow

NAV = (("deployments", "/console"), ("devices", "/console/devices"), ("releases", "/console/releases"))

CSS = """
nav{background:#273444;padding:0 24px}nav a{color:#c9d6e3;display:inline-block;padding:8px 12px;
text-decoration:none;font-size:14px}nav a.on{color:#fff;border-bottom:2px solid #90caf9}
table.grid{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;border-radius:8px;width:100%;
font-size:13px;margin-bottom:18px}.grid th,.grid td{text-align:left;padding:7px 10px;border-bottom:1px solid #e3e8ee;
vertical-align:top}.grid th{color:#5b6b7c;font-weight:600;font-size:12px;text-transform:uppercase}
.h-healthy{color:#2e7d32;font-weight:600}.h-failing{color:#c62828;font-weight:600}
.h-updating{color:#1565c0;font-weight:600}.h-idle{color:#78909c}.off{color:#78909c}.on-line{color:#2e7d32}
h3{font-size:15px;margin:18px 0 8px 0}dl.kv{display:grid;grid-template-columns:160px 1fr;gap:4px 12px;
background:#fff;padding:12px 18px;border-radius:8px;box-shadow:0 1px 2px #0002;font-size:13px}
dl.kv dt{color:#5b6b7c}dl.kv dd{margin:0}a{color:#1565c0}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def when(ts: float | None) -> str:
    """UTC calendar time, ``-`` for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def ago(ts: float, now: float) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    d = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if d >= size:
            return f"{int(d // size)} {unit} ago"
    return f"{int(d)} s ago"


def nav(current: str) -> str:
    return "<nav>" + "".join(f"<a href='{href}' class='{'on' if name == current else ''}'>{name}</a>"
                             for name, href in NAV) + "</nav>"


def tiles(items: list[tuple[str, int]]) -> str:
    return "<div class='tiles'>" + "".join(
        f"<div class='tile'><b>{v}</b><span>{esc(k)}</span></div>" for k, v in items) + "</div>"


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """A table of already-escaped cells."""
    if not rows:
        return f"<p>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='grid'><tr>{head}</tr>{body}</table>"


def _versions(row: DeviceRow) -> str:
    return ", ".join(f"{esc(t)} {esc(v) if v else '(removed)'}" for t, v in sorted(row.versions.items())) or "-"


def _online(row: DeviceRow, now: float) -> str:
    return ("<span class='on-line'>online</span>" if row.online else "<span class='off'>offline</span>") + (
        f" · {ago(row.last_seen, now)}")


def devices_page(rows: list[DeviceRow], counts: dict[str, int], now: float) -> str:
    online = sum(r.online for r in rows)
    body = tiles([("devices", len(rows)), ("online", online), ("offline", len(rows) - online), *counts.items()])
    cells = [[f"<a href='/console/devices/{esc(r.id)}'>{esc(r.id)}</a>", _online(r, now), when(r.last_seen),
              esc(", ".join(f"{k}={v}" for k, v in sorted(r.attributes.items())
                            if k in ("os", "app_version", "model", "region") and v not in ("", None))),
              _versions(r), f"<span class='h-{r.health}'>{r.health}</span>",
              esc(r.last_error[:120]) + (f" <span class='off'>({when(r.last_error_at)})</span>" if r.last_error else "")]
             for r in rows]
    return body + table(["device", "status", "last seen (UTC)", "attributes", "versions", "health", "last error"],
                        cells, "No devices have registered yet.")


def device_page(d: DeviceDetail, now: float) -> str:
    r = d.row
    facts = [("status", _online(r, now)), ("last seen", when(r.last_seen) + " UTC"),
             ("registered", when(r.registered_at) + " UTC"), ("health", f"<span class='h-{r.health}'>{r.health}</span>"),
             ("versions", _versions(r))]
    facts += [(esc(k), esc(v)) for k, v in sorted(r.attributes.items())]
    facts += [(f"metric {esc(k)}", esc(v)) for k, v in sorted(d.metrics.items())]
    body = "<dl class='kv'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    body += "<h3>Deployments that reached it</h3>" + table(
        ["deployment", "task", "version", "stage", "status", "error", "updated (UTC)"],
        [[f"<a href='/console/deployments/{a['deployment']}'>#{a['deployment']}</a>", esc(a["task"]),
          esc(a["version"]), str(a["stage"]), esc(a["status"]), esc(a["error"][:160]), when(a["at"])]
         for a in d.assignments], "No deployment has reached this device.")
    body += "<h3>Recent reports</h3>" + table(
        ["time (UTC)", "task", "version", "status", "error"],
        [[when(x["at"]), esc(x["task"]), esc(x["version"]), esc(x["status"]), esc(x["error"][:200])]
         for x in d.reports], "No reports yet.")
    return body


def releases_page(task_rows: list[dict[str, Any]], release_rows: list[dict[str, Any]]) -> str:
    body = "<h3>Tasks</h3>" + table(
        ["task", "versions", "newest", "deployments"],
        [[esc(t["task"]), str(t["versions"]), esc(t["latest"]), str(t["deployments"])] for t in task_rows],
        "No task has been published yet.")
    body += "<h3>Releases</h3>" + table(
        ["task", "version", "published (UTC)", "bundle bytes", "signed by key", "manifest", "deployments"],
        [[esc(r["task"]), esc(r["version"]), when(r["at"]), f"{r['size']:,}", esc(r["key_id"][:16]),
          esc(r["digest"][:16]), str(r["deployments"])] for r in release_rows], "No releases.")
    return body


def history_page(st: dict[str, Any], stages_html: str, buttons: str) -> str:
    reason = f" — {esc(st['reason'])}" if st["reason"] else ""
    ids = st["device_ids"]
    who = "all devices" if ids is None else f"{len(ids)} listed device(s)"
    filters = ", ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(st["filters"].items()))
    facts = [("state", f"<span class='badge {esc(st['state'])}'>{esc(st['state'].replace('_', ' '))}</span>{reason}"),
             ("policy", f"{who}{' with ' + filters if filters else ''}, {st['percentage']:g}% by hash "
                        f"(seed {esc(st['seed'])}), priority {st['priority']}"),
             ("stages", " → ".join(f"{p:g}%" for p in st["stages"]) + f"; min sample {st['min_sample']}, success ≥ "
                        f"{st['success_threshold']:g}, error gate {st['error_threshold']:g}"),
             ("replaces", esc(st["previous_version"] or "nothing")),
             ("created", f"{when(st['created_at'])} UTC by {esc(st['created_by'])}")]
    body = "<dl class='kv'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    body += f"<div class='dep'>{stages_html}<div>{buttons}</div></div>"
    body += "<h3>History</h3>" + table(["time (UTC)", "event", "detail"],
                                       [[when(e["at"]), esc(e["kind"]), esc(e["detail"])] for e in st["events"]],
                                       "No events.")
    body += "<h3>Errors</h3>" + table(
        ["time (UTC)", "device", "status", "error"],
        [[when(e["at"]), f"<a href='/console/devices/{esc(e['device'])}'>{esc(e['device'])}</a>", esc(e["status"]),
          esc(e["error"][:200])] for e in st["errors"]], "No device reported an error.")
    return body
