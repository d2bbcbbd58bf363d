"""Worker side of every update: the training loop that runs inside a long-lived Ray Train session.

    session_loop(config)    TorchTrainer's train_loop_per_worker: take jobs from the session's JobBoard,
                            run each, until the driver posts 'stop'
    run_job(job, rows, ...) one fit: model (full or LoRA), AdamW + warm-up/cosine, epochs of length-grouped
                            batches, DDP over the session's process group, a checkpoint per epoch, optional
                            validation with early stopping, the final model reported as a checkpoint

run_job is a short driver over one function per phase, all sharing one FitState (torchtune's recipe shape):
    setup -> restore -> per epoch: train_epoch (optimizer_step, put_progress), validate, checkpoint -> finish
What depends on the objective (encoding, collation, loss, reference model, model head) is looked up in
objectives.py's table, never branched on here.

Checkpoints go through `ray.train.report` with deterministic names (`<job>__epoch003`, `<job>__final`), so
when Ray Train restarts a dead worker group (FailureConfig) the loop finds the job it was running with
`ray.train.get_checkpoint()` and resumes from that epoch: model, optimizer, scheduler and RNG state, so the
final weights equal an uninterrupted fit's. The driver side (session.py) reads `<job>__final` from storage.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from sitf_ray.rollout.policy_folder import write_policy_meta

if TYPE_CHECKING:       # objectives.py imports torch: only inside the functions that run on a worker
    from sitf_ray.train.objectives import Objective

SEP = "__"                  # <job name>__epoch003 / <job name>__final: job names never contain it


def epoch_checkpoint_name(job_name: str, epoch: int) -> str:
    return f"{job_name}{SEP}epoch{epoch:03d}"


def final_checkpoint_name(job_name: str) -> str:
    return f"{job_name}{SEP}final"


def checkpoint_job(ckpt) -> tuple[str, str]:
    """(job name, 'final' | 'epochNNN') of a checkpoint reported by run_job; ('', '') for anything else."""
    name = Path(str(ckpt.path).rstrip("/")).name
    job, sep, tag = name.rpartition(SEP)
    return (job, tag) if sep else ("", "")


# ------------------------------------------------------------------------------------------ the session

def session_loop(config: dict):
    """Serve jobs until 'stop'. A job's rows are shard `rank` of the driver's Ray Data split.

    On a (re)start, `ray.train.get_checkpoint()` is the newest checkpoint of this session (after a worker
    restart) or of the session that ran before a driver crash (same storage and name): the job it belongs
    to resumes from it, every other job starts fresh.
    """
    import ray
    import ray.train
    board = config["board"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ckpt = ray.train.get_checkpoint()
    after = -1
    while True:
        item = ray.get(board.take.remote(after, 2.0))
        if item is None:
            continue
        seq, job = item["seq"], item["job"]
        if job.get("stop"):
            return
        resume = ckpt if ckpt is not None and checkpoint_job(ckpt)[0] == job["name"] else None
        ckpt = None
        try:
            run_job(job, item["shards"][rank], rank, world, resume)
        except Exception as e:
            # A job's own error reaches the driver at once. A collective that broke because another worker
            # died is not the job's fault: Ray Train replaces the group and the job resumes from its last
            # checkpoint. Either way re-raising fails this worker (another rank may wait in a collective).
            if not peer_lost(e):
                ray.get(board.fail.remote(seq, rank, traceback.format_exc(limit=8)))
            raise
        if rank == 0:
            ray.get(board.finish.remote(seq, {"checkpoint": final_checkpoint_name(job["name"])}))
        after = seq


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport/",
              "NCCL communicator was aborted", "ProcessGroupNCCL")


def peer_lost(exc: BaseException) -> bool:
    """True when `exc` is a collective (gloo / NCCL) failing because another worker of the group is gone."""
    import torch.distributed as dist
    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_LOST)


# ---------------------------------------------------------------------------------------------- models

def quantization(load_in_4bit: bool):
    """QLoRA's 4-bit NF4 base (bitsandbytes, CUDA only); None when not asked for."""
    if not load_in_4bit:
        return None
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("load_in_4bit needs a CUDA GPU (bitsandbytes); set model/prm.load_in_4bit=false on CPU")
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_model(job: dict):
    """The model a job trains: causal LM (policy) or token classifier with 2 labels (PRM); LoRA via peft."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from sitf_ray.train.objectives import get
    token_classifier = get(job["objective"]).token_classifier
    q = quantization(bool(job.get("extra", {}).get("load_in_4bit")))
    kw = {"dtype": torch.bfloat16 if q else torch.float32} | ({"quantization_config": q} if q else {})
    if token_classifier:
        model = AutoModelForTokenClassification.from_pretrained(job["init_model"], num_labels=2, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(job["init_model"], **kw)
    if q:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model)
    if job.get("init_adapter"):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, job["init_adapter"], is_trainable=True)
    elif job.get("lora"):
        from peft import LoraConfig, get_peft_model
        kw = dict(job["lora"])
        if token_classifier:
            kw["modules_to_save"] = ["score"]      # the 2-way head is trained in full
            kw["task_type"] = "TOKEN_CLS"
        model = get_peft_model(model, LoraConfig(**kw))
    return model


def _wrap_ddp(model, world: int):
    """DDP over the session's process group (Ray Train set it up once for the whole session)."""
    import ray.train.torch
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)


