"""Everything the GPU-style backends share: one kernel description (specs as data, portable
bodies, renderers to OpenCL C, GLSL compute and Metal Shading Language), the lowering of every op
kind (``lower/``), the device interface a plugin implements (``device.py``) and the one run loop
over it (``executor.py``). No driver is imported here."""

from walle_core.kernels.dialects import DIALECTS, render
from walle_core.kernels.lower import Unsupported, algorithms_for, lower_op, offered, supported
from walle_core.kernels.program import PlannedProgram, plan_program
from walle_core.kernels.spec import BufferDecl, Caps, KernelSpec, Launch, LocalArray

__all__ = ["DIALECTS", "BufferDecl", "Caps", "KernelSpec", "Launch", "LocalArray", "PlannedProgram",
           "Unsupported", "algorithms_for", "lower_op", "offered", "plan_program", "render", "supported"]
