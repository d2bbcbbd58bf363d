"""The small interface every generation engine offers (vLLM or transformers).

    engine.generate(prompts, params, seed) -> [[Completion] * params.n for each prompt]
    engine.load_state(state_dict, version)  /  engine.load_adapter(files, version)
    engine.version

Sampling is reproducible per (seed, prompts): the caller passes the seed of each request explicitly, so
the same prompts with the same seed give the same completions whichever replica runs them.
"""
from __future__ import annotations

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
    dtype: str = "float32"           # or 'auto': decided where the engine is built (precision.resolve)
    max_model_len: int = 256
    kv_cache_bytes: int = 64 << 20
    max_num_seqs: int = 256
    seed: int = 0
    threads: int = 1
    lora_rank: int = 0               # > 0 enables LoRA adapters
    device: str = "auto"             # 'cpu' | 'cuda' | 'auto'
    extra: dict = field(default_factory=dict)


def _hasher():
    """xxh3-128 (xxhash, a vLLM dependency): a checksum that proves a replica loaded the bytes sent (integrity,
    not a defence against tampering) at ~15 GB/s on one core: 269 MB cost 0.02 s, blake3 0.08 s, sha256 0.4 s.
    Each replica hashes what it loads while the others use the same cores, so this is on the sync's path."""
    import xxhash
    return xxhash.xxh3_128()


def state_digest(state: dict) -> str:
    """xxh3-128 checksum of a state dict (names, shapes, dtypes, bytes): replicas report it to prove what they loaded.

    state: name -> torch tensor, or the wire form of pack_state (the same digest for the same weights)."""
    if isinstance(state, WireState):
        return state.digest()
    return pack_state(state).digest()


@dataclass
class WireState:
    """A state dict as plain numpy buffers: Ray's object store hands them to every replica without a copy
    (torch tensors would be pickled in-band and copied on every get). bf16 travels as its 16-bit pattern."""
    names: list
    dtypes: list          # torch dtype names, e.g. 'bfloat16'
    arrays: list          # numpy arrays (read-only views into the object store on the receiving side)

    def digest(self) -> str:
        h = _hasher()
        for name, dtype, a in sorted(zip(self.names, self.dtypes, self.arrays), key=lambda x: x[0]):
            h.update(name.encode())
            h.update(str(tuple(a.shape)).encode() + dtype.encode())
            if a.size:
                h.update(a.reshape(-1).view("uint8").data)
        return h.hexdigest()

    def tensors(self) -> dict:
        """name -> torch tensor sharing the numpy buffer (zero-copy; read-only where the buffer is)."""
        import warnings

        import torch
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # read-only buffers: the engine copies from them
            for name, dtype, a in zip(self.names, self.dtypes, self.arrays):
                t = torch.from_numpy(a)
                out[name] = t.view(getattr(torch, dtype)) if dtype in _VIEWED else t
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


_VIEWED = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}   # no numpy dtype of their own


def pack_state(state: dict) -> WireState:
    """torch state dict -> WireState (a view of each contiguous CPU tensor, no copy where possible)."""
    import torch
    names, dtypes, arrays = [], [], []
    for name, t in state.items():
        t = t.detach().contiguous().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        a = t.view(getattr(torch, _VIEWED[dtype])).numpy() if dtype in _VIEWED else t.numpy()
        names.append(name)
        dtypes.append(dtype)
        arrays.append(a)
    return WireState(names, dtypes, arrays)


def files_digest(files: dict[str, bytes]) -> str:
    h = _hasher()
    for k in sorted(files):
        h.update(k.encode())
        h.update(files[k])
    return h.hexdigest()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


