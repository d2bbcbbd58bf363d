"""results.json -> a paper-style table, report.md and matplotlib plots under DIR/plots/."""
from __future__ import annotations

import math
from pathlib import Path

from sitf_ray import config as C
from sitf_ray.methods import label as method_label
from sitf_ray.runs.artifacts import Ledger, atomic_write_text, read_json, read_jsonl
from sitf_ray.runs.tracking import flat_config


def method_rows(results: dict) -> list[tuple[str, list[dict]]]:
    rows = [(results["method"], results["iterations"])]
    rows += [(m, b["iterations"]) for m, b in results.get("baselines", {}).items()]
    return rows


def _has_strict(rows) -> bool:
    return all("strict_accuracy" in r for _, its in rows for r in its)


def table(results: dict) -> str:
    """Accuracy per iteration per method, M_0 first, as a fixed-width text table (strict accuracy below it
    for tasks with a step oracle)."""
    rows = method_rows(results)
    k_max = max(len(it) for _, it in rows) - 1
    head = f"{'method':<34} " + " ".join(f"{'iter ' + str(k):>8}" for k in range(k_max + 1)) + f" {'gain':>7}"
    lines = [head, "-" * len(head)]
    split = rows[0][1][-1].get("split", "test")
    keys = [("accuracy", f"{split} accuracy %")] + ([("strict_accuracy", "strict accuracy % (answer and every "
                                                  "step right)")] if _has_strict(rows) else [])
    for key, title in keys:
        if key != "accuracy":
            lines.append(f"{title}:")
        for m, its in rows:
            accs = [f"{100 * r[key]:8.1f}" for r in its] + [" " * 8] * (k_max + 1 - len(its))
            gain = 100 * (its[-1][key] - its[0][key])
            lines.append(f"{method_label(m):<34} " + " ".join(accs) + f" {gain:+7.1f}")
    n = rows[0][1][0].get("n")
    se = binomial_se(rows[0][1][0]["accuracy"], n) if n else float("nan")
    m0 = rows[0][1][0]
    how = ("" if "sft_early_stopped" not in m0 else ", SFT early-stopped on validation" if m0["sft_early_stopped"]
           else f", SFT capped at {m0['sft_epochs']} epochs (not early-stopped: may be short of convergence)")
    lines.append(f"({split} accuracy %, {results['task']}, n={n}, one standard error {100 * se:.1f} points; "
                 f"iter 0 = M_0{how})")
    return "\n".join(lines)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n questions (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(1, n))


def seeds_table(results: list[dict]) -> str:
    """Mean +- sd over several runs (seeds) of the same config: final accuracy (and strict accuracy where
    the task has a step oracle) and the gain over M_0."""
    import statistics
    by_method: dict = {}
    for res in results:
        for m, its in method_rows(res):
            by_method.setdefault(m, []).append(its)
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    strict = all(_has_strict(method_rows(r)) for r in results)
    lines = []
    for key in ["accuracy"] + (["strict_accuracy"] if strict else []):
        title = "final acc %" if key == "accuracy" else "final strict %"
        lines += [f"{'method':<34} {title:>14} {'gain vs M_0':>14} {'per seed (final)':>28}", "-" * 94]
        for m, runs in by_method.items():
            finals = [100 * its[-1][key] for its in runs]
            gains = [100 * (its[-1][key] - its[0][key]) for its in runs]
            lines.append(f"{method_label(m):<34} {statistics.mean(finals):8.1f} ± {sd(finals):3.1f} "
                         f"{statistics.mean(gains):+8.1f} ± {sd(gains):3.1f} "
                         f"{', '.join(f'{x:.1f}' for x in finals):>28}")
        m0 = [100 * its[0][key] for its in by_method[results[0]["method"]]]
        lines.append(f"{'M_0 (SFT)':<34} {statistics.mean(m0):8.1f} ± {sd(m0):3.1f} {'':>16}"
                     f"{', '.join(f'{x:.1f}' for x in m0):>28}")
        lines.append("")
    lines.append(f"({len(results)} seeds: "
                 f"{', '.join(str(r['seed']) for r in results)}; test n={results[0]['iterations'][0].get('n')})")
    return "\n".join(lines)


