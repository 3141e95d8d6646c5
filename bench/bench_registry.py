"""Registry load benchmark on loopback: many devices hold server-sent-event streams, one
deployment targets them all, and every device pulls the manifest and the bundle's blobs, then
reports ``installed``. Afterwards devices check in as fast as the server takes them.

Reports: time from ``deploy create`` to 50/90/99% of devices notified and to 50/90/99% having
pulled everything, check-ins/s with p50/p99 latency, whether any status report was lost, and the
CPU seconds the server and the client spent in each phase (they share the machine).

    python bench/bench_registry.py --devices 2000          # default
    python bench/bench_registry.py --devices 10000 --db postgresql://...
    python bench/bench_registry.py --devices 10000 --replicas 3 [--kill-one]   # the cluster

``--replicas N`` runs the cluster of :mod:`walle_registry.cluster` instead (a private PostgreSQL,
N replicas, nginx in front; blobs sent by nginx after X-Accel-Redirect); ``--kill-one`` SIGKILLs
one replica once half the devices have pulled: its devices' streams reconnect through nginx with
``Last-Event-ID`` and their requests are retried, and every status report must still count.

The server runs in a child process (``python -m walle_registry``: uvicorn with uvloop/httptools
when installed), the simulated devices in this one: one asyncio loop (uvloop when installed),
streams and requests over raw sockets with a small HTTP/1.1 keep-alive client, so the client
costs far less CPU per request than the server it measures. Each simulated device really holds
its own stream, receives its notice, pulls the manifest and every blob, and reports; its requests
share a pool of ``--pool`` keep-alive connections. RLIMIT_NOFILE is raised for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from walle_core.task import generate_key, pack, save_keypair, sign_bundle
from walle_registry.cluster import Cluster

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


class HttpError(RuntimeError):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection (requests in sequence)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, token: str, body: bytes | None = None,
                      ctype: str = "application/json") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])  # "HTTP/1.1 200 ..."
        low = raw.lower()  # only three headers matter: found in the bytes, no header dict per response
        at = low.find(b"\r\ncontent-length:")
        if at >= 0:
            end = low.index(b"\r\n", at + 17)
            data = await self.reader.readexactly(int(low[at + 17:end]))
        elif b"\r\ntransfer-encoding: chunked" in low:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(p[:-2] for p in parts)
        else:
            data = b""
        if b"\r\nconnection: close" in low:
            self.close()
        return status, data


class Client:
    """A bounded pool of keep-alive connections; ``call`` waits for a free one."""

    def __init__(self, port: int, size: int, retries: int = 1) -> None:
        self.retries, self.retried = retries, 0
        self.idle: asyncio.LifoQueue[Conn] = asyncio.LifoQueue()
        for _ in range(size):
            self.idle.put_nowait(Conn(port))

    async def call(self, method: str, path: str, token: str, body: Any = None, raw: bytes | None = None,
                   ok: tuple[int, ...] = (200, 201)) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        for attempt in range(self.retries + 1):
            conn = await self.idle.get()
            try:
                status, out = await conn.request(method, path, token, data,
                                                 "application/octet-stream" if raw is not None else "application/json")
            except (ConnectionError, asyncio.IncompleteReadError):
                conn.close()
                status, out = 0, b"connection lost"
            finally:
                self.idle.put_nowait(conn)
            if status not in (0, 502, 503, 504) or attempt == self.retries:
                break
            self.retried += 1  # a replica went away mid-request: retry (device calls are idempotent)
            await asyncio.sleep(min(2.0, 0.05 * 2 ** attempt))
        if status not in ok:
            raise HttpError(f"{method} {path}: {status} {out[:200]!r}")
        return json.loads(out) if out and out[:1] in (b"{", b"[") else out

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


class Stream:
    """One device's SSE connection over a raw socket; when the server side goes away it
    reconnects (after a random back-off) from the last event id it saw, as a device does."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.last_seq = 0
        self.reconnects = 0
        self.closed = False

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        writer.write((f"GET /v1/device/stream?cursor={self.last_seq} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"stream refused: {head[:100]!r}")
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _reopen(self) -> None:
        while not self.closed:
            await asyncio.sleep(random.uniform(0.2, 2.0))  # spread the reconnect storm
            try:
                await self.open()
                self.reconnects += 1
                return
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                continue

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # the body is chunked: only the event payload lines matter here
        with_data = b"\ndata:"
        buf = b""
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                if not self.closed:
                    await self._reopen()
                return
            buf += chunk
            while (i := buf.find(with_data)) >= 0:
                j = buf.find(b"\n", i + 1)
                if j < 0:
                    break
                notice = json.loads(buf[i + len(with_data):j])
                notice["_read_at"] = time.perf_counter()  # on the device's socket (its coroutine may run later)
                self.last_seq = max(self.last_seq, int(notice["seq"]))
                self.notices.put_nowait(notice)
                buf = buf[j:]
            if len(buf) > 4096 and with_data not in buf:
                buf = buf[-64:]

    def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()


def cpu_of(pid: int) -> float:
    """user+system CPU seconds of a process (all threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a killed replica is gone
            out[pid] = cpu_of(pid)
    return out


class Phase:
    """Wall time and CPU seconds of each server tier (one process, or the cluster's replicas,
    postgres and nginx) and of the client over a phase."""

    def __init__(self, tiers: Callable[[], dict[str, list[int]]]) -> None:
        self.tiers = tiers  # read again at the end: PostgreSQL forks a backend per new connection
        self.t, self.c = time.perf_counter(), time.process_time()
        self.s = {name: server_cpu(pids) for name, pids in tiers().items()}

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t
        out = {"wall_s": round(wall, 2)}
        for name, pids in self.tiers().items():
            start, end = self.s.get(name, {}), server_cpu(pids)
            # a process that started during the phase counts whole; one that died keeps its start
            used = sum(end.get(pid, t) - t for pid, t in start.items()) + sum(
                c for pid, c in end.items() if pid not in start)
            out["server_cpu_s" if name == "server" else f"{name}_cpu_s"] = round(used, 2)
        out["client_cpu_s"] = round(time.process_time() - self.c, 2)
        return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="walle-bench-"))
    server: subprocess.Popen[bytes] | None = None
    cluster: Cluster | None = None
    if args.replicas:
        cluster = Cluster.up(tmp / "cluster", args.replicas, admin_token=ADMIN)
        port = cluster.state.port
        health_ports = list(cluster.state.replica_ports)
        tiers = cluster.tier_pids
    else:
        port = free_port()
        cmd = [sys.executable, "-m", "walle_registry", "--port", str(port), "--data", str(tmp / "data"),
               "--admin-token", ADMIN]
        if args.db:
            cmd += ["--db", args.db]
        server = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        health_ports = [port]
        pid = server.pid

        def tiers() -> dict[str, list[int]]:
            return {"server": [pid]}
    http = Client(port, args.pool, retries=8 if cluster else 1)
    ctl = Client(port, 2, retries=8 if cluster else 1)  # operator calls do not queue behind device traffic
    streams: list[Stream] = []
    phases: dict[str, dict[str, float]] = {}
    killed: list[int] = []

    async def connected_streams() -> int:
        total = 0
        for p in health_ports:
            probe = Client(p, 1)
            try:
                total += int((await probe.call("GET", "/healthz", ADMIN))["streams"])
            except (OSError, HttpError, asyncio.IncompleteReadError):
                pass
            finally:
                probe.close()
        return total

    try:
        for _ in range(300):
            try:
                await ctl.call("GET", "/healthz", ADMIN)
                break
            except (OSError, HttpError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)
        bundle, pub = make_bundle(tmp)
        await ctl.call("POST", "/v1/keys", ADMIN, {"pem": pub})
        rel = await ctl.call("POST", "/v1/tasks", ADMIN, raw=bundle.read_bytes())

        async def register(i: int) -> tuple[str, str]:
            c = await http.call("POST", "/v1/devices/register", ADMIN, {
                "device_id": f"bench-{i:05d}", "attributes": {"os": "linux", "region": "eu"}})
            return str(c["device_id"]), str(c["token"])

        ph = Phase(tiers)
        creds = await asyncio.gather(*(register(i) for i in range(args.devices)))
        phases["register"] = ph.done()
        print(f"registered {len(creds)} devices: {phases['register']}", flush=True)
        ph = Phase(tiers)
        streams = [Stream(port, tok) for _, tok in creds]
        for i in range(0, len(streams), 500):
            await asyncio.gather(*(s.open() for s in streams[i:i + 500]))
        for _ in range(600):
            if await connected_streams() >= len(streams):
                break
            await asyncio.sleep(0.1)
        phases["connect"] = ph.done()
        print(f"opened {len(streams)} streams: {phases['connect']}", flush=True)

        notified: list[float] = []
        pulled: list[float] = []
        lost: list[str] = []
        files = [f["sha256"] for f in rel["files"]]

        async def device(did: str, tok: str, stream: Stream, t0: float) -> None:
            notice = await asyncio.wait_for(stream.notices.get(), args.timeout)
            notified.append(notice["_read_at"] - t0)
            if len(notified) == args.devices:  # the fan-out's CPU (and the pulls done meanwhile)
                phases["fanout"] = {**fan.done(), "pulled": len(pulled)}
            if args.pull_jitter:
                await asyncio.sleep(random.uniform(0, args.pull_jitter))  # no stampede on the blob tier
            await http.call("GET", f"/v1/releases/{notice['task']}/{notice['version']}/manifest", tok)
            for sha in files:
                await http.call("GET", f"/v1/blobs/{sha}", tok)
            pulled.append(time.perf_counter() - t0)
            if cluster is not None and args.kill_one and not killed and len(pulled) >= args.devices // 2:
                killed.append(cluster.state.replica_pids[0])
                os.killpg(killed[0], signal.SIGKILL)  # mid-rollout, without warning
                print(f"killed replica 0 after {len(pulled)} pulls", flush=True)
            r = await http.call("POST", "/v1/device/reports", tok, {
                "task": "bench", "version": "1.0.0", "status": "installed", "seq": 1,
                "deployment_id": notice["deployment"]})
            if not r.get("accepted"):
                lost.append(did)

        ph = Phase(tiers)
        fan = Phase(tiers)
        t0 = time.perf_counter()
        dep_task = asyncio.create_task(ctl.call("POST", "/v1/deployments", ADMIN, {
            "task": "bench", "version": "1.0.0", "min_sample": 1, "success_threshold": 1.0}))
        created: list[float] = []  # the fan-out's transaction committed (its notices go out after)
        dep_task.add_done_callback(lambda _t: created.append(time.perf_counter() - t0))
        results = await asyncio.gather(*(device(d, tok, s, t0) for (d, tok), s in zip(creds, streams, strict=True)),
                                       return_exceptions=True)
        dep = await dep_task
        phases["rollout"] = ph.done()
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        status = await ctl.call("GET", f"/v1/deployments/{dep['id']}", ADMIN)
        print(f"rollout: {phases['rollout']}", flush=True)

        # check-ins: every device in turn, as fast as the server answers
        lat: list[float] = []
        done = limited = 0
        stop_at = time.perf_counter() + args.checkin_seconds
        workers = min(args.pool, len(creds))

        async def checker(worker: int) -> None:
            nonlocal done, limited
            i = worker
            body = {"metrics": {"battery": 0.5}}
            while time.perf_counter() < stop_at:
                _, tok = creds[i % len(creds)]
                t = time.perf_counter()
                try:
                    await http.call("POST", "/v1/device/checkin", tok, body)
                except HttpError as exc:  # a small fleet checks in faster than a device may: not counted
                    if " 429 " not in str(exc):
                        raise
                    limited += 1
                    await asyncio.sleep(0.05)
                else:
                    lat.append(time.perf_counter() - t)
                    done += 1
                i += workers

        ph = Phase(tiers)
        await asyncio.gather(*(checker(w) for w in range(workers)))
        phases["checkin"] = ph.done()
        elapsed = phases["checkin"]["wall_s"]
        installed = status["counts"].get("installed", 0)
        return {
            "devices": args.devices, "db": "postgresql" if args.db or cluster else "sqlite", "pool": args.pool,
            "replicas": args.replicas or 1, "load_balancer": "nginx" if cluster else None,
            "killed_replica": bool(killed), "stream_reconnects": sum(st.reconnects for st in streams),
            "retried_requests": http.retried, "every_device_finished": len(pulled) == args.devices,
            "notified": len(notified), "pulled": len(pulled), "errors": errors[:5], "n_errors": len(errors),
            "deploy_create_s": round(created[0], 3) if created else None,
            "notify_s": {p: round(pct(notified, p), 3) for p in (50, 90, 99)},
            "pull_s": {p: round(pct(pulled, p), 3) for p in (50, 90, 99)},
            "installed_counted_by_server": installed,
            "lost_status_reports": len(lost) + (len(pulled) - installed),
            "deployment_state": status["state"],
            "checkins_per_s": round(done / elapsed, 1), "checkins_rate_limited": limited,
            "checkin_latency_ms": {"p50": round(statistics.median(lat) * 1000, 1) if lat else None,
                                   "p99": round(pct(lat, 99) * 1000, 1)},
            "phases": phases,
        }
    finally:
        for st in streams:
            st.close()
        http.close()
        ctl.close()
        if cluster is not None:
            cluster.down()
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--db", default=None, help="PostgreSQL URL (default: SQLite in a temp folder)")
    ap.add_argument("--pool", type=int, default=512,
                    help="keep-alive connections the simulated devices share for their requests (a real device "
                         "has its own; 64 capped a 10,000-device rollout by request latency, not server work)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--checkin-seconds", type=float, default=10.0)
    ap.add_argument("--replicas", type=int, default=0,
                    help="run a cluster (PostgreSQL, this many replicas, nginx) instead of one server")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (bench/fleet_sim.py reads it)")
    ap.add_argument("--kill-one", action="store_true", help="SIGKILL one replica once half the devices pulled")
    ap.add_argument("--pull-jitter", type=float, default=0.0, metavar="S",
                    help="each device waits uniform(0, S) seconds after its notice before pulling")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.kill_one and args.replicas < 2:
        ap.error("--kill-one needs --replicas 2 or more")
    need = 2 * args.devices + args.pool + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
