"""Triton kernels and their host launchers, installed as ``engine.kernels``.

norm.py (LayerNorm, RMSNorm) and gelu.py (GELU, bias + GELU, GeGLU): one module per op family; attention/: the
attention family (forward, decode; see its ``__init__``); launch.py: direct launches of compiled kernels.
``engine.kernels.aot`` compiles every configuration the launchers can pick ahead of time for Hopper (sm_90), as the
launchers specialise it, and ``engine.kernels.audit`` summarises the compiled code (registers, spills, tensor-core and
copy instructions), so a CPU-only CI proves the kernels build, fit shared memory and keep the instruction mix the GPU
needs. Importing this package compiles nothing.
"""
