"""The web console: rendered deployments, device counts and errors; the buttons; and a real
headless-Chromium screenshot (skipped, with the reason, when Debian's ``chromium`` is missing)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_registry_fixtures import *  # noqa: F403
from test_registry_fixtures import ADMIN, Env, ThreadServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _rollout(env: Env) -> int:
    env.publish("console-task", "1.0.0")
    env.publish("console-task", "1.1.0", model=b"new")
    devs = [env.device(f"con-{i:02d}", os="linux") for i in range(24)]
    env.deploy(task="console-task", version="1.0.0")
    dep = env.deploy(task="console-task", version="1.1.0", stages=[25, 100], min_sample=20, error_threshold=0.5)
    reached = [d for d in devs if env.target(d, "console-task") == "1.1.0" and d.device_id]
    reached = [d for d in reached if any(t["deployment"] == dep["id"] for t in d.targets())]
    for i, d in enumerate(reached):
        d.report("console-task", "1.1.0", "failed" if i == 0 else "installed",
                 error="RuntimeError: model too large" if i == 0 else "")
    return int(dep["id"])


def test_console_renders_and_buttons_work(sqlite_env: Env) -> None:
    env = sqlite_env
    dep_id = _rollout(env)
    h = env.http
    assert "Sign in" in h.get("/console").text
    assert "invalid" in h.get("/console?token=wpt_wrong").text
    page = h.get(f"/console?token={ADMIN}")  # sets the cookie and redirects
    assert page.status_code == 200 and f"#{dep_id} console-task 1.1.0" in page.text
    assert "RuntimeError: model too large" in page.text and "stage 2 · 100%" in page.text
    assert "devices</span>" in page.text
    csrf = re.search(r"name='csrf' value='([0-9a-f]+)'", page.text)
    assert csrf is not None
    bad = h.post(f"/console/deployments/{dep_id}/pause", data={"csrf": "nope"})
    assert bad.status_code == 403
    assert env.admin.status(dep_id)["state"] == "running"
    r = h.post(f"/console/deployments/{dep_id}/pause", data={"csrf": csrf.group(1)})
    assert r.status_code == 200 and env.admin.status(dep_id)["state"] == "paused"
    h.post(f"/console/deployments/{dep_id}/resume", data={"csrf": csrf.group(1)})
    assert env.admin.status(dep_id)["state"] == "running"
    h.post(f"/console/deployments/{dep_id}/rollback", data={"csrf": csrf.group(1)})
    assert env.admin.status(dep_id)["state"] == "rolled_back"
    h.cookies.clear()
    assert "Sign in" in h.post(f"/console/deployments/{dep_id}/pause", data={"csrf": "x"}).text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_console_screenshot_in_headless_chromium(sqlite_env: Env, tmp_path: Path) -> None:
    env = sqlite_env
    dep_id = _rollout(env)
    shot = Path(tempfile.gettempdir()) / "walle-registry-console.png"
    shot.unlink(missing_ok=True)
    with ThreadServer(env.app) as srv:
        url = f"{srv.url}/console?token={ADMIN}"
        profile = tmp_path / "profile"
        dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=90)
        assert f"#{dep_id} console-task 1.1.0" in dom.stdout, dom.stderr[-2000:]
        assert "RuntimeError: model too large" in dom.stdout
        subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                        "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={shot}", url],
                       capture_output=True, timeout=90, cwd=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000  # a rendered page, not a blank canvas
