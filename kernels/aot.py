"""Ahead-of-time compilation of every kernel configuration for Hopper (sm_90), on a machine without a GPU.

Each kernel family names a function (``KERNEL_FAMILIES``) that calls the family's host launchers on meta tensors
(shapes, strides and dtypes, no data) of representative sizes inside ``recording()``, which records each kernel
launch instead of running it. ``specialise`` then turns a launch into the compiler's input with Triton's own
launch-time binder (``create_function_from_signature`` + ``JITFunction._pack_args``, the code ``kernel[grid](...)``
runs): ints equal to 1 become constants, ints and pointers divisible by 16 are marked so, exactly as for the
installed Triton at launch. So an AOT build is the build the launcher runs, for those sizes.

``compile_spec`` runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for ``GPUTarget("cuda", 90,
32)`` and reports what decides speed: shared memory, registers, spill bytes and ptxas's warnings (its ``-v`` log),
and instruction counts from the SASS (engine.kernels.audit). tests/kernels/ asserts on these (the static gate).

Run as ``python -m engine.kernels.aot [--table] [--jobs N] [-k SUBSTRING] [--sass-memo PATH [--update-sass-memo]]
[family ...]``: one JSON line per configuration, then (``--table``) the table. Must run without
``TRITON_INTERPRET=1`` (interpreted kernels cannot be compiled); the test suite calls it in a subprocess. Every
configuration is compiled afresh (Triton's cache is bypassed) so ptxas's report is always there; only the
disassembly of machine code already seen is memoised (``sass_key``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import torch

# Largest shared memory one block can opt into on an H100/H200 (227 KiB).
H200_MAX_SHARED_BYTES = 232448

# Kernel family -> "module:function" returning its launches (a list of ``Launch``, made under ``recording()``).
KERNEL_FAMILIES = {
    "norm": "engine.kernels.norm:aot_specs",
    "gelu": "engine.kernels.gelu:aot_specs",
    "attention": "engine.kernels.attention.specs:fwd_specs",
    "attention_bwd": "engine.kernels.attention.specs:bwd_specs",
    "decode": "engine.kernels.attention.specs:decode_specs",
}
KERNEL_MODULES = tuple(KERNEL_FAMILIES)

# Triton's names for the floating-point dtypes our kernels take (signature strings: "*" + name for pointers).
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch: ``kernel[grid](*args, **kwargs)`` with the launcher's own arguments.

    kwargs holds the constexpr keyword arguments and the launch options (num_warps, num_stages).
    """

    name: str
    kernel: Any
    args: tuple
    kwargs: dict

    @property
    def fn_name(self) -> str:
        return getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__

    @property
    def num_warps(self) -> int:
        return self.kwargs.get("num_warps", 4)

    @property
    def num_stages(self) -> int:
        return self.kwargs.get("num_stages", 3)

    def arg(self, name: str) -> Any:
        """The value the launcher passed for argument ``name`` (positional or keyword)."""
        if name in self.kwargs:
            return self.kwargs[name]
        names = list(self.kernel.arg_names)
        i = names.index(name)
        return self.args[i] if i < len(self.args) else None


class _Recorder:
    def __init__(self) -> None:
        self.launches: list[Launch] = []
        self.label = "launch"

    @contextlib.contextmanager
    def name(self, label: str) -> Iterator[None]:
        """Name the launches made inside this block ``label`` (``label/kernel`` when it makes several)."""
        first = len(self.launches)
        self.label = label
        yield
        made = self.launches[first:]
        if len(made) > 1:
            for launch in made:
                launch.name = f"{label}/{launch.fn_name.strip('_').removesuffix('_kernel')}"


