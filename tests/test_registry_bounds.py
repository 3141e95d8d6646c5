"""Bounded inputs: every integer, list and string a request can carry is bounded in the OpenAPI
description (so at the schema, before any handler runs), and inputs that used to be accepted and
then broke later work (an oversized check-in cursor, non-finite numbers, deep JSON) are refused
with a 4xx."""

from __future__ import annotations

import gzip
import json
from typing import Any

from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import Env

# Free-form JSON on purpose: a task output is whatever the task returns (bounded by the batch's
# byte limit and a nesting depth, checked in ResultItem).
FREE_FORM = {"POST /v1/results: body.items[].value", "POST /v1/results: body.items[].*"}


def _unbounded(spec: dict[str, Any], node: Any, where: str, out: set[str]) -> None:
    """Collect the places under ``node`` where a request value has no bound."""
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        _unbounded(spec, spec["components"]["schemas"][name], where, out)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            _unbounded(spec, sub, where, out)
    kind = node.get("type")
    low = "minimum" in node or "exclusiveMinimum" in node
    high = "maximum" in node or "exclusiveMaximum" in node
    if kind in ("integer", "number") and not (low and high):
        out.add(f"{where} ({kind} without a range)")
    elif kind == "string" and "maxLength" not in node and "enum" not in node and "const" not in node \
            and node.get("format") != "binary":
        out.add(f"{where} (string without a size)")
    elif kind == "array":
        if "maxItems" not in node:
            out.add(f"{where} (list without a length)")
        _unbounded(spec, node.get("items"), f"{where}[]", out)
    elif kind == "object" or "properties" in node:
        for name, sub in node.get("properties", {}).items():
            _unbounded(spec, sub, f"{where}.{name}", out)
        extra = node.get("additionalProperties")
        if extra is True:
            out.add(f"{where}.*")
        elif isinstance(extra, dict):
            _unbounded(spec, extra, f"{where}.*", out)
    elif not kind and not any(k in node for k in ("anyOf", "oneOf", "allOf", "enum", "const")):
        out.add(where)  # no type at all: any JSON value


def test_every_request_field_is_bounded_at_the_schema(sqlite_env: Env) -> None:
    spec = sqlite_env.http.get("/openapi.json").json()
    found: set[str] = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for param in op.get("parameters", []):
                _unbounded(spec, param["schema"], f"{where}: {param['in']} {param['name']}", found)
            for content in op.get("requestBody", {}).get("content", {}).values():
                _unbounded(spec, content["schema"], f"{where}: body", found)
    assert found == FREE_FORM


def test_a_huge_checkin_cursor_is_refused_and_heartbeats_keep_being_saved(sqlite_env: Env) -> None:
    env = sqlite_env
    env.publish("hb", "1.0.0")
    dev = env.device("hb-1")
    for body in ({"cursor": 10**30}, {"cursor": -1}, {"metrics": {"temp": float("inf")}},
                 {"metrics": {"nested": {"a": 1}}}, {"metrics": {f"k{i}": i for i in range(65)}}):
        r = env.http.post("/v1/device/checkin", content=json.dumps(body), headers={
            **dev.headers, "Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
    assert dev.checkin({"temp": 40.5, "backend": "cpu", "runs": 3})["cursor"] == 0
    env.registry.devices.flush_activity()  # the write-behind batch is writable
    row = next(d for d in env.admin.devices() if d["id"] == "hb-1")
    assert row["online"]
    assert env.registry.devices.get("hb-1").metrics == {"temp": 40.5, "backend": "cpu", "runs": 3}


def test_results_that_could_not_be_stored_or_served_are_refused(sqlite_env: Env) -> None:
    env = sqlite_env
    env.publish("out", "1.0.0")
    dev = env.device("out-1")
    env.deploy(task="out", version="1.0.0")
    def nested(depth: int) -> str:
        return "[" * depth + "]" * depth

    for raw in ('{"items": [{"seq": 1, "value": NaN}]}', '{"items": [{"seq": 1, "ts": 1e400}]}',
                '{"items": [{"seq": 1, "ts": -Infinity}]}', f'{{"items": [{{"seq": 1, "value": {nested(40)}}}]}}',
                f'{{"items": [{{"seq": 1, "value": {nested(100_000)}}}]}}',
                f'{{"items": [{{"seq": 1, "name": "{"n" * 129}"}}]}}', '{"items": [{"seq": 4611686018427387904}]}'):
        for body, enc in ((raw.encode(), None), (gzip.compress(raw.encode()), "gzip")):
            headers = {**dev.headers, "Content-Type": "application/json", **({"Content-Encoding": enc} if enc else {})}
            r = env.http.post("/v1/results?task=out&version=1.0.0", content=body, headers=headers)
            assert r.status_code == 422, (raw[:80], r.status_code, r.text[:200])
    ok = {"items": [{"seq": 1, "value": {"p": [1, 2, {"q": None}]}, "ts": 1.5, "fid": "f1"}]}
    assert dev.upload_results(ok["items"], task="out", version="1.0.0") == {"accepted": 1, "duplicates": 0}
    rows = env.admin.results("out")
    assert [(r["seq"], r["value"]) for r in rows] == [(1, {"p": [1, 2, {"q": None}]})]


def test_out_of_range_ids_and_oversized_paths_are_4xx(sqlite_env: Env) -> None:
    env = sqlite_env
    h = env.admin.headers
    for method, path in [("GET", "/v1/deployments/99999999999999999999"), ("POST", "/v1/deployments/0/pause"),
                         ("DELETE", "/v1/tokens/4294967296"), ("GET", "/v1/tasks/" + "t" * 65),
                         ("GET", "/v1/releases/" + "t" * 65 + "/1.0.0/manifest"), ("GET", "/v1/blobs/" + "a" * 65)]:
        r = env.http.request(method, path, headers=h)
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