# ---------------------------------------------------------------------------------------------- one fit

@dataclass
class FitState:
    """Everything one fit carries from phase to phase (setup -> restore -> train_epoch / validate /
    checkpoint per epoch -> finish). The first block is fixed by setup; the second is the fit's progress,
    changed as it trains (and saved in / restored from an epoch checkpoint where marked)."""
    job: dict
    rank: int
    world: int
    objective: Objective
    tok: Any
    pad_id: int
    rows: list                  # this worker's token rows
    row_lens: list              # per row, its longest *input_ids (tokens): for length grouping
    model: Any                  # the bare model: its state_dict is what checkpoints hold
    ref_model: Any              # frozen reference (objective.needs_ref_model) or None
    ddp_model: Any              # model wrapped for DDP: forward/backward go through it
    device: Any
    precision: Any              # cluster.precision.Decision: autocast dtype of this worker
    params: list                # the trainable parameters (clipped, optimised)
    opt: Any
    sched: Any
    per_worker_bs: int          # rows per micro-batch on this worker
    accum: int                  # micro-batches per optimizer step
    n_batches: int              # micro-batches per epoch on this worker
    epochs: int
    max_steps: int              # exact optimizer-step budget, 0: none
    total_steps: int            # optimizer steps of the whole fit (LR schedule length)
    prof: Callable              # prof(msg): a timed '[fit-profile]' line when job.extra.profile, else nothing
    val: Optional[dict] = None  # job["validate"]: task, rows, every, max_tokens, min_delta, patience, min_epochs
    val_task: Any = None
    val_rows: list = field(default_factory=list)    # this worker's share of the validation rows

    start_epoch: int = 0        # checkpointed: first epoch still to run
    restored_epoch: int = 0     # the epoch checkpoint this run of the fit was restored from (0: none)
    step: int = 0               # checkpointed: optimizer steps taken
    history: list = field(default_factory=list)     # checkpointed: one metrics dict per epoch
    best: Optional[dict] = None                     # checkpointed: {val_accuracy, epoch, step} of best_state
    best_state: Optional[dict] = None               # checkpointed: model state_dict of the best validation
    bad_evals: int = 0          # checkpointed: validations in a row without improvement
    bad_run: int = 0            # non-finite optimizer steps in a row now
    skipped: int = 0            # non-finite (skipped) optimizer steps in this epoch
    last_put: float = 0.0       # wall-clock time of the last progress-queue message
    first_step_at: Optional[float] = None           # wall-clock times, for start-up and throughput figures
    last_step_at: Optional[float] = None

    @property
    def name(self) -> str:
        return self.job["name"]

    @property
    def hp(self) -> dict:
        return self.job["hp"]


