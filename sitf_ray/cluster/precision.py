"""Which floating-point precision a process runs its model in: `model.dtype: auto` follows the hardware.

    choose_dtype(requested, caps) -> Decision     pure: the rule, from capabilities given as data
    detect(device) -> Capabilities                 this process's hardware (/proc/cpuinfo, torch.cuda)
    resolve(requested, device) -> Decision         detect + choose, cached per process
    announce(decision, who)                        the driver's console line, once per distinct decision

The rule for 'auto': bfloat16 where the hardware runs it natively, float32 elsewhere.
- CUDA: bfloat16 when the GPU supports it (compute capability >= 8.0, `torch.cuda.is_bf16_supported()`),
  else float32 (float16 overflows on some models, e.g. Gemma; ask for it explicitly where it is safe).
- CPU: bfloat16 when the CPU has native bf16 arithmetic: x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`
  (/proc/cpuinfo flags); else float32. Without them bf16 is emulated and slower than float32: measured on
  such a CPU, SmolLM2-135M raw decode (64 prompts x 128 tokens, 2 threads) ran 154 tok/s in float32 against
  89-90 in bf16 on vLLM, 77 against 49 on HF generate (docs/RESULTS.md, engines).
An explicit dtype ('float32', 'bfloat16', 'float16') is used as given. Every generator, scorer and training
worker resolves 'auto' in its own process, so a cluster that mixes node types gets each node's choice; the
decision travels back to the driver as a plain dict (`Decision.as_dict`) and `announce` prints it once.
Training uses the decision as mixed precision (`autocast`): float32 weights and optimizer state, bf16
matmuls under torch.autocast; float16 is for inference only (training stays float32 then).
"""
from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

DTYPES = ("float32", "bfloat16", "float16")
# x86: AVX512-BF16 (Cooper Lake, Zen 4+) or AMX-BF16 (Sapphire Rapids+); Arm: FEAT_BF16 ('bf16' in Features)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# what `bench engines` records about the CPU (those of them it has)
REPORTED_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512f", "avx512bw", "avx512_vnni",
                  "avx_vnni", "avx2", "fma", "bf16", "asimd", "sve")


@dataclass(frozen=True)
class Capabilities:
    """What the choice depends on. device: 'cuda' or 'cpu'. cpu_flags: /proc/cpuinfo 'flags' (x86) or
    'Features' (Arm) words; cpu_model: its 'model name'. cuda_bf16: torch.cuda.is_bf16_supported();
    cuda_name / cuda_capability: the GPU's name and (major, minor) compute capability."""
    device: str = "cpu"
    cpu_flags: frozenset = frozenset()
    cpu_model: str = ""
    cuda_bf16: bool = False
    cuda_name: str = ""
    cuda_capability: tuple = ()


@dataclass(frozen=True)
class Decision:
    """dtype: the torch dtype name used ('float32' | 'bfloat16' | 'float16'); requested: what was asked for
    ('auto' or one of those); reason: why, in words; device: 'cpu' or 'cuda'; hardware: CPU model or GPU
    name."""
    dtype: str
    requested: str
    reason: str
    device: str = "cpu"
    hardware: str = ""

    def line(self) -> str:
        """e.g. 'dtype auto -> float32: this CPU has no native bf16 (no avx512_bf16, amx_bf16)'."""
        return f"dtype {self.requested} -> {self.dtype}: {self.reason}"

    def as_dict(self) -> dict:
        return asdict(self)


def native_bf16(caps: Capabilities) -> tuple[bool, str]:
    """(True, reason) when `caps` runs bf16 natively, else (False, reason); pure."""
    if caps.device == "cuda":
        gpu = caps.cuda_name or "this GPU"
        cc = f" (compute capability {'.'.join(map(str, caps.cuda_capability))})" if caps.cuda_capability else ""
        if caps.cuda_bf16:
            return True, f"{gpu}{cc} supports bf16"
        return False, f"{gpu}{cc} has no bf16 (needs compute capability >= 8.0)"
    have = [f for f in NATIVE_BF16_FLAGS if f in caps.cpu_flags]
    if have:
        return True, f"this CPU has native bf16 ({', '.join(have)})"
    return False, "this CPU has no native bf16 (no avx512_bf16, amx_bf16)"


