"""Shared fixtures: one local Ray for the session, and one real M_0 trained by our own pipeline.

The M_0 is built by `pipeline.build_m0` (tiny Llama, tokenizer, SFT on Ray Train with validation-based
early stopping) on a smaller arith configuration so that the suite stays fast; engine, actor, labeling,
PRM and pipeline tests all start from it. It is cached under .cache/test-m0/<config hash> so a second
local run skips the training (CI always starts clean and trains it once).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SITF_PROGRESS", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# Small but real: 2-3 operations on numbers up to 30; trained to its (early-stopped) best.
TEST_OVERRIDES = [
    "task.arith.min_ops=2", "task.arith.max_ops=3", "task.arith.max_value=30",
    "task.arith.n_sft=800", "task.arith.n_train=60", "task.arith.n_val=60", "task.arith.n_test=60",
    "model.tiny.num_layers=2", "model.tiny.intermediate_size=256",
    "sft.max_epochs=24", "sft.lr=4e-3", "sft.eval_every=4", "sft.patience=2",
    "eval.max_tokens=48", "sampling.max_tokens=48", "labeling.max_tokens=48",
    "cluster.chunk_size=64",
]


def make_config(extra=()):
    from sitf_ray import config as C
    return C.build(overrides=TEST_OVERRIDES + list(extra))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from sitf_ray.actors import init_ray
    init_ray(8)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def m0_run(ray_session) -> Path:
    """A run directory whose iter_00 holds a trained M_0 (policy/, eval.json, sft.json)."""
    from sitf_ray import config as C
    from sitf_ray.pipeline import build_m0, prepare, shutdown
    cfg = make_config()
    key = hashlib.sha256(C.dump(cfg).encode()).hexdigest()[:12]
    cache = ROOT / ".cache" / "test-m0" / key
    if not (cache / "iter_00" / "eval.json").exists():
        shutil.rmtree(cache, ignore_errors=True)
        ctx = prepare(cfg, cache)
        try:
            build_m0(ctx)
        finally:
            shutdown(ctx)
    return cache


@pytest.fixture(scope="session")
def m0(m0_run) -> Path:
    return m0_run / "iter_00" / "policy"


def copy_m0(m0_run: Path, dest: Path) -> Path:
    """A new run directory that starts from the shared M_0 (same config, so resume rules hold)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(m0_run / "iter_00", dest / "iter_00")
    shutil.copy(m0_run / "config.yaml", dest / "config.yaml")
    return dest