def run_job(job: dict, shard, rank: int, world: int, resume=None) -> None:
    """Train one FitJob (as a dict) on this worker's shard; the final model is reported as `<name>__final`.

    shard: see shard_rows. resume: a checkpoint of this job (ray.train.Checkpoint) or None.
    Raises RuntimeError when the shard is empty.
    """
    state = setup(job, shard, rank, world)
    restore(state, resume)
    state.prof("first batch")
    for epoch in range(state.start_epoch, state.epochs):
        metrics = train_epoch(state, epoch)
        stop = validate(state, epoch, metrics)
        state.history.append(metrics)
        last = epoch + 1 == state.epochs or stop
        # No checkpoint after the last epoch: the final report follows at once and supersedes it.
        if not last and (epoch + 1) % int(job.get("ckpt_every", 1)) == 0:
            checkpoint(state, epoch, metrics)
        if last:
            break
    finish(state)


def setup(job: dict, shard, rank: int, world: int) -> FitState:
    """Seed, tokenise this worker's shard, load the model(s), wrap for DDP, pick the precision, build the
    optimizer and LR schedule. The order is the order the RNGs are drawn in: keep it (resumed and
    uninterrupted fits must match). RuntimeError when the shard encodes to no rows."""
    import numpy as np
    import ray.train.torch
    import torch
    from transformers import AutoTokenizer

    from sitf_ray.cluster.precision import resolve
    from sitf_ray.train.objectives import get
    objective = get(job["objective"])
    torch.set_num_threads(int(job["threads"]))
    prof = _profiler(bool(job.get("extra", {}).get("profile")))
    seed, hp, name = int(job["seed"]), job["hp"], job["name"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(job["init_model"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    rows = shard_rows(shard)
    prof(f"{len(rows)} rows read")
    rows = objective.encode(rows, tok, hp)
    if not rows:
        raise RuntimeError(f"{name}: training worker {rank} of {world} received no rows")
    bs, accum, epochs = int(hp["batch_size"]), int(hp.get("grad_accum", 1)), int(hp["epochs"])
    per_worker_bs = max(1, bs // world)         # batch_size is global: the workers split it
    n_batches = max(1, math.ceil(len(rows) / per_worker_bs))
    steps_per_epoch = math.ceil(n_batches / accum)
    max_steps = int(hp.get("max_steps") or 0)          # an exact step budget (matched-compute baselines)
    if max_steps:
        epochs = math.ceil(max_steps / steps_per_epoch)
    total_steps = max(1, max_steps or epochs * steps_per_epoch)
    # the cosine may end before the cap (hp.decay_epochs): the lr then holds at its floor until early stopping
    decay_steps = int(hp.get("decay_epochs") or epochs) * steps_per_epoch     # make_optimizer caps it at total

    model = load_model(job)
    ref_model = load_reference_model(job) if objective.needs_ref_model else None
    prof("model loaded")
    ddp_model = _wrap_ddp(model, world)
    device = ray.train.torch.get_device()
    # Mixed precision where this worker's hardware runs bf16 natively ('auto'), fp32 otherwise: fp32 weights and
    # optimizer state either way, bf16 matmuls under autocast (precision.py). Decided here, on this node.
    precision = resolve(str(job.get("extra", {}).get("dtype", "float32")), device.type)
    if ref_model is not None:
        ref_model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, hp, total_steps, decay_steps)
    state = FitState(job=job, rank=rank, world=world, objective=objective, tok=tok, pad_id=pad_id, rows=rows,
                     row_lens=[max(len(v) for k, v in r.items() if k.endswith("input_ids")) for r in rows],
                     model=model, ref_model=ref_model, ddp_model=ddp_model, device=device, precision=precision,
                     params=params, opt=opt, sched=sched, per_worker_bs=per_worker_bs, accum=accum,
                     n_batches=n_batches, epochs=epochs, max_steps=max_steps, total_steps=total_steps, prof=prof)
    state.val = job.get("validate")
    if state.val:
        from sitf_ray.tasks import get_task
        state.val_task = get_task(state.val["task"])
        state.val_rows = state.val["rows"][rank::world]     # each worker generates for its share
    return state


def _profiler(on: bool) -> Callable[[str], None]:
    """prof(msg): print seconds since now and msg (job.extra.profile: start-up figures), or do nothing."""
    t0 = time.time()
    if not on:
        return lambda msg: None
    return lambda msg: print(f"[fit-profile] {time.time() - t0:6.2f}s {msg}", flush=True)


def load_reference_model(job: dict):
    """The frozen reference of a DPO fit: the job's starting policy (base + its init adapter, merged), no LoRA."""
    ref_model = load_model({**job, "lora": None, "init_adapter": None}).eval()
    if job.get("init_adapter"):
        from peft import PeftModel
        ref_model = PeftModel.from_pretrained(ref_model, job["init_adapter"]).merge_and_unload().eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    return ref_model


def make_optimizer(params: list, hp: dict, total_steps: int, decay_steps: Optional[int] = None):
    """(optimizer, scheduler): AdamW (or SGD) at hp.lr; linear warm-up over hp.warmup_steps optimizer steps
    (at most half the fit), then cosine down to hp.min_lr_ratio * lr at `decay_steps` (default `total_steps`),
    held there to `total_steps` (transformers' get_cosine_with_min_lr_schedule_with_warmup, whose cosine would
    climb back past its end)."""
    import functools
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    decay_steps = min(total_steps, decay_steps or total_steps)
    if hp.get("optimizer", "adamw") == "sgd":   # linear in the gradient: used to check DDP equivalence
        opt = torch.optim.SGD(params, lr=float(hp["lr"]))
    else:
        opt = torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.0)))
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=min(int(hp.get("warmup_steps", 0)), decay_steps // 2),
        num_training_steps=decay_steps, min_lr_rate=float(hp.get("min_lr_ratio", 0.1)))
    if decay_steps < total_steps:
        sched.lr_lambdas[0] = functools.partial(_held_after, sched.lr_lambdas[0], decay_steps)
    return opt, sched