def check_same_recipe(dirs: list[str | Path]) -> None:
    """Refuse to average runs as seeds unless they are seeds of one recipe: their config.yaml files may differ
    in `seed` only (and `storage`; `task.arith.data_seed` where it follows each run's seed), and no seed may
    come twice. Raises UsageError with one line naming the runs and the differing keys (or the seed)."""
    flats = [flat_config(C.load(Path(d) / "config.yaml")) for d in dirs]
    for f in flats:                        # a data seed that follows the run's seed is part of the seed
        if f.get("task.arith.data_seed") == f.get("seed"):
            f["task.arith.data_seed"] = "=seed"
    seen: dict = {}
    for d, f in zip(dirs, flats):
        if f["seed"] in seen:
            raise C.UsageError(f"{seen[f['seed']]} and {d} both ran seed {f['seed']}: a mean over seeds needs "
                               f"distinct seeds")
        seen[f["seed"]] = d
    ignore = {"seed", "storage"}
    for d, f in zip(dirs[1:], flats[1:]):
        keys = sorted(k for k in set(f) | set(flats[0]) if k not in ignore and f.get(k) != flats[0].get(k))
        if keys:
            shown = ", ".join(f"{k} ({flats[0].get(k)!r} vs {f.get(k)!r})" for k in keys[:5])
            raise C.UsageError(f"{dirs[0]} and {d} are not seeds of one recipe: their configs differ in {shown}"
                               + (f" and {len(keys) - 5} more" if len(keys) > 5 else ""))


def write_seeds_report(dirs: list[str | Path], out: str | Path) -> Path:
    """Several seeds of one config: seeds.md (mean +- sd table) and plots/accuracy.png (sd error bars).
    Raises UsageError when the runs are not seeds of one recipe (check_same_recipe)."""
    check_same_recipe(dirs)
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    results = [read_json(Path(d) / "results.json") for d in dirs]
    made = []
    try:
        made = [_accuracy_plot(results, out / "plots" / "accuracy.png")]
    except Exception as e:   # a plot never breaks a report
        print(f"[report] plot skipped: {e}")
    md = [f"# {len(results)} seeds: {results[0]['method']} on {results[0]['task']} ({results[0]['model']})", "",
          "```", seeds_table(results), "```", "", "Runs: " + ", ".join(str(d) for d in dirs), ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in made]
    return atomic_write_text(out / "seeds.md", "\n".join(md) + "\n")


def write_report(root: str | Path) -> Path:
    root = Path(root)
    results = read_json(root / "results.json")
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    made = []
    try:
        made = _plots(root, results, plots)
    except Exception as e:   # a plot never breaks a run
        print(f"[report] plots skipped: {e}")
    md = [f"# sitf-ray run: {results['method']} on {results['task']} ({results['model']}, seed {results['seed']})",
          "", "```", table(results), "```", ""]
    timings = root / "timings.json"
    if timings.exists():
        t = read_json(timings)
        calls = len(t.get("calls") or [None])
        md += [f"Total wall time: {t['total_seconds'] / 60:.1f} min"
               + (f", over {calls} calls (run, then resume)." if calls > 1 else "."), ""]
    for p in made:
        md += [f"![{p.stem}](plots/{p.name})", ""]
    out = atomic_write_text(root / "report.md", "\n".join(md))
    return out


