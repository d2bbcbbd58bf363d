"""Worker side of every update: the training loop that runs inside a long-lived Ray Train session.

    session_loop(config)    TorchTrainer's train_loop_per_worker: take jobs from the session's JobBoard,
                            run each, until the driver posts 'stop'
    run_job(job, rows, ...) one fit: model (full or LoRA), AdamW + warm-up/cosine, epochs of length-grouped
                            batches, DDP over the session's process group, a checkpoint per epoch, optional
                            validation with early stopping, the final model reported as a checkpoint

Checkpoints go through `ray.train.report` with deterministic names (`<job>__epoch003`, `<job>__final`), so
when Ray Train restarts a dead worker group (FailureConfig) the loop finds the job it was running with
`ray.train.get_checkpoint()` and resumes from that epoch: model, optimizer, scheduler and RNG state, so the
final weights equal an uninterrupted fit's. The driver side (trainer.py) reads `<job>__final` from storage.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
import traceback
from pathlib import Path

from .policy_folder import write_policy_meta

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
    q = quantization(bool(job.get("extra", {}).get("load_in_4bit")))
    kw = {"dtype": torch.bfloat16 if q else torch.float32} | ({"quantization_config": q} if q else {})
    if job["objective"] == "prm":
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
        if job["objective"] == "prm":
            kw["modules_to_save"] = ["score"]      # the 2-way head is trained in full
            kw["task_type"] = "TOKEN_CLS"
        model = get_peft_model(model, LoraConfig(**kw))
    return model


def _wrap_ddp(model, world: int):
    """DDP over the session's process group (Ray Train set it up once for the whole session)."""
    import ray.train.torch
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)


# ---------------------------------------------------------------------------------------------- one fit