def _held_after(lr_lambda: Callable, end: int, step: int) -> float:
    """lr_lambda(step) up to `end`, lr_lambda(end) after it."""
    return lr_lambda(min(step, end))


def restore(state: FitState, resume) -> None:
    """Continue from an epoch checkpoint of this job (None: start fresh): model, optimizer, scheduler,
    progress and the torch RNG, so the rest of the fit runs as it would have uninterrupted."""
    if resume is None:
        return
    import torch
    with resume.as_directory() as d:
        saved = torch.load(Path(d) / "state.pt", weights_only=False)
    state.model.load_state_dict(saved["model"])
    state.opt.load_state_dict(saved["opt"])
    state.sched.load_state_dict(saved["sched"])
    state.start_epoch, state.step, state.history = saved["epoch"], saved["step"], saved["history"]
    state.restored_epoch = saved["epoch"]
    state.best, state.best_state, state.bad_evals = saved["best"], saved["best_state"], saved["bad_evals"]
    torch.set_rng_state(saved["rng"])
    state.prof(f"resumed at epoch {state.start_epoch}")


def epoch_batches(state: FitState, rng: random.Random) -> list:
    """This epoch's micro-batches as lists of row indices (state.n_batches of them)."""
    if state.hp.get("shuffle", True):
        return length_grouped_batches(state.row_lens, state.per_worker_bs, rng)
    # stream order (used to compare step by step with another trainer)
    n, bs = len(state.rows), state.per_worker_bs
    return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]


