"""The SIPF loop end to end on real Ray, vLLM, Ray Data and Ray Train (miniature sizes), and resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sitf_ray import config as C
from sitf_ray.runs.artifacts import Ledger, read_json, read_jsonl
from sitf_ray.tasks import get_task
from sitf_ray.tasks.base import passes_step_check

from conftest import MINI, ROOT, TEST_OVERRIDES, copy_m0, mini_config

ARITH = get_task("arith")


@pytest.fixture(scope="module")
def full_run(mini_run):
    return mini_run


def test_every_artifact_of_the_loop(full_run):
    d, res = full_run
    assert C.load(d / "config.yaml") == mini_config()
    assert (d / "iter_00" / "policy" / "model.safetensors").exists()
    for k in (1, 2):
        it = d / f"iter_{k:02d}"
        for f in ["samples.jsonl", "labels.jsonl", "labels_trl.jsonl", "scored.jsonl", "eval.json",
                  "eval_predictions.jsonl", "stages.json", "DONE", "prm_train.json", "train.json"]:
            assert (it / f).exists(), it / f
        assert (it / "prm" / "config.json").exists() and (it / "policy" / "config.json").exists()
        samples = read_jsonl(it / "samples.jsonl")
        assert samples and set(samples[0]) >= {"id", "qid", "path", "steps", "answer", "correct"}
        assert len({s["id"] for s in samples}) == len(samples)
        labels = read_jsonl(it / "labels.jsonl")
        assert [r["id"] for r in labels] == [s["id"] for s in samples]
        assert all(len(r["labels"]) == len(r["steps"]) == len(r["oracle"]) for r in labels)
        trl = read_jsonl(it / "labels_trl.jsonl")
        assert set(trl[0]) == {"prompt", "completions", "labels"}
        scored = read_jsonl(it / "scored.jsonl")
        assert all(0.0 <= r["reward"] <= 1.0 and len(r["step_scores"]) == len(s["steps"])
                   for r, s in zip(scored, samples))
        shards = sorted((it / "pairs").glob("*.parquet"))
        assert shards, "no pair shards"
        pairs = pd.concat([pd.read_parquet(f) for f in shards])
        assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "qid"} <= set(pairs.columns)
        assert (pairs.chosen_reward - pairs.rejected_reward >= 0.05 - 1e-9).all()
        ev = read_json(it / "eval.json")
        assert ev["task"] == "arith" and ev["n"] == 60 and 0 <= ev["accuracy"] <= 1
        stages = read_json(it / "stages.json")
        assert set(stages) == {"sample", "label", "prm", "score", "pairs", "train", "eval"}
        ob = d / "baselines" / "outcome" / f"iter_{k:02d}"
        assert (ob / "DONE").exists() and (ob / "policy").exists() and not (ob / "labels.jsonl").exists()
        # equal update budget (train.match_steps): the baseline took the main method's optimizer steps
        assert read_json(ob / "train.json")["steps"] == read_json(it / "train.json")["steps"] > 0
        # the calculator on top of the PRM (prm.check_steps): a step with a false equation scores 0
        false_steps = [(st, p) for r in scored for st, p in zip(r["steps"], r["step_scores"])
                       if not passes_step_check(ARITH, st)]
        assert false_steps and all(p == 0.0 for _, p in false_steps)
    results = read_json(d / "results.json")
    assert [r["k"] for r in results["iterations"]] == [0, 1, 2]
    for rec in results["iterations"] + results["baselines"]["outcome"]["iterations"]:   # arith has a step oracle
        assert 0 <= rec["strict_accuracy"] <= rec["accuracy"] <= 1
    for rec in results["iterations"][1:]:
        assert 0 <= rec["sample_false_positive_rate"] <= 1 and rec["sample_strict"] <= rec["sample_correct"]
    assert [r["k"] for r in results["baselines"]["outcome"]["iterations"]] == [0, 1, 2]
    assert results["iterations"][0]["accuracy"] == read_json(d / "iter_00" / "eval.json")["accuracy"]
    assert (d / "report.md").read_text().count("iter 2") == 1
    assert {p.name for p in (d / "plots").glob("*.png")} >= {"accuracy.png", "prm_calibration.png",
                                                               "labels_and_stages.png"}
    timings = read_json(d / "timings.json")
    assert timings["weight_syncs"] and all(s["replicas"] == 2 for s in timings["weight_syncs"])


PRE_MOVE = "7f4e475"     # the last commit of the flat package, before the role folders (issue 28)


def pair_log_odds(policy: Path, pairs_dir: Path, cfg) -> float:
    """Mean ORPO log odds (train/policy_objectives.orpo_loss: chosen over rejected, mean per-token
    log-probabilities) of the pairs in `pairs_dir` under `policy`, no gradient."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.train.policy_objectives import collate, encode_rows, orpo_loss
    rows = pd.concat([pd.read_parquet(f) for f in sorted(pairs_dir.glob("*.parquet"))]).to_dict("records")
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    enc = encode_rows(rows, tok, "pairs", cfg.train.max_len, cfg.train.max_prompt_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(enc), 32):
            _, m = orpo_loss(model, collate(enc[i:i + 32], pad), cfg.train.beta)
            total += m["log_odds"] * len(enc[i:i + 32])
    return total / len(enc)


