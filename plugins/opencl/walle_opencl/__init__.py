"""Walle's OpenCL backend (pyopencl). Kernels arrive with the accelerator-backends issue."""
