"""Walle's CPU backend: C SIMD kernels through cffi. Kernels arrive with the CPU-backend issue."""