def test_sipf_update_learns_its_pairs_and_keeps_held_out_log_odds_and_accuracy(full_run):
    """The loop's first SIPF update (labels, PRM, pairs, ORPO on Ray Train, weights to the generators), from M_0:
    - raises the chosen-over-rejected log odds of the pairs it trained on by more than 0.5 (a flipped pair or
      loss sign lowers them);
    - lowers those of pairs no fit saw (iteration 2's, from M_1's own samples after the update) by at most 0.5;
    - keeps test accuracy within 3 of its 60 questions.
    Margins from seeds 0, 1, 2 of this recipe (docs/RESULTS.md section 9). Seen failing with the update at
    train.lr=1e-3 (the product's default until 2026-12-07; one ORPO step from a fresh optimizer): held-out log
    odds 3.99 -> 2.25 (seed 0) and 3.35 -> 1.36 (seed 1), accuracy 65.0 -> 58.3 % (seed 0)."""
    d, res = full_run
    cfg = mini_config()
    lo = {(k, pairs): pair_log_odds(d / f"iter_{k:02d}" / "policy", d / f"iter_{pairs:02d}" / "pairs", cfg)
          for k in (0, 1) for pairs in (1, 2)}
    acc = [it["accuracy"] for it in res["iterations"]]
    print(f"\nlog odds M_0 -> M_1: trained-on pairs {lo[0, 1]:.3f} -> {lo[1, 1]:.3f}, held-out pairs "
          f"{lo[0, 2]:.3f} -> {lo[1, 2]:.3f}; accuracy {acc}")
    assert lo[1, 1] > lo[0, 1] + 0.5, lo
    assert lo[1, 2] >= lo[0, 2] - 0.5, lo
    assert acc[1] >= acc[0] - 3 / 60, acc


def test_driver_killed_in_the_prm_stage_resumes_to_the_same_results(full_run, m0_run, tmp_path, ray_session):
    """`sitf-ray run` is SIGKILLed once iteration 1's labels are recorded (inside the PRM stage); `sitf-ray
    resume` ends with exactly the files and curves of an uninterrupted run, and `sitf-ray report` reads it."""
    killed_runs_resume_to_the_same_results(full_run, m0_run, tmp_path, ray_session, pre_move=False)


@pytest.mark.slow   # ~170 s: the pre-move code starts its own Ray and runs up to labelling first
def test_a_run_of_the_pre_move_code_killed_twice_resumes_to_the_same_results(full_run, m0_run, tmp_path, ray_session):
    """A run started by the flat package (the code before issue 28's move) is SIGKILLed while it labels
    iteration 1 (its kept chunks pickled under the old module paths); today's `sitf-ray resume` is SIGKILLed
    in turn once the labels are recorded (inside the PRM stage); a second resume ends with exactly the files
    and curves of an uninterrupted run of today's code, and `sitf-ray report` reads the run."""
    killed_runs_resume_to_the_same_results(full_run, m0_run, tmp_path, ray_session, pre_move=True)


