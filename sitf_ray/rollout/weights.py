"""Versioned weight broadcast from a trained policy folder to every generator replica.

Full fine-tunes send the state dict as numpy buffers (engines.base.WireState): one `ray.put`, every
replica maps it from the object store without a copy (torch tensors would be pickled and copied) and loads
it with vLLM's `reload_weights` (HF names; vLLM fuses qkv / gate-up itself); all replicas load at once. LoRA policies send only
the adapter files, which replicas hot-load as a new LoRA request (no full reload), or, with `merge_adapter`
(cluster.lora_generation; the default on CPU, where vLLM's LoRA decode is 4.7x slower), the adapter merged
into its base on the driver, sent as full weights. Each replica answers
with the xxh3-128 digest of what it loaded; a mismatch with the driver's digest is an error, and the pool's version
is what later generate calls require of every replica.

On CUDA, `weights_nccl.push_policy_nccl` offers the same interface over vLLM's own NCCL weight-transfer
API (replicas built with EngineSpec.extra {"weight_sync": "nccl"}; the driver sends from a GPU of its own).
It has not run on a GPU yet: it was written from vLLM's source on a CPU-only machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sitf_ray.rollout.engines.base import files_digest, pack_state
from sitf_ray.rollout.policy_folder import read_policy_meta, write_policy_meta


@dataclass
class SyncReport:
    version: int
    kind: str            # 'full' | 'adapter' | 'merged' (adapter merged on the driver) | 'nccl' (weights_nccl.py)
    seconds: float
    bytes: int
    digest: str
    replicas: int
    phases: Optional[dict] = None   # seconds: read (folder -> tensors), pack (+ digest unless recorded), load


def merged_state(folder: str | Path) -> dict:
    """An adapter policy merged into its base (fp32 merge, stored in the base's dtype): full weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = read_policy_meta(folder)["base"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    dtype = next(model.parameters()).dtype
    model = PeftModel.from_pretrained(model.float(), str(folder)).merge_and_unload()
    tied = getattr(model.config, "tie_word_embeddings", False)   # lm_head is the embedding: don't send it twice
    return {k: v.detach().to(dtype) if v.is_floating_point() else v.detach()
            for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


def policy_payload(folder: str | Path, merge_adapter: bool = False) -> tuple[str, dict]:
    """('full', state_dict), ('merged', state_dict of base + adapter) or ('adapter', {file name: bytes})."""
    folder = Path(folder)
    if read_policy_meta(folder)["kind"] == "adapter":
        if merge_adapter:
            return "merged", merged_state(folder)
        names = ["adapter_config.json"] + sorted(p.name for p in folder.glob("adapter_model*"))
        return "adapter", {n: (folder / n).read_bytes() for n in names}
    from safetensors.torch import load_file
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to broadcast")
    return "full", state


def _files_stamp(folder: Path) -> list:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.glob("*.safetensors"))]


def record_wire_digest(folder: str | Path) -> None:
    """Store the xxh3-128 digest of a full-weights folder in its policy meta, with the weight files' sizes and
    mtimes: written once where the weights are made (a fit's final save), it spares every later broadcast of
    the folder hashing 100s of MB on the driver before the replicas start loading. Adapters: nothing."""
    folder = Path(folder)
    meta = read_policy_meta(folder)
    if meta["kind"] != "full":
        return
    _, state = policy_payload(folder)
    meta |= {"wire_digest": pack_state(state).digest(), "wire_files": _files_stamp(folder)}
    write_policy_meta(folder, meta)


def _recorded_digest(folder: Path) -> Optional[str]:
    """The digest record_wire_digest stored, if the weight files are still the ones it hashed."""
    meta = read_policy_meta(folder)
    return meta.get("wire_digest") if meta.get("wire_files") == _files_stamp(folder) else None


def push_policy(pool, folder: str | Path, version: int, merge_adapter: bool = False) -> SyncReport:
    t0 = time.time()
    kind, payload = policy_payload(folder, merge_adapter)
    t_read = time.time()
    if kind == "adapter":
        digest, size = files_digest(payload), sum(len(v) for v in payload.values())
        t_pack = time.time()
        got = pool.load_adapter(payload, version)
    else:
        wire = pack_state(payload)          # numpy buffers: every replica reads them without a copy
        digest = (kind == "full" and _recorded_digest(Path(folder))) or wire.digest()
        size = wire.nbytes
        t_pack = time.time()
        got = pool.load_state(wire, version)
    bad = [i for i, d in enumerate(got) if d != digest]
    if bad:
        raise RuntimeError(f"weight sync v{version}: replicas {bad} report a different digest than {folder}")
    t_end = time.time()
    return SyncReport(version, kind, t_end - t0, size, digest, len(got),
                      {"read": t_read - t0, "pack": t_pack - t_read, "load": t_end - t_pack})
