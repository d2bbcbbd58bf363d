"""Rollout stages of an iteration: the generators that hold the policy (`ensure_pool`, `make_pool`),
the weight broadcast after each update (`load_policy`), sampling N solutions per training question
(`stage_sample`) and greedy evaluation on the eval split (`stage_eval`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from sitf_ray import config as C
from sitf_ray.rollout.engines.base import EngineSpec
from sitf_ray.rollout.evaluate import evaluate
from sitf_ray.rollout.generators import GeneratorPool
from sitf_ray.rollout.policy_folder import read_policy_meta
from sitf_ray.rollout.sampling import sample_paths
from sitf_ray.rollout.weights import push_policy
from sitf_ray.rollout.weights_nccl import push_policy_nccl
from sitf_ray.runs.artifacts import (
    Ledger,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from sitf_ray.runs.context import Context, drop_partial, stage_seed
from sitf_ray.runs.progress import summary


def engine_spec(cfg: C.SIPFConfig, model_dir: str):
    meta = read_policy_meta(model_dir)
    base = meta.get("base", model_dir) if meta["kind"] == "adapter" else model_dir
    max_len = cfg.model.tiny.max_len if cfg.model.source == "tiny" else cfg.train.max_len + cfg.sampling.max_tokens
    return EngineSpec(model=str(base), kind=cfg.cluster.engine, dtype=cfg.model.run_dtype(), max_model_len=max_len,
                      kv_cache_bytes=cfg.cluster.kv_cache_bytes, max_num_seqs=cfg.cluster.max_num_seqs,
                      seed=cfg.seed, threads=cfg.cluster.generator_threads,
                      lora_rank=cfg.model.lora.r if cfg.model.lora.enabled and not cfg.cluster.merge_lora else 0,
                      extra={"weight_sync": "nccl"} if cfg.cluster.weight_sync == "nccl" else {})


def make_pool(cfg: C.SIPFConfig, folder: str | Path):
    """Generators holding `folder`: built on its weights, or on its base with the adapter pushed as v1
    (an engine built on the base alone would silently generate with the base model)."""
    cl = cfg.cluster
    pool = GeneratorPool(engine_spec(cfg, str(folder)), cl.generator_replicas, cl.generator_cpus,
                         cl.generator_gpus, cl.placement_strategy, cl.chunk_size)
    if read_policy_meta(folder)["kind"] == "adapter":
        try:
            push_policy(pool, folder, 1, cfg.cluster.merge_lora)
        except BaseException:
            pool.shutdown()
            raise
    return pool


def ensure_pool(ctx: Context):
    if ctx.pool is None:
        cl = ctx.cfg.cluster
        t0 = time.time()
        ctx.pool = make_pool(ctx.cfg, ctx.m0)
        ctx.loaded, ctx.version = str(ctx.m0), ctx.pool.version
        summary("generators", time.time() - t0, replicas=cl.generator_replicas, engine=cl.engine)
    return ctx.pool


def load_policy(ctx: Context, folder: Path):
    """Make the generators hold `folder` (a versioned broadcast unless they already do)."""
    ensure_pool(ctx)
    if ctx.loaded == str(folder):
        return
    ctx.version += 1
    if ctx.cfg.cluster.weight_sync == "nccl":   # GPU generators: adapters stay adapters (object store, inside)
        rep = push_policy_nccl(ctx.pool, folder, ctx.version)
    else:
        rep = push_policy(ctx.pool, folder, ctx.version, ctx.cfg.cluster.merge_lora)
    ctx.loaded = str(folder)
    ctx.sync_log.append(asdict(rep))
    ctx.telemetry.sync(rep)
    summary("broadcast", rep.seconds, version=rep.version, kind=rep.kind, MB=rep.bytes / 2**20,
            replicas=rep.replicas)


def stage_eval(ctx: Context, it: Path, led: Ledger, policy: Path, label: str) -> dict:
    if led.done("eval"):
        return read_json(it / "eval.json")
    load_policy(ctx, policy)
    res = evaluate(ctx.pool, ctx.task, ctx.splits[ctx.cfg.eval.split], ctx.cfg.eval.max_tokens,
                   seed=stage_seed(ctx.cfg.seed, "eval"))
    preds = res.pop("predictions")
    res["split"] = ctx.cfg.eval.split
    write_jsonl(it / "eval_predictions.jsonl", preds)
    write_json(it / "eval.json", res)
    led.mark("eval", ["eval.json"], seconds=res["seconds"])
    ctx.telemetry.eval(res["accuracy"])
    summary(f"eval {label}", res["seconds"], n=res["n"], accuracy=res["accuracy"],
            **({"strict": res["strict_accuracy"]} if "strict_accuracy" in res else {}))
    return res


def m0_samples(ctx: Context, it: Path) -> Optional[Path]:
    """Iteration 1 of every method samples M_0 on the same questions with the same seed: the first method's
    samples serve the others (same data, sampled once)."""
    for d in [ctx.root / "iter_01"] + sorted((ctx.root / "baselines").glob("*/iter_01")):
        if d != it and Ledger(d).done("sample"):
            return d
    return None


def stage_sample(ctx: Context, it: Path, led: Ledger, method: str, k: int) -> list[dict]:
    if led.done("sample"):
        return read_jsonl(it / "samples.jsonl")
    cfg, t0 = ctx.cfg, time.time()
    if k == 1 and (src := m0_samples(ctx, it)) is not None:
        samples = read_jsonl(src / "samples.jsonl")
        write_jsonl(it / "samples.jsonl", samples)
        shared = str(src.relative_to(ctx.root))
        figs = {key: v for key, v in Ledger(src).get("sample").items() if key != "seconds"}
        led.mark("sample", ["samples.jsonl"], seconds=time.time() - t0, **(figs | {"shared_from": shared}))
        summary("sample", time.time() - t0, paths=len(samples), shared_from=shared)
        return samples
    # the paper's filter: drop a sample whose text fails the task's step checker (a false equation), before
    # labelling, pairs and RFT data of every method (all read these samples); tasks without one: no filter
    valid = ctx.task.step_check if cfg.sampling.require_valid_equations else None
    s = cfg.sampling
    samples, st = sample_paths(ctx.pool, ctx.task, ctx.splits["train"], s.n, s.temperature, s.top_p,
                               s.max_tokens, seed=stage_seed(cfg.seed, "m0" if k == 1 else method, k, "sample"),
                               dedupe=s.dedupe, valid=valid, partial_dir=it / "partial" / "sample")
    write_jsonl(it / "samples.jsonl", samples)
    dt = time.time() - t0
    led.mark("sample", ["samples.jsonl"], seconds=dt, **st)
    drop_partial(it / "partial" / "sample")
    ctx.telemetry.sampled(st, dt)
    summary("sample", dt, paths=st["kept"], generated=st["generated"], correct=st["correct"],
            **({"false_positives": st["false_positive_rate"]} if "false_positive_rate" in st else {}),
            tok_per_s=st["tokens"] / max(dt, 1e-9))
    return samples
