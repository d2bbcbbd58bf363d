"""Offline checks of a Ray autoscaler cluster.yaml: Ray's own schema, then our resource needs.

`ray up` runs `prepare_config` + `validate_config` from ray.autoscaler; we run the same two here without
touching the cloud, then check that the cluster can ever place what a run config asks for: every role's
per-replica bundle fits on some node type, and the node types' max_workers give enough room for all
replicas of every role at once (generators, PRM scorers and Ray Train workers exist side by side).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import yaml

from sitf_ray import config as C
from sitf_ray.config import yaml_error


def _schema_problems(raw: dict) -> list[str]:
    import logging

    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config
    # prepare_config logs its defaults at INFO ("setting max workers for head node type to 0"): not ours
    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)
    try:
        cfg = prepare_config(copy.deepcopy(raw))
        validate_config(cfg)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        return [f"{where}: {e.message}"]
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        return [str(e)]
    return []


# The run-config keys that size each role (a problem names the keys the user can change)
ROLE_KEYS = {"generator": "cluster.generator_*", "prm_scorer": "cluster.scorer_*", "train_worker": "cluster.train_*"}


def role_needs(run_cfg) -> dict:
    """Per-role (bundle, count) a run asks for."""
    cl = run_cfg.cluster
    return {
        "generator": ({"CPU": cl.generator_cpus, "GPU": cl.generator_gpus}, cl.generator_replicas),
        "prm_scorer": ({"CPU": cl.scorer_cpus, "GPU": 0.0}, cl.scorer_replicas),
        "train_worker": ({"CPU": cl.train_cpus, "GPU": cl.train_gpus}, cl.train_workers),
    }


ROLE_NAMES = {"generator": "vLLM generators", "prm_scorer": "PRM scorers", "train_worker": "Ray Train workers"}


def local_needs(run_cfg, prm: bool = True) -> dict:
    """What -> one replica's resources, for scheduling.check_local_fits (the PRM scorers only when `prm`)."""
    cl = run_cfg.cluster
    keys = {"generator": f"cluster.generator_replicas={cl.generator_replicas}, cluster.generator_cpus={cl.generator_cpus:g}",
            "prm_scorer": f"cluster.scorer_replicas={cl.scorer_replicas}, cluster.scorer_cpus={cl.scorer_cpus:g}",
            "train_worker": f"cluster.train_workers={cl.train_workers}, cluster.train_cpus={cl.train_cpus:g}"}
    return {f"{ROLE_NAMES[role]} ({keys[role]})": bundle for role, (bundle, _) in role_needs(run_cfg).items()
            if prm or role != "prm_scorer"}


def capacity_problems(raw: dict, run_cfg) -> list[str]:
    types = raw.get("available_node_types", {})
    problems = []
    total = {"CPU": 0.0, "GPU": 0.0}
    for name, t in types.items():
        n = t.get("max_workers", 0) if name != raw.get("head_node_type") else 1
        for r in total:
            total[r] += n * float(t.get("resources", {}).get(r, 0))
    need = {"CPU": 0.0, "GPU": 0.0}
    for role, (bundle, count) in role_needs(run_cfg).items():
        fits = [name for name, t in types.items()
                if all(float(t.get("resources", {}).get(r, 0)) >= v for r, v in bundle.items() if v)]
        if not fits:
            problems.append(f"{role}: no node type offers {bundle} per replica "
                            f"({ROLE_KEYS[role]} in the run config)")
        for r in need:
            need[r] += count * bundle.get(r, 0)
    for r in need:
        if need[r] > total[r]:
            problems.append(f"run needs {need[r]:g} {r} at once but the cluster can grow to {total[r]:g} "
                            f"(raise max_workers or lower cluster.* replicas)")
    return problems


def validate_cluster(path: str, run_config: Optional[str] = None) -> list[str]:
    p = Path(path)
    if not p.is_file():
        return ["file not found"]
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        return [yaml_error(e)]
    if not isinstance(raw, dict):
        return ["top level must be a mapping"]
    problems = _schema_problems(raw)
    if problems:
        return problems
    run_cfg = C.load(run_config) if run_config else C.load(Path(__file__).resolve().parents[2] /
                                                            "configs" / "gemma2b-gsm8k.yaml")
    return capacity_problems(raw, run_cfg)
