"""The console's operator pages (issue 15, "the operator's view"): tiles that count devices, not
device x task rows; device pages (list with last seen, versions, health, errors; one device);
releases and tasks; a deployment's history; ``/docs`` and ``/redoc`` with nothing fetched from
the internet; and the device pages in headless Chromium, like the deployment board's test."""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_registry_console import CHROMIUM, FLAGS
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, ThreadServer

from walle_registry import console_data
from walle_registry.client import DeviceClient
from walle_registry.models import Device

TILE = re.compile(r"<div class='tile'><b>(\d+)</b><span>([^<]+)</span></div>")


def _fleet(env: Env) -> tuple[list[DeviceClient], int]:
    """Four devices, two tasks deployed to all of them (eight device x task rows); one device
    fails the second task, one never reports on it."""
    env.publish("alpha", "1.0.0")
    env.publish("beta", "2.0.0")
    devs = [env.device(f"pg-{i}", os="linux", region="eu", model="pixel") for i in range(4)]
    a = env.deploy(task="alpha", version="1.0.0")
    b = env.deploy(task="beta", version="2.0.0", error_threshold=1.0)
    for d in devs:
        d.report("alpha", "1.0.0", "installed", a["id"])
    devs[0].report("beta", "2.0.0", "failed", b["id"], error="RuntimeError: <script>alert(1)</script> no memory")
    devs[1].report("beta", "2.0.0", "running", b["id"])
    devs[2].report("beta", "2.0.0", "installed", b["id"])
    return devs, int(b["id"])


def _signed_in(env: Env) -> None:
    assert env.http.get(f"/console?token={ADMIN}").status_code == 200


def test_tiles_count_devices_once(sqlite_env: Env) -> None:
    env = sqlite_env
    _fleet(env)
    _signed_in(env)
    tiles = {name: int(n) for n, name in TILE.findall(env.http.get("/console").text)}
    assert tiles["devices"] == 4 and tiles["online"] + tiles["offline"] == 4
    health = {k: v for k, v in tiles.items() if k not in ("devices", "online", "offline")}
    assert sum(health.values()) == 4  # every device once, however many tasks it has
    assert health == {"failing": 1, "updating": 1, "healthy": 2, "idle": 0}


def test_device_rows_for_a_large_fleet(sqlite_env: Env) -> None:
    """40,000 devices: the pages select them by subquery (no id list as query parameters, whose
    number SQLite limits) and read only the newest report per device and task."""
    with sqlite_env.registry.db.write() as s:
        s.add_all([Device(id=f"f{i}", token_hash=f"h{i}", attributes={}, registered_at=0.0, last_seen=0.0,
                          cursor=0, metrics={}) for i in range(40_000)])
    rows = console_data.devices(sqlite_env.registry, limit=1_000_000)
    assert len(rows) == 40_000 and console_data.health_counts(rows)["idle"] == 40_000


def test_device_pages(sqlite_env: Env) -> None:
    env = sqlite_env
    devs, _ = _fleet(env)
    devs[3].checkin({"battery": 0.5})
    h = env.http
    assert "Sign in" in h.get("/console/devices").text
    _signed_in(env)
    page = h.get("/console/devices").text
    for d in devs:
        assert f"<a href='/console/devices/{d.device_id}'>{d.device_id}</a>" in page
    assert page.count("class='h-failing'>failing") == 1 and page.count("class='h-healthy'>healthy") == 2
    assert "alpha 1.0.0, beta 2.0.0" in page and "online" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", page)  # last seen, readable
    one = h.get("/console/devices/pg-0").text
    assert "region</dt><dd>eu" in one and "failing" in one and "RuntimeError: &lt;script&gt;" in one
    assert "<a href='/console/deployments/2'>#2</a>" in one and "beta" in one
    assert "metric battery</dt><dd>0.5" in h.get("/console/devices/pg-3").text
    assert h.get("/console/devices/nope").status_code == 404
    for bad in ("https://example.org/", "//example.org", "/console/../v1/tokens"):  # never leaves the console
        r = h.get(f"/console?token={ADMIN}&next={bad}", follow_redirects=False)
        assert r.headers["location"] == "/console"
    r = h.get(f"/console?token={ADMIN}&next=/console/devices/pg-1", follow_redirects=False)
    assert r.headers["location"] == "/console/devices/pg-1"


def test_releases_and_deployment_history(sqlite_env: Env) -> None:
    env = sqlite_env
    _, dep_id = _fleet(env)
    env.admin.action(dep_id, "pause")
    _signed_in(env)
    rel = env.http.get("/console/releases").text
    assert "<td>alpha</td><td>1</td><td>1.0.0</td><td>1</td>" in rel
    assert "<td>beta</td><td>2.0.0</td>" in rel
    hist = env.http.get(f"/console/deployments/{dep_id}").text
    assert "all devices, 100% by hash" in hist and "paused" in hist and "created" in hist
    assert hist.index("<td>paused</td>") < hist.index("<td>created</td>")  # newest first
    assert "<a href='/console/devices/pg-0'>pg-0</a>" in hist and "no memory" in hist
    assert f"<a href='/console/deployments/{dep_id}'>" in env.http.get("/console").text
    assert env.http.get("/console/deployments/999").status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_need_nothing_from_the_internet(sqlite_env: Env, path: str) -> None:
    page = sqlite_env.http.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text), "an external resource"
    assert "cdn" not in text.lower() and "<script" not in text
    assert "<code>/v1/tokens</code>" in text and "<code>/v1/device/checkin</code>" in text
    assert "id='schema-DeploymentCreate'" in text and "maximum 100" in text  # schemas with their bounds


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_device_pages_in_headless_chromium(sqlite_env: Env, tmp_path: Path) -> None:
    env = sqlite_env
    _fleet(env)
    shot = Path(tempfile.gettempdir()) / "walle-registry-devices.png"
    shot.unlink(missing_ok=True)
    with ThreadServer(env.app) as srv:
        # the sign-in link sets the cookie and goes on to the device list
        url = f"{srv.url}/console?token={ADMIN}&next=/console/devices"
        dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=90)
        assert "<a href=\"/console/devices/pg-0\">pg-0</a>" in dom.stdout, dom.stderr[-2000:]
        assert "failing" in dom.stdout and "alpha 1.0.0, beta 2.0.0" in dom.stdout
        one = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom",
                              f"{srv.url}/console?token={ADMIN}&next=/console/devices/pg-0"],
                             capture_output=True, text=True, timeout=90)
        assert "Recent reports" in one.stdout and "no memory" in one.stdout
        subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'p3'}", "--window-size=1280,900",
                        "--hide-scrollbars", f"--screenshot={shot}", url], capture_output=True, timeout=90, cwd=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)
    assert len(data) > 20_000