def run_job(job: dict, shard, rank: int, world: int, resume=None) -> None:
    """Train one FitJob (as a dict) on this worker's shard; the final model is reported as `<name>__final`.

    shard: see shard_rows. resume: a checkpoint of this job (ray.train.Checkpoint) or None.
    Raises RuntimeError when the shard is empty.
    """
    import numpy as np
    import ray.train
    import torch
    from ray.train import Checkpoint
    from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

    from .orpo import collate, policy_loss

    torch.set_num_threads(int(job["threads"]))
    _t0 = time.time()
    prof = (lambda msg: print(f"[fit-profile] {time.time() - _t0:6.2f}s {msg}", flush=True)) \
        if job.get("extra", {}).get("profile") else (lambda msg: None)
    seed, hp, name = int(job["seed"]), job["hp"], job["name"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(job["init_model"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    rows = shard_rows(shard)
    prof(f"{len(rows)} rows read")
    rows = encode(job["objective"], rows, tok, hp)
    if not rows:
        raise RuntimeError(f"{name}: training worker {rank} of {world} received no rows")
    bs, accum, epochs = int(hp["batch_size"]), int(hp.get("grad_accum", 1)), int(hp["epochs"])
    per_worker_bs = max(1, bs // world)
    n_batches = max(1, math.ceil(len(rows) / per_worker_bs))
    row_lens = [max(len(v) for k, v in r.items() if k.endswith("input_ids")) for r in rows]
    steps_per_epoch = math.ceil(n_batches / accum)
    max_steps = int(hp.get("max_steps") or 0)          # an exact step budget (matched-compute baselines)
    if max_steps:
        epochs = math.ceil(max_steps / steps_per_epoch)
    total_steps = max(1, max_steps or epochs * steps_per_epoch)

    model = load_model(job)
    ref_model = None
    if job["objective"] == "dpo":
        ref_model = load_model({**job, "lora": None, "init_adapter": None}).eval()
        if job.get("init_adapter"):
            from peft import PeftModel
            ref_model = PeftModel.from_pretrained(ref_model, job["init_adapter"]).merge_and_unload().eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    prof("model loaded")
    ddp_model = _wrap_ddp(model, world)
    device = ray.train.torch.get_device()
    # Mixed precision where this worker's hardware runs bf16 natively ('auto'), fp32 otherwise: fp32 weights and
    # optimizer state either way, bf16 matmuls under autocast (precision.py). Decided here, on this node.
    from .precision import autocast, resolve
    precision = resolve(str(job.get("extra", {}).get("dtype", "float32")), device.type)
    if ref_model is not None:
        ref_model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if hp.get("optimizer", "adamw") == "sgd":   # linear in the gradient: used to check DDP equivalence
        opt = torch.optim.SGD(params, lr=float(hp["lr"]))
    else:
        opt = torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.0)))
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=min(int(hp.get("warmup_steps", 0)), total_steps // 2),
        num_training_steps=total_steps, min_lr_rate=float(hp.get("min_lr_ratio", 0.1)))

    queue, last_put = job.get("progress_queue"), 0.0
    first_step_at = last_step_at = None        # wall-clock times, for start-up and throughput figures
    start_epoch, step, history, best = 0, 0, [], None
    bad_run, skipped = 0, 0           # non-finite steps: in a row now, and in this epoch
    best_state, bad_evals = None, 0
    if resume is not None:
        with resume.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        best, best_state, bad_evals = state["best"], state["best_state"], state["bad_evals"]
        torch.set_rng_state(state["rng"])
        prof(f"resumed at epoch {start_epoch}")

    val = job.get("validate")
    if val:
        from .tasks import get_task
        val_task = get_task(val["task"])
        val_rows = val["rows"][rank::world]

    objective = job["objective"]
    if objective == "prm":
        from .prm import prm_collate, prm_loss
    stop = False
    prof("first batch")
    for epoch in range(start_epoch, epochs):
        t_ep = time.time()
        rng = random.Random(seed * 1000 + epoch * 17 + rank)
        ddp_model.train()
        sums: dict = {}
        n_seen = 0
        opt.zero_grad(set_to_none=True)
        if hp.get("shuffle", True):
            batches = length_grouped_batches(row_lens, per_worker_bs, rng)
        else:   # stream order (used to compare step by step with another trainer)
            batches = [list(range(i, min(i + per_worker_bs, len(rows)))) for i in range(0, len(rows), per_worker_bs)]
        step_losses, acc_loss, loss_ok = [], 0.0, True
        step_log, step_sums, step_n = {}, {}, 0     # per optimizer step (tracking.py logs rank 0's)
        for bi, idx in enumerate(batches):
            batch_rows = [rows[i] for i in idx]
            b = prm_collate(batch_rows, pad_id) if objective == "prm" else collate(batch_rows, pad_id)
            b = {k: v.to(device) for k, v in b.items()}
            with autocast(precision.dtype, device.type):
                if objective == "prm":
                    loss, m = prm_loss(ddp_model, b)
                else:
                    loss, m = policy_loss(objective, ddp_model, b, hp, ref_model)
            (loss / accum).backward()
            acc_loss += loss.item() / accum
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
                step_sums[k] = step_sums.get(k, 0.0) + v
            step_n += 1
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            n_seen += 1
            loss_ok = loss_ok and math.isfinite(loss.item())
            if (bi + 1) % accum == 0 or bi == n_batches - 1:
                norm = torch.nn.utils.clip_grad_norm_(params, float(hp.get("max_grad_norm", 1.0)))
                lr_now = sched.get_last_lr()[0]      # the rate this step applies
                if step_is_finite(loss_ok, norm, world):
                    opt.step()
                    bad_run = 0
                else:   # NaN/inf loss or gradient: never apply it; stop when it keeps happening
                    bad_run, skipped = bad_run + 1, skipped + 1
                    skip_or_stop(name, step + 1, bad_run, int(hp.get("max_nonfinite_steps", 3)),
                                 acc_loss, float(norm))
                loss_ok = True
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                last_step_at = time.time()
                if first_step_at is None:
                    first_step_at = last_step_at
                    prof("first optimizer step")
                step_losses.append(acc_loss)
                record_step(step_log, acc_loss, lr_now, float(norm), step_sums, step_n)
                step_sums, step_n = {}, 0
                acc_loss = 0.0
                if queue is not None and rank == 0 and (time.time() - last_put > 1.0 or step >= total_steps):
                    last_put = time.time()
                    try:
                        queue.put_nowait((name, step, total_steps, step_losses[-1]))
                    except Exception:   # full or gone: progress is cosmetic
                        pass
                if max_steps and step >= max_steps:
                    break
        metrics = {k: v / max(1, n_seen) for k, v in sums.items()}
        metrics = _allreduce_mean(metrics, world)
        metrics["skipped_steps"], skipped = skipped, 0
        if hp.get("log_steps"):
            metrics["step_losses"] = step_losses
        metrics["step_log"] = step_log
        metrics.update(epoch=epoch + 1, step=step, lr=sched.get_last_lr()[0], seconds=time.time() - t_ep)

        if val and ((epoch + 1) % int(val["every"]) == 0 or epoch + 1 == epochs):
            with autocast(precision.dtype, device.type):
                acc = _val_accuracy(model, tok, val_task, val_rows, int(val["max_tokens"]), device, world)
            metrics["val_accuracy"] = acc
            if best is None or acc > best["val_accuracy"] + float(val["min_delta"]):
                best = {"val_accuracy": acc, "epoch": epoch + 1, "step": step}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_evals = 0
            else:
                bad_evals += 1
                stop = bad_evals >= int(val["patience"]) and epoch + 1 >= int(val.get("min_epochs", 0))
        history.append(metrics)

        last = epoch + 1 == epochs or stop
        if not last and (epoch + 1) % int(job.get("ckpt_every", 1)) == 0:
            assert_finite_weights(model, name, f"the checkpoint after epoch {epoch + 1}")
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                "epoch": epoch + 1, "step": step, "history": history, "best": best,
                                "best_state": best_state, "bad_evals": bad_evals, "rng": torch.get_rng_state()},
                               Path(d) / "state.pt")
                ray.train.report({k: v for k, v in metrics.items() if k != "step_log"},
                                 checkpoint=Checkpoint.from_directory(d) if rank == 0 else None,
                                 checkpoint_dir_name=epoch_checkpoint_name(name, epoch + 1))
        if last:
            break

    prof("training done")
    # Final report: the model folder (best weights when validating) + what happened.
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            if best_state is not None:
                model.load_state_dict(best_state)
            assert_finite_weights(model, name, "the final model")
            save_final(model, tok, job, Path(d) / "model")
            info = {"steps": step, "epochs": len(history), "history": history, "best": best,
                    "first_step_at": first_step_at, "last_step_at": last_step_at,
                    "precision": precision.as_dict()}
            (Path(d) / "fit_result.json").write_text(json.dumps(info))
        ray.train.report({"epoch": len(history), "final": 1},
                         checkpoint=Checkpoint.from_directory(d) if rank == 0 else None,
                         checkpoint_dir_name=final_checkpoint_name(name))
    prof("final reported")


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
    object store (trainer.split_dataset)."""
    if isinstance(shard, list):
        return shard
    import ray
    return [r for t in ray.get(shard["arrow_refs"]) for r in t.to_pylist()]


def encode(objective: str, rows: list[dict], tok, hp: dict) -> list[dict]:
    """This worker's text rows -> token rows for its objective."""
    if objective == "prm":
        from .prm import prm_encode_rows
        return prm_encode_rows(rows, tok, int(hp.get("max_len", 512)), bool(hp.get("soft", False)))
    from .orpo import encode_rows
    kind = "pairs" if objective in ("orpo", "dpo") else "sft"
    max_len = int(hp.get("max_len", 512))
    return encode_rows(rows, tok, kind, max_len, int(hp.get("max_prompt_len", min(256, max_len // 2))))


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
    out.mkdir(parents=True)
    is_peft = hasattr(model, "peft_config")
    meta = {"kind": "adapter" if is_peft else "full", "objective": job["objective"]}
    if is_peft:
        meta["base"] = os.path.abspath(job["init_model"])
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_policy_meta(out, meta)
    if job["objective"] != "prm" and not is_peft:   # a policy the driver will broadcast: hash it once, here
        from .weights import record_wire_digest
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
