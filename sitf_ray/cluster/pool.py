"""Ray actors that do the hot work (vLLM generators, PRM scorers) and the pool that drives them.

`ReplicaPool` splits a large request into fixed chunks, hands them to R replicas from one queue (the
fastest replica takes the most), returns results in input order, and survives a replica dying mid-request:
it starts a new one in the same placement-group bundle, replays the latest weight broadcast, and
re-issues the lost chunk. Chunk c of a request with seed s is always sampled with seed chunk_seed(s, c),
so results do not depend on which replica ran what, or on restarts.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sitf_ray.cluster.precision import announce
from sitf_ray.cluster.ray_init import ACTOR_ENV
from sitf_ray.cluster.scheduling import wait_placement_group
from sitf_ray.runs.artifacts import atomic_write_bytes
from sitf_ray.runs.console import check_interrupt
from sitf_ray.runs.progress import progress

log = logging.getLogger(__name__)



_ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


def chunk_seed(seed: int, index: int) -> int:
    """Deterministic 31-bit seed for chunk `index` of a request with base `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class PoolStats:
    """What a pool has done over its lifetime: requests (map calls), their chunks, replica restarts, chunks
    issued again after a replica died, and chunks whose results came back."""
    requests: int = 0
    chunks: int = 0
    restarts: int = 0
    reissued_chunks: int = 0
    done_chunks: int = 0          # chunks whose results came back (over all requests)


class ReplicaPool:
    """R replicas of one actor class in a placement group, fed from one queue of chunks."""

    def __init__(self, actor_cls, make_args: Callable[[int], tuple], replicas: int, cpus: float = 1.0,
                 gpus: float = 0.0, strategy: str = "PACK", name: str = "pool", max_restarts: int = 3):
        self.actor_cls, self.make_args, self.name = actor_cls, make_args, name
        self.cpus, self.gpus, self.max_restarts = cpus, gpus, max_restarts
        bundle = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
        self.pg = placement_group([bundle] * replicas, strategy=strategy,
                                  name=f"sitf-{name}-{uuid.uuid4().hex[:8]}")   # names must be unique
        wait_placement_group(self.pg, f"{name} pool ({replicas} replicas, strategy {strategy})")
        self.actors = [self._start(i) for i in range(replicas)]
        self.replayed: dict[str, tuple] = {}   # last broadcast per method, replayed on restarted replicas
        self.stats = PoolStats()
        # When set, map() keeps each finished chunk's result here, keyed by what determines it (method, items,
        # arguments, chunk seed), and takes it back instead of recomputing: a stage interrupted part-way
        # resumes from its finished chunks with identical results (per-chunk seeds). The caller owns the folder.
        self._wait_ready()

    # ------------------------------------------------------------------------------------ replicas
    def _start(self, i: int):
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
        opts = dict(num_cpus=self.cpus, num_gpus=self.gpus, scheduling_strategy=strategy,
                    runtime_env={"env_vars": ACTOR_ENV})
        return self.actor_cls.options(**opts).remote(*self.make_args(i))

    def _wait_ready(self):
        # The first call on each actor raises if its constructor failed: surface that error now. Each replica
        # chose its dtype on its own node; the console says so once per distinct choice.
        for info in ray.get([a.info.remote() for a in self.actors]):
            announce(info.get("precision") if isinstance(info, dict) else None, self.name)

    def _restart(self, i: int):
        self.stats.restarts += 1
        if self.stats.restarts > self.max_restarts * len(self.actors):
            raise RuntimeError(f"{self.name}: replicas died {self.stats.restarts} times; giving up")
        log.warning("%s: replica %d died; restarting it and replaying its weights", self.name, i)
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[i] = self._start(i)
        for method, args in self.replayed.items():
            ray.get(getattr(self.actors[i], method).remote(*args))

    def broadcast(self, method: str, *args) -> list:
        """Call `method(*args)` on every replica at once (large args go to the object store once); a replica
        that dies meanwhile is restarted (replaying earlier broadcasts) and asked again."""
        refs = tuple(ray.put(a) if not isinstance(a, (int, float, str)) else a for a in args)
        self.replayed[method] = refs
        pending = {getattr(a, method).remote(*refs): i for i, a in enumerate(self.actors)}
        out: list = [None] * len(self.actors)
        while pending:
            check_interrupt()
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                out[i] = ray.get(done[0])
            except _ACTOR_FAILURES:
                self._restart(i)   # replays `method` itself, then we ask again
                pending[getattr(self.actors[i], method).remote(*refs)] = i
        return out

    def call_all(self, method: str, *args) -> list:
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    # -------------------------------------------------------------------------------------- map
    def map(self, method: str, items: list, chunk_size: int, *, seed: Optional[int] = None,
            desc: str = "", unit: str = "item", partial_dir: Optional[Path] = None, **kwargs) -> list:
        """Ordered results of `method(chunk, ..., seed=chunk_seed(seed, c), **kwargs)` over all chunks.
        partial_dir: keep every finished chunk there (pickled, keyed by its content), and take the chunks
        an earlier, interrupted call with the same content finished from there instead of computing them."""
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        results: list[Any] = [None] * len(chunks)
        kept, files = self._kept_chunks(partial_dir, method, chunks, seed, kwargs, results)
        todo = [c for c in range(len(chunks)) if c not in kept][::-1]       # pop() takes chunks in order
        busy: dict = {}                              # ref -> (replica, chunk index)
        depth = 2                                    # chunks queued per replica (keeps it fed)
        self.stats.requests += 1
        self.stats.chunks += len(chunks)

        def submit(i: int):
            c = todo.pop()
            kw = dict(kwargs)
            if seed is not None:
                kw["seed"] = chunk_seed(seed, c)
            busy[getattr(self.actors[i], method).remote(chunks[c], **kw)] = (i, c)

        with progress(total=len(items), desc=desc or f"{self.name}.{method}", unit=unit) as bar:
            if kept:
                bar.update(sum(len(chunks[c]) for c in kept))
            for _ in range(depth):
                for i in range(len(self.actors)):
                    if todo:
                        submit(i)
            while busy:
                check_interrupt()      # a Ctrl-C a library swallowed stops the call between chunks
                done, _ = ray.wait(list(busy), num_returns=1)
                ref = done[0]
                i, c = busy.pop(ref)
                try:
                    results[c] = ray.get(ref)
                    self.stats.done_chunks += 1
                except _ACTOR_FAILURES:
                    # Every chunk queued on the dead replica is lost: requeue all of them, once each.
                    lost = [c] + [cc for r, (ii, cc) in list(busy.items()) if ii == i]
                    for r in [r for r, (ii, _) in busy.items() if ii == i]:
                        busy.pop(r)
                    self.stats.reissued_chunks += len(lost)
                    todo.extend(sorted(lost, reverse=True))
                    self._restart(i)
                    for _ in range(depth):
                        if todo:
                            submit(i)
                    continue
                bar.update(len(chunks[c]))
                if files:
                    atomic_write_bytes(files[c], pickle.dumps(results[c]))
                if todo:
                    submit(i)
        return [r for chunk in results for r in chunk]

    def _kept_chunks(self, partial_dir: Optional[Path], method: str, chunks: list, seed, kwargs: dict,
                     results: list):
        """With a partial_dir: load the chunks an earlier, interrupted call finished into `results`.
        Returns (indices of the chunks loaded, {chunk index: its file}); (set(), {}) without one."""
        if partial_dir is None:
            return set(), {}
        folder = Path(partial_dir)
        folder.mkdir(parents=True, exist_ok=True)
        args = repr(sorted((k, v) for k, v in kwargs.items() if k != "min_version"))  # a version number is not content
        files, kept = {}, set()
        for c, chunk in enumerate(chunks):
            s = chunk_seed(seed, c) if seed is not None else None
            key = hashlib.sha256(repr((method, chunk, args, s)).encode()).hexdigest()[:32]
            files[c] = folder / f"{method}-{key}.pkl"
            if files[c].exists():
                try:
                    results[c] = pickle.loads(files[c].read_bytes())
                    kept.add(c)
                except Exception:      # a torn or foreign file: compute the chunk again
                    results[c] = None
        if kept:
            print(f"[resume] {self.name}.{method}: {len(kept)} of {len(chunks)} chunks kept from an interrupted "
                  f"call", flush=True)
        return kept, files

    def shutdown(self) -> list[dict]:
        """Stop every replica and free the placement group; returns the replicas' last info() (may be [])."""
        infos = []
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=30)
            ray.get([a.close.remote() for a in self.actors if hasattr(a, "close")], timeout=30)
        except Exception:
            pass
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        remove_placement_group(self.pg)
        return infos
