"""Path rewards from step scores and the quality measures of step labels and PRMs (numpy only: the driver
imports these without torch)."""
from __future__ import annotations

import numpy as np


def aggregate(step_scores: list[float], how: str) -> float:
    """Path reward from per-step P(correct): mean (the SIPF paper), min, last step, or product (the
    probability that every step is right, if steps were independent; Lightman et al. 2023)."""
    if not step_scores:
        return 0.0
    if how == "mean":
        return float(np.mean(step_scores))
    if how == "min":
        return float(min(step_scores))
    if how == "last":
        return float(step_scores[-1])
    if how == "product":
        return float(np.prod(step_scores))
    raise ValueError(f"prm.aggregate must be mean, min, last or product (got {how!r})")


def auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); nan when one class is missing."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):   # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
