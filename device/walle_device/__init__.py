"""The device agent: runs the registry's tasks on a device.

* :class:`DeviceAgent` (``agent.py``): registration, push connection, verified atomic installs with
  rollback, triggers in the pipeline, task runs in the VM, upload tunnel, status reports.
* :class:`PluginInstaller` (``plugins.py``): signed backend plugin wheels, verified, unpacked
  atomically into the device's folder and made visible to the engine's backend registry.
* :class:`RegistryLink` (``link.py``): the registry's device API over HTTP (httpx, asyncio).

The agent uses the public APIs of ``walle_core.task``, ``walle_core.vm``, ``walle_core.pipeline``
and ``walle_core.load``; it speaks to the registry only over HTTP. Its own dependency (httpx) is
the ``device`` extra; the engine needs none of it. Simulated devices and shoppers are in
``walle_demo``.
"""

from __future__ import annotations

from walle_device.agent import AgentConfig, AgentStats, DeviceAgent, RunRecord, plan_backends
from walle_device.installer import Installer
from walle_device.link import LinkDown, LinkError, PluginTarget, RegistryLink, Rejected, Target
from walle_device.plugins import PluginInstaller
from walle_device.state import AgentState, Installed, InstalledPlugin

__all__ = [
    "AgentConfig",
    "AgentState",
    "AgentStats",
    "DeviceAgent",
    "Installed",
    "InstalledPlugin",
    "Installer",
    "LinkDown",
    "LinkError",
    "PluginInstaller",
    "PluginTarget",
    "RegistryLink",
    "Rejected",
    "RunRecord",
    "Target",
    "plan_backends",
]
