"""GLSL compute -> SPIR-V with ``glslc`` (cached on disk by source digest) -> compute pipelines."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from walle_core.errors import BackendUnavailableError, WalleError
from walle_core.kernels.binaries import BinaryCache


class ShaderCompileError(WalleError):
    """glslc rejected a rendered shader (a bug in a kernel description)."""


def compile_glsl(source: str, target: str = "vulkan1.1") -> bytes:
    """GLSL -> SPIR-V with glslc, cached under ``cache_dir()/vulkan/spv`` by source digest."""
    cache, ident = BinaryCache("vulkan/spv", ".spv"), target + "\n" + source
    hit = cache.get(ident)
    if hit is not None:
        return hit
    glslc = shutil.which("glslc")
    if glslc is None:
        raise BackendUnavailableError("glslc not found: install glslc (Debian package glslc / shaderc)")
    proc = subprocess.run([glslc, "-fshader-stage=compute", f"--target-env={target}", "-O", "-", "-o", "-"],
                          input=source.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise ShaderCompileError(proc.stderr.decode(errors="replace")[:2000])
    cache.put(ident, proc.stdout)
    return proc.stdout


@dataclass
class Pipeline:
    pipeline: Any
    layout: Any
    set_layout: Any


def make_pipeline(vk: Any, device: Any, spirv: bytes, bindings: int) -> Pipeline:
    """A compute pipeline whose one descriptor set holds ``bindings`` storage buffers."""
    binds = [vk.VkDescriptorSetLayoutBinding(binding=i, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                             descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
             for i in range(bindings)]
    set_layout = vk.vkCreateDescriptorSetLayout(
        device, vk.VkDescriptorSetLayoutCreateInfo(bindingCount=bindings, pBindings=binds), None)
    layout = vk.vkCreatePipelineLayout(
        device, vk.VkPipelineLayoutCreateInfo(setLayoutCount=1, pSetLayouts=[set_layout]), None)
    module = vk.vkCreateShaderModule(device, vk.VkShaderModuleCreateInfo(codeSize=len(spirv), pCode=spirv), None)
    stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main")
    pipe = vk.vkCreateComputePipelines(device, vk.VK_NULL_HANDLE, 1,
                                       [vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None)[0]
    vk.vkDestroyShaderModule(device, module, None)
    return Pipeline(pipe, layout, set_layout)
