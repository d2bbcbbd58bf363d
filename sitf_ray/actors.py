"""Ray actors that do the hot work (vLLM generators, PRM scorers) and the pool that drives them.

`ReplicaPool` splits a large request into fixed chunks, hands them to R replicas from one queue (the
fastest replica takes the most), returns results in input order, and survives a replica dying mid-request:
it starts a new one in the same placement-group bundle, replays the latest weight broadcast, and
re-issues the lost chunk. Chunk c of a request with seed s is always sampled with seed chunk_seed(s, c),
so results do not depend on which replica ran what, or on restarts.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .engines.base import Completion, EngineSpec, GenParams, chunk_seed, make_engine
from .progress import progress
from .scheduling import ClusterError, wait_placement_group

log = logging.getLogger(__name__)

# Quiet, in-process vLLM inside actors; tokenizers must not fork thread pools under Ray.
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
             "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1",
             "RAY_DEDUP_LOGS": "1"}


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


@ray.remote
class PRMScorer:
    """One PRM replica (prm.PRMModel); `load` swaps in a new iteration's PRM without restarting the actor.
    dtype: 'auto' (decided here, on this replica's node: precision.resolve) or an explicit torch dtype name."""

    def __init__(self, replica: int, threads: int = 1, dtype: str = "float32"):
        import torch

        from .precision import resolve
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.replica, self.threads, self.prm, self.folder = replica, threads, None, ""
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = resolve(dtype, self.device)

    def load(self, folder: str, max_len: int = 512) -> str:
        from .prm import PRMModel
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


_ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class PoolStats:
    requests: int = 0
    chunks: int = 0
    restarts: int = 0
    reissued_chunks: int = 0


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
        self.partial_dir = None
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
        from .precision import announce
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
            desc: str = "", unit: str = "item", **kwargs) -> list:
        """Ordered results of `method(chunk, ..., seed=chunk_seed(seed, c), **kwargs)` over all chunks."""
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        results: list[Any] = [None] * len(chunks)
        kept, files = self._kept_chunks(method, chunks, seed, kwargs, results)
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
                done, _ = ray.wait(list(busy), num_returns=1)
                ref = done[0]
                i, c = busy.pop(ref)
                try:
                    results[c] = ray.get(ref)
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
                    from .artifacts import atomic_write_bytes
                    atomic_write_bytes(files[c], pickle.dumps(results[c]))
                if todo:
                    submit(i)
        return [r for chunk in results for r in chunk]

    def _kept_chunks(self, method: str, chunks: list, seed, kwargs: dict, results: list):
        """With partial_dir set: load the chunks an earlier, interrupted call finished into `results`.
        Returns (indices of the chunks loaded, {chunk index: its file}); (set(), {}) without partial_dir."""
        if self.partial_dir is None:
            return set(), {}
        import hashlib
        from pathlib import Path
        folder = Path(self.partial_dir)
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

    def shutdown(self):
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
        _cleanup_vllm_dist_files(infos)


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

    def generate(self, prompts: list[str], params: GenParams, seed: int, desc: str = "generate") -> list[list[Completion]]:
        if not prompts:
            return []
        return self.pool.map("generate", prompts, self.chunk_size, seed=seed, desc=desc, unit="prompt",
                             params=params, min_version=self.version)

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
        self.pool.shutdown()


def _check_reachable(address: str, timeout: float = 10.0):
    """Fail in seconds, not minutes, when RAY_ADDRESS points at nothing (ray.init retries for long)."""
    import socket
    from urllib.parse import urlparse
    if address in ("auto", "local"):
        return
    u = urlparse(address if "://" in address else f"ray://{address}")
    if not u.hostname or not u.port:
        raise ClusterError(f"RAY_ADDRESS={address}: expected host:port (or ray://host:port)")
    try:
        socket.create_connection((u.hostname, u.port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {e.strerror or e}") from None


def local_cpus(configured: Optional[int] = None) -> int:
    """Logical CPUs of a local Ray started by any command: cluster.num_cpus, else max(8, 2 x cores).

    More logical CPUs than cores on purpose: generators, scorers, Ray Train workers and Serve's ingress
    mostly wait on each other, and each asks for whole CPUs; with the machine's 2 cores as 2 logical CPUs,
    the LLM server's placement group alone took both and `serve` never started (issue 21)."""
    return int(configured or max(8, 2 * (os.cpu_count() or 1)))


def init_ray(num_cpus: Optional[int] = None, quiet: bool = True) -> dict:
    """Connect to the cluster in RAY_ADDRESS (ray job submit) or start a local Ray with local_cpus(num_cpus)
    logical CPUs. Every command starts Ray through here."""
    if ray.is_initialized():
        return ray.cluster_resources()
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    # Ray Train's controller polls workers every 2 s by default: on short fits that is pure waiting.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    kw: dict = {"log_to_driver": not quiet, "configure_logging": True, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS", "")
    from . import console   # quiet: Ray's own INFO logs to files, our progress and summaries on the console
    console.before_init(num_cpus, local=not address, quiet=quiet)
    if address:
        _check_reachable(address)
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {e}") from None
    else:
        num_cpus = local_cpus(num_cpus)
        # Token authentication stays on for a local cluster (Ray's default: its ports listen on every
        # interface, not only loopback); only Ray's notice that it is on by default is kept off the console.
        # A user's RAY_AUTH_MODE wins; a joined cluster keeps its own (docs/RELIABILITY.md).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        print(f"[ray] starting a local Ray ({num_cpus} logical CPUs on {os.cpu_count()} cores)", flush=True)
        # address="local": always a fresh local instance, never a stale `ray start` cluster recorded in
        # /tmp/ray/ray_current_cluster (which plain ray.init() would try to join)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kw)
    console.after_init(quiet)
    return ray.cluster_resources()


def scorer_pool(replicas: int, cpus: float, gpus: float = 0.0, threads: int = 1, strategy: str = "PACK",
                dtype: str = "float32"):
    """R PRMScorer replicas in a placement group (load with .broadcast('load', folder, max_len)); dtype: 'auto'
    (each replica decides on its node) or explicit."""
    return ReplicaPool(PRMScorer, lambda i: (i, threads, dtype), replicas, cpus, gpus, strategy,
                       name="prm-scorer")
