"""The device agent: the registry's tasks, installed and fired by this device's event pipeline.

Lifecycle (one asyncio task each, all restartable):

* **push** — keeps ``/v1/device/stream`` open; reconnects with jittered exponential back-off.
  Every notice (and every reconnect) marks the desired state dirty; a notice's pull starts after
  ``uniform(0, pull_jitter_s)`` so a stage's devices do not stampede the registry.
* **reconcile** — reads the full desired state (``/v1/device/targets``) and converges: pulls the
  signed manifest, verifies it, downloads the bundle (resumed with ``Range`` after a cut),
  verifies and installs it atomically, then swaps the task's trigger in the pipeline. The
  previous version stays installed, so a rollback is a local switch with no download.
* **runs** — a fired trigger runs the task in the VM (thread mode by default) on the backend the
  engine's search picks; the result is stored with the match and leaves through the upload
  tunnel. A crashing task is contained by the VM and reported as ``failed``.
* **reports** — status changes per task version (``downloading``, then ``running`` after the
  first good run or ``failed``/``error``) are queued in the durable state with a sequence number
  and sent until acknowledged; heart-beat check-ins carry metrics and acknowledge the cursor.

Nothing is lost across a registry outage or a device restart: events, results and the outbox
live in the pipeline's SQLite store, reports and installed versions in the agent's state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import walle_core
from walle_core import WalleError
from walle_core.pipeline import BatchReport, Match, Pipeline, UploadError, compile_spec
from walle_core.task import BundleError, KeyStore, Manifest
from walle_core.vm import TaskResult, TaskSpec, run_once
from walle_device.installer import Installer
from walle_device.link import Corrupt, LinkDown, PluginTarget, RegistryLink, Rejected, Target
from walle_device.plugins import PluginInstaller
from walle_device.state import AgentState, Installed, InstalledPlugin

log = logging.getLogger("walle.device")


@dataclass
class AgentConfig:
    root: Path
    registry_url: str
    keys: KeyStore
    enroll_token: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    device_id: str | None = None
    backend: str = "auto"
    vm_mode: str = "thread"
    upload_interval_s: float = 0.5
    heartbeat_s: float = 15.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    # A pushed notice starts the pull after uniform(0, pull_jitter_s): a rollout reaches a whole
    # stage at once, and the spread keeps its devices from hitting the registry in the same second.
    pull_jitter_s: float = 1.0
    plugins: bool = True  # pull the backend plugins the registry targets at this device


@dataclass
class RunRecord:
    task: str
    version: str
    status: str
    backend: str
    run_ms: float
    fired_at: float  # wall clock (s) when the trigger fired


@dataclass
class AgentStats:
    events: int = 0
    duplicates: int = 0
    bad_events: int = 0
    runs_ok: int = 0
    runs_failed: int = 0
    installs: int = 0
    plugin_installs: int = 0
    rollbacks: int = 0
    downloads_resumed: int = 0
    connects: int = 0
    disconnects: int = 0
    uploaded: int = 0
    reports_sent: int = 0
    last_error: str = ""
    runs: list[RunRecord] = field(default_factory=list)
    pull_waits: list[float] = field(default_factory=list)  # jitter before each pushed pull (s)

    def metrics(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("runs", "last_error", "pull_waits")}
        recent = self.runs[-50:]
        if recent:
            out["run_ms_mean"] = round(sum(r.run_ms for r in recent) / len(recent), 3)
            out["backend"] = recent[-1].backend
        return out


_BACKEND_CACHE: dict[str, str] = {}  # model sha256 + backend request -> what the search picked
_BACKEND_LOCK = threading.Lock()


def plan_backends(model_path: Path, backend: str, cache_key: str = "") -> str:
    """The backend(s) the engine's plan uses for a model (one sample input, batch 1), e.g. ``cpu``."""
    key = f"{cache_key}:{backend}" if cache_key else ""
    import numpy as np

    with _BACKEND_LOCK:  # one probe at a time: many devices install the same model at once
        if key and key in _BACKEND_CACHE:
            return _BACKEND_CACHE[key]
        model = walle_core.load(model_path, backend=backend)
        feeds = {}
        for name, type_str in model.inputs.items():
            dtype, _, dims = type_str.partition("[")
            shape = [int(d) if d.isdigit() else 1 for d in dims.rstrip("]").split(",") if d]
            feeds[name] = np.zeros(shape, dtype=np.dtype(dtype))
        node = model.plan_for(feeds)
        names = sorted({step.backend for step in node.stage.steps}) or model.backend_names[:1]
        picked = "+".join(names)
        if key:
            _BACKEND_CACHE[key] = picked
    return picked


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class DeviceAgent:
    """One device. ``http`` may be shared by many agents in one process (the simulator)."""

    def __init__(self, config: AgentConfig, http: httpx.AsyncClient | None = None,
                 on_run: Callable[[RunRecord], None] | None = None) -> None:
        self.cfg = config
        self.root = Path(config.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "agent.json"
        self.state = AgentState.load(self.state_path)
        self.installer = Installer(self.root, config.keys)
        self.plugins = PluginInstaller(self.root, config.keys)
        self.link = RegistryLink(config.registry_url, http, token=self.state.token)
        self.stats = AgentStats()
        self.on_run = on_run
        self.pipeline: Pipeline | None = None
        self.connected = False
        self._plock = threading.Lock()  # the pipeline (and its SQLite connection) is used by one thread at a time
        self._slock = threading.Lock()  # the agent state, touched from the loop and from task runs
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._reconcile_lock = asyncio.Lock()
        self._register_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq_hint = 0
        self._backend_of: dict[str, str] = {}  # task -> backend label of its active version
        self._rejected_wheels: set[str] = set()  # sha256 + signature of wheels that failed verification
        self._stopping = False
        self._pushed = False  # a notice (not a reconnect) woke the reconcile loop

    @property
    def device_id(self) -> str:
        return self.state.device_id

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open the pipeline with the installed tasks' triggers (replaying its store) and start
        the background loops. Works with the registry down."""
        self._loop = asyncio.get_running_loop()
        for name, plugin in self.state.plugins.items():  # installed plugins are importable before any task runs
            if plugin.version is not None and self.plugins.has(name, plugin.version):
                self.plugins.activate(name, plugin.version)
        await asyncio.to_thread(self._open_pipeline)
        loops = (self._push_loop, self._reconcile_loop, self._report_loop, self._upload_loop,
                 self._heartbeat_loop)
        self._tasks = [asyncio.create_task(loop(), name=f"{self.cfg.device_id or 'device'}:{loop.__name__}")
                       for loop in loops]
        if self.state.pending_reports:
            self._report_wake.set()

    async def stop(self, flush: bool = True) -> None:
        """Stop the loops; with ``flush`` try once to upload results and send reports first."""
        self._stopping = True
        if flush:
            with contextlib.suppress(LinkDown, Rejected, UploadError, OSError):
                await self.flush_uploads()
                await self._send_reports()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await self.link.close()
        if self.pipeline is not None:
            await asyncio.to_thread(self._locked, self.pipeline.close)
            self.pipeline = None

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._plock:
            return fn(*args)

    def _save(self) -> None:
        with self._slock:
            self.state.save(self.state_path)

    def _open_pipeline(self) -> None:
        triggers: list[dict[str, Any]] = []
        functions: dict[str, Callable[[Match], Mapping[str, Any] | None]] = {}
        for task, inst in self.state.tasks.items():
            if inst.version is None or not self.installer.has(task, inst.version):
                continue
            manifest = self.installer.manifest(task, inst.version)
            spec = self._trigger_spec(manifest)
            if spec is not None:
                triggers.append(spec)
                functions[spec["id"]] = self._user_function(manifest, inst.after_seq)
        with self._plock:
            self.pipeline = Pipeline(self.root / "pipeline", triggers=triggers, user_functions=functions,
                                     device=self.state.device_id or self.cfg.device_id)

    # ------------------------------------------------------------------ events in

    async def ingest(self, events: Iterable[Mapping[str, Any]]) -> BatchReport:
        """Hand app events to the pipeline (durable when this returns); fired triggers run tasks."""
        batch = list(events)
        report: BatchReport = await asyncio.to_thread(self._locked, self._ingest, batch)
        return report

    def _ingest(self, batch: list[Mapping[str, Any]]) -> BatchReport:
        assert self.pipeline is not None
        report = self.pipeline.ingest_many(batch)
        self.stats.events += report.accepted
        self.stats.duplicates += report.duplicates
        self.stats.bad_events += len(report.errors)
        return report

    async def advance_time(self, now_ms: int) -> None:
        assert self.pipeline is not None
        await asyncio.to_thread(self._locked, self.pipeline.advance_time, now_ms)

    # ------------------------------------------------------------------ tasks

    @staticmethod
    def _trigger_id(manifest: Manifest) -> str:
        return f"{manifest.name}/{manifest.trigger.get('id', 'trigger')}"

    def _trigger_spec(self, manifest: Manifest) -> dict[str, Any] | None:
        if not manifest.trigger:
            return None
        return {**manifest.trigger, "id": self._trigger_id(manifest)}

    def _user_function(self, manifest: Manifest, after_seq: int) -> Callable[[Match], Mapping[str, Any] | None]:
        folder = self.installer.folder(manifest.name, manifest.version)
        spec = TaskSpec.from_manifest(manifest, folder, backend=self.cfg.backend)
        task, version = manifest.name, manifest.version

        def run(match: Match) -> Mapping[str, Any] | None:
            base = {"task": task, "version": version}
            if match.events[0].seq <= after_seq:
                return {**base, "status": "skipped", "reason": "the visit began before this version was installed"}
            fired = time.time()
            result = run_once(spec, [e.to_json() for e in match.events], self.cfg.vm_mode)
            backend = self._backend_of.get(task, self.cfg.backend)
            self._ran(task, version, result, backend, fired)
            out: dict[str, Any] = {**base, "status": result.status, "backend": backend, "fired_at": fired,
                                   "run_ms": round(result.wall_s * 1000, 3), "outputs": _jsonable(result.outputs)}
            if result.error:
                out["error"] = result.error.splitlines()[0][:500]
            return out

        return run

    def _ran(self, task: str, version: str, result: TaskResult, backend: str, fired: float) -> None:
        record = RunRecord(task, version, result.status, backend, result.wall_s * 1000, fired)
        with self._slock:
            self.stats.runs.append(record)
            if len(self.stats.runs) > 1000:
                del self.stats.runs[:500]
            inst = self.state.tasks.get(task)
            deployment = inst.deployment if inst is not None else None
            if result.ok:
                self.stats.runs_ok += 1
                queued = None
                if self.state.reported.get(f"{task}@{version}") not in ("running", "failed"):
                    queued = self.state.next_report(task, version, "running", deployment,
                                                    metrics={"backend": backend, "run_ms": round(record.run_ms, 3)})
            else:
                self.stats.runs_failed += 1
                self.stats.last_error = (result.error or result.status).splitlines()[0][:300]
                queued = self.state.next_report(task, version, "failed", deployment, error=self.stats.last_error,
                                                metrics={"backend": backend, "status": result.status})
            if queued is not None:
                self.state.save(self.state_path)
        if queued is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._report_wake.set)
        if self.on_run is not None:
            self.on_run(record)

    def _queue_report(self, task: str, version: str, status: str, deployment: int | None, error: str = "",
                      metrics: dict[str, Any] | None = None) -> None:
        if error:
            self.stats.last_error = error[:300]
        with self._slock:
            queued = self.state.next_report(task, version, status, deployment, error, metrics) is not None
            if queued:
                self.state.save(self.state_path)
        if queued and self._loop is not None:  # may be called from a pipeline thread
            self._loop.call_soon_threadsafe(self._report_wake.set)

    # ------------------------------------------------------------------ desired state

    async def reconcile(self) -> None:
        """Converge on the registry's desired state for every task (raises LinkDown to retry)."""
        async with self._reconcile_lock:
            await self._ensure_registered()
            if self.cfg.plugins:  # first: a task may need a backend a plugin brings
                await self._sync_plugins()
            desired = {t.task: t for t in await self.link.targets()}
            for target in desired.values():
                inst = self.state.tasks.get(target.task)
                if inst is not None and inst.version == target.version:
                    if inst.deployment != target.deployment:
                        with self._slock:
                            inst.deployment = target.deployment
                        self._save()
                    continue
                await self._switch(target)
            for task, inst in list(self.state.tasks.items()):
                if task not in desired and inst.version is not None:
                    await self._remove(task)

    async def _switch(self, target: Target) -> None:
        task, version = target.task, target.version
        t0 = time.perf_counter()
        if not self.installer.has(task, version):
            self._queue_report(task, version, "downloading", target.deployment)
            try:
                signed = await self.link.manifest(task, version)
                manifest = self.installer.verify_manifest(signed.raw, signed.key_id, signed.signature, target.digest)
                manifest.check_compatible(walle_core.__version__)
                path = self.installer.download_path(task, version)
                if path.with_name(path.name + ".part").exists():
                    self.stats.downloads_resumed += 1
                await self.link.download_bundle(task, version, signed.bundle_sha256, path)
                manifest = await asyncio.to_thread(self.installer.install, path, manifest)
            except (BundleError, WalleError) as exc:  # bad signature, digest, manifest: never run it
                log.warning("device %s: %s %s rejected: %s", self.device_id, task, version, exc)
                self._queue_report(task, version, "error", target.deployment, error=f"{type(exc).__name__}: {exc}")
                return
            except Rejected as exc:
                self._queue_report(task, version, "error", target.deployment, error=str(exc))
                return
        manifest = self.installer.manifest(task, version)
        if manifest.model:
            model_sha = next((f.sha256 for f in manifest.files if f.path == manifest.model), "")
            try:
                self._backend_of[task] = await asyncio.to_thread(
                    plan_backends, self.installer.folder(task, version) / manifest.model, self.cfg.backend, model_sha)
            except WalleError as exc:
                self._queue_report(task, version, "error", target.deployment, error=f"model: {exc}")
                return
        try:
            await asyncio.to_thread(self._locked, self._activate, manifest, target)
        except WalleError as exc:  # e.g. a trigger this device cannot compile: report, keep the old one
            log.warning("device %s: %s %s not activated: %s", self.device_id, task, version, exc)
            self._queue_report(task, version, "error", target.deployment, error=f"{type(exc).__name__}: {exc}")
            return
        self.stats.installs += 1
        if not manifest.trigger:  # nothing will ever fire it: installed is all there is to report
            self._queue_report(task, version, "installed", target.deployment)
        log.info("device %s: %s %s active in %.0f ms", self.device_id, task, version,
                 (time.perf_counter() - t0) * 1000)

    # ------------------------------------------------------------------ plugins

    async def _sync_plugins(self) -> None:
        desired = {p.name: p for p in await self.link.plugins()}
        for plugin in desired.values():
            inst = self.state.plugins.get(plugin.name)
            if inst is not None and inst.version == plugin.version:
                if inst.deployment != plugin.deployment:
                    with self._slock:
                        inst.deployment = plugin.deployment
                    self._save()
                    await self._plugin_status(plugin.name, plugin.version, "installed", plugin.deployment)
                continue
            if plugin.sha256 + plugin.signature.hex() not in self._rejected_wheels:  # reported once is enough
                await self._install_plugin(plugin)
        for name, inst in list(self.state.plugins.items()):
            if name not in desired and inst.version is not None:
                self.plugins.activate(name, None)
                with self._slock:
                    self.state.plugins[name] = InstalledPlugin(None, "", None, inst.version)
                    self.state.save(self.state_path)
                await self._plugin_status(name, inst.version, "removed", inst.deployment)

    async def _install_plugin(self, plugin: PluginTarget) -> None:
        """Download (resumed), verify and unpack a plugin wheel, then make it the active version;
        the version it replaces stays installed for a rollback. A wheel that fails verification is
        reported as ``error`` and never installed."""
        name, version = plugin.name, plugin.version
        if not self.plugins.has(name, version):
            await self._plugin_status(name, version, "downloading", plugin.deployment)
            path = self.plugins.download_path(plugin.filename)
            if path.with_name(path.name + ".part").exists():
                self.stats.downloads_resumed += 1
            try:
                await self.link.download_plugin(plugin, path)
                await asyncio.to_thread(self.plugins.install, path, name, version, plugin.sha256, plugin.key_id,
                                        plugin.signature)
            except (BundleError, OSError, ValueError) as exc:  # bad signature, digest, RECORD, zip
                path.unlink(missing_ok=True)
                self._rejected_wheels.add(plugin.sha256 + plugin.signature.hex())
                log.warning("device %s: plugin %s %s rejected: %s", self.device_id, name, version, exc)
                await self._plugin_status(name, version, "error", plugin.deployment, f"{type(exc).__name__}: {exc}")
                return
            except (Corrupt, Rejected) as exc:
                await self._plugin_status(name, version, "error", plugin.deployment, str(exc))
                if isinstance(exc, Corrupt):
                    raise  # the download is retried with back-off
                return
        old = self.state.plugins.get(name)
        previous = old.previous if old is not None else None
        if old is not None and old.version not in (None, version):
            previous = old.version
        if old is not None and old.previous == version:
            self.stats.rollbacks += 1
        self.plugins.activate(name, version)
        with self._slock:
            self.state.plugins[name] = InstalledPlugin(version, plugin.sha256, plugin.deployment, previous)
            self.state.save(self.state_path)
        self.plugins.prune(name, {version, *([previous] if previous else [])})
        self.stats.plugin_installs += 1
        await self._plugin_status(name, version, "installed", plugin.deployment)
        log.info("device %s: plugin %s %s active", self.device_id, name, version)

    async def _plugin_status(self, name: str, version: str, status: str, deployment: int | None,
                             error: str = "") -> None:
        if error:
            self.stats.last_error = error[:300]
        body: dict[str, Any] = {"name": name, "version": version, "status": status, "error": error[:4000]}
        if deployment is not None:
            body["deployment"] = deployment
        await self.link.plugin_status(body)

    def active_plugins(self) -> dict[str, str]:
        """plugin -> active version."""
        return {n: p.version for n, p in self.state.plugins.items() if p.version is not None}

    # ------------------------------------------------------------------ pipeline

    def _last_seq(self) -> int:
        assert self.pipeline is not None
        for ev in self.pipeline.store.events(after_seq=self._seq_hint):
            self._seq_hint = max(self._seq_hint, ev.seq)
        return self._seq_hint

    def _activate(self, manifest: Manifest, target: Target) -> None:
        """Swap the task's trigger to ``manifest``'s version (pipeline lock held)."""
        assert self.pipeline is not None
        task = manifest.name
        old = self.state.tasks.get(task)
        spec = self._trigger_spec(manifest)
        if spec is not None:
            compile_spec(spec)  # refuse a trigger this device cannot run before dropping the old one
        if old is not None and old.version is not None:
            self.pipeline.remove_trigger(self._trigger_id(self.installer.manifest(task, old.version)))
        after = self._last_seq()
        if spec is not None:
            self.pipeline.add_trigger(spec, self._user_function(manifest, after))
        previous = old.previous if old is not None else None
        if old is not None and old.version not in (None, manifest.version):
            previous = old.version
        if old is not None and old.previous == manifest.version:
            self.stats.rollbacks += 1
        with self._slock:
            self.state.tasks[task] = Installed(manifest.version, manifest.digest(), target.deployment, previous,
                                               after)
            self.state.save(self.state_path)
        self.installer.prune(task, {manifest.version, *([previous] if previous else [])})

    async def _remove(self, task: str) -> None:
        def drop() -> None:
            assert self.pipeline is not None
            inst = self.state.tasks[task]
            if inst.version is None:
                return
            if self.installer.has(task, inst.version):
                self.pipeline.remove_trigger(self._trigger_id(self.installer.manifest(task, inst.version)))
            with self._slock:
                self.state.tasks[task] = Installed(None, "", None, inst.version, inst.after_seq)
                self.state.save(self.state_path)
            self._queue_report(task, inst.version, "removed", inst.deployment)

        await asyncio.to_thread(self._locked, drop)

    async def _ensure_registered(self) -> None:
        if self.state.token:
            return
        async with self._register_lock:  # the push and reconcile loops both enrol: only one may (re-keying)
            if not self.state.token:
                await self._register()

    async def _register(self) -> None:
        device_id, token = await self.link.register(self.cfg.enroll_token, self.cfg.device_id, self.cfg.attributes)
        with self._slock:
            self.state.device_id, self.state.token = device_id, token
            self.state.save(self.state_path)
        self.link.token = token
        if self.pipeline is not None:
            self.pipeline.device = device_id

    # ------------------------------------------------------------------ loops

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**attempt)), at least a few ms."""
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2 ** min(attempt, 16)))
        return max(0.01, random.uniform(0, cap))

    async def _push_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._ensure_registered()
                async for notice in self.link.notices(self.state.cursor):
                    if notice.get("action") == "connected":
                        attempt = 0
                        self.connected = True
                        self.stats.connects += 1
                    else:
                        if int(notice.get("seq", 0)) > self.state.cursor:
                            with self._slock:
                                self.state.cursor = int(notice["seq"])
                        self._pushed = True  # the reconcile it wakes waits its jitter first
                    self._dirty.set()
            except LinkDown as exc:
                self.stats.last_error = str(exc)[:300]
            except Rejected as exc:
                self.stats.last_error = str(exc)[:300]
                if exc.status == 401 and self.cfg.enroll_token:  # the registry forgot us: enrol again
                    with self._slock:
                        self.state.token = ""
            if self.connected:
                self.stats.disconnects += 1
            self.connected = False
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    async def _reconcile_loop(self) -> None:
        attempt = 0
        while True:
            await self._dirty.wait()
            if self._pushed and self.cfg.pull_jitter_s > 0:
                self._pushed = False
                wait = random.uniform(0, self.cfg.pull_jitter_s)
                self.stats.pull_waits.append(round(wait, 4))
                del self.stats.pull_waits[:-100]
                await asyncio.sleep(wait)  # notices arriving meanwhile join this reconcile
            self._pushed = False
            self._dirty.clear()
            try:
                await self.reconcile()
                attempt = 0
                self._save()
                with contextlib.suppress(LinkDown, Rejected):
                    await self.link.checkin(self.state.cursor, self.stats.metrics())
            except (LinkDown, Rejected) as exc:
                self.stats.last_error = str(exc)[:300]
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                self._dirty.set()

    async def _send_reports(self) -> None:
        while self.state.pending_reports and self.state.token:
            body = self.state.pending_reports[0]
            try:
                await self.link.report(body)
            except Rejected as exc:  # e.g. a deployment that no longer exists: drop it, do not block
                log.warning("device %s: report %s dropped: %s", self.device_id, body, exc)
            with self._slock:
                if self.state.pending_reports and self.state.pending_reports[0] is body:
                    self.state.pending_reports.pop(0)
                self.state.save(self.state_path)
            self.stats.reports_sent += 1

    async def _report_loop(self) -> None:
        attempt = 0
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            try:
                await self._send_reports()
                attempt = 0
            except LinkDown:
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                self._report_wake.set()

    async def flush_uploads(self) -> int:
        """Send the pipeline's outbox through the upload tunnel; rows stay until acknowledged.
        Returns how many rows are still waiting."""
        if self.pipeline is None or not self.state.token:
            return await self.pending_uploads()
        uploader = self.pipeline.uploader(self.link.upload_url(), max_attempts=1, timeout_s=self.link.timeout_s,
                                          item_fields=_result_fields)

        def flush() -> tuple[int, int]:
            if self.pipeline is None:
                return 0, 0
            sent = uploader.flush() if self.pipeline.store.outbox_size() else 0
            return sent, self.pipeline.store.outbox_size()

        sent, left = await asyncio.to_thread(self._locked, flush)
        self.stats.uploaded += sent
        return int(left)

    async def pending_uploads(self) -> int:
        def size() -> int:
            return self.pipeline.store.outbox_size() if self.pipeline is not None else 0

        return int(await asyncio.to_thread(self._locked, size))

    async def _upload_loop(self) -> None:
        attempt = 0
        while True:
            left = 1
            try:
                left = await self.flush_uploads()
            except UploadError as exc:  # a rejected batch went to the dead-letter table
                self.stats.last_error = str(exc)[:300]
            if left and self.state.token:
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
            else:
                attempt = 0
                await asyncio.sleep(self.cfg.upload_interval_s)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s * random.uniform(0.8, 1.2))
            if self.cfg.plugins:
                self._dirty.set()  # plugin deployments are not pushed: look for them at every heart-beat
            if self.state.token:
                with contextlib.suppress(LinkDown, Rejected):
                    await self.link.checkin(self.state.cursor, self.stats.metrics())

    # ------------------------------------------------------------------ views

    def active(self) -> dict[str, str]:
        """task -> active version."""
        return {t: i.version for t, i in self.state.tasks.items() if i.version is not None}


def _result_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """Task and version of an uploaded result (the registry files results under them)."""
    value = item.get("value")
    user = value.get("user") if isinstance(value, Mapping) else None
    if isinstance(user, Mapping) and user.get("task"):
        return {"task": str(user["task"]), "version": str(user.get("version", ""))}
    return {}
