"""Walle's Vulkan backend (the ``vulkan`` cffi binding). Kernels come with the accelerator issue."""
