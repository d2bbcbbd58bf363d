"""The SIPF loop: a single driver that runs each stage in order against the run directory.

    iter_00: build model -> SFT to convergence (M_0) -> eval
    iter_k : sample -> label -> PRM -> score -> pairs -> train (ORPO) -> broadcast -> eval -> DONE

Methods: sipf (process feedback + ORPO), sipf-dpo (DPO instead of ORPO: "w/o OR"), outcome (pairs ranked
by final-answer correctness: "w/o PF"), rft (SFT on own correct samples), sft (M_0; as a baseline, M_0
given the same extra update steps on gold data as the main method). Baselines live in
DIR/baselines/<method>/ and share DIR/iter_00. Every stage writes its artifacts atomically and records
their checksums in iter_k/stages.json, so `resume` skips finished stages and recomputes corrupted ones;
all randomness comes from seeds derived from (seed, method, iteration, stage), so a resumed run gives the
same files as an uninterrupted one.
"""
from __future__ import annotations

import time
from pathlib import Path

from sitf_ray import config as C
from sitf_ray import methods
from sitf_ray.cluster.ray_init import init_ray
from sitf_ray.cluster.scheduling import check_local_fits
from sitf_ray.cluster.validate import local_needs
from sitf_ray.feedback.stages import ITERATION_DATA
from sitf_ray.rollout.stages import load_policy, stage_eval, stage_sample
from sitf_ray.runs import tracking
from sitf_ray.runs.artifacts import Ledger, RunClock, atomic_write_text, write_json
from sitf_ray.runs.context import (
    Context,
    iteration_record,
    method_dirs,
    mirror,
    prepare,
    stage_timings,
)
from sitf_ray.runs.report import write_report
from sitf_ray.train.session import close_session
from sitf_ray.train.stages import (
    build_m0,
    main_steps,
    stage_sft_more,
    stage_train,
    warm_trainer,
)


def shutdown(ctx: Context):
    close_session()
    for p in (ctx.pool, ctx.simulator):
        if p is not None:
            p.shutdown()
    if ctx.scorers is not None:
        ctx.scorers.shutdown()
    ctx.pool = ctx.simulator = ctx.scorers = None
    tracking.close(ctx.root)


def run_iteration(ctx: Context, method: str, k: int, it: Path, led: Ledger, prev: Path, mdir: Path) -> None:
    """One iteration's update of `method` (methods.py): its data from its own samples, then the fit; or,
    for the gold-data SFT control, the main method's step count on gold rows."""
    m = methods.get(method)
    if not m.samples:
        stage_sft_more(ctx, it, led, k, prev, main_steps(ctx, k) or 0)
        return
    load_policy(ctx, prev)                                       # broadcast M_k to the generators
    samples = stage_sample(ctx, it, led, method, k)
    ITERATION_DATA[m.data](ctx, it, led, samples, method, k, prev)
    stage_train(ctx, it, led, method, k, prev, mdir)


def run_method(ctx: Context, method: str) -> list[dict]:
    """Iterations 1..K of one method; returns per-iteration records (k=0 is M_0)."""
    cfg = ctx.cfg
    mdir = method_dirs(ctx, method)
    records = [iteration_record(ctx.root / "iter_00", 0)]
    tracking.update(ctx, method)    # M_0 and every finished iteration (a resumed run catches up)
    if not methods.get(method).samples and method == cfg.method:
        return records          # the gold-data SFT as the main method: M_0 only
    prev = ctx.m0
    for k in range(1, cfg.iterations + 1):
        it = mdir / f"iter_{k:02d}"
        led = Ledger(it)
        if (it / "DONE").exists() and all(led.done(s) for s in led.data):
            records.append(iteration_record(it, k))
            prev = it / "policy"
            continue
        print(f"--- {method}: iteration {k}/{cfg.iterations} ---", flush=True)
        t_iter = time.time()
        run_iteration(ctx, method, k, it, led, prev, mdir)
        tracking.update(ctx, method)    # the fits' step curves and the stage figures, before the eval
        stage_eval(ctx, it, led, it / "policy", f"{method} iter {k}")
        atomic_write_text(it / "DONE", f"{time.time() - t_iter:.1f}\n")
        records.append(iteration_record(it, k))
        tracking.update(ctx, method)
        if cfg.storage:
            mirror(ctx)
        prev = it / "policy"
    return records


def run(cfg: C.SIPFConfig, out: str | Path, resume: bool = False) -> dict:
    t0 = time.time()
    ctx = prepare(cfg, out, resume)   # config and data problems surface before any cluster work
    # timings.json: this call's seconds are added to every earlier call's, flushed as it goes
    clock = RunClock(ctx.root, ctx.sync_log, extra=lambda: {"stages": stage_timings(ctx)})
    try:
        init_ray(cfg.cluster.num_cpus)
        # what this local cluster can never place fails now, not at the stage that first asks for it
        check_local_fits(local_needs(cfg, prm=any("prm" in methods.get(m).stages
                                                  for m in [cfg.method, *cfg.baselines])))
        warm_trainer(ctx)
        build_m0(ctx)
        main = run_method(ctx, cfg.method)
        baselines = {}
        for m in cfg.baselines:
            if m == cfg.method:
                continue
            baselines[m] = {"iterations": run_method(ctx, m)}
        # results.json holds only what a same-seed re-run reproduces; wall-clock figures go to timings.json.
        results = {"task": cfg.task.name, "model": cfg.model.source, "method": cfg.method, "seed": cfg.seed,
                   "iterations": main, "baselines": baselines}
        write_json(ctx.root / "results.json", results)
        clock.flush()
        write_report(ctx.root)
        tracking.finish(ctx)            # the report's plots as artifacts; runs marked finished
        if cfg.storage:
            mirror(ctx)
        results["seconds"] = time.time() - t0
        return results
    finally:
        clock.stop()
        shutdown(ctx)
