"""Ray Data readers of the preference-pair shards feedback/pairs.py writes: D_k for an update is one Ray
Dataset over the parquet shards of every iteration so far, streamed to the Ray Train workers."""
from __future__ import annotations

from pathlib import Path

import ray


def read_shards(files: list[str], columns: list[str]):
    """A Ray Dataset over our parquet shards, read by plain read tasks.

    Ray Data 2.60's default parquet reader (DataSourceV2) first reads the footers on a pool of 32
    FooterReader actors, each placed like any actor with 1 CPU; inside a job whose placement groups hold
    the nodes' CPUs that is 32 pending CPUs, and an autoscaling cluster starts ~8 nodes to read two small
    files (benchmarks/results/autoscale.json, docs/CLUSTER.md). The V1 reader does the same read with one
    task per file.
    """
    ctx = ray.data.DataContext.get_current()
    v2, bars = ctx.use_datasource_v2, ctx.enable_progress_bars
    ctx.use_datasource_v2 = False      # routes this read_parquet only; later reads keep Ray's default
    ctx.enable_progress_bars = False   # V1's "Parquet dataset sampling" tqdm bar writes \r even to a pipe
    if bars:     # ... and Ray's once-only "Progress bars disabled" warning would name a setting nobody set
        from ray.util.debug import log_once
        log_once("ray_data_progress_manager_disabled")
    try:
        return ray.data.read_parquet(files, columns=columns)
    finally:
        ctx.use_datasource_v2, ctx.enable_progress_bars = v2, bars


def training_dataset(dirs: list[str | Path]):
    """D_k as one Ray Dataset over the shard folders of every iteration so far (in iteration order)."""
    files = [str(f) for d in dirs for f in sorted(Path(d).glob("*.parquet"))]
    if not files:
        return None
    return read_shards(files, ["pair_key", "prompt", "chosen", "rejected"])
