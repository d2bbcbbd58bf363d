"""Generation engines: vLLM (fast path) and transformers (fallback and reference)."""
from .base import Completion, EngineSpec, GenParams, chunk_seed, make_engine

__all__ = ["Completion", "EngineSpec", "GenParams", "chunk_seed", "make_engine"]