def killed_runs_resume_to_the_same_results(full_run, m0_run, tmp_path, ray_session, pre_move: bool):
    ref_dir, _ = full_run
    d = copy_m0(m0_run, tmp_path / "run")
    cfg_path = tmp_path / "mini.yaml"
    cfg_path.write_text(C.dump(mini_config()))
    (d / "config.yaml").write_text(C.dump(mini_config()))   # same M_0 settings, so the copied iter_00 stands
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")

    def kill_when(cmd, environ, cwd, ready, what):
        log = open(tmp_path / f"{what}.log", "w")
        p = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        try:
            while not ready():
                assert p.poll() is None, (tmp_path / f"{what}.log").read_text()[-3000:]
                assert time.time() < deadline, f"{what}: never reached the point to kill at"
                time.sleep(0.02)
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    labels = lambda: Ledger(d / "iter_01").data.get("label")       # noqa: E731
    if pre_move:
        old = tmp_path / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", PRE_MOVE, "sitf_ray"], capture_output=True)
        assert archive.returncode == 0, f"git archive {PRE_MOVE}: {archive.stderr.decode()[-500:]} (a shallow clone?)"
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        # the old code on its own local Ray (its workers import the old package from PYTHONPATH)
        env_old = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(old),
                                                                               "PYTHONUNBUFFERED": "1"}
        where = subprocess.run([sys.executable, "-c", "import sitf_ray.pipeline as p; print(p.__file__)"],
                               env=env_old, cwd=tmp_path, capture_output=True, text=True)
        assert where.stdout.startswith(str(old)), where.stdout + where.stderr
        kill_when([sys.executable, "-m", "sitf_ray.cli", "run", str(cfg_path), "--out", str(d)], env_old, tmp_path,
                  lambda: any((d / "iter_01" / "partial" / "label").glob("*.pkl")), "old-driver")
        assert not labels(), "the old code's kill landed after labelling"
        kill_when([sys.executable, "-m", "sitf_ray.cli", "resume", str(d)], env, ROOT, labels, "resume-1")
    else:
        kill_when([sys.executable, "-m", "sitf_ray.cli", "run", str(cfg_path), "--out", str(d)], env, ROOT, labels,
                  "driver")
    ledger = Ledger(d / "iter_01")
    assert "label" in ledger.data and "prm" not in ledger.data, "the kill did not land in the PRM stage"
    assert not (d / "iter_01" / "DONE").exists() and not (d / "results.json").exists()
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "resume", str(d)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert read_json(d / "results.json") == read_json(ref_dir / "results.json")
    for k in (1, 2):
        for f in ("samples.jsonl", "labels.jsonl", "scored.jsonl", "eval.json"):
            a, b = read_jsonl(d / f"iter_{k:02d}" / f) if f.endswith("l") else read_json(d / f"iter_{k:02d}" / f), \
                read_jsonl(ref_dir / f"iter_{k:02d}" / f) if f.endswith("l") else read_json(ref_dir / f"iter_{k:02d}" / f)
            if f == "eval.json":
                a.pop("seconds"), b.pop("seconds")
            assert a == b, f"iter_{k:02d}/{f} differs after resume"
    # the experiment-tracking curves too: every point once, equal to the uninterrupted run's (tracking.py)
    from test_tracking import deterministic, scalars
    for run in ("sipf-seed0", "outcome-seed0"):
        resumed, uninterrupted = scalars(d / "tensorboard" / run), scalars(ref_dir / "tensorboard" / run)
        assert deterministic(resumed) == deterministic(uninterrupted), run
    rep = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "report", str(d)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    from sitf_ray.runs.report import table
    assert table(read_json(d / "results.json")) in (d / "report.md").read_text()


def test_resume_recomputes_a_corrupted_artifact(full_run, tmp_path, ray_session):
    """A truncated artifact is detected by its checksum and that stage (only) is recomputed."""
    import shutil

    from sitf_ray.pipeline import run
    ref_dir, _ = full_run
    d = tmp_path / "run"
    shutil.copytree(ref_dir, d)
    target = d / "iter_02" / "scored.jsonl"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    before = {p: p.stat().st_mtime for p in (d / "iter_02").glob("*.jsonl")}
    res = run(C.load(d / "config.yaml"), d, resume=True)
    assert target.read_bytes() == data
    assert read_json(d / "results.json") == read_json(ref_dir / "results.json")
    assert (d / "iter_02" / "samples.jsonl").stat().st_mtime == before[d / "iter_02" / "samples.jsonl"]
    assert res["iterations"][-1]["k"] == 2


def test_a_different_config_never_overwrites_a_run(full_run):
    from sitf_ray.runs.context import prepare
    d, _ = full_run
    with pytest.raises(C.ConfigError, match="different config"):
        prepare(C.build(overrides=TEST_OVERRIDES + MINI + ["seed=7"]), d)


