"""Experiment tracking (sitf_ray/runs/tracking.py): TensorBoard event files read back with TensorBoard's own reader,
the same figures through MLflow's client, W&B offline, resume without duplicated or lost points, and a
missing backend as a warning.

The run-level checks use the session's miniature run (conftest.mini_run: 2 SIPF iterations + the outcome
baseline, logged to TensorBoard and MLflow as it ran); the resume and failure checks replay tracking on
small synthetic run directories (no Ray)."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest

from sitf_ray import config as C
from sitf_ray.runs import tracking
from sitf_ray.runs.artifacts import Ledger, atomic_write_text, read_json, write_json

from conftest import MINI, TEST_OVERRIDES


def scalars(logdir: Path) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard's own reader sees the run (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def deterministic(curves: dict) -> dict:
    """The curves a re-run must reproduce (wall-clock ones left out); a nan point (a held-out AUC with one
    class missing) compares as 'nan', since nan != nan."""
    return {t: [(step, "nan" if val != val else val) for step, val in v]
            for t, v in curves.items() if not t.startswith("seconds/")}


# ------------------------------------------------------------------------------- the miniature real run

def fit_steps(rec: dict) -> int:
    return sum(len(h["step_log"]["loss"]) for h in rec["history"])


def test_tensorboard_shows_every_curve_of_the_run(mini_run):
    d, _ = mini_run
    res = read_json(d / "results.json")
    m0 = read_json(d / "iter_00" / "sft.json")
    for method, its in (("sipf", res["iterations"]), ("outcome", res["baselines"]["outcome"]["iterations"])):
        cur = scalars(d / "tensorboard" / f"{method}-seed0")
        base = d if method == "sipf" else d / "baselines" / method
        policy = [read_json(base / f"iter_{k:02d}" / "train.json") for k in (1, 2)]
        want = {"train/loss", "train/learning_rate", "train/grad_norm", "train/nll_loss", "train/log_odds_ratio",
                "train/logps_chosen", "train/logps_rejected", "train/rewards_accuracy", "train/val_accuracy",
                "sample/kept", "sample/correct", "sample/false_positive_rate", "pairs/pairs",
                "eval/accuracy", "eval/strict_accuracy", "seconds/sample", "seconds/train", "seconds/eval"}
        if method == "sipf":
            want |= {"prm/loss", "prm/step_accuracy", "prm/grad_norm", "prm/learning_rate",
                     "prm/holdout_auc_vs_oracle", "label/rollouts", "label/vs_oracle_f1",
                     "label/vs_oracle_precision"}
        assert want <= set(cur), want - set(cur)
        # one point per optimizer step of every policy fit (M_0 SFT and both updates), rank 0's figures
        n_policy = fit_steps(m0) + sum(fit_steps(p) for p in policy)
        assert n_policy == m0["steps"] + sum(p["steps"] for p in policy)
        assert len(cur["train/loss"]) == len(cur["train/grad_norm"]) == n_policy
        assert len(cur["train/log_odds_ratio"]) == sum(p["steps"] for p in policy)   # ORPO steps only
        steps = [s for s, _ in cur["train/loss"]]
        assert steps == sorted(set(steps)) and steps[0] == 1
        if method == "sipf":
            prm = [read_json(d / f"iter_{k:02d}" / "prm_train.json") for k in (1, 2)]
            assert len(cur["prm/loss"]) == sum(p["steps"] for p in prm)
            # one axis: iteration 1's PRM fit comes after M_0, its policy fit after the PRM
            assert cur["prm/loss"][0][0] == m0["steps"] + 1
            assert [s for s, _ in cur["train/loss"]][m0["steps"]] == m0["steps"] + prm[0]["steps"] + 1
        # one eval point per iteration, equal to results.json (float32 in the event file)
        assert [v for _, v in cur["eval/accuracy"]] == pytest.approx([r["accuracy"] for r in its], abs=1e-6)
        assert cur["eval/accuracy"][-1][1] == pytest.approx(its[-1]["accuracy"], abs=1e-6)
        assert cur["eval/strict_accuracy"][-1][1] == pytest.approx(its[-1]["strict_accuracy"], abs=1e-6)
        assert cur["eval/accuracy"][-1][0] == max(s for pts in cur.values() for s, _ in pts)
        assert [v for _, v in cur["sample/kept"]] == [r["sample_kept"] for r in its[1:]]
        # the same eval figures against the iteration (a TensorBoard run of its own): arms compare at equal k
        by_k = scalars(d / "tensorboard" / f"{method}-seed0" / "by_iteration")
        assert set(by_k) == {"eval/accuracy", "eval/strict_accuracy"}
        assert by_k["eval/accuracy"] == [(k, pytest.approx(r["accuracy"], abs=1e-6)) for k, r in enumerate(its)]
    st = read_json(d / "tracking.json")
    assert st["tensorboard"]["sipf"]["artifacts"], "plots not logged"


def test_mlflow_holds_the_same_figures(mini_run):
    """MINI logs to [tensorboard, mlflow]: the MLflow file store in DIR/mlruns holds the same points."""
    from mlflow.tracking import MlflowClient
    d, _ = mini_run
    assert "mlflow" in C.load(d / "config.yaml").tracking.backends
    client = MlflowClient(tracking_uri=(d / "mlruns").as_uri())
    exp = client.get_experiment_by_name("sitf-ray")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"sipf-seed0", "outcome-seed0"}
    for name, r in runs.items():
        method = name.split("-seed")[0]
        assert r.info.status == "FINISHED" and r.data.tags["seed"] == "0" and r.data.tags["method"] == method
        assert r.data.params["train.beta"] == str(C.load(d / "config.yaml").train.beta)
        cur = scalars(d / "tensorboard" / f"{method}-seed0")
        for tag in ("eval/accuracy", "train/loss", "sample/kept") + (("prm/loss",) if method == "sipf" else ()):
            hist = client.get_metric_history(r.info.run_id, tag)
            assert [(m.step, m.value) for m in hist] == [(s, pytest.approx(v, rel=1e-6, abs=1e-7))
                                                          for s, v in cur[tag]], tag
        by_k = client.get_metric_history(r.info.run_id, "eval_by_iteration/accuracy")
        assert [(m.step, m.value) for m in by_k] == [(s, pytest.approx(v, abs=1e-6)) for s, v in scalars(
            d / "tensorboard" / f"{method}-seed0" / "by_iteration")["eval/accuracy"]]
    arts = {a.path for a in client.list_artifacts(runs["sipf-seed0"].info.run_id, "plots")}
    assert "plots/accuracy.png" in arts


# ------------------------------------------------------------------------- synthetic runs (no Ray at all)

def fake_fit(steps_per_epoch: list[int], objective: str, seed: float) -> dict:
    hist, step = [], 0
    for n in steps_per_epoch:
        log = {"loss": [seed + 1.0 / (step + i + 1) for i in range(n)], "learning_rate": [1e-3] * n,
               "grad_norm": [0.5 + i for i in range(n)]}
        if objective == "orpo":
            log |= {"nll": [1.0] * n, "log_odds": [0.1 * i for i in range(n)], "pair_acc": [0.5] * n}
        if objective == "prm":
            log |= {"step_acc": [0.7] * n}
        step += n
        hist.append({"loss": log["loss"][-1], "epoch": len(hist) + 1, "step": step, "step_log": log})
    return {"steps": step, "epochs": len(hist), "history": hist}


def fake_run(d: Path, backends: str = "[tensorboard]", iterations: int = 2) -> C.SIPFConfig:
    """A run directory with the records the pipeline writes (M_0, SIPF iterations, an outcome baseline)."""
    cfg = C.build(overrides=TEST_OVERRIDES + MINI + [f"tracking.backends={backends}"])
    atomic_write_text(d / "config.yaml", C.dump(cfg))
    it0 = d / "iter_00"
    write_json(it0 / "sft.json", fake_fit([4, 4], "sft", 1.0))
    led = Ledger(it0)
    led.mark("init")
    led.mark("sft", seconds=3.0, steps=8)
    write_json(it0 / "eval.json", {"accuracy": 0.3, "strict_accuracy": 0.25, "n": 60})
    led.mark("eval", seconds=1.0)
    for method, base in (("sipf", d), ("outcome", d / "baselines" / "outcome")):
        for k in range(1, iterations + 1):
            it = base / f"iter_{k:02d}"
            led = Ledger(it)
            led.mark("sample", seconds=2.0, kept=10 + k, correct=4, false_positive_rate=0.25, shared_from="iter_01")
            if method == "sipf":
                led.mark("label", seconds=1.5, rollouts=40, vs_oracle={"f1": 0.8, "precision": 0.9})
                write_json(it / "prm_train.json", fake_fit([3], "prm", 0.5) | {"holdout_questions": []})
                led.mark("prm", seconds=4.0, steps=3, loss=0.4)
                led.mark("score", seconds=0.5, paths=10, holdout_auc_vs_oracle=0.7)
            led.mark("pairs", seconds=0.2, pairs=5 + k)
            write_json(it / "train.json", fake_fit([2, 3], "orpo", 2.0 + k) | {"objective": "orpo"})
            led.mark("train", seconds=5.0, steps=5)
            write_json(it / "eval.json", {"accuracy": 0.3 + 0.05 * k, "strict_accuracy": 0.2 + 0.05 * k, "n": 60})
            led.mark("eval", seconds=1.0)
            atomic_write_text(it / "DONE", "1\n")
    return cfg


def test_points_of_a_run_are_one_rising_axis(tmp_path):
    assert C.build().tracking.backends == ["tensorboard"]          # the default: no server, no account
    cfg = fake_run(tmp_path)
    pts = tracking.method_points(tmp_path, "sipf", "sipf")
    steps = [s for s, _, _ in pts]
    assert steps == sorted(steps) and steps[-1] == 8 + 2 * (3 + 5)
    train = [(s, v) for s, t, v in pts if t == "train/loss"]
    assert [s for s, _ in train] == list(range(1, 9)) + list(range(12, 17)) + list(range(20, 25))
    assert [(s, v) for s, t, v in pts if t == "eval/accuracy"] == [(8, 0.3), (16, 0.35), (24, pytest.approx(0.4))]
    assert ("label/vs_oracle_f1" in {t for _, t, _ in pts}) and ("prm/step_accuracy" in {t for _, t, _ in pts})
    outcome = tracking.method_points(tmp_path, "outcome", cfg.method)
    assert [s for s, t, _ in outcome if t == "eval/accuracy"] == [8, 13, 18]     # no PRM fits on its axis
    # a run stopped inside iteration 2 (before the PRM finished) gives a prefix of the finished run's points
    (tmp_path / "iter_02" / "DONE").unlink()
    led = Ledger(tmp_path / "iter_02")
    for s in ("prm", "score", "pairs", "train", "eval"):
        del led.data[s]
    write_json(led.path, led.data)
    part = tracking.method_points(tmp_path, "sipf", "sipf")
    assert part == pts[:len(part)] and len(part) < len(pts)


def test_resumed_tracking_equals_uninterrupted(tmp_path, monkeypatch):
    """Interrupted twice (between iterations, and by a crash after writing points but before recording
    them), then resumed in a new tracker: TensorBoard and MLflow hold exactly the uninterrupted run's points.

    The three trackers stand for three processes: each names its event files as a process started a minute
    after the last would (TensorBoard reads a run's files in name order: time, host, pid, then a counter that
    only one process shares; within one process and second, a 10th file sorted before a 4th)."""
    from tensorboard.summary.writer import event_file_writer
    started = [1_800_000_000.0]

    def new_process():
        started[0] += 60.0
        monkeypatch.setattr(event_file_writer, "time", type("T", (), {"time": staticmethod(lambda: started[0])}))

    new_process()
    ref = tmp_path / "ref"
    cfg = fake_run(ref, "[tensorboard,mlflow]")
    tracking.sync(ref, cfg)

    d = tmp_path / "resumed"
    fake_run(d, "[tensorboard,mlflow]")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    shutil.move(str(d / "iter_02"), hidden / "iter_02")
    new_process()
    t = tracking.Tracker(d, cfg)                   # process 1: up to iteration 1, then stopped cleanly
    for m in ("sipf", "outcome"):
        t.update(m)
    t.close()
    shutil.move(str(hidden / "iter_02"), d / "iter_02")

    new_process()
    t = tracking.Tracker(d, cfg)                   # process 2: writes iteration 2, dies before recording it
    before = {(n, m): t.state[n][m]["logged"] for n in ("tensorboard", "mlflow") for m in ("sipf", "outcome")}
    for m in ("sipf", "outcome"):
        t.update(m)
    for (n, m), b in t.open.items():               # written and flushed, but the record still says `before`
        b.flush()
        b.state["pending"], b.state["logged"] = b.state["logged"], before[(n, m)]
    t._save()
    t.open.clear()                                 # killed: nothing closed

    new_process()
    t = tracking.Tracker(d, cfg)                   # process 3: `sitf-ray resume`
    for m in ("sipf", "outcome"):
        t.update(m)
    t.finish()
    t.close()
    for m in ("sipf", "outcome"):
        a, b = scalars(ref / "tensorboard" / f"{m}-seed0"), scalars(d / "tensorboard" / f"{m}-seed0")
        assert a == b, m
        assert len(b["train/loss"]) == len(set(s for s, _ in b["train/loss"]))
        a, b = (scalars(r / "tensorboard" / f"{m}-seed0" / "by_iteration") for r in (ref, d))
        assert a == b and [k for k, _ in b["eval/accuracy"]] == [0, 1, 2], (m, b)
    from mlflow.tracking import MlflowClient

    def mlflow_points(root):
        c = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
        run = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("sitf-ray").experiment_id])}
        r = run["sipf-seed0"]
        return {k: [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
    assert mlflow_points(ref) == mlflow_points(d)


def test_a_missing_or_broken_backend_is_a_warning(tmp_path, monkeypatch):
    cfg = fake_run(tmp_path, "[mlflow,tensorboard]")
    monkeypatch.setitem(sys.modules, "mlflow", None)              # not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match="tracking backend 'mlflow' is not installed"):
        tracking.sync(tmp_path, cfg)
    assert scalars(tmp_path / "tensorboard" / "sipf-seed0")["eval/accuracy"][-1][1] == pytest.approx(0.4)
    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.delitem(sys.modules, "mlflow.tracking")
    d2 = tmp_path / "unreachable"
    cfg = fake_run(d2, "[mlflow,tensorboard]")
    with pytest.warns(RuntimeWarning, match="tracking backend 'mlflow' failed"):
        tracking.sync(d2, cfg)                                     # nothing listens on port 9
    assert "eval/accuracy" in scalars(d2 / "tensorboard" / "sipf-seed0")


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = fake_run(tmp_path, "[wandb]", iterations=1)
    tracking.sync(tmp_path, cfg)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, list((tmp_path / "wandb").iterdir())      # sipf and outcome
    assert all(list(r.glob("*.wandb")) for r in runs)
    assert not math.isnan(read_json(tmp_path / "tracking.json")["wandb"]["sipf"]["logged"])
    # the values, read back from W&B's own record of each run (its history records in the .wandb file)
    for method in ("sipf", "outcome"):
        pts = tracking.method_points(tmp_path, method, cfg.method)
        want = [v for _, t, v in pts if t == "eval/accuracy"]
        got = wandb_history(next(r for r in runs if wandb_run_name(r) == f"{method}-seed0"), "eval/accuracy")
        assert got == pytest.approx(want), method


def wandb_records(run_dir: Path):
    """The records of an offline W&B run: its .wandb file (a LevelDB-style log of 32 KiB blocks after a 7-byte
    ':W&B' header, each record split into FULL/FIRST/MIDDLE/LAST pieces) parsed with W&B's own protobuf schema."""
    import struct

    from wandb.proto import wandb_internal_pb2
    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:                  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += 32768 - pos % 32768
            continue
        piece, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = piece if kind in (1, 2) else buf + piece
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_run_name(run_dir: Path) -> str:
    return next(r.run.display_name for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run")


def wandb_history(run_dir: Path, key: str) -> list[float]:
    import json
    out = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            out += [json.loads(item.value_json) for item in r.history.item if item.key == key or
                    "/".join(item.nested_key) == key]
    return out
