"""PRM scorers: `PRMScorer` actors that hold the iteration's PRM (feedback/prm.py `PRMModel`) and score
step lists, behind the fault-tolerant pool of cluster/pool.py (`scorer_pool`)."""
from __future__ import annotations

import os

import ray

from sitf_ray.cluster.pool import ReplicaPool


@ray.remote
class PRMScorer:
    """One PRM replica (prm.PRMModel); `load` swaps in a new iteration's PRM without restarting the actor.
    dtype: 'auto' (decided here, on this replica's node: precision.resolve) or an explicit torch dtype name."""

    def __init__(self, replica: int, threads: int = 1, dtype: str = "float32"):
        import torch

        from sitf_ray.cluster.precision import resolve
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.replica, self.threads, self.prm, self.folder = replica, threads, None, ""
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = resolve(dtype, self.device)

    def load(self, folder: str, max_len: int = 512) -> str:
        from sitf_ray.feedback.prm import PRMModel
        self.prm = PRMModel(folder, max_len=max_len, threads=self.threads, device=self.device,
                            dtype=self.precision.dtype)
        self.folder = folder
        return folder

    def score(self, items: list[dict]) -> list[list[float]]:
        """items: {'prompt', 'steps'} -> P(step correct) per step of each item."""
        if self.prm is None:
            raise RuntimeError(f"PRM scorer {self.replica}: no PRM loaded")
        return self.prm.score(items)

    def info(self) -> dict:
        return {"replica": self.replica, "folder": self.folder, "pid": os.getpid(),
                "precision": self.precision.as_dict()}


def scorer_pool(replicas: int, cpus: float, gpus: float = 0.0, threads: int = 1, strategy: str = "PACK",
                dtype: str = "float32"):
    """R PRMScorer replicas in a placement group (load with .broadcast('load', folder, max_len)); dtype: 'auto'
    (each replica decides on its node) or explicit."""
    return ReplicaPool(PRMScorer, lambda i: (i, threads, dtype), replicas, cpus, gpus, strategy,
                       name="prm-scorer")
