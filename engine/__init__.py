"""engine: a small, fast Transformer inference runtime.

    import engine
    from engine import ops, sampling
    model = engine.from_pretrained("path/to/hf_or_converted_dir", device="cuda", dtype=torch.bfloat16)

Hot ops are Triton kernels on CUDA (PyTorch's own ops elsewhere, same results); sampling is a C++ extension.
"""
from engine import backend, ops, sampling
from engine.checkpoint import from_pretrained

__version__ = "0.1.0"

__all__ = ["__version__", "backend", "from_pretrained", "ops", "sampling"]
