"""Training stages: M_0 by SFT to convergence (`build_m0`), the policy update of an iteration
(`stage_train`: ORPO, DPO or RFT's SFT on the method's data), the matched-steps SFT control
(`stage_sft_more`), and the one builder of Ray Train fit jobs (`fit_job`) that the policy fits, the PRM fit
and the verifier use.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import ray.data

from sitf_ray import config as C
from sitf_ray import methods
from sitf_ray.rollout.policy_folder import read_policy_meta
from sitf_ray.rollout.stages import stage_eval
from sitf_ray.runs.artifacts import Ledger, read_json, write_json
from sitf_ray.runs.context import Context, stage_seed
from sitf_ray.runs.progress import summary
from sitf_ray.train.datasets import read_shards, training_dataset
from sitf_ray.train.model_sources import build_tiny, resolve_source
from sitf_ray.train.session import FitJob, fit, session


def warm_trainer(ctx: Context):
    """Start the run's Ray Train session now: its workers come up while the driver does other work."""
    cl = ctx.cfg.cluster
    session(train_storage(ctx), cl.train_workers, cl.train_cpus, cl.train_gpus)


def sft_rows(ctx: Context) -> list[dict]:
    out = []
    for r in ctx.splits["sft"]:
        tgt = ctx.task.target(r)
        if tgt:
            out.append({"prompt": ctx.task.prompt(r), "completion": tgt})
    if not out:
        raise ValueError(f"task {ctx.task.name}: the sft split has no gold solutions to train M_0 on")
    return out


def fit_job(cfg: C.SIPFConfig, name: str, storage: str, init_model, out_dir, objective: str, hp: dict, *,
            seed: Optional[int] = None, lora: Optional[dict] = None, init_adapter: Optional[str] = None,
            validate: Optional[dict] = None, load_in_4bit: bool = False, dtype: Optional[str] = None) -> FitJob:
    """The one builder of a Ray Train fit job (policy fits, the PRM fit, the verifier): workers, CPUs, GPUs and
    threads from cfg.cluster; the seed derived from (cfg.seed, name) unless given; dtype cfg.model.run_dtype()
    unless given. objective: a key of train/objectives.py OBJECTIVES ('sft', 'orpo', 'dpo', 'prm')."""
    cl = cfg.cluster
    return FitJob(name=name, storage=storage, init_model=str(init_model), out_dir=str(out_dir), objective=objective,
                  hp=hp, seed=stage_seed(cfg.seed, name) if seed is None else seed, workers=cl.train_workers,
                  cpus_per_worker=cl.train_cpus, gpus_per_worker=cl.train_gpus, threads=cl.train_threads,
                  lora=lora, init_adapter=init_adapter, validate=validate,
                  extra={"load_in_4bit": load_in_4bit, "dtype": dtype or cfg.model.run_dtype()})