def test_a_nan_figure_says_why_on_the_console():
    """Issue 21.6: a PRM AUC with one class missing among the held-out steps showed as `nan`, no word why."""
    from sitf_ray.feedback.stages import auc_figure
    from sitf_ray.runs.progress import summary
    assert auc_figure([0.9, 0.2], [1, 0]) == (1.0, None)
    for labels, why in (([], "no held-out step"), ([1, 1], "no wrong held-out step"), ([0, 0], "no right held-out step")):
        value, reason = auc_figure([0.5] * len(labels), labels)
        assert value != value and reason == f"n/a ({why})"
        assert f"holdout_auc_vs_mc=n/a ({why})" in summary("score", 1.0, holdout_auc_vs_mc=reason)


def test_the_table_says_whether_m0_sft_converged():
    """Issue 21.6: the footnote said "SFT to convergence" for an M_0 whose SFT hit its epoch cap."""
    from sitf_ray.runs.report import table

    def res(m0):
        return {"task": "arith", "method": "sipf", "seed": 0, "baselines": {},
                "iterations": [{"k": 0, "accuracy": 0.2, "n": 400, **m0}, {"k": 1, "accuracy": 0.3, "n": 400}]}
    assert "SFT capped at 24 epochs (not early-stopped" in table(res({"sft_early_stopped": False, "sft_epochs": 24}))
    assert "SFT early-stopped on validation" in table(res({"sft_early_stopped": True, "sft_epochs": 9}))
    assert "convergence" not in table(res({}))


def test_the_table_names_the_split_it_scores():
    """eval.split=val (tuning runs) was ignored: every iteration was scored on test and labelled 'val'."""
    from sitf_ray.runs.report import table
    its = [{"k": 0, "accuracy": 0.2, "n": 200, "split": "val"}, {"k": 1, "accuracy": 0.3, "n": 200, "split": "val"}]
    out = table({"task": "arith", "method": "sipf", "seed": 0, "baselines": {}, "iterations": its})
    assert "val accuracy %" in out and "test accuracy" not in out
    its = [{k: v for k, v in r.items() if k != "split"} for r in its]
    assert "(test accuracy %" in table({"task": "arith", "method": "sipf", "seed": 0, "baselines": {}, "iterations": its})


def test_eval_split_scores_the_split_it_names():
    from sitf_ray.runs.context import load_splits
    from sitf_ray.tasks import get_task
    cfg = C.build(overrides=["eval.split=val", "eval.n=50"])
    splits = load_splits(cfg, get_task("arith"))
    assert len(splits["val"]) == 50 and len(splits["test"]) == cfg.task.arith.n_test
    with pytest.raises(C.ConfigError, match="eval.split"):
        C.build(overrides=["eval.split=train"])


def test_seeds_table_is_mean_and_sd_over_runs():
    from sitf_ray.runs.report import seeds_table

    def res(seed, sipf, sft):
        return {"task": "arith", "method": "sipf", "seed": seed,
                "iterations": [{"k": k, "accuracy": a, "n": 400} for k, a in enumerate(sipf)],
                "baselines": {"sft": {"iterations": [{"k": k, "accuracy": a, "n": 400} for k, a in enumerate(sft)]}}}
    text = seeds_table([res(0, [0.40, 0.44], [0.40, 0.41]), res(1, [0.20, 0.30], [0.20, 0.19])])
    sipf = next(line for line in text.splitlines() if line.startswith("SIPF"))
    assert "37.0 ± 9.9" in sipf and "+7.0 ± 4.2" in sipf and "44.0, 30.0" in sipf
    assert "30.0 ± 14.1" in next(line for line in text.splitlines() if line.startswith("M_0"))


def test_seeds_report_has_strict_accuracy_and_an_error_bar_plot(tmp_path):
    from sitf_ray.runs.artifacts import write_json
    from sitf_ray.runs.report import seeds_table, table, write_seeds_report

    def res(seed, sipf, strict):
        its = [{"k": k, "accuracy": a, "strict_accuracy": s, "n": 1200} for k, (a, s) in enumerate(zip(sipf, strict))]
        return {"task": "arith", "model": "tiny", "method": "sipf", "seed": seed, "iterations": its, "baselines": {}}
    runs = [res(0, [0.20, 0.35], [0.10, 0.30]), res(1, [0.30, 0.41], [0.20, 0.34])]
    text = seeds_table(runs)
    assert "final strict %" in text and "32.0 ± 2.8" in text and "+17.0 ± 4.2" in text
    assert "strict accuracy %" in table(runs[0]) and "one standard error 1.2 points" in table(runs[0])
    dirs = []
    for r in runs:
        d = tmp_path / f"seed{r['seed']}"
        write_json(d / "results.json", r)
        (d / "config.yaml").write_text(C.dump(C.build(overrides=[f"seed={r['seed']}"])))
        dirs.append(d)
    out = write_seeds_report(dirs, tmp_path / "report")
    assert "32.0 ± 2.8" in out.read_text() and (tmp_path / "report" / "plots" / "accuracy.png").stat().st_size > 5000


