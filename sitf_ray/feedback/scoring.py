"""How a solution path is scored, one way for every place that scores one: the pipeline's score stage
(feedback/stages.py), `/v1/score` and `/v1/solve` (serving/app.py) and `eval-prm`'s best-of-N (bench.py).

A path's step scores are the PRM's P(step correct), with the calculator's verdict on top when
`prm.check_steps` is on: a step whose own text fails the task's step checker (tasks/equations.py: an
`a op b = c` that is false) scores 0.0, the others keep the PRM's probability. The PRM of a 0.95M policy
ranks paths by question more than by arithmetic (docs/RESULTS.md section 8.1); the official SIPF code drops
GSM8K samples with a false calculator annotation for the same reason. The path's reward is the aggregate of
its step scores (`prm.aggregate`: mean, as the SIPF paper; feedback/quality.py).
"""
from __future__ import annotations

from sitf_ray.feedback.quality import aggregate
from sitf_ray.tasks.base import passes_step_check


def checked_scores(task, steps: list[str], scores: list[float]) -> list[float]:
    """PRM step scores (one per step, in [0, 1]) with 0.0 for each step whose text fails the task's step
    checker; tasks without a checker: unchanged."""
    return [p if passes_step_check(task, st) else 0.0 for st, p in zip(steps, scores)]


def path_scores(task, paths: list[list[str]], prm_scores: list[list[float]], prm_cfg) -> list[tuple[list[float], float]]:
    """(step scores, path reward) of each path, from the PRM's per-step probabilities of the same paths.
    prm_cfg: the run's PRMConfig (check_steps, aggregate). Raises ValueError for an unknown aggregate."""
    out = []
    for steps, sc in zip(paths, prm_scores):
        sc = checked_scores(task, steps, sc) if prm_cfg.check_steps else list(sc)
        out.append((sc, aggregate(sc, prm_cfg.aggregate)))
    return out
