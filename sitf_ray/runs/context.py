"""A run in progress: its config, data splits and run directory (`Context`), the seeds every stage
derives from (seed, method, iteration, stage), and the per-iteration records the report and the sweep read.

Every stage of every role reads and writes through a Context; the driver (sitf_ray/pipeline.py) builds one
with `prepare` and hands it down.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sitf_ray import config as C
from sitf_ray.runs import telemetry
from sitf_ray.runs.artifacts import Ledger, atomic_write_text, mirror_up, read_json
from sitf_ray.runs.progress import summary
from sitf_ray.tasks import get_task
from sitf_ray.tasks.base import Task


def stage_seed(seed: int, *parts) -> int:
    h = hashlib.sha256("|".join(str(p) for p in (seed,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass
class Context:
    cfg: C.SIPFConfig
    root: Path
    task: Task
    splits: dict
    by_id: dict
    pool: object = None          # GeneratorPool of the policy
    scorers: object = None       # ReplicaPool of PRMScorer
    simulator: object = None     # GeneratorPool of a separate simulator model (if configured)
    loaded: str = ""             # policy folder currently in the generators
    version: int = 0
    sync_log: list = field(default_factory=list)

    @property
    def telemetry(self):
        return telemetry.get()

    @property
    def m0(self) -> Path:
        return self.root / "iter_00" / "policy"


def load_splits(cfg: C.SIPFConfig, task: Task) -> dict:
    splits = {}
    for split in ("sft", "train", "val", "test"):
        splits[split] = task.load(split, cfg.task)
    if cfg.eval.n:      # the split every iteration is scored on
        splits[cfg.eval.split] = splits[cfg.eval.split][:cfg.eval.n]
    return splits


def prepare(cfg: C.SIPFConfig, out: str | Path, resume: bool = False) -> Context:
    root = Path(out).resolve()   # absolute: Ray workers and actors run in other working directories
    saved = root / "config.yaml"
    if resume:
        if not saved.exists():
            raise C.ConfigError(f"{root}: no config.yaml here; nothing to resume")
    elif saved.exists() and saved.read_text() != C.dump(cfg):
        raise C.ConfigError(f"{root} already holds a run with a different config; use `sitf-ray resume {root}` "
                            f"or another --out")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, C.dump(cfg))
    task = get_task(cfg.task.name)
    splits = load_splits(cfg, task)
    by_id = {r["id"]: r for rows in splits.values() for r in rows}
    return Context(cfg=cfg, root=root, task=task, splits=splits, by_id=by_id)


def drop_partial(folder: Path):
    """A recorded stage's kept chunks go, and the iteration's partial/ folder with the last of them."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:       # another stage's chunks are still there (or it is gone already)
        pass


def method_dirs(ctx: Context, method: str) -> Path:
    return ctx.root if method == ctx.cfg.method else ctx.root / "baselines" / method


def iteration_record(it: Path, k: int) -> dict:
    ev = read_json(it / "eval.json")
    led = Ledger(it)
    rec = {"k": k, "accuracy": ev["accuracy"], "n": ev["n"]}
    if ev.get("split", "test") != "test":      # tuning runs score on val (eval.split); the report says so
        rec["split"] = ev["split"]
    if "strict_accuracy" in ev:
        rec["strict_accuracy"] = ev["strict_accuracy"]
    for stage, keys in (("sample", ("kept", "correct", "strict", "false_positive_rate")),
                        ("label", ("rollouts", "positives")),
                        ("pairs", ("pairs",)), ("train", ("steps",))):
        figs = led.get(stage)
        for key in keys:
            if key in figs:
                rec[f"{stage}_{key}"] = figs[key]
    if k == 0 and (it / "sft.json").exists():   # did M_0's SFT stop on validation or at its epoch cap?
        sft = read_json(it / "sft.json")
        if "max_epochs" in sft:       # older runs recorded no stopped_by: stopping before the cap is early
            rec["sft_early_stopped"] = (sft["stopped_by"] == "early stopping" if sft.get("stopped_by")
                                        else sft["epochs"] < sft["max_epochs"])
            rec["sft_epochs"] = sft["epochs"]
    if "vs_oracle" in led.get("label"):
        rec["label_f1_vs_oracle"] = led.get("label")["vs_oracle"].get("f1")
        if "path_precision" in led.get("label")["vs_oracle"]:
            rec["label_path_precision_vs_oracle"] = led.get("label")["vs_oracle"]["path_precision"]
    for key in ("holdout_auc_vs_mc", "holdout_auc_vs_oracle"):
        if key in led.get("score"):
            rec[f"prm_{key}"] = led.get("score")[key]
    return rec


def mirror(ctx: Context):
    t0 = time.time()
    mirror_up(ctx.root, ctx.cfg.storage)
    summary("mirror", time.time() - t0, to=ctx.cfg.storage)


def stage_timings(ctx: Context) -> dict:
    """{'<method>/iter_k': {stage: seconds}} from every ledger of the run."""
    out = {}
    for led_path in sorted(ctx.root.rglob("stages.json")):
        it = led_path.parent
        led = Ledger(it)
        out[str(it.relative_to(ctx.root))] = {s: e.get("figures", {}).get("seconds") for s, e in led.data.items()}
    return out