def test_report_refuses_to_average_runs_that_are_not_seeds_of_one_recipe(tmp_path):
    """`sitf-ray report A B` as typed: runs whose configs differ beyond the seed, or that ran the same seed, are
    refused with one line naming the difference (a mean over them would mislead); seeds of one recipe pass."""
    from sitf_ray.runs.artifacts import write_json

    def run(name, seed, *overrides):
        d = tmp_path / name
        its = [{"k": 0, "accuracy": 0.3, "n": 100}, {"k": 1, "accuracy": 0.35, "n": 100}]
        write_json(d / "results.json", {"task": "arith", "model": "tiny", "method": "sipf", "seed": seed,
                                        "iterations": its, "baselines": {}})
        (d / "config.yaml").write_text(C.dump(C.build(overrides=[f"seed={seed}", *overrides])))
        return str(d)

    def report(*dirs):
        return subprocess.run([sys.executable, "-m", "sitf_ray.cli", "report", *dirs, "--out", str(tmp_path / "rep")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    a, b = run("a", 0), run("b", 1)
    oracle, again = run("oracle", 1, "labeling.mode=oracle"), run("again", 0)
    ok = report(a, b)
    assert ok.returncode == 0 and "(2 seeds: 0, 1" in ok.stdout, ok.stderr
    r = report(a, oracle)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().splitlines() == [f"error: {a} and {oracle} are not seeds of one recipe: their configs "
                                             f"differ in labeling.mode ('binary' vs 'oracle')"], r.stderr
    r = report(a, again)
    assert r.returncode == 2 and f"{a} and {again} both ran seed 0" in r.stderr


def test_every_method_runs_end_to_end_through_compare(m0_run, tmp_path, ray_session):
    """`sitf-ray compare CFG --methods sipf-dpo,rft,sft` (one iteration from the shared M_0): each method does
    what defines it. DPO ("w/o OR"): a dpo fit, no NLL term; RFT: SFT on exactly its own correct, distinct
    samples; the sft control: the gold rows, for exactly the main method's optimizer steps."""
    base = TEST_OVERRIDES + [o for o in MINI if not o.startswith(("iterations=", "baselines="))] + ["iterations=1"]
    cfg_path = tmp_path / "mini.yaml"
    cfg_path.write_text(C.dump(C.build(overrides=base)))
    d = copy_m0(m0_run, tmp_path / "run")
    (d / "config.yaml").write_text(C.dump(C.load(cfg_path, ["method=sipf-dpo", "baselines=[rft,sft]"])))
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "compare", str(cfg_path), "--methods", "sipf-dpo,rft,sft",
                        "--out", str(d)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(d / "results.json")
    assert res["method"] == "sipf-dpo" and set(res["baselines"]) == {"rft", "sft"}
    assert "w/o OR (process feedback, DPO)" in r.stdout and "RFT (own correct samples)" in r.stdout
    dpo = read_json(d / "iter_01" / "train.json")
    keys = set().union(*(h["step_log"] for h in dpo["history"]))
    assert dpo["objective"] == "dpo" and dpo["steps"] > 0 and "margin" in keys
    assert not any("nll" in k or "log_odds" in k for k in keys), keys         # no NLL, no odds-ratio term
    rft = d / "baselines" / "rft" / "iter_01"
    samples = read_jsonl(rft / "samples.jsonl")
    rows = pd.concat([pd.read_parquet(f) for f in sorted((rft / "pairs").glob("*.parquet"))])
    assert sorted(rows["completion"]) == sorted(s["path"] for s in samples if s["correct"])
    assert read_json(rft / "train.json")["objective"] == "sft"
    sft = read_json(d / "baselines" / "sft" / "iter_01" / "train.json")
    cfg = C.load(d / "config.yaml")
    gold = [r_ for r_ in ARITH.load("sft", cfg.task) if ARITH.target(r_)]
    assert sft["objective"] == "sft" and sft["rows"] == len(gold)
    assert sft["steps"] == sft["matched_steps"] == dpo["steps"]