def choose_dtype(requested: str, caps: Capabilities) -> Decision:
    """The dtype to run in. requested: 'auto' or one of DTYPES (raises ValueError otherwise); caps: the
    hardware as data, so every case can be tested without that hardware. Explicit dtypes always win."""
    if requested not in DTYPES and requested != "auto":
        raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES)} (got {requested!r})")
    hw = caps.cuda_name if caps.device == "cuda" else caps.cpu_model
    if requested != "auto":
        return Decision(requested, requested, "set explicitly", caps.device, hw)
    ok, why = native_bf16(caps)
    return Decision("bfloat16" if ok else "float32", "auto", why, caps.device, hw)


# ------------------------------------------------------------------------------------------ detection

def cpu_info(cpuinfo: Optional[str] = None) -> dict:
    """{'model': CPU model name, 'flags': sorted feature words} from /proc/cpuinfo (Linux; x86 'flags' or Arm
    'Features'); elsewhere the model from `platform` and no flags. `cpuinfo`: the file's text (tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for ln in cpuinfo.splitlines():
        key, sep, val = ln.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = val.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(val.split())
    return {"model": model or platform.processor() or platform.machine(), "flags": sorted(flags)}


@functools.lru_cache(maxsize=None)
def detect(device: str = "auto") -> Capabilities:
    """This process's hardware. device: 'auto' (CUDA when torch sees a GPU), 'cuda' or 'cpu'; the GPU
    facts are those of the current CUDA device."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = device.split(":")[0]
    info = cpu_info()
    caps = Capabilities(device=device, cpu_flags=frozenset(info["flags"]), cpu_model=info["model"])
    if device == "cuda":
        caps = Capabilities(device="cuda", cpu_flags=caps.cpu_flags, cpu_model=caps.cpu_model,
                            cuda_bf16=bool(torch.cuda.is_bf16_supported()),
                            cuda_name=torch.cuda.get_device_name(), cuda_capability=torch.cuda.get_device_capability())
    return caps


def resolve(requested: str, device: str = "auto") -> Decision:
    """choose_dtype on this process's hardware (see `detect`)."""
    if requested != "auto":        # nothing to detect (and no torch import) for an explicit dtype
        return choose_dtype(requested, Capabilities(device=device))
    return choose_dtype(requested, detect(device))


def cpu_record() -> dict:
    """What the benchmarks store about the CPU: model name, the REPORTED_FLAGS it has, native bf16 or not,
    and torch's own ISA level (`torch.backends.cpu.get_cpu_capability()`)."""
    info = cpu_info()
    flags = set(info["flags"])
    rec = {"model": info["model"], "flags": [f for f in REPORTED_FLAGS if f in flags],
           "native_bf16": native_bf16(Capabilities(cpu_flags=frozenset(flags)))[0]}
    try:
        import torch
        rec["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:   # old torch
        pass
    return rec


# ---------------------------------------------------------------------------------------- using it

def autocast(dtype: str, device_type: str):
    """Training's mixed precision: torch.autocast to bf16 when `dtype` (a resolved one) is 'bfloat16', else
    a no-op context (float32; float16 training is not offered: it needs loss scaling)."""
    if dtype != "bfloat16":
        return contextlib.nullcontext()
    import torch
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


_ANNOUNCED: set = set()


def announce(decision, who: str) -> Optional[str]:
    """Print '<who>: dtype auto -> float32: <reason>' on the console once per distinct line in this process.
    decision: a Decision, its as_dict(), or None (nothing printed); explicit dtypes print nothing (the
    config says them). Returns the line printed, or None."""
    if decision is None:
        return None
    d = decision.as_dict() if isinstance(decision, Decision) else dict(decision)
    if d.get("requested") != "auto":
        return None
    line = f"{who}: dtype auto -> {d['dtype']}: {d['reason']}"
    if d.get("hardware"):
        line += f" [{d['hardware']}]"
    if line in _ANNOUNCED:
        return None
    _ANNOUNCED.add(line)
    print(line, flush=True)
    return line
