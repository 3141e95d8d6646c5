"""A simulated heterogeneous device for the search's tests (no GPU needed).

``sim_backends(load_profile("h200"))`` gives backend classes (a GPU-like and a CPU-like device
sharing one virtual clock) to register with ``walle_core.plugins.Registry.register``; see
``tests/test_search_sim.py`` for the fixture that does so.
"""

from tests.simdevice.backend import SimBackend, SimExecutable, VirtualClock, sim_backends
from tests.simdevice.profile import Device, KernelClass, Link, Profile, load_profile

__all__ = ["Device", "KernelClass", "Link", "Profile", "SimBackend", "SimExecutable", "VirtualClock",
           "load_profile", "sim_backends"]