def _plots(root: Path, results: dict, plots: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = [_accuracy_plot([results], plots / "accuracy.png")]

    # PRM calibration (last iteration with scores): predicted P(correct) vs observed label rate.
    scored = sorted(root.glob("iter_*/scored.jsonl"))
    if scored:
        it = scored[-1].parent
        lab = {r["id"]: r for r in read_jsonl(it / "labels.jsonl")}
        key = "oracle" if any("oracle" in r for r in lab.values()) else "labels"
        ps, ys = [], []
        for s in read_jsonl(scored[-1]):
            r = lab.get(s["id"])
            if r:
                ps += s["step_scores"]
                ys += r[key]
        bins = [[] for _ in range(10)]
        for p, y in zip(ps, ys):
            bins[min(9, int(p * 10))].append(y)
        xs = [(i + 0.5) / 10 for i, b in enumerate(bins) if b]
        fig, ax = plt.subplots(figsize=(4, 3.5))
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.plot(xs, [sum(b) / len(b) for b in bins if b], marker="o")
        ax.set_xlabel("PRM P(step correct)")
        ax.set_ylabel(f"observed ({key} labels)")
        ax.set_title(f"PRM calibration, {it.name}")
        fig.tight_layout()
        made.append(_save(fig, plots / "prm_calibration.png"))
        plt.close(fig)

    # Label statistics and stage times per iteration of the main method.
    its = sorted(p.parent for p in root.glob("iter_*/stages.json"))
    if its:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        names, pos_rates, f1s = [], [], []
        stage_names = ["sample", "label", "prm", "score", "pairs", "train", "eval"]
        bottoms = [0.0] * len(its)
        for it in its:
            led = Ledger(it)
            lab = led.get("label")
            names.append(it.name)
            pos_rates.append(lab.get("positives", 0) / max(1, lab.get("steps", 1)) if lab else math.nan)
            f1s.append(lab.get("vs_oracle", {}).get("f1", math.nan) if lab else math.nan)
        a1.plot(names, pos_rates, marker="o", label="steps labelled correct")
        a1.plot(names, f1s, marker="s", label="label F1 vs oracle")
        a1.set_ylim(0, 1)
        a1.legend(fontsize=7)
        a1.set_title("labels")
        for st in stage_names:
            vals = [Ledger(it).get(st).get("seconds") or 0.0 for it in its]
            a2.bar(names, vals, bottom=bottoms, label=st)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        a2.set_ylabel("seconds")
        a2.legend(fontsize=6)
        a2.set_title("stage times")
        fig.tight_layout()
        made.append(_save(fig, plots / "labels_and_stages.png"))
        plt.close(fig)
    return made


def _accuracy_plot(results: list[dict], path: Path) -> Path:
    """Accuracy (solid) and strict accuracy (dashed) per iteration and method. Error bars: the binomial
    standard error of each point for one run, the sd over runs (seeds) for several."""
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = [m for m, _ in method_rows(results[0])]
    strict = all(_has_strict(method_rows(r)) for r in results)
    for idx, m in enumerate(methods):
        runs = [dict(method_rows(r))[m] for r in results if m in dict(method_rows(r))]
        color = f"C{idx}"
        for key, style in [("accuracy", "-")] + ([("strict_accuracy", "--")] if strict else []):
            ks = [r["k"] for r in runs[0]]
            vals = [[100 * its[j][key] for its in runs if j < len(its)] for j in range(len(ks))]
            ys = [statistics.mean(v) for v in vals]
            if len(runs) > 1:
                err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            else:
                err = [100 * binomial_se(r[key], r.get("n", 0)) for r in runs[0]]
            label = method_label(m) + ("" if key == "accuracy" else " (strict)")
            shift = 0.05 * (idx - (len(methods) - 1) / 2)     # methods side by side: error bars stay readable
            ax.errorbar([k + shift for k in ks], ys, yerr=err, marker="o" if key == "accuracy" else "s", linestyle=style, color=color,
                        capsize=3, label=label, alpha=1.0 if key == "accuracy" else 0.75)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration (0 = M_0)")
    ax.set_ylabel("test accuracy (%)")
    bars = "sd over %d seeds" % len(results) if len(results) > 1 else "binomial standard error"
    ax.set_title(f"{results[0]['task']}: accuracy{' and strict accuracy' if strict else ''} ({bars})", fontsize=9)
    ax.legend(fontsize=6.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path
