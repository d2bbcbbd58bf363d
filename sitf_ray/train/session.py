"""Driver side of every update (M_0 SFT, ORPO / DPO / RFT policy updates, the PRM): one Ray Train session
fed with jobs.

    result = fit(FitJob(...), {"train": ray_dataset})

Why a session: a `TorchTrainer.fit()` spends 14-27 s starting (controller, worker processes importing
torch and transformers, process group, dataset split coordinator) before its first step, and a quickstart
runs a dozen small fits. A `TrainSession` is ONE `TorchTrainer.fit()` whose train loop
(`train/worker.session_loop`) takes job after job from a `JobBoard` actor: the workers, their imports and
the DDP process group are paid for once per run. Ray Train stays the engine of every update: its workers
(TorchTrainer, DDP over gloo / NCCL), its checkpoints (`ray.train.report`, per epoch, named by job) and its
failure handling (FailureConfig: a dead worker group is replaced and the running job resumes from its last
epoch checkpoint).

Each job's rows come from a Ray Dataset that the driver materialises and splits into one equal shard per
worker (`Dataset.split(equal=True)`, order preserved, so a re-run sees the same split); with fewer rows
than workers every worker gets all rows (DDP then averages identical gradients). The final model is
reported as checkpoint `<job>__final` under the session's storage; `fit` copies it to `out_dir`. A job
whose final checkpoint already exists (the driver died after training finished) is handed back at once.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import ray

from sitf_ray.cluster.precision import announce
from sitf_ray.cluster.scheduling import Watchdog
from sitf_ray.runs import progress as prog
from sitf_ray.runs.console import check_interrupt
from sitf_ray.train.worker import final_checkpoint_name, session_loop

SESSION_NAME = "train-session"     # one per storage folder (a run's ray_train/); stable across driver restarts


class FitError(RuntimeError):
    """A fit failed on a training worker; the message names the job and carries the worker's traceback."""


@dataclass
class FitJob:
    name: str                         # unique per fit within its storage; re-running a finished name hands it back
    storage: str                      # Ray Train storage path (local folder or bucket URI)
    init_model: str                   # HF folder to start from
    out_dir: str                      # the final model folder lands here
    objective: str                    # 'sft' | 'orpo' | 'dpo' | 'prm'
    hp: dict                          # lr, epochs, batch_size, grad_accum, warmup_steps, ...
    seed: int = 0
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    threads: int = 1
    lora: Optional[dict] = None       # peft LoraConfig kwargs; None = full fine-tune
    init_adapter: Optional[str] = None  # continue training this adapter (LoRA policies)
    validate: Optional[dict] = None   # {'task','rows','every','patience','min_delta','max_tokens','min_epochs'}
    ckpt_every: int = 1
    max_failures: int = 2             # worker-group restarts the session may use (FailureConfig)
    extra: dict = field(default_factory=dict)


@dataclass
class FitResult:
    out_dir: str
    steps: int
    epochs: int
    seconds: float
    history: list
    best: Optional[dict] = None
    first_step_at: Optional[float] = None   # wall clock (time.time()) of the first optimizer step (this run)
    last_step_at: Optional[float] = None
    precision: Optional[dict] = None        # precision.Decision.as_dict() of the training workers (rank 0)
    restored_from_epoch: int = 0            # the epoch checkpoint the fit resumed from after a failure (0: none)
    stopped_by: Optional[str] = None        # validated fits: 'early stopping' or 'epoch cap' (worker.stopped_by)


# ------------------------------------------------------------------------------------------ job board

