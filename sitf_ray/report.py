"""results.json -> a paper-style table, report.md and matplotlib plots under DIR/plots/."""
from __future__ import annotations

import math
from pathlib import Path

from .artifacts import Ledger, atomic_write_text, read_json, read_jsonl

LABELS = {"sipf": "SIPF (ORPO + process feedback)", "outcome": "w/o PF (outcome pairs, ORPO)",
          "sipf-dpo": "w/o OR (process feedback, DPO)", "rft": "RFT (own correct samples)",
          "sft": "SFT (+ same extra steps on gold)"}


def method_rows(results: dict) -> list[tuple[str, list[dict]]]:
    rows = [(results["method"], results["iterations"])]
    rows += [(m, b["iterations"]) for m, b in results.get("baselines", {}).items()]
    return rows


def table(results: dict) -> str:
    """Accuracy per iteration per method, M_0 first, as a fixed-width text table."""
    rows = method_rows(results)
    k_max = max(len(it) for _, it in rows) - 1
    head = f"{'method':<34} " + " ".join(f"{'iter ' + str(k):>8}" for k in range(k_max + 1)) + f" {'gain':>7}"
    lines = [head, "-" * len(head)]
    for m, its in rows:
        accs = [f"{100 * r['accuracy']:8.1f}" for r in its] + [" " * 8] * (k_max + 1 - len(its))
        gain = 100 * (its[-1]["accuracy"] - its[0]["accuracy"])
        lines.append(f"{LABELS.get(m, m):<34} " + " ".join(accs) + f" {gain:+7.1f}")
    n = rows[0][1][0].get("n")
    lines.append(f"(test accuracy %, {results['task']}, n={n}; iter 0 = M_0, SFT to convergence)")
    return "\n".join(lines)


def seeds_table(results: list[dict]) -> str:
    """Mean +- sd over several runs (seeds) of the same config: final accuracy and gain over M_0."""
    import statistics
    by_method: dict = {}
    for res in results:
        for m, its in method_rows(res):
            by_method.setdefault(m, []).append(its)
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    lines = [f"{'method':<34} {'final acc %':>14} {'gain vs M_0':>14} {'per seed (final)':>28}", "-" * 94]
    for m, runs in by_method.items():
        finals = [100 * its[-1]["accuracy"] for its in runs]
        gains = [100 * (its[-1]["accuracy"] - its[0]["accuracy"]) for its in runs]
        lines.append(f"{LABELS.get(m, m):<34} {statistics.mean(finals):8.1f} ± {sd(finals):3.1f} "
                     f"{statistics.mean(gains):+8.1f} ± {sd(gains):3.1f} "
                     f"{', '.join(f'{x:.1f}' for x in finals):>28}")
    m0 = [100 * its[0]["accuracy"] for its in by_method[results[0]["method"]]]
    lines.append(f"{'M_0 (SFT to convergence)':<34} {statistics.mean(m0):8.1f} ± {sd(m0):3.1f} {'':>16}"
                 f"{', '.join(f'{x:.1f}' for x in m0):>28}")
    lines.append(f"({len(results)} seeds: "
                 f"{', '.join(str(r['seed']) for r in results)}; test n={results[0]['iterations'][0].get('n')})")
    return "\n".join(lines)


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
        md += [f"Total wall time: {t['total_seconds'] / 60:.1f} min.", ""]
    for p in made:
        md += [f"![{p.stem}](plots/{p.name})", ""]
    out = atomic_write_text(root / "report.md", "\n".join(md))
    return out


def _plots(root: Path, results: dict, plots: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, its in method_rows(results):
        ax.plot([r["k"] for r in its], [100 * r["accuracy"] for r in its], marker="o", label=LABELS.get(m, m))
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    made.append(_save(fig, plots / "accuracy.png"))
    plt.close(fig)

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


def _save(fig, path: Path) -> Path:
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path
