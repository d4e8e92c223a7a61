"""Ahead-of-time compilation of every kernel configuration for Hopper (sm_90), on a machine without a GPU.

Each kernel module exposes ``aot_specs() -> list[KernelSpec]``: one entry per configuration its launcher (or
autotuner) can pick. ``compile_spec`` runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for
``GPUTarget("cuda", 90, 32)`` and reports shared memory and registers, so CI proves that kernels which pass in
the interpreter also build for the GPU and fit the H200's shared memory.

Run as ``python -m engine.kernels.aot [module ...]``; prints one JSON line per configuration. Must run without
``TRITON_INTERPRET=1`` (interpreted kernels cannot be compiled); the test suite calls it in a subprocess.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from typing import Any

import torch

# Largest shared memory one block can opt into on an H100/H200 (227 KiB).
H200_MAX_SHARED_BYTES = 232448

KERNEL_MODULES = ("norm", "gelu", "attention", "decode")

# Triton's names for the floating-point dtypes our kernels take (signature strings: "*" + name for pointers).
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One configuration of one kernel.

    signature: every argument name -> Triton type ("*fp16", "i32", "fp32", ... or "constexpr").
    constexprs: values of the constexpr arguments.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3


def _attrs(spec: KernelSpec) -> dict:
    # torch allocations are 16-byte aligned: tell the compiler, as the launcher's specialisation does.
    names = list(spec.signature)
    return {(names.index(k),): [["tt.divisibility", 16]] for k, v in spec.signature.items() if v.startswith("*")}


def compile_spec(spec: KernelSpec, arch: int = 90) -> dict:
    """Compile ``spec`` for sm_``arch``; returns {name, num_warps, num_stages, shared, ok, error}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out = {"name": spec.name, "num_warps": spec.num_warps, "num_stages": spec.num_stages}
    try:
        src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=_attrs(spec))
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        meta = kernel.metadata
        out.update(ok=True, shared=int(meta.shared), error=None)
        if out["shared"] > H200_MAX_SHARED_BYTES:
            out.update(ok=False, error=f"shared memory {out['shared']} B > H200 limit {H200_MAX_SHARED_BYTES} B")
    except Exception as exc:  # report, do not stop: the test lists every failure at once
        out.update(ok=False, shared=None, error=f"{type(exc).__name__}: {exc}")
    return out


def specs_of(module: str) -> list[KernelSpec]:
    return importlib.import_module(f"engine.kernels.{module}").aot_specs()


def main(argv: list[str] | None = None) -> int:
    modules = (argv if argv else None) or list(KERNEL_MODULES)
    failed = 0
    for module in modules:
        for spec in specs_of(module):
            res = compile_spec(spec)
            res["module"] = module
            failed += not res["ok"]
            print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
