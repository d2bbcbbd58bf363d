"""Feedback stages of an iteration: Monte-Carlo step labels from simulator rollouts (`stage_label`),
the PRM fit on them (`stage_prm`), PRM scores of every sampled path with the calculator's verdict on top
(`stage_score`), preference pairs with a reward gap >= eta (`stage_pairs`), and the baselines' data
(`outcome_scores`: final-answer rewards; `stage_rft_data`: own correct paths).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import ray.data

from sitf_ray import methods
from sitf_ray.feedback.labeling import label_samples, trl_stepwise, versus_oracle
from sitf_ray.feedback.pairs import build_pairs
from sitf_ray.feedback.quality import auc
from sitf_ray.feedback.scorers import scorer_pool
from sitf_ray.feedback.scoring import path_scores
from sitf_ray.feedback.verifier import ensure_verifier
from sitf_ray.rollout.policy_folder import read_policy_meta
from sitf_ray.rollout.stages import ensure_pool, make_pool
from sitf_ray.runs.artifacts import (
    Ledger,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from sitf_ray.runs.context import Context, drop_partial, stage_seed
from sitf_ray.runs.progress import summary
from sitf_ray.train.model_sources import resolve_source
from sitf_ray.train.session import fit
from sitf_ray.train.stages import fit_job, lora_kwargs, train_storage


def stage_label(ctx: Context, it: Path, led: Ledger, samples: list[dict], method: str, k: int) -> list[dict]:
    if led.done("label"):
        return read_jsonl(it / "labels.jsonl")
    cfg, lc = ctx.cfg, ctx.cfg.labeling
    pool = None
    if lc.mode != "oracle":
        pool = ensure_simulator(ctx)
    if lc.max_paths and len(samples) > lc.max_paths:   # label (and train the PRM on) a seeded subset
        key = stage_seed(cfg.seed, method, k, "label-subset")
        keep = set(sorted((hashlib.sha256(f"{key}|{s['id']}".encode()).hexdigest(), s["id"]) for s in samples)
                   [i][1] for i in range(lc.max_paths))
        samples = [s for s in samples if s["id"] in keep]
    rows, stats = label_samples(samples, ctx.by_id, ctx.task, lc.mode, pool, k=lc.k, delta=lc.delta,
                                temperature=lc.temperature, max_tokens=lc.max_tokens,
                                seed=stage_seed(cfg.seed, method, k, "label"),
                                skip_correct_paths=lc.skip_correct_paths, answer_probe=lc.answer_probe,
                                check_rollouts=lc.check_rollouts,
                                partial_dir=it / "partial" / "label")
    write_jsonl(it / "labels.jsonl", rows)
    write_jsonl(it / "labels_trl.jsonl", trl_stepwise(rows, {q: ctx.task.prompt(r) for q, r in ctx.by_id.items()}))
    quality = versus_oracle(rows)
    figs = asdict(stats) | {"vs_oracle": quality}
    led.mark("label", ["labels.jsonl"], **figs)
    drop_partial(it / "partial" / "label")
    ctx.telemetry.labeled(stats)
    summary("label", stats.seconds, mode=lc.mode, steps=stats.steps, rollouts=stats.rollouts,
            positives=stats.positives, f1_vs_oracle=quality.get("f1", "n/a (the task has no step oracle)"),
            **({"path_precision": quality["path_precision"]} if "path_precision" in quality else {}))
    return rows


def model_source(ctx: Context, name: str) -> str:
    """A model named in the config: 'verifier' (built once and cached), 'smollm2', or a folder / hub id."""
    if name == "verifier":
        return str(ensure_verifier(ctx.cfg, train_storage(ctx)))
    return resolve_source(name, ctx.cfg.model.cache_dir)


def ensure_simulator(ctx: Context):
    lc = ctx.cfg.labeling
    if lc.simulator == "policy":
        return ensure_pool(ctx)
    if ctx.simulator is None:
        t0 = time.time()
        ctx.simulator = make_pool(ctx.cfg, model_source(ctx, lc.simulator))
        summary("simulator", time.time() - t0, model=lc.simulator, replicas=ctx.cfg.cluster.generator_replicas)
    return ctx.simulator


def split_holdout(qids: list[str], frac: float, seed: int) -> set:
    """Questions held out from PRM training (by hash, so the split is stable)."""
    return {q for q in set(qids)
            if int(hashlib.sha256(f"{seed}|{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac}


def stage_prm(ctx: Context, it: Path, led: Ledger, labels: list[dict], policy: Path, method: str, k: int) -> Path:
    if led.done("prm"):
        return it / "prm"

    cfg, pc, t0 = ctx.cfg, ctx.cfg.prm, time.time()
    held = split_holdout([r["qid"] for r in labels], pc.holdout, cfg.seed)
    train_rows = [{"prompt": ctx.task.prompt(ctx.by_id[r["qid"]]), "steps": r["steps"], "labels": r["labels"],
                   "soft": r["soft"]} for r in labels if r["qid"] not in held]
    if pc.base == "policy":
        meta = read_policy_meta(policy)
        base = meta.get("base", str(policy)) if meta["kind"] == "adapter" else str(policy)
    else:
        base = model_source(ctx, pc.base)
    ds = ray.data.from_items(train_rows)
    job = fit_job(cfg, f"prm-{method}-{k}-{cfg.seed}", train_storage(ctx), base, it / "prm", "prm",
                  {"lr": pc.lr, "epochs": pc.epochs, "batch_size": pc.batch_size, "warmup_steps": 10,
                   "min_lr_ratio": 0.1, "max_len": pc.max_len, "soft": cfg.labeling.soft},
                  lora=lora_kwargs(pc.lora), load_in_4bit=pc.load_in_4bit)
    res = fit(job, {"train": ds})
    write_json(it / "prm_train.json", {"history": res.history, "steps": res.steps, "seconds": res.seconds,
                                       "train_paths": len(train_rows), "holdout_questions": sorted(held)})
    led.mark("prm", ["prm", "prm_train.json"], seconds=time.time() - t0, steps=res.steps,
             loss=res.history[-1].get("loss") if res.history else None)
    ctx.telemetry.loss("prm", res.history[-1].get("loss", 0.0) if res.history else 0.0)
    summary("prm", time.time() - t0, paths=len(train_rows), steps=res.steps,
            loss=res.history[-1].get("loss") if res.history else float("nan"))
    return it / "prm"


def stage_score(ctx: Context, it: Path, led: Ledger, samples: list[dict], labels: list[dict], prm: Path,
                method: str, k: int) -> list[dict]:
    if led.done("score"):
        return read_jsonl(it / "scored.jsonl")
    cfg, t0 = ctx.cfg, time.time()
    if ctx.scorers is None:
        cl = cfg.cluster
        ctx.scorers = scorer_pool(cl.scorer_replicas, cl.scorer_cpus, 0.0, cl.train_threads, cl.placement_strategy,
                                  dtype=cfg.model.run_dtype())
    ctx.scorers.broadcast("load", str(prm), cfg.prm.max_len)
    items = [{"prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "steps": s["steps"]} for s in samples]
    step_scores = ctx.scorers.map("score", items, 64, desc="PRM score", unit="path")
    scored = []
    for s, (sc, reward) in zip(samples, path_scores(ctx.task, [s["steps"] for s in samples], step_scores, cfg.prm)):
        scored.append({"id": s["id"], "qid": s["qid"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]),
                       "path": s["path"], "steps": s["steps"], "correct": s["correct"], "step_scores": sc,
                       "reward": reward})
    write_jsonl(it / "scored.jsonl", scored)
    # PRM quality: step AUC on held-out questions against MC labels and the oracle (when there is one).
    held = set(read_json(it / "prm_train.json")["holdout_questions"])
    lab = {r["id"]: r for r in labels}
    q, why = {}, {}
    for key in ("labels", "oracle"):
        ys, ps = [], []
        for s in scored:
            r = lab.get(s["id"])
            if r is None or key not in r or s["qid"] not in held:
                continue
            ys += r[key]
            ps += s["step_scores"]
        name = f"holdout_auc_vs_{'mc' if key == 'labels' else key}"
        q[name], reason = auc_figure(ps, ys)
        if reason:
            why[name] = reason
    dt = time.time() - t0
    led.mark("score", ["scored.jsonl"], seconds=dt, paths=len(scored), **q)
    summary("score", dt, paths=len(scored), **(q | why))
    return scored


def auc_figure(scores: list[float], labels: list[int]) -> tuple[float, Optional[str]]:
    """Step AUC (prm.auc) and, when it is nan, what the console shows instead and why: 'n/a (no held-out
    step)', 'n/a (no wrong held-out step)' or 'n/a (no right held-out step)' (results.json keeps nan)."""
    value = auc(scores, labels) if labels else float("nan")
    if value == value:
        return value, None
    return value, ("n/a (no held-out step)" if not labels else "n/a (no wrong held-out step)" if all(labels)
                   else "n/a (no right held-out step)")