def train_epoch(state: FitState, epoch: int) -> dict:
    """One epoch (0-based) on this worker's rows, `accum` micro-batches per optimizer step; stops early at
    hp.max_steps. Returns the epoch's metrics: the objective's figures and 'loss' (means over micro-batches,
    averaged over workers), skipped_steps, step_log (per optimizer step, this worker), epoch (1-based),
    step, lr, seconds (wall clock), and step_losses when hp.log_steps."""
    from sitf_ray.cluster.precision import autocast
    s, hp = state, state.hp
    t_ep = time.time()
    rng = random.Random(int(s.job["seed"]) * 1000 + epoch * 17 + s.rank)   # differs per epoch and worker
    s.ddp_model.train()
    sums: dict = {}
    n_seen = 0
    s.opt.zero_grad(set_to_none=True)
    step_losses, acc_loss, loss_ok = [], 0.0, True
    step_log, step_sums, step_n = {}, {}, 0     # per optimizer step (tracking.py logs rank 0's)
    for bi, idx in enumerate(epoch_batches(s, rng)):
        b = s.objective.collate([s.rows[i] for i in idx], s.pad_id)
        b = {k: v.to(s.device) for k, v in b.items()}
        with autocast(s.precision.dtype, s.device.type):
            loss, m = s.objective.loss(s.ddp_model, b, hp, s.ref_model)
        (loss / s.accum).backward()         # gradients add up over the step's micro-batches: mean of them
        acc_loss += loss.item() / s.accum
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
            step_sums[k] = step_sums.get(k, 0.0) + v
        step_n += 1
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        n_seen += 1
        loss_ok = loss_ok and math.isfinite(loss.item())
        if (bi + 1) % s.accum == 0 or bi == s.n_batches - 1:
            lr_now, norm = optimizer_step(s, acc_loss, loss_ok)
            step_losses.append(acc_loss)
            record_step(step_log, acc_loss, lr_now, norm, step_sums, step_n)
            step_sums, step_n, acc_loss, loss_ok = {}, 0, 0.0, True
            put_progress(s, step_losses[-1])
            if s.max_steps and s.step >= s.max_steps:
                break
    metrics = {k: v / max(1, n_seen) for k, v in sums.items()}
    metrics = _allreduce_mean(metrics, s.world)
    metrics["skipped_steps"], s.skipped = s.skipped, 0
    if hp.get("log_steps"):
        metrics["step_losses"] = step_losses
    metrics["step_log"] = step_log
    metrics.update(epoch=epoch + 1, step=s.step, lr=s.sched.get_last_lr()[0], seconds=time.time() - t_ep)
    return metrics


def optimizer_step(state: FitState, loss: float, loss_ok: bool) -> tuple[float, float]:
    """Clip, then apply the accumulated gradient unless it (or a micro-batch loss) is non-finite; advance
    the schedule either way. loss: the step's loss (for the message). Returns (the learning rate this step
    applied, the gradient norm before clipping). RuntimeError after hp.max_nonfinite_steps skips in a row."""
    import torch
    s = state
    norm = torch.nn.utils.clip_grad_norm_(s.params, float(s.hp.get("max_grad_norm", 1.0)))
    lr_now = s.sched.get_last_lr()[0]      # the rate this step applies
    if step_is_finite(loss_ok, norm, s.world):
        s.opt.step()
        s.bad_run = 0
    else:   # NaN/inf loss or gradient: never apply it; stop when it keeps happening
        s.bad_run, s.skipped = s.bad_run + 1, s.skipped + 1
        skip_or_stop(s.name, s.step + 1, s.bad_run, int(s.hp.get("max_nonfinite_steps", 3)), loss, float(norm))
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)
    s.step += 1
    s.last_step_at = time.time()
    if s.first_step_at is None:
        s.first_step_at = s.last_step_at
        s.prof("first optimizer step")
    return lr_now, float(norm)


def put_progress(state: FitState, loss: float) -> None:
    """(name, step, total_steps, loss) on the job's progress queue: rank 0 only, at most once a second
    (and at the last step)."""
    queue = state.job.get("progress_queue")
    if queue is None or state.rank != 0:
        return
    if time.time() - state.last_put > 1.0 or state.step >= state.total_steps:
        state.last_put = time.time()
        try:
            queue.put_nowait((state.name, state.step, state.total_steps, loss))
        except Exception:   # full or gone: progress is cosmetic
            pass


def validate(state: FitState, epoch: int, metrics: dict) -> bool:
    """Greedy validation accuracy after epoch `epoch` (0-based) when one is due (every val.every epochs and
    after the last): into metrics['val_accuracy']; a better one (by more than val.min_delta) becomes the best
    state. True when training should stop early (val.patience evaluations without improvement, and at least
    val.min_epochs epochs done)."""
    val, s = state.val, state
    if not val or not ((epoch + 1) % int(val["every"]) == 0 or epoch + 1 == s.epochs):
        return False
    from sitf_ray.cluster.precision import autocast
    with autocast(s.precision.dtype, s.device.type):
        acc = _val_accuracy(s.model, s.tok, s.val_task, s.val_rows, int(val["max_tokens"]), s.device, s.world)
    metrics["val_accuracy"] = acc
    if s.best is None or acc > s.best["val_accuracy"] + float(val["min_delta"]):
        s.best = {"val_accuracy": acc, "epoch": epoch + 1, "step": s.step}
        s.best_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
        s.bad_evals = 0
        return False
    s.bad_evals += 1
    return s.bad_evals >= int(val["patience"]) and epoch + 1 >= int(val.get("min_epochs", 0))


