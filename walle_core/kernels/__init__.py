"""One kernel description for every GPU-style backend: specs (data), portable bodies, and
renderers to OpenCL C, GLSL compute (SPIR-V) and Metal Shading Language. No device code here."""

from walle_core.kernels.dialects import DIALECTS, render
from walle_core.kernels.lower import Unsupported, algorithms_for, lower_op, offered, supported
from walle_core.kernels.program import PlannedProgram, plan_program
from walle_core.kernels.spec import BufferDecl, Caps, KernelSpec, Launch, LocalArray

__all__ = ["DIALECTS", "BufferDecl", "Caps", "KernelSpec", "Launch", "LocalArray", "PlannedProgram",
           "Unsupported", "algorithms_for", "lower_op", "offered", "plan_program", "render", "supported"]
