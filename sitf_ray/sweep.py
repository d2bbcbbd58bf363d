"""Arms from one M_0: the research table of docs/RESULTS.md (`sitf-ray sweep`).

    sitf-ray sweep [--out runs/sweep] [--seeds 0,1,2] [--arms sipf,outcome,...] [key=value ...]

Per seed, M_0 is built once (`<out>/seed<S>/m0`: SFT to convergence + its evaluation); every arm then starts
from a copy of that iter_00, so all arms of a seed share the same M_0, data split and evaluation set. Each arm
is a set of config overrides on top of the quickstart config (plus the command's own overrides); its run
directory is `<out>/seed<S>/<arm>` and resumes like any run. The table (`<out>/sweep.md`, `<out>/sweep.json`)
gives per arm the final test accuracy and strict accuracy, their gain over M_0, mean +- sd over seeds.
"""
from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from sitf_ray import config as C
from sitf_ray.pipeline import run
from sitf_ray.runs.artifacts import atomic_write_text, read_json, write_json

# name -> (what it is, overrides). Every arm runs the same number of iterations from the same M_0.
ARMS: dict[str, tuple[str, list[str]]] = {
    "sipf": ("SIPF: the policy as its own simulator, rollouts checked by the calculator, PRM scores with the "
             "calculator's verdict on top (the quickstart recipe)", ["method=sipf"]),
    "sipf-nocheck": ("SIPF without the calculator in its process feedback (the quickstart before issue 20)",
                     ["method=sipf", "labeling.check_rollouts=false", "prm.check_steps=false"]),
    "sipf-verifier": ("SIPF with the arith verifier as simulator and PRM base (a stronger model, as the paper's 7B)",
                      ["method=sipf", "labeling.simulator=verifier", "prm.base=verifier"]),
    "sipf-oracle": ("SIPF with exact oracle step labels (the ceiling for labels)",
                    ["method=sipf", "labeling.mode=oracle"]),
    "outcome": ("outcome feedback: ORPO on right-vs-wrong answer pairs (the paper's w/o PF)", ["method=outcome"]),
    "outcome-filter": ("outcome feedback on the samples the paper's filter keeps (no false equation)",
                       ["method=outcome", "sampling.require_valid_equations=true"]),
    "rft": ("RFT: SFT on the policy's own answer-correct samples (outcome-filtered)", ["method=rft"]),
    "sft": ("SFT: M_0 given as many extra steps on its gold data as the sipf arm took",
            ["method=sipf", "baselines=[sft]"]),
}


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def build_seed_m0(base: list[str], seed: int, out: Path):
    """Run (or resume) M_0 alone for one seed: iterations=0, no baselines."""
    d = out / f"seed{seed}" / "m0"
    cfg = C.build(overrides=base + [f"seed={seed}", "iterations=0", "baselines=[]"])
    run(cfg, d, resume=(d / "config.yaml").exists())
    return d


def run_arm(base: list[str], arm: str, seed: int, out: Path, m0_dir: Path) -> dict:
    d = out / f"seed{seed}" / arm
    ov = base + ARMS[arm][1] + [f"seed={seed}"]
    if arm != "sft":
        ov.append("baselines=[]")
    cfg = C.build(overrides=ov)
    if not (d / "iter_00" / "DONE").exists() and not (d / "iter_00" / "eval.json").exists():
        shutil.rmtree(d / "iter_00", ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copytree(m0_dir / "iter_00", d / "iter_00")
    (d / "config.yaml").write_text(C.dump(cfg))
    return run(cfg, d, resume=True)


def rows_of(res: dict, arm: str) -> dict[str, list[dict]]:
    """Arm name(s) -> per-iteration records of a finished run (the sft arm is the sipf run's sft baseline)."""
    if arm == "sft":
        return {"sft": res["baselines"]["sft"]["iterations"]}
    return {arm: res["iterations"]}


def table(results: dict[int, dict[str, list[dict]]]) -> tuple[str, dict]:
    """results: seed -> arm -> iteration records. Markdown table + a JSON summary."""
    arms = []
    for per_arm in results.values():
        arms += [a for a in per_arm if a not in arms]
    seeds = sorted(results)
    lines = ["| arm | final acc % | gain vs M_0 | final strict % | strict gain | per seed (acc / strict) |",
             "| --- | --- | --- | --- | --- | --- |"]
    summary = {}
    m0 = [100 * results[s][arms[0]][0]["accuracy"] for s in seeds if arms and arms[0] in results[s]]
    m0s = [100 * results[s][arms[0]][0].get("strict_accuracy", float("nan")) for s in seeds
           if arms and arms[0] in results[s]]
    lines.append(f"| M_0 (SFT to convergence) | {_fmt(m0)} | | {_fmt(m0s)} | | "
                 + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(m0, m0s)) + " |")
    for arm in arms:
        its = [results[s][arm] for s in seeds if arm in results[s]]
        acc = [100 * r[-1]["accuracy"] for r in its]
        gain = [100 * (r[-1]["accuracy"] - r[0]["accuracy"]) for r in its]
        strict = [100 * r[-1].get("strict_accuracy", float("nan")) for r in its]
        sgain = [100 * (r[-1].get("strict_accuracy", float("nan")) - r[0].get("strict_accuracy", float("nan")))
                 for r in its]
        summary[arm] = {"accuracy": acc, "gain": gain, "strict_accuracy": strict, "strict_gain": sgain,
                        "per_iteration": [[100 * x["accuracy"] for x in r] for r in its],
                        "per_iteration_strict": [[100 * x.get("strict_accuracy", float("nan")) for x in r]
                                                 for r in its]}
        lines.append(f"| {arm} | {_fmt(acc)} | {_fmt(gain)} | {_fmt(strict)} | {_fmt(sgain)} | "
                     + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(acc, strict)) + " |")
    lines.append(f"\n(seeds {', '.join(map(str, seeds))}; test n = "
                 f"{results[seeds[0]][arms[0]][0].get('n') if arms else '?'}; arms: "
                 + "; ".join(f"{a} = {ARMS[a][0]}" for a in arms if a in ARMS) + ")")
    return "\n".join(lines), summary


def sweep(out: str | Path, seeds: list[int], arms: list[str], overrides: list[str]) -> dict:
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise C.ConfigError(f"unknown arm(s) {bad}; choose from {sorted(ARMS)}")
    out = Path(out)
    base = C.QUICKSTART + list(overrides)
    C.build(overrides=base)       # a bad override fails here, before any work
    results: dict = {}
    for seed in seeds:
        m0 = build_seed_m0(base, seed, out)
        results[seed] = {}
        for arm in arms:
            results[seed].update(rows_of(run_arm(base, arm, seed, out, m0), arm))
            text, summ = table(results)
            atomic_write_text(out / "sweep.md", text + "\n")
            write_json(out / "sweep.json", {"overrides": list(overrides), "seeds": seeds, "arms": arms,
                                            "summary": summ, "results": {str(k): v for k, v in results.items()}})
            print(text, flush=True)
    return read_json(out / "sweep.json")
