"""engine: a small, fast Transformer inference runtime.

    import engine
    from engine import ops, sampling
    model = engine.from_pretrained("path/to/hf_or_converted_dir", device="cuda", dtype=torch.bfloat16)

Hot ops are Triton kernels on CUDA (PyTorch's own ops elsewhere, same results); sampling is a C++ extension.
Inside transformers: attn_implementation="engine" (registered when transformers loads) and ``engine.patch(model)``.
"""
from engine import backend, ops, sampling
from engine.checkpoint import from_pretrained
from engine.hf import _hook

__version__ = "0.1.0"

__all__ = ["__version__", "backend", "from_pretrained", "ops", "patch", "sampling", "unpatch"]

_hook.install()  # registers "engine" with transformers' attention interfaces when transformers loads (no import)


def __getattr__(name: str):
    if name in ("patch", "unpatch"):  # engine.hf.patching imports transformers: only on first use
        from engine.hf import patching

        return getattr(patching, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