@contextlib.contextmanager
def recording() -> Iterator[_Recorder]:
    """Inside this block, ``kernel[grid](...)`` records a ``Launch`` and runs nothing (for JIT and interpreted
    kernels alike). Launchers run on meta tensors here: nothing is allocated or computed."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    rec = _Recorder()

    def run(self, *args, grid, warmup, **kwargs):  # noqa: ARG001 - same signature as the patched method
        rec.launches.append(Launch(rec.label, self, args, dict(kwargs)))

    from engine.kernels import launch

    saved = JITFunction.run, InterpretedFunction.run, launch.ENABLED
    JITFunction.run = InterpretedFunction.run = run
    launch.ENABLED = False  # every launch through kernel[grid](...), so it is recorded
    try:
        yield rec
    finally:
        JITFunction.run, InterpretedFunction.run, launch.ENABLED = saved


def meta(shape: tuple[int, ...], dtype: torch.dtype, *, strides: tuple[int, ...] | None = None) -> torch.Tensor:
    """A tensor with shape, strides and dtype but no data (device "meta"), as launchers see at launch."""
    if strides is None:
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.empty_strided(shape, strides, dtype=dtype, device="meta")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A launch as the launcher specialises it: the compiler's input.

    signature: argument name -> Triton type ("*bf16", "i32", "constexpr", ...); constexprs: name -> value (the
    constexpr arguments and the ints specialised to 1); aligned: arguments marked divisible by 16.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    aligned: tuple[str, ...]
    options: dict
    _paths: tuple  # (constexprs by argument path, attributes by argument path), as Triton keys them

    @property
    def num_warps(self) -> int:
        return self.options["num_warps"]

    @property
    def num_stages(self) -> int:
        return self.options["num_stages"]

    def key(self) -> str:
        """Two launches with the same key share one compiled binary."""
        return repr((self.fn.__name__, sorted(self.signature.items()), sorted(map(repr, self.constexprs.items())),
                     self.aligned, sorted((k, repr(v)) for k, v in self.options.items())))


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def specialise(launch: Launch) -> KernelSpec:
    """The launch, specialised by Triton's own launch-time binder for sm_90."""
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    fn = launch.kernel
    if not isinstance(fn, JITFunction):  # recorded under TRITON_INTERPRET: bind the same Python function
        fn = JITFunction(fn.fn)  # (specialising works; compiling needs TRITON_INTERPRET unset)
    backend = make_backend(_target())
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    names = fn.arg_names
    named = {names[p[0]] if len(p) == 1 else repr(p): v for p, v in constexprs.items()}
    aligned = tuple(names[p[0]] for p, a in attrs.items() if len(p) == 1 and ["tt.divisibility", 16] in a)
    return KernelSpec(launch.name, fn, signature, named, aligned, dict(options.__dict__), (constexprs, attrs))


def _cuobjdump() -> str:
    from triton import knobs

    return knobs.nvidia.cuobjdump.path


# ---- SASS reports memoised by the cubin's code -------------------------------------------------------------
# cuobjdump costs ~0.8 s of CPU per call whatever the kernel (its sm_90 tables load on every run): half of a
# build. Its report is a function of the cubin's code, the tool and the parser, so it is memoised under the
# SHA-256 of those three (``sass_key``); a kernel, Triton or parser change gives a new key and a real disassembly.
# Every build still compiles in full (ptxas's registers and spills are always fresh). The gate's memo file:
# tests/kernels/sass_memo.json, rewritten by ``--update-sass-memo``.
@functools.lru_cache(maxsize=1)
def _sass_salt() -> bytes:
    """The tool's version line and the parser's source: part of every memo key."""
    from engine.kernels import audit

    version = subprocess.run([_cuobjdump(), "--version"], capture_output=True, text=True, check=True).stdout
    return (version.strip() + "\n" + inspect.getsource(audit)).encode()


def _code_sections(cubin: bytes) -> bytes:
    """The name and bytes of every ``.text*`` and ``.rela.text*`` section of an ELF cubin: the machine code the
    disassembly lists. The rest of the file is left out: its debug sections carry the kernel source's path, which
    differs between checkouts of the same code. Bytes that do not parse as an ELF64 come back whole."""
    try:
        shoff, = struct.unpack_from("<Q", cubin, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
        headers = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
        names_at = headers[shstrndx][4]
        parts = []
        for name_off, _, _, _, off, size in headers:
            start = names_at + name_off
            name = cubin[start:cubin.index(b"\0", start)]
            if name.startswith((b".text", b".rela.text")):
                parts.append(name + b"\0" + cubin[off:off + size])
        if cubin[:4] == b"\x7fELF" and parts:
            return b"\0".join(parts)
    except (struct.error, ValueError, IndexError):
        pass
    return cubin


def sass_key(cubin: bytes) -> str:
    """SHA-256 of the cubin's code sections (``_code_sections``), cuobjdump's version and the parser's source."""
    return hashlib.sha256(_sass_salt() + b"\0" + _code_sections(cubin)).hexdigest()


def load_sass_memo(path: str | None) -> dict[str, dict]:
    """{sass_key: report} from ``path`` (missing file: empty); a ValueError naming the file when it is not one."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        text = f.read()
    try:
        memo = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"is not valid JSON ({e})"
    else:
        if isinstance(memo, dict) and all(isinstance(v, dict) for v in memo.values()):
            return memo
        problem = "is not a JSON object of {sass_key: report object}"
    raise ValueError(f"SASS memo {path} {problem}; delete it and rebuild it with `python -m engine.kernels.aot "
                     f"--sass-memo {path} --update-sass-memo`")


_memo_at = functools.lru_cache(maxsize=1)(load_sass_memo)  # one read per process (workers inherit the path)


def write_sass_memo(path: str, memo: dict[str, dict]) -> None:
    """``memo`` to ``path``, atomically (engine.atomic.write_file), one entry a line, sorted."""
    from engine.atomic import write_file

    write_file(path, "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(memo[k], sort_keys=True)}"
                                        for k in sorted(memo)) + "\n}\n")


def _sass_report(cubin: bytes, out: dict) -> dict:
    """The SASS report of ``cubin`` (engine.kernels.audit.sass_report), from the memo when its key is there."""
    from engine.kernels import audit

    memo = _memo_at(os.environ.get("ENGINE_SASS_MEMO"))
    key = out["sass_key"] = sass_key(cubin)
    if key in memo:
        out["sass_memo"] = True
        return memo[key]
    out["sass_memo"] = False
    with tempfile.TemporaryDirectory() as tmp:
        cubin_path = os.path.join(tmp, "kernel.cubin")
        with open(cubin_path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([_cuobjdump(), "-sass", cubin_path], capture_output=True, text=True, check=True).stdout
    return audit.sass_report(sass)


def compile_spec(spec: KernelSpec) -> dict:
    """Compile ``spec`` for sm_90 and audit it: {name, kernel, num_warps, num_stages, ok, error, shared, regs,
    stack, spill_stores, spill_loads, warnings, sass, sass_key, sass_memo, seconds}. The SASS report comes from
    the memo named by ``ENGINE_SASS_MEMO`` when the cubin's key is there (see ``sass_key``)."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    from engine.kernels import audit

    out = {"name": spec.name, "kernel": spec.fn.__name__, "num_warps": spec.num_warps,
           "num_stages": spec.num_stages, "shared": None, "regs": None}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        constexprs, attrs = spec._paths
        src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=constexprs, attrs=attrs)
        with contextlib.redirect_stdout(log):  # Triton prints ptxas's -v report when dump_ptxas_log is set
            with knobs.nvidia.scope(), knobs.compilation.scope():
                knobs.nvidia.dump_ptxas_log = True
                knobs.compilation.always_compile = True
                kernel = triton.compile(src, target=_target(), options=spec.options)
        out.update(ok=True, error=None, shared=int(kernel.metadata.shared))
        out.update(audit.ptxas_report(log.getvalue()))
        out["sass"] = _sass_report(kernel.asm["cubin"], out)
        if out["shared"] > H200_MAX_SHARED_BYTES:
            out.update(ok=False, error=f"shared memory {out['shared']} B > H200 limit {H200_MAX_SHARED_BYTES} B")
    except Exception as exc:  # report, do not stop: the test lists every failure at once
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:4000])
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def launches_of(family: str) -> list[Launch]:
    """The launches of one kernel family (see ``KERNEL_FAMILIES``)."""
    module, func = KERNEL_FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), func)()


