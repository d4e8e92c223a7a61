"""engine: a small, fast Transformer inference runtime.

    import engine
    from engine import ops, sampling
    model = engine.from_pretrained("path/to/hf_or_converted_dir", device="cuda", dtype=torch.bfloat16)
    engine.embed_corpus("path/to/encoder", "corpus.txt", "out_dir")      # sharded, resumable; torchrun-aware

Hot ops are Triton kernels on CUDA (PyTorch's own ops elsewhere, same results); sampling is a C++ extension.
"""
from engine import backend, ops, sampling
from engine.checkpoint import from_pretrained

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__", "backend", "embed_corpus", "from_pretrained", "load_embeddings", "ops",
           "sampling"]
_LAZY = {"Embedder": "engine.embed", "embed_corpus": "engine.corpus", "load_embeddings": "engine.corpus"}


def __getattr__(name: str):
    """The embedding API, imported on first use (engine.embed, engine.corpus)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
