"""Experiment tracking the way TRL, verl and OpenRLHF users expect: TensorBoard by default, MLflow and W&B
on request (`tracking.backends=[tensorboard,mlflow,wandb]`).

    tracking.update(ctx, method)   log every point of `method`'s run that the run directory now holds
    tracking.finish(ctx)           the report's plots (and report.md) as artifacts; runs marked finished
    tracking.close(root)           flush and close the run directory's writers

One tracking run per method (the main method and each baseline), named `<method>-seed<S>` (MLflow tags and
W&B groups carry the method and the seed, so the seeds of a method overlay), all on one step
axis that keeps rising across iterations: the global step is the number of optimizer steps of every fit
before it in that method's history (M_0 SFT, then per iteration the PRM fit and the policy fit). Every
point is derived from the run directory's own records (sft.json / prm_train.json / train.json step logs,
written by rank 0 of the Ray Train workers, the ledgers' stage figures, eval.json), so the points of a run
are a fixed sequence that only grows; `DIR/tracking.json` records how much of it each backend holds. A
resumed run appends after the last recorded point, and a crash between writing and recording is undone:
TensorBoard reopens with `purge_step` (its reader drops the stale tail), MLflow skips the points it
already holds, so the curves equal an uninterrupted run's.

Backends use their libraries' own writers: `torch.utils.tensorboard.SummaryWriter` (DIR/tensorboard/<method>-seed<S>),
`mlflow.MlflowClient` (MLFLOW_TRACKING_URI, else a file store in DIR/mlruns), `wandb` (offline in DIR/wandb
unless W&B is configured: WANDB_API_KEY or WANDB_MODE). A backend that is missing or fails is one warning
naming it and is dropped for the rest of the run; training never fails because of tracking.

Scalars (tag groups):
    train/  policy fits (M_0 SFT, ORPO / DPO / SFT / RFT updates), per optimizer step: loss, learning_rate,
            grad_norm, and the objective's figures (nll_loss, log_odds_ratio, logps_chosen, logps_rejected,
            rewards_accuracy, rewards_margin); val_accuracy per validated epoch of M_0
    prm/    PRM fits per step (loss, learning_rate, grad_norm, step_accuracy); held-out AUC after scoring
    sample/ label/ pairs/   each stage's figures (kept, correct, false_positive_rate, rollouts,
            vs_oracle_f1, vs_oracle_precision, pairs, ...)
    eval/   accuracy, strict_accuracy, iteration (one point per iteration, M_0 included)
    seconds/<stage>   wall-clock seconds per stage (the only figures a re-run does not reproduce)
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

from sitf_ray import config as C
from sitf_ray import methods
from sitf_ray.runs.artifacts import read_json, write_json

STATE = "tracking.json"
# The objectives' own figures (orpo.py, prm.py) under the names TRL's trainers log them as.
RENAME = {"nll": "nll_loss", "log_odds": "log_odds_ratio", "or_term": "log_odds_term",
          "logp_chosen": "logps_chosen", "logp_rejected": "logps_rejected", "pair_acc": "rewards_accuracy",
          "margin": "rewards_margin", "step_acc": "step_accuracy", "lr": "learning_rate"}
# Stage figures that are not scalars of that stage (labels, counters kept elsewhere).
SKIP = {"sample": {"seconds"}, "label": {"seconds"}, "pairs": {"seconds"}}


# ------------------------------------------------------------------------------------------- the points

def _num(v) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _flat(prefix: str, figs: dict, skip=()) -> list[tuple[str, float]]:
    out = []
    for k, v in figs.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            out += _flat(f"{prefix}{k}_", v)
        elif (x := _num(v)) is not None:
            out.append((f"{prefix}{k}", x))
    return out


def fit_points(record: dict, group: str, offset: int) -> list[tuple[int, str, float]]:
    """Per-step points of one fit record (sft.json / prm_train.json / train.json) from `offset` on.

    Each epoch of the record's history holds rank 0's step log (train_loop.record_step); records written
    before step logs existed give one point per epoch instead."""
    pts, step = [], offset
    for h in record.get("history", []):
        log = h.get("step_log")
        if log:
            n = len(log.get("loss", []))
            for i in range(n):
                for k, col in log.items():
                    if i < len(col) and (x := _num(col[i])) is not None:
                        pts.append((step + i + 1, f"{group}/{RENAME.get(k, k)}", x))
            step += n
        else:
            step = offset + int(h.get("step", step - offset))
            for k in ("loss", "lr", "nll", "log_odds", "or_term", "logp_chosen", "logp_rejected", "pair_acc",
                      "margin", "step_acc"):
                if (x := _num(h.get(k))) is not None:
                    pts.append((step, f"{group}/{RENAME.get(k, k)}", x))
        if (x := _num(h.get("val_accuracy"))) is not None:
            pts.append((step, f"{group}/val_accuracy", x))
    return pts


def _eval_points(it: Path, step: int, k: int) -> list[tuple[int, str, float]]:
    ev = read_json(it / "eval.json")
    pts = [(step, "eval/accuracy", float(ev["accuracy"]))]
    if "strict_accuracy" in ev:
        pts.append((step, "eval/strict_accuracy", float(ev["strict_accuracy"])))
    return pts + [(step, "eval/iteration", float(k))]


def _seconds(led_data: dict, stage: str, step: int, name: Optional[str] = None) -> list:
    sec = _num(led_data.get(stage, {}).get("figures", {}).get("seconds"))
    return [(step, f"seconds/{name or stage}", sec)] if sec is not None else []


def method_points(root: str | Path, method: str, main_method: str) -> list[tuple[int, str, float]]:
    """Every scalar of `method`'s run that the run directory holds, in logging order: (step, tag, value).

    Deterministic and append-only: a stage's points come from its own records only, and the sequence stops at
    the first stage (in run order) that has not finished, so a later call returns a longer list with this
    one as its prefix."""
    root = Path(root)
    pts: list = []
    it0 = root / "iter_00"
    led0 = read_json(it0 / "stages.json") if (it0 / "stages.json").exists() else {}
    if "sft" not in led0 or not (it0 / "sft.json").exists():
        return pts
    sft = read_json(it0 / "sft.json")
    pts += fit_points(sft, "train", 0)
    step = int(sft["steps"])
    pts += _seconds(led0, "sft", step, "m0_sft")
    if "eval" not in led0:
        return pts
    pts += _eval_points(it0, step, 0) + _seconds(led0, "eval", step)
    mdir = root if method == main_method else root / "baselines" / method
    k = 1
    while True:
        it = mdir / f"iter_{k:02d}"
        led = read_json(it / "stages.json") if (it / "stages.json").exists() else {}
        for stage in methods.get(method).stages:
            if stage not in led:
                return pts
            figs = led[stage].get("figures", {})
            if stage in ("prm", "train"):
                rec = it / ("prm_train.json" if stage == "prm" else "train.json")
                if rec.exists():     # absent when there was nothing to train on (policy unchanged)
                    r = read_json(rec)
                    pts += fit_points(r, "prm" if stage == "prm" else "train", step)
                    step += int(r["steps"])
            elif stage == "score":
                pts += [(step, f"prm/{key}", v) for key, v in _flat("", figs, {"seconds"})]
            elif stage == "eval":
                pts += _eval_points(it, step, k)
            else:
                pts += [(step, f"{stage}/{key}", v) for key, v in _flat("", figs, SKIP.get(stage, ()))]
            pts += _seconds(led, stage, step)
        if not (it / "DONE").exists():
            return pts
        k += 1


def flat_config(cfg) -> dict:
    """The resolved config as flat hyperparameters ('train.beta': 0.1); lists and None as text."""
    out = {}

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    walk("", cfg.model_dump(mode="json"))
    return out


# --------------------------------------------------------------------------------------------- backends

class _Backend:
    name = ""
    purge_iteration: Optional[int] = None     # TensorBoard's by_iteration run: its purge step after a crash

    def __init__(self, root: Path, cfg, method: str, state: dict):
        self.root, self.cfg, self.method, self.state = root, cfg, method, state
        self.run_name = f"{method}-seed{cfg.seed}"

    def open(self, dirty_from: Optional[int]) -> None: ...
    def params(self, flat: dict, config_text: str) -> None: ...
    def log(self, pts: list) -> None: ...
    def flush(self) -> None: ...
    def artifacts(self, plots: list[Path], report: Optional[Path], step: int) -> None: ...
    def close(self, finished: bool) -> None: ...

    def where(self) -> str:
        return ""


def iteration_points(pts: list) -> list[tuple[int, str, float]]:
    """The eval figures among `pts` again, on the iteration axis: (k, 'eval/accuracy', value), so that methods
    compare at the same iteration (on the step axis a method's points sit where its optimizer steps put them:
    SIPF's include its PRM fits). An eval's points always come in one batch, its 'eval/iteration' with them."""
    k_at = {step: int(v) for step, tag, v in pts if tag == "eval/iteration"}
    return [(k_at[step], tag, v) for step, tag, v in pts if tag.startswith("eval/") and tag != "eval/iteration"
            and step in k_at]


class TensorBoard(_Backend):
    """Event files in DIR/tensorboard/<method>-seed<S>/ (the step axis) and .../by_iteration/ (the eval
    figures against the iteration: TensorBoard shows it as a run of its own, `<method>-seed<S>/by_iteration`,
    so arms compare at the same iteration). Each reopens with its own purge step after a crash."""
    name = "tensorboard"

    def open(self, purge_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.root / "tensorboard" / self.run_name), purge_step=purge_step,
                                    flush_secs=30)
        self.by_iteration = SummaryWriter(str(self.root / "tensorboard" / self.run_name / "by_iteration"),
                                          purge_step=self.purge_iteration, flush_secs=30)


    def params(self, flat, config_text):
        from torch.utils.tensorboard.summary import hparams
        h = {"method": self.method, **flat}
        for summ in hparams(h, {"eval/accuracy": 0.0, "eval/strict_accuracy": 0.0}):
            self.writer.file_writer.add_summary(summ)
        self.writer.add_text("config", "\n".join("    " + line for line in config_text.splitlines()))

    def log(self, pts):
        for step, tag, value in pts:
            self.writer.add_scalar(tag, value, step)
        for k, tag, value in iteration_points(pts):
            self.by_iteration.add_scalar(tag, value, k)

    def flush(self):
        self.writer.flush()
        self.by_iteration.flush()

    def artifacts(self, plots, report, step):
        import numpy as np
        from PIL import Image
        for p in plots:
            self.writer.add_image(f"plots/{p.stem}", np.asarray(Image.open(p).convert("RGB")), step,
                                  dataformats="HWC")
        if report is not None:
            self.writer.add_text("report", report.read_text(), step)

    def close(self, finished):
        self.writer.close()
        self.by_iteration.close()

    def where(self):
        return f"tensorboard --logdir {self.root}"


class MLflow(_Backend):
    name = "mlflow"

    def open(self, dirty_from):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:      # our local store: MLflow's file store (mlflow-skinny has no database backend)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (self.root / "mlruns").as_uri()
        # an unreachable server fails in seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        run_id = self.state.get("run_id")
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except Exception:        # not in this store (another MLFLOW_TRACKING_URI): start over
                run_id = None
                self.state.clear()
        if not run_id:
            exp = self.client.get_experiment_by_name(self.cfg.tracking.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.cfg.tracking.experiment)
            run = self.client.create_run(exp_id, run_name=self.run_name, tags={
                "method": self.method, "seed": str(self.cfg.seed), "task": self.cfg.task.name,
                "group": self.method, "sitf.run_dir": str(self.root)})
            run_id = run.info.run_id
            self.state["run_id"] = run_id
        self.run_id = run_id
        self.dirty = dirty_from is not None

    def params(self, flat, config_text):
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_text(self.run_id, config_text, "config.yaml")

    def log(self, pts):
        from mlflow.entities import Metric
        if self.dirty:           # a crash after writing, before recording: keep what the store holds
            held = {(m.key, m.step) for key in {t for _, t, _ in pts}
                    for m in self.client.get_metric_history(self.run_id, key)}
            pts = [p for p in pts if (p[1], p[0]) not in held]
            self.dirty = False
        ts = int(time.time() * 1000)
        ms = [Metric(tag, value, ts, step) for step, tag, value in pts]
        # the eval figures on the iteration axis too (MLflow plots any metric against its own steps)
        ms += [Metric(tag.replace("eval/", "eval_by_iteration/"), value, ts, k) for k, tag, value in iteration_points(pts)]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def artifacts(self, plots, report, step):
        for p in plots:
            self.client.log_artifact(self.run_id, str(p), "plots")
        if report is not None:
            self.client.log_artifact(self.run_id, str(report))

    def close(self, finished):
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")

    def where(self):
        return f"{self.client.tracking_uri} (experiment '{self.cfg.tracking.experiment}', run {self.run_name})"


class WandB(_Backend):
    name = "wandb"

    def open(self, dirty_from):
        import wandb
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = self.state.setdefault("run_id", hashlib.sha256(
            f"{self.root}|{self.method}|{time.time()}".encode()).hexdigest()[:12])
        self.run = wandb.init(project=self.cfg.tracking.experiment, name=self.run_name, group=self.method,
                              job_type=self.method, id=run_id, resume="allow", dir=str(self.root), mode=mode,
                              tags=[f"seed{self.cfg.seed}", self.cfg.task.name], reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))
        # W&B keeps one rising step per run: the eval figures get the iteration as their x axis instead
        self.run.define_metric("eval/iteration")
        self.run.define_metric("eval/*", step_metric="eval/iteration")

    def params(self, flat, config_text):
        self.run.config.update({"method": self.method, **flat}, allow_val_change=True)

    def log(self, pts):
        by_step: dict = {}
        for step, tag, value in pts:
            by_step.setdefault(step, {})[tag] = value
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)

    def artifacts(self, plots, report, step):
        import wandb
        self.run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}, step=step)

    def close(self, finished):
        self.run.finish(exit_code=0 if finished else 1)

    def where(self):
        return f"offline, upload with `wandb sync {Path(self.run.dir).parent}`" if self.run.offline else self.run.url


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


# ---------------------------------------------------------------------------------------------- tracker

class Tracker:
    """The tracking runs of one run directory: one per (backend, method), opened when first needed."""

    def __init__(self, root: str | Path, cfg):
        self.root, self.cfg = Path(root), cfg
        self.path = self.root / STATE
        self.state: dict = read_json(self.path) if self.path.exists() else {}
        self.open: dict = {}              # (backend, method) -> _Backend
        self.dead: set = set()            # backends that failed: dropped for this process
        self.finished = False             # the run ended (finish): backends close their runs as finished
        self.lock = threading.Lock()

    def _save(self):
        write_json(self.path, self.state)

    def _warn(self, backend: str, what: str, err: BaseException):
        self.dead.add(backend)
        if isinstance(err, ImportError):
            msg = (f"tracking backend '{backend}' is not installed ({err}); `pip install {INSTALL[backend]}`. "
                   f"Training goes on without it.")
        else:
            msg = f"tracking backend '{backend}' failed to {what} ({type(err).__name__}: {err}); training goes on without it."
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _backend(self, name: str, method: str, pts: list) -> Optional[_Backend]:
        """The open backend run, opened (and its config logged) on first use; None when it is dropped."""
        key = (name, method)
        if key in self.open:
            return self.open[key]
        st = self.state.setdefault(name, {}).setdefault(method, {})
        logged, pending = int(st.get("logged", 0)), int(st.get("pending", 0))
        purge = None
        if pending > logged and logged < len(pts):
            # points after `logged` may be in the store already: resume from the start of their step
            first = logged
            while first > 0 and pts[first - 1][0] == pts[logged][0]:
                first -= 1
            st["logged"], purge = first, pts[first][0]
        b = BACKENDS[name](self.root, self.cfg, method, st)
        # the iteration axis restarts where the step axis does: at the first eval at or after its purge step
        b.purge_iteration = None if purge is None else next(
            (int(v) for s, t, v in pts if t == "eval/iteration" and s >= purge), None)
        try:
            b.open(purge)
            if not st.get("params"):
                b.params(flat_config(self.cfg), (self.root / "config.yaml").read_text()
                         if (self.root / "config.yaml").exists() else "")
                st["params"] = True
        except BaseException as e:    # noqa: BLE001 (ImportError, network, permissions: all only a warning)
            if isinstance(e, KeyboardInterrupt):
                raise
            self._warn(name, "start", e)
            return None
        self.open[key] = b
        self._save()
        return b

    def update(self, method: str) -> int:
        """Log the points of `method` that the backends do not hold yet; returns how many points exist."""
        with self.lock:
            pts = method_points(self.root, method, self.cfg.method)
            for name in self.cfg.tracking.backends:
                if name in self.dead:
                    continue
                st = self.state.get(name, {}).get(method, {})
                if st.get("logged", 0) >= len(pts):      # nothing new (or records being recomputed)
                    continue
                b = self._backend(name, method, pts)
                if b is None:
                    continue
                start = int(b.state.get("logged", 0))
                if start >= len(pts):
                    continue
                b.state["pending"] = len(pts)
                self._save()
                try:
                    b.log(pts[start:])
                    b.flush()
                except Exception as e:    # noqa: BLE001
                    self._warn(name, "log", e)
                    continue
                b.state["logged"] = len(pts)
                self._save()
            return len(pts)

    def finish(self):
        """The report's plots and report.md into the main method's runs (once per set of plots)."""
        with self.lock:
            plots = sorted((self.root / "plots").glob("*.png"))
            report = self.root / "report.md"
            h = hashlib.sha256()
            for p in plots + ([report] if report.exists() else []):
                h.update(p.name.encode() + p.read_bytes())
            pts = method_points(self.root, self.cfg.method, self.cfg.method)
            step = pts[-1][0] if pts else 0
            for name in self.cfg.tracking.backends:
                if name in self.dead:
                    continue
                b = self._backend(name, self.cfg.method, pts)
                if b is None or b.state.get("artifacts") == h.hexdigest():
                    continue
                try:
                    b.artifacts(plots, report if report.exists() else None, step)
                    b.flush()
                except Exception as e:    # noqa: BLE001
                    self._warn(name, "log the plots", e)
                    continue
                b.state["artifacts"] = h.hexdigest()
                self._save()
            self.finished = True
            for name in self.cfg.tracking.backends:
                if name not in self.dead and (name, self.cfg.method) in self.open:
                    print(f"[tracking] {name}: {self.open[(name, self.cfg.method)].where()}", flush=True)

    def close(self):
        with self.lock:
            for (name, _), b in list(self.open.items()):
                if name in self.dead:
                    continue
                try:
                    b.close(self.finished)
                except Exception as e:    # noqa: BLE001
                    self._warn(name, "close", e)
            self.open.clear()


_TRACKERS: dict = {}


def tracker(root: str | Path, cfg) -> Tracker:
    key = str(Path(root).resolve())
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(key, cfg)
    return _TRACKERS[key]


def update(ctx, method: str) -> None:
    """Log what `method`'s run holds now (pipeline hook). Never raises."""
    if not ctx.cfg.tracking.backends:
        return
    try:
        tracker(ctx.root, ctx.cfg).update(method)
    except Exception as e:    # noqa: BLE001 (our own bug must not stop training either)
        warnings.warn(f"tracking: update of {method} failed ({type(e).__name__}: {e})", RuntimeWarning)


def finish(ctx) -> None:
    if not ctx.cfg.tracking.backends:
        return
    try:
        t = tracker(ctx.root, ctx.cfg)
        for m in [ctx.cfg.method] + [b for b in ctx.cfg.baselines if b != ctx.cfg.method]:
            t.update(m)
        t.finish()
    except Exception as e:    # noqa: BLE001
        warnings.warn(f"tracking: finishing failed ({type(e).__name__}: {e})", RuntimeWarning)


def close(root: str | Path) -> None:
    t = _TRACKERS.pop(str(Path(root).resolve()), None)
    if t is not None:
        t.close()


def sync(root: str | Path, cfg=None) -> Tracker:
    """Log a whole run directory (the pipeline does this as it goes; this backfills a finished run, e.g. with
    other backends: `sync(DIR, C.load(DIR/'config.yaml', ['tracking.backends=[mlflow]']))`)."""
    cfg = cfg or C.load(Path(root) / "config.yaml")
    t = Tracker(Path(root).resolve(), cfg)
    try:
        for m in [cfg.method] + [b for b in cfg.baselines if b != cfg.method]:
            t.update(m)
        t.finish()
    finally:
        t.close()
    return t
