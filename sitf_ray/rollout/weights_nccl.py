"""CUDA-only weight broadcast over vLLM's own NCCL weight-transfer API; same interface as weights.push_policy.

NOT RUN ON A GPU YET: written from vLLM 0.32's source (distributed/weight_transfer/, v1/worker/gpu_worker.py,
entrypoints/rl/offline.py) on a CPU-only machine.

Replicas are built with WeightTransferConfig(backend="nccl") (EngineSpec.extra {"weight_sync": "nccl"}, CUDA).
The driver is NCCL rank 0 and runs vLLM's NCCLTrainerWeightTransferEngine through a client that fans the
weight-sync calls out to our Generator actors. vLLM ranks a worker dp_index * world_size + tp_rank + rank_offset
and each replica is its own LLM (dp_index 0), so each replica gets its own rank_offset (1, 1 + its ranks, ...).
NCCL refuses two ranks on one GPU: the sender needs a GPU that no replica uses.
"""
from __future__ import annotations

import os
import time
import weakref
from pathlib import Path

from sitf_ray.rollout.engines.base import state_digest
from sitf_ray.rollout.policy_folder import read_policy_meta
from sitf_ray.rollout.weights import SyncReport, policy_payload, push_policy

_SENDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # GeneratorPool -> NCCLSender


def require_cuda():
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("NCCL weight sync needs CUDA (torch.cuda.is_available() is False); "
                           "use weights.push_policy (object store) on CPU")


# ----------------------------------------------------------------------------------- sender side
class _StateSource:
    """vLLM's WeightSource over a state dict (duck-typed: vLLM only calls metadata() and iter())."""
    def __init__(self, device):
        self.device, self.state = device, {}

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta
        return [ParamMeta(k, t.dtype, tuple(t.shape)) for k, t in self.state.items()]

    def __iter__(self):
        for k, t in self.state.items():              # copied to the GPU one tensor at a time
            yield k, t.to(self.device)


class _PoolClient:
    """vLLM's VLLMWeightSyncClient over Generator actors. start/finish are no-ops: each replica runs start,
    update and finish in one receive_nccl call (never half-updated between two actor calls)."""
    def __init__(self, actors, ranks: list[int]):
        self.actors, self.ranks = actors, ranks
        self.version, self.digest, self.replies = 0, "", []

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        import ray
        offsets = [1 + sum(self.ranks[:i]) for i in range(len(self.actors))]
        ray.get([a.init_nccl_receiver.remote(dict(init_info, rank_offset=o))
                 for a, o in zip(self.actors, offsets)])

    def update_weights(self, update_info: dict) -> None:
        import ray
        self.replies = ray.get([a.receive_nccl.remote(update_info, self.version, self.digest)
                                for a in self.actors])

    def start_weight_update(self) -> None: ...
    def finish_weight_update(self, weight_version=None) -> None: ...


def _replica_layout(gen) -> dict:
    """Runs inside a Generator actor (via __ray_call__): is NCCL on, how many ranks, which node and GPUs."""
    import ray
    on = bool(getattr(gen.engine, "nccl", False))
    return {"nccl": on, "ranks": gen.engine.llm.get_world_size() if on else 0,
            "node": ray.get_runtime_context().get_node_id(), "gpus": {str(g) for g in ray.get_gpu_ids()}}


def _free_local_gpu(layout: list[dict]) -> int:
    import ray
    import torch
    here = ray.get_runtime_context().get_node_id()
    used = set().union(*(lay["gpus"] for lay in layout if lay["node"] == here))
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    phys = [p.strip() for p in vis.split(",")] if vis else [str(i) for i in range(torch.cuda.device_count())]
    free = [i for i, p in enumerate(phys) if p not in used]
    if not free:
        raise RuntimeError("NCCL weight sync: every GPU of this process is used by a replica on this node; "
                           "NCCL refuses two ranks on one GPU, so run the sender on a GPU of its own")
    return free[0]


class NCCLSender:
    """NCCL rank 0, in the driver/trainer process: opens the rendezvous once, then sends state dicts."""

    def __init__(self, actors, device: int | None = None):
        require_cuda()
        import ray
        import torch
        from vllm.distributed.weight_transfer.nccl_engine import (NCCLTrainerInitInfo,
                                                                  NCCLTrainerWeightTransferEngine)
        from vllm.utils.network_utils import get_open_port
        layout = ray.get([a.__ray_call__.remote(_replica_layout) for a in actors])
        off = [i for i, lay in enumerate(layout) if not lay["nccl"]]
        if off:   # fail now: a replica that never joins would leave the rendezvous waiting
            raise RuntimeError(f"NCCL weight sync: replicas {off} were not built with "
                               "EngineSpec.extra['weight_sync']='nccl' on CUDA")
        self.device = torch.device("cuda", _free_local_gpu(layout) if device is None else device)
        torch.cuda.set_device(self.device)   # vLLM's trainer endpoint and packer use the current device
        self.actors = list(actors)
        ranks = [lay["ranks"] for lay in layout]
        self.client, self.source = _PoolClient(self.actors, ranks), _StateSource(self.device)
        info = NCCLTrainerInitInfo(master_address=ray.util.get_node_ip_address(), master_port=get_open_port(),
                                   world_size=1 + sum(ranks), rank=0)      # packed=True by default
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self.client, source=self.source)

    def send(self, state: dict, version: int, digest: str) -> list[str]:
        import torch
        torch.cuda.set_device(self.device)
        self.source.state, self.client.version, self.client.digest = state, version, digest
        try:
            self.engine.send_weights()     # start, update_weights || broadcast, finish (nccl_engine.py)
        finally:
            self.source.state = {}
        return self.client.replies


def close_nccl(pool) -> None:
    """Release the pool's NCCL group on the sender side (call before pool.shutdown())."""
    if (sender := _SENDERS.pop(pool, None)) is not None:
        sender.engine.shutdown()


def push_policy_nccl(pool, folder: str | Path, version: int, device: int | None = None) -> SyncReport:
    """weights.push_policy over NCCL for full weights (adapters stay on the object store: they are small).

    Replicas answer with the sender's digest, echoed once their update finished: hashing what they
    received would mean hooking vLLM's loader and copying every tensor back to the host. So this check
    proves every replica completed this version's round, not the bytes (the GPU test checks those).
    """
    require_cuda()
    if read_policy_meta(folder)["kind"] == "adapter":   # decided before loading anything: no double read
        return push_policy(pool, folder, version)
    t0 = time.time()
    _, payload = policy_payload(folder)
    digest = state_digest(payload)
    size = sum(t.numel() * t.element_size() for t in payload.values())
    old = _SENDERS[pool].actors if pool in _SENDERS else []
    if old and (len(old) != len(pool.actors) or any(a is not b for a, b in zip(old, pool.actors))):
        close_nccl(pool)          # the pool restarted a replica (new handle) since the group formed: re-form
    if pool not in _SENDERS:
        _SENDERS[pool] = NCCLSender(pool.actors, device)
    sender = _SENDERS[pool]
    got = sender.send(payload, version, digest)
    # A replica restarted later is not in the group: ReplicaPool replays this version via the object store.
    pool.pool.replayed["load_state"] = (payload, version)
    pool.version = version
    bad = [i for i, d in enumerate(got) if d != digest]
    if bad:
        raise RuntimeError(f"weight sync v{version} (nccl): replicas {bad} did not confirm {folder}")
    return SyncReport(version, "nccl", time.time() - t0, size, digest, len(got))
