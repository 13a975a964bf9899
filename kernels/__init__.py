"""Triton kernels, imported as ``ted_sglang.kernels``."""
