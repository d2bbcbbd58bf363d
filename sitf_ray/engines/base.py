"""The small interface every generation engine offers (vLLM or transformers).

    engine.generate(prompts, params, seed) -> [[Completion] * params.n for each prompt]
    engine.load_state(state_dict, version)  /  engine.load_adapter(files, version)
    engine.version

Sampling is reproducible per (seed, prompts): the caller passes the seed of each request explicitly, so
the same prompts with the same seed give the same completions whichever replica runs them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False     # benchmarks: every sequence runs to max_tokens

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"GenParams: n and max_tokens must be >= 1 (got n={self.n}, "
                             f"max_tokens={self.max_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"GenParams: temperature must be >= 0 and 0 < top_p <= 1 "
                             f"(got {self.temperature}, {self.top_p})")


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # 'stop' (EOS / stop string) or 'length'


@dataclass
class EngineSpec:
    """Everything a replica needs to build its engine; plain data so it travels to Ray actors."""
    model: str                       # HF folder
    kind: str = "vllm"               # 'vllm' | 'hf'
    dtype: str = "float32"
    max_model_len: int = 256
    kv_cache_bytes: int = 64 << 20
    max_num_seqs: int = 256
    seed: int = 0
    threads: int = 1
    lora_rank: int = 0               # > 0 enables LoRA adapters
    device: str = "auto"             # 'cpu' | 'cuda' | 'auto'
    extra: dict = field(default_factory=dict)


def state_digest(state: dict) -> str:
    """sha256 of a state dict (names, shapes, dtypes, bytes): replicas report it to prove what they loaded."""
    import torch
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        if t.numel():   # hash the tensor's own buffer: a .tobytes() copy cost 4x the hashing itself
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def files_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode())
        h.update(files[k])
    return h.hexdigest()


def make_engine(spec: EngineSpec):
    if spec.kind == "vllm":
        from .vllm import VLLMEngine
        return VLLMEngine(spec)
    if spec.kind == "hf":
        from .hf import HFEngine
        return HFEngine(spec)
    raise ValueError(f"unknown engine kind {spec.kind!r}; expected 'vllm' or 'hf'")


def chunk_seed(seed: int, index: int) -> int:
    """Deterministic 31-bit seed for chunk `index` of a request with base `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


