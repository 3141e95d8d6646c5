"""How many idle device streams one registry replica holds, and what they cost.

    python bench/bench_streams.py --streams 20000

Starts one replica (``python -m walle_registry``, SQLite) with a short keep-alive interval, registers
the devices, opens one server-sent-event stream per device over raw sockets (bench_registry's
client), then idles: reports the replica's resident memory per stream, its CPU use per second
while idle (keep-alive comments included), the time to open them all, and whether a notice still
reaches every stream afterwards (a deployment to all devices).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_registry import ADMIN, Client, HttpError, Stream, cpu_of, free_port, make_bundle


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="walle-streams-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "walle_registry", "--port", str(port), "--data",
                               str(tmp / "data"), "--admin-token", ADMIN])
    http, streams = Client(port, 32), []
    try:
        for _ in range(300):
            try:
                await http.call("GET", "/healthz", ADMIN)
                break
            except (OSError, HttpError):
                await asyncio.sleep(0.1)
        bundle, pub = make_bundle(tmp)
        await http.call("POST", "/v1/keys", ADMIN, {"pem": pub})
        await http.call("POST", "/v1/tasks", ADMIN, raw=bundle.read_bytes())
        rss0 = rss_mib(server.pid)
        creds = await asyncio.gather(*(http.call("POST", "/v1/devices/register", ADMIN, {
            "device_id": f"idle-{i:06d}", "attributes": {"os": "linux"}}) for i in range(args.streams)))
        t = time.perf_counter()
        streams = [Stream(port, c["token"]) for c in creds]
        for i in range(0, len(streams), 500):
            await asyncio.gather(*(s.open() for s in streams[i:i + 500]))
        while (await http.call("GET", "/healthz", ADMIN))["streams"] < len(streams):
            await asyncio.sleep(0.2)
        opened = time.perf_counter() - t
        await asyncio.sleep(2)
        rss1, cpu0, t0 = rss_mib(server.pid), cpu_of(server.pid), time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_cpu = (cpu_of(server.pid) - cpu0) / (time.perf_counter() - t0)
        t = time.perf_counter()
        await http.call("POST", "/v1/deployments", ADMIN, {"task": "bench", "version": "1.0.0"})
        got = await asyncio.gather(*(asyncio.wait_for(s.notices.get(), 300) for s in streams),
                                   return_exceptions=True)
        return {"streams": len(streams), "held": (await http.call("GET", "/healthz", ADMIN))["streams"],
                "open_all_s": round(opened, 1), "rss_mib_before": round(rss0, 1), "rss_mib_held": round(rss1, 1),
                "kib_per_stream": round((rss1 - rss0) * 1024 / max(1, len(streams)), 1),
                "idle_cpu_cores": round(idle_cpu, 3), "keepalive_s": 15,
                "notified": sum(1 for g in got if isinstance(g, dict)),
                "notify_all_s": round(time.perf_counter() - t, 1)}
    finally:
        for s in streams:
            s.close()
        http.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=20_000)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds to measure idle CPU over")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.streams + 512 > hard:
        ap.error(f"{args.streams} streams need more file descriptors than this machine's per-process "
                 f"limit ({hard}) leaves to the client and to the replica")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.streams + 512)), hard))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
