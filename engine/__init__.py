"""engine: a small, fast Transformer inference runtime.

    import engine
    from engine import ops, sampling
    model = engine.from_pretrained("path/to/hf_or_converted_dir", device="cuda", dtype=torch.bfloat16)
    engine.embed_corpus("path/to/encoder", "corpus.txt", "out_dir")      # sharded, resumable; torchrun-aware

Hot ops are Triton kernels on CUDA (PyTorch's own ops elsewhere, same results); sampling is a C++ extension.
Inside transformers: attn_implementation="engine" (registered when transformers loads) and ``engine.patch(model)``.
"""
from engine import backend, ops, sampling
from engine.checkpoint import from_pretrained
from engine.hf import _hook

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__", "backend", "embed_corpus", "from_pretrained", "load_embeddings", "ops",
           "patch", "sampling", "unpatch"]
# imported on first use: engine.hf.patching imports transformers; the embedding API imports its modules lazily
_LAZY = {"Embedder": "engine.embed", "embed_corpus": "engine.corpus", "load_embeddings": "engine.corpus",
         "patch": "engine.hf.patching", "unpatch": "engine.hf.patching"}

_hook.install()  # registers "engine" with transformers' attention interfaces when transformers loads (no import)


def __getattr__(name: str):
    """engine.patch / unpatch and the embedding API (Embedder, embed_corpus, load_embeddings) on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