@ray.remote(num_cpus=0, max_concurrency=64)
class JobBoard:
    """The session's job queue. The driver posts jobs and waits for their outcome; every worker takes the
    oldest unfinished job; rank 0 finishes it, any rank may fail it. Blocking calls time out so callers can
    notice shutdowns."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queue: list[dict] = []          # unfinished jobs, oldest first: {'seq','job','shards'}
        self.outcomes: dict[int, dict] = {}
        self.seq = 0
        self.first_take: Optional[float] = None    # when a worker first asked for work: the session is up

    def ready_at(self) -> Optional[float]:
        return self.first_take

    def post(self, job: dict, shards: list) -> int:
        with self.cond:
            self.seq += 1
            self.queue.append({"seq": self.seq, "job": job, "shards": shards})
            self.cond.notify_all()
            return self.seq

    def take(self, after: int, timeout: float) -> Optional[dict]:
        """The oldest unfinished job with seq > after (a restarted worker passes -1: the job it was on)."""
        deadline = time.time() + timeout
        if self.first_take is None:
            self.first_take = time.time()
        with self.cond:
            while True:
                for item in self.queue:
                    if item["seq"] > after:
                        return item
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def finish(self, seq: int, outcome: dict) -> None:
        self._end(seq, outcome)

    def fail(self, seq: int, rank: int, error: str) -> None:
        self._end(seq, {"error": f"worker rank {rank}: {error}"})

    def _end(self, seq: int, outcome: dict) -> None:
        with self.cond:
            self.queue = [i for i in self.queue if i["seq"] != seq]
            self.outcomes.setdefault(seq, outcome)     # the first word on a job stands
            self.cond.notify_all()

    def outcome(self, seq: int, timeout: float) -> Optional[dict]:
        deadline = time.time() + timeout
        with self.cond:
            while seq not in self.outcomes:
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.outcomes.pop(seq)


# ---------------------------------------------------------------------------------------------- session

class TrainSession:
    """One long-lived TorchTrainer.fit() (in a driver thread) that runs FitJobs one after another.

    Shape (storage, workers, CPUs/GPUs per worker) is fixed per session; `fit` starts a new session when a
    job needs another shape. Raises FitError (job failed on a worker, or the session died) from `run`.
    """

    def __init__(self, storage: str, workers: int, cpus: float, gpus: float, max_failures: int):
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        self.storage = storage if "://" in storage else os.path.abspath(storage)
        self.key = (self.storage, workers, cpus, gpus)
        self.workers = workers
        self.started = time.time()
        self.board = JobBoard.remote()
        use_gpu = gpus > 0
        res = {"CPU": cpus} | ({"GPU": gpus} if use_gpu else {})
        self.resources = res
        self.trainer = TorchTrainer(
            session_loop, train_loop_config={"board": self.board},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=res),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=SESSION_NAME, storage_path=self.storage,
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, name="sitf-train-session", daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.trainer.fit()
        except BaseException as e:      # surfaced to the job that is waiting (or the next one)
            self.error = e

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def watchdog(self):
        """scheduling.Watchdog over this session's worker group (its placement group's bundles are ours)."""
        want = {k: float(v) for k, v in self.resources.items()}
        return Watchdog(f"Ray Train workers (cluster.train_workers={self.workers}, resources per worker "
                        f"{want})", only=lambda g: g["bundles"] and all(
                            {k: float(v) for k, v in b.items() if k in want} == want for b in g["bundles"]))

    def checkpoint_uri(self, name: str) -> str:
        return f"{self.storage.rstrip('/')}/{SESSION_NAME}/{name}"

    def run(self, job: FitJob, dataset, queue=None) -> FitResult:
        t0 = time.time()
        final = self.checkpoint_uri(final_checkpoint_name(job.name))
        if not _exists(final):
            shards = split_dataset(dataset, self.workers)
            payload = asdict(job) | {"progress_queue": queue}
            seq = ray.get(self.board.post.remote(payload, shards))
            dog = None if ray.get(self.board.ready_at.remote()) else self.watchdog()
            while True:
                check_interrupt()
                out = ray.get(self.board.outcome.remote(seq, 1.0))
                if out is not None:
                    break
                if not self.alive:
                    raise FitError(f"fit {job.name}: the training session ended: {self.error!r}") from self.error
                if dog is not None:     # workers not up yet: fail in bounded time if they cannot be placed
                    if ray.get(self.board.ready_at.remote()):
                        dog = None
                    else:
                        dog.check()
            if "error" in out:
                raise FitError(f"fit {job.name} failed on a training worker:\n{out['error']}")
        return _collect(job, final, t0)

    def close(self, timeout: float = 60.0):
        if not ray.is_initialized():     # at exit, after ray.shutdown: nothing left to stop
            return
        try:
            up = ray.get(self.board.ready_at.remote(), timeout=5)
        except Exception:
            up = None
        if not up:
            timeout = 1.0      # workers never came up (unplaceable): nothing to stop cleanly
        if self.alive:
            try:
                self.board.post.remote({"stop": True}, [])
            except Exception:
                pass
            self.thread.join(timeout)


def _exists(uri: str) -> bool:
    if "://" not in uri:
        return Path(uri, "fit_result.json").exists()
    import pyarrow.fs
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.get_file_info(f"{path}/fit_result.json").type != pyarrow.fs.FileType.NotFound


def _collect(job: FitJob, final_uri: str, t0: float) -> FitResult:
    """Copy the final checkpoint's model folder to job.out_dir (atomically) and read what happened."""
    from ray.train import Checkpoint
    out = Path(job.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    Checkpoint(final_uri).to_directory(str(tmp))
    info = json.loads((tmp / "fit_result.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(tmp / "model"), str(out))
    shutil.rmtree(tmp, ignore_errors=True)
    announce(info.get("precision"), "train workers")     # rank 0's choice, made on its node; once per run
    return FitResult(out_dir=str(out), steps=info["steps"], epochs=info["epochs"], seconds=time.time() - t0,
                     history=info["history"], best=info.get("best"), first_step_at=info.get("first_step_at"),
                     last_step_at=info.get("last_step_at"), precision=info.get("precision"),
                     restored_from_epoch=info.get("restored_from_epoch", 0), stopped_by=info.get("stopped_by"))


def split_dataset(ds, workers: int) -> list:
    """One equal, order-preserving shard per worker: a list of row dicts, or (Ray Dataset) the object refs of
    the shard's Arrow blocks, which the worker fetches without running a Ray Data executor of its own.

    Fewer rows than workers: every worker gets all of them (DDP averages identical gradients).
    """
    if isinstance(ds, list):
        if len(ds) < workers:
            return [ds] * workers
        n = len(ds) // workers
        return [ds[i * n:(i + 1) * n] for i in range(workers)]
    from ray.data import DataContext
    DataContext.get_current().execution_options.preserve_order = True   # the same split on every run
    mat = ds.materialize()
    parts = [mat] * workers if mat.count() < workers else mat.split(workers, equal=True)
    return [{"arrow_refs": p.to_arrow_refs()} for p in parts]


_SESSION: Optional[TrainSession] = None
_LOCK = threading.Lock()


def session(storage: str, workers: int, cpus: float = 1.0, gpus: float = 0.0, max_failures: int = 2) -> TrainSession:
    """The driver's training session for this shape, started when needed (starting returns at once: the
    workers come up in the background, so callers can warm it up ahead of the first fit)."""
    global _SESSION
    with _LOCK:
        key = (storage if "://" in storage else os.path.abspath(storage), workers, cpus, gpus)
        if _SESSION is not None and (_SESSION.key != key or not _SESSION.alive):
            _SESSION.close()
            _SESSION = None
        if _SESSION is None:
            _SESSION = TrainSession(storage, workers, cpus, gpus, max_failures)
        return _SESSION


def close_session():
    """Stop the driver's training session (its workers release their CPUs / GPUs)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None:
            _SESSION.close()
            _SESSION = None


atexit.register(close_session)


def fit(job: FitJob, datasets: dict) -> FitResult:
    """Run one job on the driver's training session; datasets['train'] is a Ray Dataset (or a list of rows).

    Raises FitError when the job fails on a worker (the session is then replaced for the next fit).
    """
    s = session(job.storage, job.workers, job.cpus_per_worker, job.gpus_per_worker, job.max_failures)
    with step_progress(job.name) as queue:
        try:
            return s.run(job, datasets["train"], queue)
        except FitError:
            close_session()     # a failed job may have used up the session's restarts: start clean next time
            raise


# --------------------------------------------------------------------------------------------- progress

_QUEUE = None


def _progress_queue():
    """One ray.util.queue.Queue per driver process, shared by every fit, for the workers' step counts."""
    global _QUEUE
    if _QUEUE is None:
        from ray.util.queue import Queue
        _QUEUE = Queue(maxsize=1000, actor_options={"num_cpus": 0})
    return _QUEUE


@contextmanager
def step_progress(name: str):
    """A step bar on the driver, fed by rank 0 through a Ray queue (worker stdout is not forwarded)."""
    if not prog.enabled():
        yield None
        return
    from ray.util.queue import Empty
    queue, stop = _progress_queue(), threading.Event()

    def drain(bar):
        while True:
            try:
                tag, step, total, loss = queue.get(timeout=0.5)
            except Empty:
                if stop.is_set():
                    return
                continue
            except Exception:      # queue actor gone: the bar is cosmetic, training goes on
                return
            if tag != name:        # left over from an earlier fit
                continue
            bar.total = total
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            bar.update(step - bar.n)       # redraws at the bar's own pace (every 2 s in job logs)
            if step >= total:
                bar.refresh()

    with prog.progress(total=0, desc=f"[train] {name}", unit="step") as bar:
        t = threading.Thread(target=drain, args=(bar,), daemon=True)
        t.start()
        try:
            yield queue
        finally:
            stop.set()
            t.join(timeout=10)
