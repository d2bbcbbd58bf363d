"""Preference pairs on Ray Data: scored paths -> (prompt, chosen, rejected) parquet shards.

    scored rows --groupby(qid)--> pairs with reward gap >= eta --sort(seeded key)--> parquet shards

The order is a seeded pseudo-random permutation (sort by a hash of seed and pair), so the same inputs and
seed always give the same shards, whatever Ray Data's block layout: training after a resume sees the
same data in the same order. Columns follow TRL (`prompt`, `chosen`, `rejected`) plus rewards and
provenance. D_{k+1} = D_k U new pairs is read back by train/datasets.py `training_dataset(previous dirs + new dir)`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import ray

COLUMNS = ["pair_key", "qid", "iteration", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward",
           "gap", "chosen_id", "rejected_id", "chosen_correct", "rejected_correct"]


def _key(seed: int, qid: str, a: str, b: str) -> str:
    return hashlib.sha256(f"{seed}|{qid}|{a}|{b}".encode()).hexdigest()[:16]


def first_error(step_scores, threshold: float, correct: bool) -> int:
    """Index of the first step the PRM scores below threshold; a wrong answer with none is wrong at its
    last step; -1 when every step looks right and the answer is right."""
    for i, p in enumerate(step_scores):
        if p < threshold:
            return i
    return -1 if correct else len(step_scores) - 1


def first_error_pairs(g: pd.DataFrame, eta: float, max_per_question: int, require_correct_chosen: bool,
                      threshold: float, min_chosen_reward: float = 0.0) -> list[tuple]:
    """Step-level pairs (Step-DPO, Lai et al. 2024; Self-Explore, Hwang et al. 2024): for a rejected path
    whose first error (by PRM step score) is step e, the chosen path is the best-rewarded sample of the
    same question that shares its steps before e exactly, takes another step e, and scores that step as
    right. Returns (gap, chosen index, rejected index, e), widest gaps first, each rejected path once."""
    steps = [list(x) for x in g.steps]
    firsts = [first_error(list(sc), threshold, bool(c)) for sc, c in zip(g.step_scores, g.correct)]
    cands = []
    for j in range(len(g)):
        e = firsts[j]
        if e < 0:
            continue
        best = None
        for i in range(len(g)):            # g is sorted by reward: the first match is the best chosen
            gap = float(g.reward[i] - g.reward[j])
            if i == j or gap + 1e-12 < eta or gap <= 0:
                continue
            if require_correct_chosen and not bool(g.correct[i]):
                continue
            if g.reward[i] < min_chosen_reward:
                continue
            if len(steps[i]) <= e or steps[i][:e] != steps[j][:e] or steps[i][e] == steps[j][e]:
                continue
            if 0 <= firsts[i] <= e:         # the chosen path must be right up to and including step e
                continue
            best = (gap, i, j, e)
            break
        if best:
            cands.append(best)
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return cands[:max_per_question]


def pairs_for_question(group: pd.DataFrame, eta: float, strategy: str, max_per_question: int,
                       require_correct_chosen: bool, seed: int, iteration: int,
                       step_threshold: float = 0.5, min_chosen_reward: float = 0.0) -> pd.DataFrame:
    """All (better, worse) paths of one question with reward gap >= eta, then thinned by strategy.

    all:     every such pair.   max_gap: the single widest pair.
    top_m:   the widest pairs first, each path chosen at most once and rejected at most once, up to M.
    best_vs_rest: the question's best-rewarded eligible path against each path at least eta below it, the
             widest gaps first, up to M (RFT-style: on a policy whose samples of one question collapse to a
             single sound path, that path is the only good chosen there is; top_m would give it one pair).
    min_chosen_reward: a chosen path needs at least this reward (the PRM calls it right), whatever the gap.
    first_error: step-level pairs that share the prefix before the rejected path's first error
             (first_error_pairs); the prefix moves into the prompt, chosen / rejected are the continuations.
    """
    g = group.sort_values(["reward", "id"], ascending=[False, True]).reset_index(drop=True)
    if strategy == "first_error":
        rows = []
        for gap, i, j, e in first_error_pairs(g, eta, max_per_question, require_correct_chosen, step_threshold,
                                                 min_chosen_reward):
            ci, ri = g.iloc[i], g.iloc[j]
            prefix = "".join(st + "\n" for st in list(ri.steps)[:e])
            rows.append(_pair_row(seed, iteration, ci, ri, gap, ci.prompt + prefix,
                                  "\n".join(list(ci.steps)[e:]), "\n".join(list(ri.steps)[e:])))
        return pd.DataFrame(rows, columns=COLUMNS)
    cands = []
    for i in range(len(g)):
        for j in range(i + 1, len(g)):
            gap = float(g.reward[i] - g.reward[j])
            if gap + 1e-12 < eta or gap <= 0:
                continue
            if require_correct_chosen and not bool(g.correct[i]):
                continue
            if g.reward[i] < min_chosen_reward:
                continue
            cands.append((gap, i, j))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    if strategy == "max_gap":
        cands = cands[:1]
    elif strategy == "best_vs_rest":
        best = min((i for _, i, _ in cands), default=None)    # g is sorted by reward: lowest index = best
        cands = [c for c in cands if c[1] == best][:max_per_question]
    elif strategy == "top_m":
        used_c, used_r, keep = set(), set(), []
        for gap, i, j in cands:
            if i in used_c or j in used_r:
                continue
            keep.append((gap, i, j))
            used_c.add(i)
            used_r.add(j)
            if len(keep) >= max_per_question:
                break
        cands = keep
    rows = [_pair_row(seed, iteration, g.iloc[i], g.iloc[j], gap, g.prompt[i], g.path[i], g.path[j])
            for gap, i, j in cands]
    return pd.DataFrame(rows, columns=COLUMNS)


def _pair_row(seed: int, iteration: int, ci, ri, gap: float, prompt: str, chosen: str, rejected: str) -> dict:
    return {"pair_key": _key(seed, str(ci.qid), str(ci.id), str(ri.id)), "qid": str(ci.qid),
            "iteration": iteration, "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_reward": float(ci.reward), "rejected_reward": float(ri.reward), "gap": gap,
            "chosen_id": str(ci.id), "rejected_id": str(ri.id), "chosen_correct": bool(ci.correct),
            "rejected_correct": bool(ri.correct)}


def build_pairs(scored: list[dict], out_dir: str | Path, *, eta: float, strategy: str, max_per_question: int,
                require_correct_chosen: bool, seed: int, iteration: int, num_shards: int,
                step_threshold: float = 0.5, min_chosen_reward: float = 0.0) -> dict:
    """Run the Ray Data pipeline; write parquet shards into out_dir; return counts.

    scored: rows with id, qid, prompt, path, reward, correct (first_error also needs steps, step_scores)."""
    out_dir = Path(out_dir)
    if not scored:
        out_dir.mkdir(parents=True, exist_ok=True)
        return {"pairs": 0, "questions_with_pairs": 0, "shards": 0}
    cols = ["id", "qid", "prompt", "path", "reward", "correct"]
    if strategy == "first_error":
        cols += ["steps", "step_scores"]
    # The default hash shuffle starts ~200 aggregator actors: 25 s for a few thousand rows on 2 cores.
    # The pull-based sort shuffle uses plain tasks: 2 s for the same job, same result.
    ray.data.DataContext.get_current().shuffle_strategy = "sort_shuffle_pull_based"
    ds = ray.data.from_pandas(pd.DataFrame([{c: r[c] for c in cols} for r in scored]))
    pairs = (ds.groupby("qid", num_partitions=num_shards)
               .map_groups(pairs_for_question, batch_format="pandas",
                           fn_kwargs=dict(eta=eta, strategy=strategy, max_per_question=max_per_question,
                                          require_correct_chosen=require_correct_chosen, seed=seed,
                                          iteration=iteration, step_threshold=step_threshold,
                                          min_chosen_reward=min_chosen_reward))
               .sort("pair_key"))
    pairs = pairs.materialize()
    n = pairs.count()
    if n == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        return {"pairs": 0, "questions_with_pairs": 0, "shards": 0}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    pairs.repartition(min(num_shards, n), shuffle=False).write_parquet(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    q = len(set(pairs.unique("qid")))
    return {"pairs": n, "questions_with_pairs": q, "shards": len(list(out_dir.glob("*.parquet")))}


def read_pairs(d: str | Path) -> pd.DataFrame:
    files = sorted(Path(d).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(columns=COLUMNS)
