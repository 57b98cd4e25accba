"""Shared memory on the server: the registry of regions that clients register, and
system (POSIX) regions themselves (registry.py), CUDA regions opened from IPC handles
(cuda.py), and tensors read from and written into regions (tensors.py).

May import: icow.protocol, icow.runtime (and the compiled base: icow._wire, icow._proto).
"""
