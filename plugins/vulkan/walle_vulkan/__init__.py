"""Walle's Vulkan backend (the ``vulkan`` cffi binding). Kernels arrive with the accelerator issue."""
