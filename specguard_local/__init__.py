"""specguard-local: step-level speculative reasoning (SpecGuard) for small quantized models on llama.cpp."""

from .api import solve
from .runtime import Runtime, RuntimeConfig

__all__ = ["solve", "Runtime", "RuntimeConfig"]
