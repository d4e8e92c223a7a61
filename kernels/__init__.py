"""Triton kernels and their host launchers, installed as ``engine.kernels``.

One module per op family (norm: LayerNorm and RMSNorm; gelu: GELU, bias + GELU, GeGLU; attention; decode). Every
module exposes ``aot_specs()``: the kernel configurations its launchers can pick, which ``engine.kernels.aot``
compiles ahead of time for Hopper (sm_90) so a CPU-only CI proves they build and fit shared memory. Importing this
package compiles nothing.
"""