def specs_of(family: str) -> list[KernelSpec]:
    """The distinct builds of one kernel family (launches that specialise alike are compiled once)."""
    seen, specs = set(), []
    for launch in launches_of(family):
        spec = specialise(launch)
        if spec.key() not in seen:
            seen.add(spec.key())
            specs.append(spec)
    return specs


_WORKER_SPECS: dict = {}


def _work(job: tuple[str, int]) -> dict:
    module, i = job
    if module not in _WORKER_SPECS:
        _WORKER_SPECS[module] = specs_of(module)
    res = compile_spec(_WORKER_SPECS[module][i])
    res["module"] = module
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="family",
                        help=f"kernel families (default: all of {', '.join(KERNEL_MODULES)})")
    parser.add_argument("--table", action="store_true", help="print the review table after the JSON lines")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="compile in this many processes")
    parser.add_argument("-k", dest="only", default="", help="only configurations whose name contains this")
    parser.add_argument("--sass-memo", default=None, metavar="PATH",
                        help="take SASS reports from this memo when the cubin's key is there (see sass_key)")
    parser.add_argument("--update-sass-memo", action="store_true",
                        help="then rewrite the memo: this run's entries (a full run drops stale ones; a partial "
                             "run, with -k or named families, adds to the file)")
    args = parser.parse_args(argv)
    if args.update_sass_memo and not args.sass_memo:
        parser.error("--update-sass-memo needs --sass-memo PATH")
    if args.sass_memo:
        os.environ["ENGINE_SASS_MEMO"] = os.path.abspath(args.sass_memo)  # spawned workers inherit it
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    unknown = sorted(set(args.modules) - set(KERNEL_MODULES))
    if unknown:
        parser.error(f"unknown kernel families {unknown}; known: {', '.join(KERNEL_MODULES)}")
    jobs = [(m, i) for m in (args.modules or KERNEL_MODULES)
            for i, s in enumerate(specs_of(m)) if args.only in s.name]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.imap(_work, jobs)
            rows = [_emit(r) for r in results]
    else:
        rows = [_emit(_work(j)) for j in jobs]
    if args.table:
        from engine.kernels import audit

        print(audit.table(rows), flush=True)
    if args.update_sass_memo:
        partial = bool(args.only) or set(args.modules or KERNEL_MODULES) != set(KERNEL_MODULES)
        memo = load_sass_memo(args.sass_memo) if partial else {}
        memo.update({r["sass_key"]: r["sass"] for r in rows if r["ok"] and r.get("sass_key")})
        write_sass_memo(args.sass_memo, memo)
    return 0 if all(r["ok"] for r in rows) else 1


def _emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