def lora_kwargs(lc) -> Optional[dict]:
    """peft LoraConfig kwargs of a LoRA section of the config (model.lora, prm.lora); None when it is off."""
    if not lc.enabled:
        return None
    return {"r": lc.r, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": lc.target_modules}


def fit_policy(ctx: Context, name: str, init: Path, out: Path, objective: str, hp: dict, ds_rows_or_ds,
               validate: Optional[dict] = None, init_adapter: Optional[str] = None):
    """SFT / ORPO / DPO on Ray Train over a Ray Dataset of text rows (each worker tokenises its shard)."""
    cfg = ctx.cfg
    ds = ds_rows_or_ds if not isinstance(ds_rows_or_ds, list) else ray.data.from_items(ds_rows_or_ds)
    hp = {"max_len": cfg.train.max_len, "max_prompt_len": cfg.train.max_prompt_len} | hp
    job = fit_job(cfg, name, train_storage(ctx), init, out, objective, hp, validate=validate, init_adapter=init_adapter,
                  lora=None if init_adapter else lora_kwargs(cfg.model.lora), load_in_4bit=cfg.model.load_in_4bit)
    return fit(job, {"train": ds})


def train_storage(ctx: Context) -> str:
    """Ray Train checkpoints: beside the run, or in the bucket when the run is mirrored to one."""
    return f"{ctx.cfg.storage.rstrip('/')}/ray_train" if ctx.cfg.storage else str(ctx.root / "ray_train")


def build_m0(ctx: Context) -> dict:
    cfg, it = ctx.cfg, ctx.root / "iter_00"
    led = Ledger(it)
    if not led.done("init"):
        t0 = time.time()
        if cfg.model.source == "tiny":
            build_tiny(cfg, it / "init", seed=stage_seed(cfg.seed, "init"))
            src = "init"                     # relative: the run directory can move
        else:
            src = resolve_source(cfg.model.source, cfg.model.cache_dir)
        write_json(it / "init.json", {"source": cfg.model.source, "folder": src})
        led.mark("init", ["init.json"], seconds=time.time() - t0)
    init = it / read_json(it / "init.json")["folder"]   # absolute folders stay absolute
    if not led.done("sft"):
        t0 = time.time()
        s = cfg.sft
        hp = {"lr": s.lr, "epochs": s.max_epochs, "batch_size": s.batch_size, "warmup_steps": s.warmup_steps,
              "weight_decay": s.weight_decay, "min_lr_ratio": s.min_lr_ratio, "max_grad_norm": 1.0,
              "decay_epochs": s.decay_epochs}
        val = {"task": cfg.task.name, "rows": ctx.splits["val"], "every": s.eval_every, "patience": s.patience,
               "min_delta": s.min_delta, "max_tokens": cfg.eval.max_tokens, "min_epochs": s.min_epochs}
        res = fit_policy(ctx, f"m0-sft-{cfg.seed}", init, it / "policy", "sft", hp, sft_rows(ctx), validate=val)
        write_json(it / "sft.json", {"steps": res.steps, "epochs": res.epochs, "max_epochs": s.max_epochs,
                                     "stopped_by": res.stopped_by, "best": res.best, "history": res.history,
                                     "seconds": res.seconds})
        led.mark("sft", ["policy", "sft.json"], seconds=time.time() - t0, steps=res.steps)
        summary("sft M_0", time.time() - t0, epochs=res.epochs, steps=res.steps,
                best_val=(res.best or {}).get("val_accuracy"), stopped_by=res.stopped_by)
    return stage_eval(ctx, it, led, it / "policy", "M_0")


def main_steps(ctx: Context, k: int) -> Optional[int]:
    """Optimizer steps the run's main method took in iteration k (None before it trained): the update budget
    its baselines are matched to (the sft control always, the others with train.match_steps)."""
    f = ctx.root / f"iter_{k:02d}" / "train.json"
    return read_json(f)["steps"] if f.exists() else None


def stage_train(ctx: Context, it: Path, led: Ledger, method: str, k: int, prev: Path, mdir: Path) -> dict:
    if led.done("train"):
        return led.get("train")
    cfg, tc, t0 = ctx.cfg, ctx.cfg.train, time.time()
    dirs = [mdir / f"iter_{j:02d}" / "pairs" for j in range(1, k + 1)] if cfg.pairs.accumulate else [it / "pairs"]
    objective = methods.get(method).objective_for(tc.loss)
    if methods.get(method).data == "own_correct":     # SFT rows (prompt, completion), not pairs
        files = [str(f) for d in dirs for f in sorted(Path(d).glob("*.parquet"))]
        ds = read_shards(files, ["prompt", "completion"]) if files else None
    else:
        ds = training_dataset(dirs)
    max_steps = tc.max_steps
    if tc.match_steps and method != cfg.method and (main := main_steps(ctx, k)) is not None:
        max_steps = main                                # the main method's update budget this iteration
        if max_steps == 0:
            ds = None                                   # it did not train: neither does its control
    if ds is None:
        # No pairs at all: the policy stays as it was (recorded, not hidden).
        shutil.copytree(prev, it / "policy", dirs_exist_ok=True)
        led.mark("train", ["policy"], seconds=time.time() - t0, steps=0, rows=0, note="no training data")
        summary("train", time.time() - t0, note="no pairs; policy unchanged")
        return led.get("train")
    init = ctx.m0 if cfg.train.init_from == "m0" else prev
    meta = read_policy_meta(init)
    init_model, init_adapter = (Path(meta["base"]), str(init)) if meta["kind"] == "adapter" else (init, None)
    hp = {"lr": tc.lr, "epochs": tc.epochs, "batch_size": tc.batch_size, "grad_accum": tc.grad_accum,
          "warmup_steps": tc.warmup_steps, "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm,
          "beta": tc.beta, "nll_on_prompt": tc.nll_on_prompt, "min_lr_ratio": 0.1, "max_steps": max_steps}
    res = fit_policy(ctx, f"policy-{method}-{k}-{cfg.seed}", init_model, it / "policy", objective, hp, ds,
                     init_adapter=init_adapter)
    last = res.history[-1] if res.history else {}
    write_json(it / "train.json", {"objective": objective, "steps": res.steps, "epochs": res.epochs,
                                   "history": res.history, "seconds": res.seconds})
    led.mark("train", ["policy", "train.json"], seconds=time.time() - t0, steps=res.steps,
             loss=last.get("loss"), objective=objective)
    ctx.telemetry.loss(objective, last.get("loss", 0.0))
    summary(f"train {objective}", time.time() - t0, steps=res.steps, loss=last.get("loss", float("nan")),
            log_odds=last.get("log_odds", float("nan")))
    return led.get("train")


def stage_sft_more(ctx: Context, it: Path, led: Ledger, k: int, prev: Path, steps: int) -> dict:
    """The `sft` baseline: M_0 given the same number of extra update steps, on its gold data."""
    if led.done("train"):
        return led.get("train")
    cfg, tc, t0 = ctx.cfg, ctx.cfg.train, time.time()
    if steps == 0:   # the main method did not train in this iteration: neither does its control
        shutil.copytree(prev, it / "policy", dirs_exist_ok=True)
        led.mark("train", ["policy"], seconds=time.time() - t0, steps=0, matched_steps=0)
        return led.get("train")
    rows = sft_rows(ctx)
    hp = {"lr": tc.lr, "epochs": 1, "max_steps": steps, "batch_size": tc.batch_size, "warmup_steps": tc.warmup_steps,
          "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm, "min_lr_ratio": 0.1}
    res = fit_policy(ctx, f"policy-sft-{k}-{cfg.seed}", prev, it / "policy", "sft", hp, rows)
    write_json(it / "train.json", {"objective": "sft", "steps": res.steps, "epochs": res.epochs, "rows": len(rows),
                                   "matched_steps": steps, "history": res.history, "seconds": res.seconds})
    led.mark("train", ["policy", "train.json"], seconds=time.time() - t0, steps=res.steps, matched_steps=steps)
    summary("train sft (matched steps)", time.time() - t0, steps=res.steps, target_steps=steps)
    return led.get("train")
