"""A local registry cluster on loopback: one PostgreSQL, N stateless replicas, nginx in front.

    python -m walle_registry.cluster up --root /tmp/walle-cluster --replicas 3 --port 8700
    python -m walle_registry.cluster down --root /tmp/walle-cluster

(``scripts/cluster.sh`` and ``walle registry cluster up|down`` call this.) Everything lives under
``root``: the PostgreSQL data folder (a private cluster made with ``initdb``, run with ``pg_ctl``
as the ``postgres`` user when started as root), the replicas' shared data folder (blobs, spool),
nginx's configuration, logs and ``cluster.json`` (ports and process ids, read by ``down`` and by
the fault operations the tests use: :meth:`Cluster.kill_replica`, :meth:`Cluster.restart_postgres`,
:meth:`Cluster.reload_balancer`).

nginx balances by a consistent hash of the credential, so a device's stream, check-ins and pulls
land on the same replica and its cached credential, cursor and grants are found there (a replica
that goes away hands its share to the others, and they fill their caches once); it keeps idle upstream
connections, does not buffer server-sent events, and serves authorised blob downloads itself from
an internal location over the blob folder (:mod:`walle_registry.delivery`). The replicas share
nothing but PostgreSQL and the blob folder, so a device may reconnect to any of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from walle_registry.errors import Invalid

ACCEL_PREFIX = "/_walle_blobs"
STATE = "cluster.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """The newest Debian PostgreSQL server binaries (``apt-get install postgresql``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise Invalid("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    return found[-1].parent


def nginx_bin() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        raise Invalid("nginx not found (apt-get install nginx)")
    return path


def missing_binaries() -> str | None:
    """Why a cluster cannot start here, or None."""
    try:
        postgres_bin()
        nginx_bin()
    except Invalid as exc:
        return exc.message
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    return None


@dataclass
class ClusterState:
    root: str
    port: int  # the load balancer's
    pg_port: int
    admin_token: str
    workers: int
    replica_ports: list[int]
    pg_dir: str = ""  # under the system temp folder: the postgres user must reach it
    replica_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/walle"


class Cluster:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.root = Path(state.root)
        self._as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def up(cls, root: Path, replicas: int = 3, port: int | None = None, workers: int = 1,
           admin_token: str | None = None) -> Cluster:
        reason = missing_binaries()
        if reason:
            raise Invalid(reason)
        if replicas < 1:
            raise Invalid(f"a cluster needs at least one replica, not {replicas}")
        root = Path(root).resolve()
        if (root / STATE).exists():
            raise Invalid(f"a cluster is already described in {root / STATE}; run down first")
        root.mkdir(parents=True, exist_ok=True)
        token = admin_token or "wpt_" + os.urandom(16).hex()
        state = ClusterState(str(root), port or free_port(), free_port(), token, workers,
                             [free_port() for _ in range(replicas)], tempfile.mkdtemp(prefix="walle-pg-"))
        cluster = cls(state)
        try:
            cluster._start_postgres(init=True)
            for i in range(replicas):  # the first migrates the schema; the others find it done
                cluster.start_replica(i)
            cluster._write_nginx_conf()
            subprocess.run([nginx_bin(), "-p", str(root), "-c", str(root / "nginx.conf")], check=True,
                           capture_output=True)
            cluster.wait_healthy(f"{state.url}/healthz")
        except BaseException:
            cluster.down()
            raise
        cluster.save()
        return cluster

    @classmethod
    def load(cls, root: Path) -> Cluster:
        path = Path(root).resolve() / STATE
        try:
            return cls(ClusterState(**json.loads(path.read_text())))
        except FileNotFoundError:
            raise Invalid(f"no cluster at {path.parent} (no {STATE})") from None

    def save(self) -> None:
        (self.root / STATE).write_text(json.dumps(asdict(self.state), indent=2))

    def down(self) -> None:
        """Stop nginx, the replicas and PostgreSQL; the root folder is removed."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if (self.root / "nginx.pid").exists():
                subprocess.run([nginx_bin(), "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-s", "stop"],
                               capture_output=True, timeout=20)
        for i in range(len(self.state.replica_pids)):
            self.kill_replica(i, signal.SIGTERM)
        for pid in self.state.replica_pids:
            _wait_gone(pid, 10)
        self._pg_ctl("stop", "-m", "fast")
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.state.pg_dir, ignore_errors=True)

    # ------------------------------------------------------------------ PostgreSQL

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        pg = Path(self.state.pg_dir)
        opts = (f"-h 127.0.0.1 -p {self.state.pg_port} -k {pg} -c max_connections=500 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        return subprocess.run([*self._as_pg, str(postgres_bin() / "pg_ctl"), "-D", str(pg / "data"), "-l",
                               str(pg / "postgres.log"), "-o", opts, "-w", "-t", "60", *args],
                              capture_output=True, env={**os.environ, "LC_ALL": "C"})

    def _start_postgres(self, init: bool) -> None:
        pg = Path(self.state.pg_dir)
        if init:
            os.chmod(pg, 0o755)
            if self._as_pg:
                shutil.chown(pg, "postgres")
            made = subprocess.run([*self._as_pg, str(postgres_bin() / "initdb"), "-D", str(pg / "data"), "-U",
                                   "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"], capture_output=True,
                                  env={**os.environ, "LC_ALL": "C"})
            if made.returncode:
                raise Invalid(f"initdb failed: {made.stderr.decode(errors='replace')[-500:]}")
        done = self._pg_ctl("start")
        if done.returncode:
            raise Invalid(f"PostgreSQL did not start: {done.stderr.decode(errors='replace')[-500:]}")
        if init:
            import psycopg

            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.state.pg_port}/postgres",
                                 autocommit=True) as conn:
                conn.execute("CREATE DATABASE walle")

    def restart_postgres(self) -> None:
        """Fast shutdown and start on the same port: every replica's connections break."""
        done = self._pg_ctl("restart", "-m", "fast")
        if done.returncode:
            raise Invalid(f"PostgreSQL did not restart: {done.stderr.decode(errors='replace')[-500:]}")

    # ------------------------------------------------------------------ replicas

    def start_replica(self, i: int) -> None:
        port = self.state.replica_ports[i]
        log = (self.root / f"replica-{i}.log").open("ab")
        cmd = [sys.executable, "-m", "walle_registry", "--host", "127.0.0.1", "--port", str(port),
               "--data", str(self.root / "data"), "--db", self.state.db_url, "--admin-token",
               self.state.admin_token, "--workers", str(self.state.workers), "--accel-redirect", ACCEL_PREFIX]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()
        pids = self.state.replica_pids
        if i < len(pids):
            pids[i] = proc.pid
        else:
            pids.append(proc.pid)
        self.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        self.save()

    def kill_replica(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal replica ``i``'s process group (its workers too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.state.replica_pids[i], sig)
        if sig == signal.SIGKILL:
            _wait_gone(self.state.replica_pids[i], 10)

    def wait_healthy(self, url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise Invalid(f"{url.rsplit('/', 1)[0]} exited with {proc.returncode}; see {self.root}/replica-*.log")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise Invalid(f"{url} not healthy after {timeout:.0f} s")

    def tier_pids(self) -> dict[str, list[int]]:
        """Process ids per tier (replicas with their workers, postgres, nginx) for CPU accounting."""
        def family(root_pid: int) -> list[int]:
            kids: dict[int, list[int]] = {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
            out, todo = [], [root_pid]
            while todo:
                pid = todo.pop()
                out.append(pid)
                todo += kids.get(pid, [])
            return out

        def pid_file(path: Path) -> int | None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(path.read_text().split()[0])
            return None

        tiers: dict[str, list[int]] = {"replicas": [p for r in self.state.replica_pids for p in family(r)]}
        for name, path in (("postgres", Path(self.state.pg_dir) / "data" / "postmaster.pid"),
                           ("nginx", self.root / "nginx.pid")):
            pid = pid_file(path)
            tiers[name] = family(pid) if pid is not None else []
        return tiers

    # ------------------------------------------------------------------ nginx

    def _write_nginx_conf(self) -> None:
        tmp = self.root / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;"
                            for p in self.state.replica_ports)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the blob folder and temp paths
        blobs = self.root / "data" / "blobs"
        conf = f"""{user}worker_processes 2;
worker_rlimit_nofile 262144;
pid {self.root}/nginx.pid;
error_log {self.root}/nginx-error.log warn;
events {{ worker_connections 65536; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 512m;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    map $uri $blob_sha {{ "~/(?<sha>[0-9a-f]{{64}})$" $sha; }}
    upstream walle {{
        hash $http_authorization consistent;
{servers}
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{self.state.port} backlog=8192;
        location / {{
            proxy_pass http://walle;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;            # server-sent events go out as they are written
            proxy_request_buffering off;    # uploads stream to the replica's spool
            proxy_read_timeout 1h;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
        }}
        location {ACCEL_PREFIX}/ {{
            internal;                       # reachable only through a replica's X-Accel-Redirect
            alias {blobs}/;
            default_type application/octet-stream;
            etag off;
            add_header ETag "\\"$blob_sha\\"" always;
            add_header Cache-Control "private, max-age=31536000, immutable" always;
        }}
    }}
}}
"""
        (self.root / "nginx.conf").write_text(conf)

    def reload_balancer(self) -> None:
        """``nginx -s reload``: new workers take over, open connections finish on the old ones."""
        subprocess.run([nginx_bin(), "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-s", "reload"],
                       check=True, capture_output=True)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child
            if done:
                return
        except ChildProcessError:  # not our child: poll for existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m walle_registry.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--root", type=Path, default=Path("/tmp/walle-cluster"))
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="worker processes per replica")
    ap.add_argument("--port", type=int, default=8700, help="the load balancer's port")
    ap.add_argument("--admin-token", default=None)
    args = ap.parse_args(argv)
    try:
        if args.action == "up":
            c = Cluster.up(args.root, args.replicas, args.port, args.workers, args.admin_token)
            print(json.dumps({"url": c.state.url, "admin_token": c.state.admin_token, "db": c.state.db_url,
                              "replicas": c.state.replica_ports, "root": c.state.root}, indent=2))
        elif args.action == "down":
            Cluster.load(args.root).down()
        else:
            print(json.dumps(asdict(Cluster.load(args.root).state), indent=2))
    except Invalid as exc:
        sys.exit(f"walle cluster: {exc.message}")


if __name__ == "__main__":
    main()