def checkpoint(state: FitState, epoch: int, metrics: dict) -> None:
    """Report `<name>__epochNNN` (NNN = epoch + 1) with state.pt (rank 0 writes it; every rank reports, as
    ray.train.report requires): what restore needs to resume after this epoch. RuntimeError on NaN/inf weights."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    s = state
    assert_finite_weights(s.model, s.name, f"the checkpoint after epoch {epoch + 1}")
    with tempfile.TemporaryDirectory() as d:
        if s.rank == 0:
            torch.save({"model": s.model.state_dict(), "opt": s.opt.state_dict(), "sched": s.sched.state_dict(),
                        "epoch": epoch + 1, "step": s.step, "history": s.history, "best": s.best,
                        "best_state": s.best_state, "bad_evals": s.bad_evals, "rng": torch.get_rng_state()},
                       Path(d) / "state.pt")
        ray.train.report({k: v for k, v in metrics.items() if k != "step_log"},
                         checkpoint=Checkpoint.from_directory(d) if s.rank == 0 else None,
                         checkpoint_dir_name=epoch_checkpoint_name(s.name, epoch + 1))


def finish(state: FitState) -> None:
    """Report `<name>__final`: the model folder (best weights when validating) and fit_result.json (steps,
    epochs, history, best, first/last step wall-clock times, precision). RuntimeError on NaN/inf weights."""
    import ray.train
    from ray.train import Checkpoint
    s = state
    s.prof("training done")
    with tempfile.TemporaryDirectory() as d:
        if s.rank == 0:
            if s.best_state is not None:
                s.model.load_state_dict(s.best_state)
            assert_finite_weights(s.model, s.name, "the final model")
            save_final(s.model, s.tok, s.job, Path(d) / "model")
            info = {"steps": s.step, "epochs": len(s.history), "history": s.history, "best": s.best,
                    "first_step_at": s.first_step_at, "last_step_at": s.last_step_at,
                    "precision": s.precision.as_dict(), "restored_from_epoch": s.restored_epoch,
                    "stopped_by": stopped_by(s)}
            (Path(d) / "fit_result.json").write_text(json.dumps(info))
        ray.train.report({"epoch": len(s.history), "final": 1},
                         checkpoint=Checkpoint.from_directory(d) if s.rank == 0 else None,
                         checkpoint_dir_name=final_checkpoint_name(s.name))
    s.prof("final reported")


def stopped_by(s: FitState) -> Optional[str]:
    """What ended a validated fit: 'early stopping' (val.patience validations without improvement after
    val.min_epochs: converged; it wins when it falls on the last epoch too) or 'epoch cap' (hp.epochs ran out
    first); None for a fit without validation."""
    if not s.val:
        return None
    converged = s.bad_evals >= int(s.val["patience"]) and len(s.history) >= int(s.val.get("min_epochs", 0))
    return "early stopping" if converged else "epoch cap"


def record_step(log: dict, loss: float, lr: float, grad_norm: float, sums: dict, n: int) -> None:
    """Append one optimizer step to an epoch's step log (columns of equal length: loss, learning_rate,
    grad_norm and the objective's own figures, averaged over the step's micro-batches on this worker)."""
    row = {"loss": loss, "learning_rate": lr, "grad_norm": grad_norm} | {k: v / max(1, n) for k, v in sums.items()}
    for k, v in row.items():
        log.setdefault(k, []).append(float(v))


def step_is_finite(loss_ok: bool, grad_norm, world: int) -> bool:
    """May this optimizer step be applied? False when a micro-batch loss on this worker was NaN/inf or the
    (all-reduced, so same on every worker) gradient norm is; with DDP the verdict is agreed by all workers,
    so they skip together and stay in sync. grad_norm: clip_grad_norm_'s total norm (a 0-d tensor)."""
    import torch
    ok = bool(loss_ok) and bool(torch.isfinite(torch.as_tensor(grad_norm)).item())
    if world > 1:
        import torch.distributed as dist
        flag = torch.tensor([0.0 if ok else 1.0])
        dist.all_reduce(flag)
        ok = flag.item() == 0.0
    return ok


