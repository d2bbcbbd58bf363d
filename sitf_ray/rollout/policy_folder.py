"""What a saved model folder holds: full weights, or a LoRA adapter over a base (sitf_policy.json says which).

A leaf module (no sitf_ray imports) so that the trainer, the PRM, the weight broadcast and the pipeline can
all read it without importing each other.
"""
from __future__ import annotations

import json
from pathlib import Path

POLICY_META = "sitf_policy.json"


def read_policy_meta(folder: str | Path) -> dict:
    """{'kind': 'full'} or {'kind': 'adapter', 'base': <absolute base folder>, ...}; 'full' when absent."""
    p = Path(folder) / POLICY_META
    return json.loads(p.read_text()) if p.exists() else {"kind": "full"}


def write_policy_meta(folder: str | Path, meta: dict) -> None:
    (Path(folder) / POLICY_META).write_text(json.dumps(meta))
