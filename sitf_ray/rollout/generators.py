"""The policy's generators: one `Generator` actor per engine replica (vLLM or HF) and `GeneratorPool`, the
fault-tolerant pool (cluster/pool.py) that sampling, Monte-Carlo rollouts and evaluation all go through.
Weight broadcasts (rollout/weights.py) land on every replica and are replayed to a restarted one."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import ray

from sitf_ray.cluster.pool import PoolStats, ReplicaPool
from sitf_ray.cluster.ray_init import ACTOR_ENV
from sitf_ray.rollout.engines import make_engine
from sitf_ray.rollout.engines.base import Completion, EngineSpec, GenParams


class StaleWeightsError(RuntimeError):
    """A replica was asked for a weight version it does not hold."""


@ray.remote
class Generator:
    """One engine replica (vLLM or HF) in its own worker process."""

    def __init__(self, spec: EngineSpec, replica: int):
        os.environ.update({k: v for k, v in ACTOR_ENV.items()})
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        self.replica = replica
        self.engine = make_engine(spec)
        self.dist_ident = os.environ.get("VLLM_DIST_IDENT", "")

    def generate(self, prompts: list[str], params: GenParams, seed: int,
                 min_version: int = 0) -> list[list[Completion]]:
        if self.engine.version < min_version:
            raise StaleWeightsError(f"replica {self.replica} holds weights v{self.engine.version}, "
                                    f"request needs v{min_version}")
        return self.engine.generate(prompts, params, seed)

    def load_state(self, state: dict, version: int) -> str:
        return self.engine.load_state(state, version)

    def load_adapter(self, files: dict, version: int) -> str:
        return self.engine.load_adapter(files, version)

    # CUDA-only NCCL weight sync (weights_nccl.py): the driver calls these, never ReplicaPool.broadcast,
    # whose replay-on-restart would leave a restarted replica waiting for a broadcast that never comes.
    def init_nccl_receiver(self, init_info: dict) -> None:
        self.engine.init_nccl_receiver(init_info)

    def receive_nccl(self, meta: dict, version: int, digest: str = "") -> str:
        return self.engine.receive_nccl(meta, version, digest)

    def info(self) -> dict:
        return {"replica": self.replica, "version": self.engine.version, "digest": self.engine.digest,
                "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "dist_ident": self.dist_ident,
                "precision": getattr(self.engine, "precision", None) and self.engine.precision.as_dict()}

    def close(self):
        self.engine.close()


def _cleanup_vllm_dist_files(infos: list[dict]):
    """vLLM's in-process engine leaves /tmp/vllm_dist_* rendezvous files behind when its actor is killed."""
    import tempfile
    for info in infos:
        ident = info.get("dist_ident") or ""
        if ident.startswith("vllm_dist_"):
            try:
                os.remove(os.path.join(tempfile.gettempdir(), ident))
            except OSError:
                pass


class GeneratorPool:
    """Generators for one model: sampling, MC rollouts and greedy evaluation all go through here."""

    def __init__(self, spec: EngineSpec, replicas: int, cpus: float = 1.0, gpus: float = 0.0,
                 strategy: str = "PACK", chunk_size: int = 256):
        t = time.time()
        self.spec, self.chunk_size = spec, chunk_size
        self.pool = ReplicaPool(Generator, lambda i: (spec, i), replicas, cpus, gpus, strategy, name="generator")
        self.version = 0
        self.start_seconds = time.time() - t

    def generate(self, prompts: list[str], params: GenParams, seed: int, desc: str = "generate",
                 partial_dir: Optional[Path] = None) -> list[list[Completion]]:
        """params.n completions per prompt, in prompt order. partial_dir: finished chunks are kept there and
        reused by a later call with the same prompts, params and seed (a stage resumed after a crash)."""
        if not prompts:
            return []
        return self.pool.map("generate", prompts, self.chunk_size, seed=seed, desc=desc, unit="prompt",
                             partial_dir=partial_dir, params=params, min_version=self.version)

    def load_state(self, state: dict, version: int) -> list[str]:
        digests = self.pool.broadcast("load_state", state, version)
        self.version = version
        return digests

    def load_adapter(self, files: dict, version: int) -> list[str]:
        digests = self.pool.broadcast("load_adapter", files, version)
        self.version = version
        return digests

    def info(self) -> list[dict]:
        return self.pool.call_all("info")

    @property
    def actors(self):
        return self.pool.actors

    @property
    def stats(self) -> PoolStats:
        return self.pool.stats

    def shutdown(self):
        _cleanup_vllm_dist_files(self.pool.shutdown())
