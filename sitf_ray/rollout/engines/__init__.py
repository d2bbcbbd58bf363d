"""Generation engines: vLLM (fast path) and transformers (fallback and reference), built by `make_engine`."""
from sitf_ray.rollout.engines.base import Completion, EngineSpec, GenParams

__all__ = ["Completion", "EngineSpec", "GenParams", "make_engine"]


def make_engine(spec: EngineSpec):
    """The engine spec.kind names ('vllm' or 'hf'; ValueError otherwise). Each is imported only when asked
    for: vLLM's import alone takes seconds."""
    if spec.kind == "vllm":
        from sitf_ray.rollout.engines.vllm import VLLMEngine
        return VLLMEngine(spec)
    if spec.kind == "hf":
        from sitf_ray.rollout.engines.hf import HFEngine
        return HFEngine(spec)
    raise ValueError(f"unknown engine kind {spec.kind!r}; expected 'vllm' or 'hf'")
