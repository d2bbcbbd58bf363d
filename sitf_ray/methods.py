"""The table of methods: what each `method=` / `baselines=[...]` name means, read by config validation, the
driver (pipeline.run_method), the feedback stages (which data an iteration builds, which pair rule),
the training stage (which objective), tracking (which stages to log) and the report (row labels).

Adding a method is one entry here plus its own code: a new `data` kind is one function in
feedback/stages.py's ITERATION_DATA, a new objective one entry in train/objectives.py's OBJECTIVES
(docs/DESIGN.md, "Adding a method").

The methods are those of the SIPF paper's comparison (Chen et al., COLING 2025, Table 2 and the ablations):
SIPF itself, "w/o PF" (outcome feedback), "w/o OR" (DPO instead of ORPO), RFT (Yuan et al. 2023) and SFT.
"""
from __future__ import annotations

from dataclasses import dataclass

# Ledger stages of one iteration, in order, by what the iteration's data comes from.
SAMPLED_PROCESS = ("sample", "label", "prm", "score", "pairs", "train", "eval")
SAMPLED = ("sample", "pairs", "train", "eval")
GOLD = ("train", "eval")


@dataclass(frozen=True)
class Method:
    name: str
    label: str           # the report's row label
    data: str            # what an iteration trains on: 'process' (pairs ranked by PRM step scores), 'outcome'
                         # (pairs ranked by final answer), 'own_correct' (RFT's SFT rows), 'gold' (SFT rows)
    objective: str       # 'policy' (train.loss: ORPO by default), or a fixed one: 'dpo', 'sft'
    stages: tuple        # ledger stages of one iteration, in order (tracking logs these)

    @property
    def samples(self) -> bool:
        """Whether an iteration samples the policy (every method but the gold-data SFT control)."""
        return "sample" in self.stages

    def objective_for(self, train_loss: str) -> str:
        """The fit objective of this method's update, given the config's train.loss."""
        return train_loss if self.objective == "policy" else self.objective


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sipf", "SIPF (ORPO + process feedback)", "process", "policy", SAMPLED_PROCESS),
    Method("sipf-dpo", "w/o OR (process feedback, DPO)", "process", "dpo", SAMPLED_PROCESS),
    Method("outcome", "w/o PF (outcome pairs, ORPO)", "outcome", "policy", SAMPLED),
    Method("rft", "RFT (own correct samples)", "own_correct", "sft", SAMPLED),
    Method("sft", "SFT (+ same extra steps on gold)", "gold", "sft", GOLD),
)}


def get(name: str) -> Method:
    """The method called `name`; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def label(name: str) -> str:
    """The report's row label of a method (the name itself for one not in the table)."""
    return METHODS[name].label if name in METHODS else name
