"""Measured device ceilings: the peaks that benchmark results are reported as a fraction of.

- copy bandwidth: a device-to-device ``copy_`` of one large buffer, counting bytes read + written (GB/s);
- matmul rate: an n x n x n matrix product on random data (bf16 8192^3 on CUDA), 2 n^3 flops (TFLOP/s).

Both are measured, not taken from a datasheet: the H200's datasheet says 4.8 TB/s and ~990 TFLOP/s dense bf16,
but a plain copy moves ~4.3 TB/s and a cuBLAS bf16 product on random data reaches ~790 TFLOP/s.
On a CPU they are measured cheaply (small float32 buffers) so CPU runs still report a fraction of something real.

    python benchmarks/ceilings.py [--device cuda] [--json OUT.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.bench import time_ms

# (copy bytes per buffer, matmul n, matmul dtype, reps): real ceilings on CUDA, cheap ones elsewhere.
CUDA_SETTINGS = {"copy_bytes": 1 << 30, "n": 8192, "dtype": torch.bfloat16, "reps": 10}
CUDA_QUICK = {"copy_bytes": 1 << 28, "n": 4096, "dtype": torch.bfloat16, "reps": 5}
CPU_SETTINGS = {"copy_bytes": 1 << 25, "n": 512, "dtype": torch.float32, "reps": 5}
CPU_QUICK = {"copy_bytes": 1 << 22, "n": 128, "dtype": torch.float32, "reps": 3}


def copy_bandwidth(device: str | torch.device, *, nbytes: int, reps: int = 10) -> float:
    """Device-to-device copy of an ``nbytes`` buffer; GB/s counting read + write (2 * nbytes per copy)."""
    if nbytes < 4:
        raise ValueError(f"nbytes must be at least 4; got {nbytes}")
    src = torch.rand(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device=device, warmup=2, reps=reps)
    if not torch.equal(dst, src):
        raise RuntimeError("copy ceiling: the copied buffer differs from its source")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def matmul_tflops(device: str | torch.device, *, n: int, dtype: torch.dtype = torch.bfloat16, reps: int = 10) -> float:
    """An ``n x n @ n x n`` product of random ``dtype`` matrices; TFLOP/s at 2 n^3 flops per product."""
    if n < 1:
        raise ValueError(f"n must be positive; got {n}")
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    ms = time_ms(lambda: a @ b, device=device, warmup=3, reps=reps)
    # A cheap sanity check of one row, so a broken product does not become a ceiling.
    row = (a[:1].double() @ b.double()).to(dtype).double()
    got = (a[:1] @ b).double()
    if not torch.allclose(got, row, rtol=0.05, atol=0.05 * math.sqrt(n)):
        raise RuntimeError("matmul ceiling: the product is wrong")
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}"


def measure(device: str | torch.device | None = None, *, quick: bool = False) -> dict[str, Any]:
    """Measure both ceilings on ``device`` (default: CUDA when available). Returns a JSON-ready dict:

    ``{"device", "name", "copy_GB/s", "copy_bytes", "matmul_TFLOP/s", "matmul_n", "matmul_dtype", "seconds"}``
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        s = CUDA_QUICK if quick else CUDA_SETTINGS
    else:
        s = CPU_QUICK if quick else CPU_SETTINGS
    t0 = time.perf_counter()
    copy = copy_bandwidth(dev, nbytes=s["copy_bytes"], reps=s["reps"])
    mm = matmul_tflops(dev, n=s["n"], dtype=s["dtype"], reps=s["reps"])
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "device": str(dev),
        "name": device_name(dev),
        "copy_GB/s": copy,
        "copy_bytes": s["copy_bytes"],
        "matmul_TFLOP/s": mm,
        "matmul_n": s["n"],
        "matmul_dtype": str(s["dtype"]).replace("torch.", ""),
        "seconds": time.perf_counter() - t0,
    }


def load(path: str | Path, *, device: str | torch.device) -> dict[str, Any] | None:
    """Ceilings saved by ``measure`` (``--json``) when they were measured on the same kind of device, else None."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    dev = torch.device(device)
    if not isinstance(data, dict) or data.get("name") != device_name(dev):
        return None
    if not all(isinstance(data.get(k), (int, float)) and data[k] > 0 for k in ("copy_GB/s", "matmul_TFLOP/s")):
        return None
    return data


def describe(c: dict[str, Any]) -> str:
    return (f"ceilings on {c['name']}: copy {c['copy_GB/s']:.4g} GB/s (read+write, {c['copy_bytes'] >> 20} MiB), "
            f"matmul {c['matmul_TFLOP/s']:.4g} TFLOP/s ({c['matmul_dtype']} {c['matmul_n']}^3)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure copy bandwidth and matmul rate on this device")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="write the measurements to this file")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    c = measure(args.device, quick=args.quick)
    print(describe(c), f"[{c['seconds']:.1f} s]")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(c, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