def outcome_scores(samples: list[dict], ctx: Context) -> list[dict]:
    return [{"id": s["id"], "qid": s["qid"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "path": s["path"],
             "steps": s["steps"], "correct": s["correct"], "step_scores": [], "reward": 1.0 if s["correct"] else 0.0}
            for s in samples]


def stage_pairs(ctx: Context, it: Path, led: Ledger, scored: list[dict], method: str, k: int) -> dict:
    if led.done("pairs"):
        return led.get("pairs")
    cfg, pc, t0 = ctx.cfg, ctx.cfg.pairs, time.time()
    outcome = methods.get(method).data == "outcome"
    eta = pc.eta if not outcome else 0.5     # outcome rewards are 0/1: any right-vs-wrong pair
    # outcome feedback has no step scores: its pairs are whole paths (right vs wrong answer)
    strategy = "top_m" if outcome and pc.strategy == "first_error" else pc.strategy
    st = build_pairs(scored, it / "pairs", eta=eta, strategy=strategy, max_per_question=pc.max_per_question,
                     require_correct_chosen=pc.require_correct_chosen and not outcome,
                     seed=stage_seed(cfg.seed, method, k, "pairs"), iteration=k, num_shards=pc.num_shards,
                     step_threshold=pc.step_threshold,
                     min_chosen_reward=pc.min_chosen_reward if not outcome else 0.0)
    dt = time.time() - t0
    led.mark("pairs", ["pairs"], seconds=dt, **st)
    ctx.telemetry.pairs(st["pairs"])
    summary("pairs", dt, **st)
    return st


def stage_rft_data(ctx: Context, it: Path, led: Ledger, samples: list[dict]) -> dict:
    """RFT: the policy's own correct, distinct paths become SFT data (one parquet folder per iteration)."""
    if led.done("pairs"):
        return led.get("pairs")
    import pandas as pd
    t0 = time.time()
    rows = [{"pair_key": s["id"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "completion": s["path"]}
            for s in samples if s["correct"]]
    d = it / "pairs"
    d.mkdir(parents=True, exist_ok=True)
    if rows:
        ray.data.from_pandas(pd.DataFrame(rows).sort_values("pair_key")).write_parquet(str(d))
    led.mark("pairs", ["pairs"], seconds=time.time() - t0, pairs=len(rows))
    return {"pairs": len(rows)}


def process_pairs(ctx: Context, it: Path, led: Ledger, samples: list[dict], method: str, k: int, prev: Path) -> dict:
    """Process feedback (SIPF): MC step labels -> PRM fit -> PRM step scores -> pairs with reward gap >= eta."""
    labels = stage_label(ctx, it, led, samples, method, k)
    prm = stage_prm(ctx, it, led, labels, prev, method, k)
    scored = stage_score(ctx, it, led, samples, labels, prm, method, k)
    return stage_pairs(ctx, it, led, scored, method, k)


def outcome_pairs(ctx: Context, it: Path, led: Ledger, samples: list[dict], method: str, k: int, prev: Path) -> dict:
    """Outcome feedback (the paper's "w/o PF"): pairs of a right-answer path over a wrong-answer one."""
    return stage_pairs(ctx, it, led, outcome_scores(samples, ctx), method, k)


def own_correct_rows(ctx: Context, it: Path, led: Ledger, samples: list[dict], method: str, k: int,
                     prev: Path) -> dict:
    """RFT: the policy's own correct, distinct paths as SFT rows."""
    return stage_rft_data(ctx, it, led, samples)


# methods.py `data` kind -> the stages that turn an iteration's samples into its training data (iter_k/pairs/)
ITERATION_DATA = {"process": process_pairs, "outcome": outcome_pairs, "own_correct": own_correct_rows}

