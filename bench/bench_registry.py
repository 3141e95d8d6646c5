"""Registry load benchmark on loopback: many devices hold server-sent-event streams, one
deployment targets them all, and every device pulls the manifest and the bundle's blobs, then
reports ``installed``. Afterwards devices check in as fast as the server takes them.

Reports: time from ``deploy create`` to 50/90/99% of devices notified and to 50/90/99% having
pulled everything, check-ins/s with p50/p99 latency, and whether any status report was lost.

    python bench/bench_registry.py --devices 2000          # default
    python bench/bench_registry.py --devices 10000 --db postgresql://...

The server runs in a child process (``python -m walle_registry``), clients in this one (asyncio;
streams are raw sockets, other calls go through httpx with a bounded pool).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from walle_core.task import generate_key, pack, save_keypair, sign_bundle

ADMIN = "wpt_bench-admin-token"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_bundle(tmp: Path) -> tuple[Path, str]:
    key = generate_key()
    _, pub = save_keypair(key, tmp / "bench")
    src = tmp / "src"
    src.mkdir()
    (src / "task.json").write_text(json.dumps({"name": "bench", "version": "1.0.0", "entry": "main.py",
                                               "model": "model.bin"}))
    (src / "main.py").write_text("def run(x):\n    return x\n")
    (src / "model.bin").write_bytes(os.urandom(64 << 10))
    out = tmp / "bench.walle"
    pack(src, out)
    sign_bundle(out, key)
    return out, pub.read_text()


class Stream:
    """One device's SSE connection over a raw socket."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        writer.write((f"GET /v1/device/stream?cursor=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream refused: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                buf = line[5:].strip()
            elif line.strip() == b"" and buf:
                self.notices.put_nowait(json.loads(buf))
                buf = b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="walle-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "walle_registry", "--port", str(port), "--data", str(tmp / "data"),
           "--admin-token", ADMIN]
    if args.db:
        cmd += ["--db", args.db]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    limits = httpx.Limits(max_connections=args.pool, max_keepalive_connections=args.pool)
    http = httpx.AsyncClient(base_url=url, limits=limits, timeout=120)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    streams: list[Stream] = []
    try:
        for _ in range(300):
            try:
                if (await http.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        bundle, pub = make_bundle(tmp)
        (await http.post("/v1/keys", json={"pem": pub}, headers=admin)).raise_for_status()
        rel = (await http.post("/v1/tasks", content=bundle.read_bytes(), headers=admin)).json()
        sem = asyncio.Semaphore(args.pool)

        async def register(i: int) -> tuple[str, str]:
            async with sem:
                r = await http.post("/v1/devices/register", headers=admin, json={
                    "device_id": f"bench-{i:05d}", "attributes": {"os": "linux", "region": "eu"}})
                r.raise_for_status()
                c = r.json()
                return c["device_id"], c["token"]

        t = time.perf_counter()
        creds = await asyncio.gather(*(register(i) for i in range(args.devices)))
        reg_s = time.perf_counter() - t
        print(f"registered {len(creds)} devices in {reg_s:.1f}s", flush=True)
        t = time.perf_counter()
        streams = [Stream(port, tok) for _, tok in creds]
        for i in range(0, len(streams), 200):
            await asyncio.gather(*(s.open() for s in streams[i:i + 200]))
        print(f"opened {len(streams)} streams in {time.perf_counter() - t:.1f}s", flush=True)
        for _ in range(600):
            if (await http.get("/healthz")).json()["streams"] >= len(streams):
                break
            await asyncio.sleep(0.1)

        notified: list[float] = []
        pulled: list[float] = []
        lost: list[str] = []
        files = [f["sha256"] for f in rel["files"]]

        async def device(did: str, tok: str, stream: Stream, t0: float) -> None:
            notice = await asyncio.wait_for(stream.notices.get(), args.timeout)
            notified.append(time.perf_counter() - t0)
            h = {"Authorization": f"Bearer {tok}"}
            async with sem:
                m = await http.get(f"/v1/releases/{notice['task']}/{notice['version']}/manifest", headers=h)
                m.raise_for_status()
                for sha in files:
                    b = await http.get(f"/v1/blobs/{sha}", headers=h)
                    b.raise_for_status()
                pulled.append(time.perf_counter() - t0)
                r = await http.post("/v1/device/reports", headers=h, json={
                    "task": "bench", "version": "1.0.0", "status": "installed", "seq": 1,
                    "deployment_id": notice["deployment"]})
                if r.status_code != 200:
                    lost.append(did)

        t0 = time.perf_counter()
        dep_task = asyncio.create_task(http.post("/v1/deployments", headers=admin, json={
            "task": "bench", "version": "1.0.0", "min_sample": 1, "success_threshold": 1.0}))
        results = await asyncio.gather(*(device(d, tok, s, t0) for (d, tok), s in zip(creds, streams, strict=True)),
                                       return_exceptions=True)
        dep = (await dep_task).json()
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        status = (await http.get(f"/v1/deployments/{dep['id']}", headers=admin)).json()

        # check-ins: every device once per round, as fast as the server answers
        lat: list[float] = []
        done = 0
        stop_at = time.perf_counter() + args.checkin_seconds

        async def checker(worker: int) -> None:
            nonlocal done
            i = worker
            while time.perf_counter() < stop_at:
                _, tok = creds[i % len(creds)]
                s = time.perf_counter()
                r = await http.post("/v1/device/checkin", json={"metrics": {"battery": 0.5}},
                                    headers={"Authorization": f"Bearer {tok}"})
                if r.status_code == 200:
                    done += 1
                    lat.append(time.perf_counter() - s)
                i += args.pool

        t = time.perf_counter()
        await asyncio.gather(*(checker(w) for w in range(args.pool)))
        elapsed = time.perf_counter() - t
        return {
            "devices": args.devices, "db": "postgresql" if args.db else "sqlite",
            "register_s": round(reg_s, 2),
            "notified": len(notified), "pulled": len(pulled), "errors": errors[:5], "n_errors": len(errors),
            "notify_s": {p: round(pct(notified, p), 3) for p in (50, 90, 99)},
            "pull_s": {p: round(pct(pulled, p), 3) for p in (50, 90, 99)},
            "installed_counted_by_server": status["counts"].get("installed", 0),
            "lost_status_reports": len(lost) + (len(pulled) - status["counts"].get("installed", 0)),
            "deployment_state": status["state"],
            "checkins_per_s": round(done / elapsed, 1),
            "checkin_latency_ms": {"p50": round(statistics.median(lat) * 1000, 1) if lat else None,
                                   "p99": round(pct(lat, 99) * 1000, 1)},
        }
    finally:
        for s in streams:
            s.close()
        await http.aclose()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--db", default=None, help="PostgreSQL URL (default: SQLite in a temp folder)")
    ap.add_argument("--pool", type=int, default=64, help="concurrent HTTP requests from the clients")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--checkin-seconds", type=float, default=10.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.devices + args.pool + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
