"""Walle's Metal backend (PyObjC, macOS only). Kernels arrive with the accelerator issue."""
