"""Label quality against the exact arith oracle with the step-checker options off and on (issue 20).

    .venv/bin/python scripts/label_checks.py [--out runs/label-checks] [--questions 200] [key=value ...]

Builds (or reuses) the quickstart's M_0 in --out, samples it once (N paths per question, the pipeline's
iteration-1 sampling settings and seed) on the first --questions training questions, then labels those
same samples under each setting with the policy as its own simulator (binary search, K, T of the config):

  today            skip_correct_paths=true (Math-Shepherd: a right answer proves every step)
  probed           + answer-correct paths probed (skip_correct_paths=false, answer_probe=true)
  check            today's rule + labeling.check_rollouts (a rollout, or the path, with a false equation
                   is a miss)
  probed+check     both
  filter           sampling.require_valid_equations (samples with a false equation dropped first), today's
  filter+probed+check

Step F1 / precision / recall and path precision (of the answer-correct paths labelled right at every step,
the share the oracle calls sound) come from labeling.versus_oracle; the filter rows are over the kept
samples only. Writes --out/label_checks.json, the samples with the checker's verdict
(--out/samples.jsonl), and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = [  # name, filter, skip_correct_paths, check_rollouts
    ("today", False, True, False),
    ("probed", False, False, False),
    ("check", False, True, True),
    ("probed+check", False, False, True),
    ("filter", True, True, False),
    ("filter+probed+check", True, False, True),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "runs" / "label-checks"))
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    from sitf_ray import config as C
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.feedback.labeling import label_samples, versus_oracle
    from sitf_ray.train.stages import build_m0
    from sitf_ray.rollout.stages import make_pool
    from sitf_ray.runs.context import prepare, stage_seed
    from sitf_ray.pipeline import shutdown
    from sitf_ray.rollout.sampling import sample_paths

    cfg = C.load(None, ["method=sipf", "baselines=[outcome,sft]"] + a.overrides)
    out = Path(a.out)
    init_ray(8)
    t0 = time.time()
    ctx = prepare(cfg, out, resume=(out / "config.yaml").exists())
    try:
        m0 = build_m0(ctx)
    finally:
        shutdown(ctx)
    print(f"[label-checks] M_0 ready in {time.time() - t0:.0f} s: {m0}", flush=True)
    task, lc, s = ctx.task, cfg.labeling, cfg.sampling
    rows = ctx.splits["train"][:a.questions]
    by_id = {r["id"]: r for r in rows}
    pool = make_pool(cfg, ctx.m0)
    res = {"questions": len(rows), "seed": cfg.seed, "n": s.n, "k": lc.k, "mode": lc.mode,
           "temperature": lc.temperature, "simulator": lc.simulator, "m0": ctx.m0 and str(ctx.m0), "settings": []}
    try:
        t1 = time.time()
        samples, st = sample_paths(pool, task, rows, s.n, s.temperature, s.top_p, s.max_tokens,
                                   seed=stage_seed(cfg.seed, "m0", 1, "sample"), dedupe=s.dedupe)
        kept = [x for x in samples if task.step_check(x["path"])]
        with open(out / "samples.jsonl", "w") as f:     # what was labelled, with the checker's verdict
            for x in samples:
                f.write(json.dumps(dict(x, passes_check=task.step_check(x["path"]))) + "\n")
        correct = [x for x in samples if x["correct"]]
        res["samples"] = {"paths": len(samples), "correct": len(correct),
                          "strict": sum(bool(x.get("strict")) for x in samples),
                          "false_equation": len(samples) - len(kept),
                          "correct_with_false_equation": sum(not task.step_check(x["path"]) for x in correct),
                          "kept_by_filter": len(kept), "kept_correct": sum(x["correct"] for x in kept),
                          "kept_strict": sum(bool(x.get("strict")) for x in kept), "seconds": time.time() - t1}
        print(f"[label-checks] samples: {res['samples']}", flush=True)
        for name, filt, skip, check in SETTINGS:
            labels, ls = label_samples(kept if filt else samples, by_id, task, lc.mode, pool, k=lc.k,
                                       delta=lc.delta, temperature=lc.temperature, max_tokens=lc.max_tokens,
                                       seed=stage_seed(cfg.seed, "label-checks"), skip_correct_paths=skip,
                                       answer_probe=lc.answer_probe, check_rollouts=check)
            q = versus_oracle(labels)
            row = {"setting": name, "filter": filt, "skip_correct_paths": skip, "check_rollouts": check,
                   "paths": len(labels), "rollouts": ls.rollouts, "seconds": round(ls.seconds, 1),
                   **{k: q[k] for k in ("f1", "precision", "recall", "accuracy", "path_precision",
                                        "paths_all_right", "n")}, **ls.extra}
            res["settings"].append(row)
            print(f"[label-checks] {name:22s} paths {row['paths']:5d}  F1 {q['f1']:.3f} (P {q['precision']:.3f}"
                  f" / R {q['recall']:.3f})  path precision {q['path_precision']:.3f} of {q['paths_all_right']}"
                  f"  rollouts {ls.rollouts}  {ls.seconds:.0f} s", flush=True)
    finally:
        pool.shutdown()
    (out / "label_checks.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"[label-checks] wrote {out / 'label_checks.json'} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
