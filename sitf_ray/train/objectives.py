"""The training objectives a fit job can name, as one table: `OBJECTIVES[name]` -> Objective.

An Objective is what the worker loop (worker.py) needs to know about a loss and nothing else:
    encode(rows, tok, hp) -> list[dict]            this worker's text rows -> token rows (lists / arrays)
    collate(rows, pad_id) -> dict[str, Tensor]     a batch of token rows, right-padded to [B, T] tensors
    loss(model, batch, hp, ref_model) -> (loss, metrics)   scalar loss tensor, {name: float} for the logs
    needs_ref_model                                the worker loads a frozen reference model (DPO)
    token_classifier                               the model is a 2-label token classifier (the PRM),
                                                   not a causal-LM policy

Adding an objective is one entry in OBJECTIVES (its functions live in policy_objectives.py or a module of
its own, as prm_objective.py). This module imports torch: it is imported inside training workers and tests
only, never by the driver at start-up.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from sitf_ray.train.policy_objectives import collate, encode_rows, policy_loss
from sitf_ray.train.prm_objective import prm_collate, prm_encode_rows, prm_loss


@dataclass(frozen=True)
class Objective:
    encode: Callable        # (rows, tok, hp) -> list[dict]
    collate: Callable       # (rows, pad_id) -> dict of tensors
    loss: Callable          # (model, batch, hp, ref_model) -> (loss tensor, metrics dict)
    needs_ref_model: bool = False
    token_classifier: bool = False


def _policy_encode(kind: str, rows: list[dict], tok, hp: dict) -> list[dict]:
    """kind: 'pairs' (prompt/chosen/rejected) or 'sft' (prompt/completion). The prompt gets at most half of
    max_len (and at most 256 tokens) unless hp says otherwise."""
    max_len = int(hp.get("max_len", 512))
    return encode_rows(rows, tok, kind, max_len, int(hp.get("max_prompt_len", min(256, max_len // 2))))


def _prm_encode(rows: list[dict], tok, hp: dict) -> list[dict]:
    """hp.soft: train on the soft step labels (Math-Shepherd estimates) instead of the hard ones."""
    return prm_encode_rows(rows, tok, int(hp.get("max_len", 512)), bool(hp.get("soft", False)))


def _prm_loss(model, batch: dict, hp: dict, ref_model=None):
    # The PRM loss has no hyper-parameters and no reference model: same signature as the others anyway.
    return prm_loss(model, batch)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(functools.partial(_policy_encode, "sft"), collate, functools.partial(policy_loss, "sft")),
    "orpo": Objective(functools.partial(_policy_encode, "pairs"), collate, functools.partial(policy_loss, "orpo")),
    "dpo": Objective(functools.partial(_policy_encode, "pairs"), collate, functools.partial(policy_loss, "dpo"),
                     needs_ref_model=True),
    "prm": Objective(_prm_encode, prm_collate, _prm_loss, token_classifier=True),
}


def get(name: str) -> Objective:
    """The objective called `name`; ValueError naming the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known objectives: {sorted(OBJECTIVES)}") from None
