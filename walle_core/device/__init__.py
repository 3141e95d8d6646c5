"""The device side of Walle: the agent that runs registry tasks on a device, and a simulator.

* :class:`DeviceAgent` (``agent.py``): registration, push connection, verified atomic installs with
  rollback, triggers in the pipeline, task runs in the VM, upload tunnel, status reports.
* :class:`PluginInstaller` (``plugins.py``): signed backend plugin wheels, verified, unpacked
  atomically into the device's folder and made visible to the engine's backend registry.
* :class:`RegistryLink` (``link.py``): the registry's device API over HTTP (httpx, asyncio).
* :class:`Fleet` (``simulator.py``): many agents in one process fed by simulated shoppers
  (``behaviour.py``: device profiles, sessions of page views, clicks, exposures and scrolls).

The agent uses the public APIs of ``walle_core.task``, ``walle_core.vm``, ``walle_core.pipeline``
and ``walle_core.load``; it speaks to the registry only over HTTP.
"""

from __future__ import annotations

from walle_core.device.agent import AgentConfig, AgentStats, DeviceAgent, RunRecord, plan_backends
from walle_core.device.behaviour import (
    Catalogue,
    DeviceProfile,
    ItemView,
    Shopper,
    item_view_trigger,
    seed_of,
)
from walle_core.device.installer import Installer
from walle_core.device.link import LinkDown, LinkError, PluginTarget, RegistryLink, Rejected, Target
from walle_core.device.plugins import PluginInstaller
from walle_core.device.simulator import Fleet, FleetConfig, SimDevice
from walle_core.device.state import AgentState, Installed, InstalledPlugin

__all__ = [
    "AgentConfig",
    "AgentState",
    "AgentStats",
    "Catalogue",
    "DeviceAgent",
    "DeviceProfile",
    "Fleet",
    "FleetConfig",
    "Installed",
    "InstalledPlugin",
    "Installer",
    "ItemView",
    "LinkDown",
    "LinkError",
    "PluginInstaller",
    "PluginTarget",
    "RegistryLink",
    "Rejected",
    "RunRecord",
    "Shopper",
    "SimDevice",
    "Target",
    "item_view_trigger",
    "plan_backends",
    "seed_of",
]