def skip_or_stop(name: str, step: int, bad_run: int, max_bad: int, loss: float, grad_norm: float) -> None:
    """Warn about a skipped non-finite step; RuntimeError naming the fit and step after `max_bad` in a row."""
    import warnings
    if bad_run > max_bad:
        raise RuntimeError(f"fit {name!r}: step {step} is the {bad_run}th optimizer step in a row with a non-finite "
                           f"loss or gradient (loss {loss}, gradient norm {grad_norm}); training stopped "
                           f"(hp max_nonfinite_steps={max_bad}). Lower the learning rate or check the data.")
    warnings.warn(f"fit {name!r}: step {step} skipped: non-finite loss or gradient (loss {loss}, gradient norm "
                  f"{grad_norm}); {bad_run} in a row", RuntimeWarning, stacklevel=2)


def assert_finite_weights(model, name: str, what: str) -> None:
    """RuntimeError instead of writing NaN/inf weights to `what` (a checkpoint or the final model)."""
    import torch
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"fit {name!r}: {len(bad)} weight tensors hold NaN/inf (first: {bad[0]}); "
                           f"{what} is not written")


def shard_rows(shard) -> list[dict]:
    """This worker's rows: a list as given, or the Arrow blocks the driver's Ray Data split left in the
    object store (train/session.split_dataset)."""
    if isinstance(shard, list):
        return shard
    import ray
    return [r for t in ray.get(shard["arrow_refs"]) for r in t.to_pylist()]


def encode(objective: str, rows: list[dict], tok, hp: dict) -> list[dict]:
    """This worker's text rows -> token rows for its objective (objectives.py; ValueError for an unknown one)."""
    from sitf_ray.train.objectives import get
    return get(objective).encode(rows, tok, hp)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random, window: int = 16) -> list:
    """Shuffled batches of similar-length rows (less padding): shuffle, sort within windows of `window`
    batches, cut, shuffle the batch order. Same count as plain batching, so DDP workers stay in step."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches, w = [], batch_size * window
    for s in range(0, len(order), w):
        win = sorted(order[s:s + w], key=lambda i: lengths[i])
        batches += [win[j:j + batch_size] for j in range(0, len(win), batch_size)]
    rng.shuffle(batches)
    return batches or [[]]


def save_final(model, tok, job: dict, out: Path):
    """The fit's model folder: weights (or adapter), tokenizer, policy meta; a full policy's wire digest."""
    from sitf_ray.train.objectives import get
    out.mkdir(parents=True)
    is_peft = hasattr(model, "peft_config")
    meta = {"kind": "adapter" if is_peft else "full", "objective": job["objective"]}
    if is_peft:
        meta["base"] = os.path.abspath(job["init_model"])
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_policy_meta(out, meta)
    # A full policy is what the driver will broadcast: hash it once, here (the PRM is never broadcast).
    if not get(job["objective"]).token_classifier and not is_peft:
        from sitf_ray.rollout.weights import record_wire_digest
        record_wire_digest(out)


def _allreduce_mean(metrics: dict, world: int) -> dict:
    if world == 1:
        return metrics
    import torch
    import torch.distributed as dist
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def _val_accuracy(model, tok, task, rows: list, max_tokens: int, device, world: int) -> float:
    """Greedy accuracy of this worker's share of the validation rows, summed over workers."""
    correct, n = greedy_correct(model, tok, task, rows, max_tokens, device)
    if world > 1:
        import torch
        import torch.distributed as dist
        t = torch.tensor([correct, n], dtype=torch.float64)
        dist.all_reduce(t)
        correct, n = t.tolist()
    return correct / max(1, n)


def greedy_correct(model, tok, task, rows: list, max_tokens: int, device, batch_size: int = 128) -> tuple[int, int]:
    """(correct, n) of greedy HF generation on `rows` (validation inside a fit)."""
    import torch
    model.eval()
    old_side = tok.padding_side
    tok.padding_side = "left"
    correct = 0
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            enc = tok([task.prompt(r) for r in chunk], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            texts = tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
            correct += sum(task.is_correct(r, t) for r, t in zip(chunk, texts))
    finally:
        tok.padding_side = old_side
        model.train()
    return correct, len(rows)
