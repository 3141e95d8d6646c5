"""``/docs`` and ``/redoc``: the API reference as one self-contained HTML page, rendered on the
server from the app's own OpenAPI description. No script, stylesheet or font is fetched from
anywhere (FastAPI's default pages load Swagger UI and ReDoc from a CDN, which an offline or
air-gapped registry cannot reach). ``/openapi.json`` stays the machine-readable source."""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#1d2733;color:#fff;padding:14px 24px}header h1{font-size:20px;margin:0}
header p{color:#9fb0c3;margin:4px 0 0 0;font-size:13px}main{padding:16px 24px;max-width:1100px}
h2{font-size:17px;margin:22px 0 8px 0;border-bottom:1px solid #d5dde5;padding-bottom:4px}
.op{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;margin:8px 0;padding:10px 14px}
.m{display:inline-block;min-width:58px;text-align:center;border-radius:4px;color:#fff;font-size:12px;
font-weight:700;padding:2px 6px;margin-right:8px}.get{background:#1e88e5}.post{background:#43a047}
.put{background:#f9a825}.delete{background:#e53935}.patch{background:#8e24aa}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}table{border-collapse:collapse;
font-size:13px;margin:6px 0}td,th{border-bottom:1px solid #e3e8ee;padding:4px 8px;text-align:left;vertical-align:top}
th{color:#5b6b7c;font-size:12px}.d{color:#5b6b7c;font-size:13px;margin:4px 0}nav a{margin-right:10px}
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def schema_text(schema: dict[str, Any]) -> str:
    """A short type with its bounds: ``integer (0..9223372036854775807)``, ``list[Target]``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"<a href='#schema-{_esc(name)}'>{_esc(name)}</a>"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(schema_text(s) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        text = f"list[{schema_text(schema.get('items', {}))}]"
    elif kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        text = f"map[string, {schema_text(schema['additionalProperties'])}]"
    else:
        text = _esc(kind)
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
                                             "minLength", "maxLength", "minItems", "maxItems") if k in schema]
    if "enum" in schema:
        bounds.append("one of " + ", ".join(json.dumps(v) for v in schema["enum"]))
    if "pattern" in schema:
        bounds.append(f"pattern {schema['pattern']}")
    return text + (f" <span class='d'>({_esc('; '.join(bounds))})</span>" if bounds else "")


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    out = [f"<div class='op' id='{_esc(op.get('operationId', method + path))}'><span class='m {method}'>"
           f"{method.upper()}</span><code>{_esc(path)}</code>"]
    if op.get("summary"):
        out.append(f" — {_esc(op['summary'])}")
    if op.get("description"):
        out.append(f"<div class='d'>{_esc(op['description'])}</div>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th></tr>" + "".join(
            f"<tr><td><code>{_esc(p['name'])}</code></td><td>{_esc(p['in'])}</td>"
            f"<td>{schema_text(p.get('schema', {}))}</td><td>{'yes' if p.get('required') else ''}</td></tr>"
            for p in params) + "</table>")
    body = op.get("requestBody", {}).get("content", {})
    for media, spec in body.items():
        out.append(f"<div class='d'>body ({_esc(media)}): {schema_text(spec.get('schema', {}))}</div>")
    responses = op.get("responses", {})
    out.append("<div class='d'>responses: " + ", ".join(
        f"<b>{_esc(code)}</b> {_esc(r.get('description', ''))}" for code, r in sorted(responses.items())) + "</div>")
    return "".join(out) + "</div>"


def _schema(name: str, schema: dict[str, Any]) -> str:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    rows = "".join(f"<tr><td><code>{_esc(k)}</code></td><td>{schema_text(v)}</td>"
                   f"<td>{'yes' if k in required else ''}</td><td>{_esc(v.get('description', ''))}</td></tr>"
                   for k, v in props.items())
    table = f"<table><tr><th>field</th><th>type</th><th>required</th><th></th></tr>{rows}</table>" if rows else ""
    return (f"<div class='op' id='schema-{_esc(name)}'><code><b>{_esc(name)}</b></code> "
            f"<span class='d'>{_esc(schema.get('description', ''))}</span>{table}</div>")


def render(spec: dict[str, Any]) -> str:
    """The whole reference page for an OpenAPI document."""
    info = spec.get("info", {})
    by_tag: dict[str, list[str]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                by_tag.setdefault((op.get("tags") or ["other"])[0], []).append(_operation(path, method, op))
    sections = "".join(f"<h2 id='tag-{_esc(tag)}'>{_esc(tag)}</h2>{''.join(ops)}" for tag, ops in sorted(by_tag.items()))
    schemas = spec.get("components", {}).get("schemas", {})
    models = "".join(_schema(n, s) for n, s in sorted(schemas.items()))
    toc = " ".join(f"<a href='#tag-{_esc(t)}'>{_esc(t)}</a>" for t in sorted(by_tag))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(info.get('title', 'API'))} — API"
            f"</title><style>{CSS}</style></head><body><header><h1>{_esc(info.get('title', 'API'))} "
            f"{_esc(info.get('version', ''))}</h1><p>API reference · machine-readable: "
            f"<a style='color:#90caf9' href='/openapi.json'>/openapi.json</a></p></header><main>"
            f"<nav>{toc} <a href='#schemas'>schemas</a></nav>{sections}<h2 id='schemas'>schemas</h2>{models}"
            f"</main></body></html>")


@router.get("/docs", response_class=HTMLResponse)
@router.get("/redoc", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(render(request.app.openapi()))
