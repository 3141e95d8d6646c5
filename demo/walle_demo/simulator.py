"""Many simulated devices in one process: asyncio for the network, one shared engine.

Each :class:`SimDevice` is a real :class:`~walle_device.DeviceAgent` (own folder, own
pipeline store, own credentials and push connection) fed by a :class:`~walle_demo.behaviour.Shopper`
whose sessions arrive with random pauses. All agents share one ``httpx.AsyncClient`` connection
pool and the process's engine (backends load once; the search's choices are cached on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from walle_core.task import KeyStore
from walle_demo.behaviour import Catalogue, DeviceProfile, Shopper, seed_of
from walle_device import AgentConfig, DeviceAgent, RunRecord


@dataclass
class FleetConfig:
    registry_url: str
    enroll_token: str
    root: Path
    keys: KeyStore
    devices: int = 10
    seed: int = 7
    id_prefix: str = "sim"
    sessions: int = 0  # sessions per device before its user goes quiet; 0 = no limit
    pause_s: tuple[float, float] = (0.5, 2.0)  # wall time between two sessions of one user
    backend: str = "auto"
    upload_interval_s: float = 0.5
    heartbeat_s: float = 15.0
    backoff_max_s: float = 3.0
    pull_jitter_s: float = 0.5  # each device pulls a pushed release after uniform(0, this)


@dataclass
class SimDevice:
    profile: DeviceProfile
    shopper: Shopper
    agent: DeviceAgent
    sessions_sent: int = 0
    task: asyncio.Task[None] | None = None


class Fleet:
    """N agents plus their users. ``async with Fleet(cfg) as fleet: ...``."""

    def __init__(self, cfg: FleetConfig, on_run: Callable[[str, RunRecord], None] | None = None) -> None:
        self.cfg = cfg
        self.on_run = on_run
        self.catalogue = Catalogue.generate(cfg.seed)
        self.http: httpx.AsyncClient | None = None
        self.devices: dict[str, SimDevice] = {}
        self.started_at = 0.0

    def device_ids(self) -> list[str]:
        return [f"{self.cfg.id_prefix}-{i:04d}" for i in range(self.cfg.devices)]

    def profile(self, device_id: str) -> DeviceProfile:
        return DeviceProfile.generate(device_id, self.cfg.seed)

    def shopper(self, profile: DeviceProfile) -> Shopper:
        return Shopper(f"user-{profile.device_id}", profile.region, seed_of(self.cfg.seed, profile.device_id),
                       self.catalogue)

    def _agent(self, profile: DeviceProfile) -> DeviceAgent:
        cfg = AgentConfig(root=self.cfg.root / profile.device_id, registry_url=self.cfg.registry_url,
                          keys=self.cfg.keys, enroll_token=self.cfg.enroll_token,
                          attributes=profile.attributes(), device_id=profile.device_id, backend=self.cfg.backend,
                          upload_interval_s=self.cfg.upload_interval_s, heartbeat_s=self.cfg.heartbeat_s,
                          backoff_max_s=self.cfg.backoff_max_s, pull_jitter_s=self.cfg.pull_jitter_s)
        did = profile.device_id
        hook = (lambda r: self.on_run(did, r)) if self.on_run is not None else None  # type: ignore[misc]
        return DeviceAgent(cfg, self.http, on_run=hook)

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        n = self.cfg.devices
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=2 * n + 20,
                                                          max_keepalive_connections=2 * n + 20))
        self.started_at = time.time()
        for did in self.device_ids():
            await self.start_device(did)

    async def start_device(self, device_id: str) -> SimDevice:
        """(Re)start one device from its folder: same credentials, store and installed tasks."""
        profile = self.profile(device_id)
        agent = self._agent(profile)
        await agent.start()
        dev = SimDevice(profile, self.shopper(profile), agent)
        self.devices[device_id] = dev
        dev.task = asyncio.create_task(self._user(dev), name=f"user:{device_id}")
        return dev

    async def kill_device(self, device_id: str) -> None:
        """Stop a device abruptly: no flush, no goodbye (its files are what a crash leaves)."""
        await self._remove(device_id, flush=False)

    async def _remove(self, device_id: str, *, flush: bool) -> None:
        dev = self.devices.pop(device_id)
        if dev.task is not None:
            dev.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dev.task
        await dev.agent.stop(flush=flush)

    async def _user(self, dev: SimDevice) -> None:
        """The app on the device: sessions of events, handed to the agent as they happen."""
        rng = random.Random(seed_of(self.cfg.seed, dev.profile.device_id, "pauses"))
        await asyncio.sleep(rng.uniform(0, self.cfg.pause_s[1]))
        while not self.cfg.sessions or dev.sessions_sent < self.cfg.sessions:
            events = dev.shopper.session()
            await dev.agent.ingest(events)
            dev.sessions_sent += 1
            await asyncio.sleep(rng.uniform(*self.cfg.pause_s))

    async def users_done(self, timeout_s: float) -> bool:
        """Wait until every user has sent its sessions (``sessions`` > 0)."""
        tasks = [d.task for d in self.devices.values() if d.task is not None]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every device has uploaded its results and sent its reports."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = 0
            for dev in self.devices.values():
                left += await dev.agent.flush_uploads() + len(dev.agent.state.pending_reports)
            if not left:
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self) -> None:
        for did in list(self.devices):
            await self._remove(did, flush=True)
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    def summary(self) -> dict[str, Any]:
        agents = [d.agent for d in self.devices.values()]
        return {
            "devices": len(agents),
            "connected": sum(a.connected for a in agents),
            "events": sum(a.stats.events for a in agents),
            "runs_ok": sum(a.stats.runs_ok for a in agents),
            "runs_failed": sum(a.stats.runs_failed for a in agents),
            "uploaded": sum(a.stats.uploaded for a in agents),
            "installed": sum(bool(a.active()) for a in agents),
        }
