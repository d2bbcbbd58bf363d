"""Reliability: faults (dead actors, dead trainers, dead drivers), bad input, hostile code (serve load and the
schema fuzz are in test_serve.py, on its Serve app)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray

from sitf_ray import config as C
from sitf_ray.runs.artifacts import Ledger, read_json, read_jsonl

from conftest import ROOT, TEST_OVERRIDES, copy_m0, free_port, mini_config


# ------------------------------------------------------------------------------------------------ faults

def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors
    return [a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])]


def test_train_worker_killed_mid_epoch_resumes_from_checkpoint(m0, tmp_path, ray_session):
    """SIGKILL a Ray Train worker after the first epoch checkpoint: FailureConfig restarts the group, the
    loop restores model/optimizer/scheduler/RNG from the checkpoint and ends with the same weights."""
    import ray.data
    from safetensors.torch import load_file

    from sitf_ray.train.session import SESSION_NAME, FitJob, fit
    from sitf_ray.tasks import get_task
    task = get_task("arith")
    cfg = C.build(overrides=TEST_OVERRIDES)
    rows = [{"prompt": task.prompt(r), "completion": task.target(r)} for r in task.load("sft", cfg.task)[:384]]
    hp = {"lr": 1e-3, "epochs": 4, "batch_size": 32, "warmup_steps": 2, "max_len": 256, "max_prompt_len": 128}

    def job(name):
        return FitJob(name=name, storage=str(tmp_path / "rt"), init_model=str(m0), out_dir=str(tmp_path / name),
                      objective="sft", hp=hp, seed=3, workers=2, threads=1, max_failures=2)

    clean = fit(job("clean"), {"train": ray.data.from_items(rows)})
    killed = {}

    def killer():
        ckpts = tmp_path / "rt" / SESSION_NAME     # the session's checkpoints, named <job>__epochNNN
        deadline = time.time() + 300
        while time.time() < deadline:
            # an epoch checkpoint of this fit is registered (Ray Train's own snapshot names it as the latest;
            # its folder appears earlier, while it is still being reported): the workers are in a later epoch
            snap = ckpts / "checkpoint_manager_snapshot.json"
            latest = ((json.loads(snap.read_text()).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name", "")
                      if snap.exists() else "")
            if latest.startswith("hurt__epoch"):
                pids = _train_worker_pids()
                if pids:
                    killed["before"] = set(pids)
                    os.kill(pids[-1], signal.SIGKILL)
                    killed["pid"] = pids[-1]
                    return
            time.sleep(0.05)

    th = threading.Thread(target=killer)
    th.start()
    hurt = fit(job("hurt"), {"train": ray.data.from_items(rows)})
    th.join()
    assert killed, "the worker was never killed (training finished too fast?)"
    assert hurt.restored_from_epoch >= 1, "the fit did not restore from its epoch checkpoint"
    assert killed["pid"] not in _train_worker_pids(), "the killed worker is still listed"
    assert clean.restored_from_epoch == 0
    a, b = load_file(f"{clean.out_dir}/model.safetensors"), load_file(f"{hurt.out_dir}/model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nkilled Ray Train worker pid {killed['pid']}; max |w_clean - w_resumed| = {diff:.2e}")
    assert hurt.steps == clean.steps and diff < 1e-5


def test_prm_scorer_killed_mid_scoring_loses_nothing(mini_run, ray_session):
    from sitf_ray.feedback.scorers import scorer_pool
    d, _ = mini_run
    samples = read_jsonl(d / "iter_01" / "samples.jsonl")
    from sitf_ray.tasks import get_task
    cfg = C.load(d / "config.yaml")
    task = get_task("arith")
    rows = {r["id"]: r for r in task.load("train", cfg.task)}
    items = [{"prompt": task.prompt(rows[s["qid"]]), "steps": s["steps"]} for s in samples] * 6
    pool = scorer_pool(replicas=2, cpus=1)
    try:
        pool.broadcast("load", str(d / "iter_01" / "prm"), 256)
        want = pool.map("score", items, 8)
        out = {}
        th = threading.Thread(target=lambda: out.update(r=pool.map("score", items, 8)))
        th.start()
        # kill a replica while the second request is under way: a fixed sleep lost the race on a fast CPU (the
        # whole request took under 0.5 s), so wait for the request to start and a first chunk to come back
        while pool.stats.requests < 2:
            time.sleep(0.005)
        done = pool.stats.done_chunks

        while pool.stats.done_chunks == done:      # a chunk came back: the request is part-way

            time.sleep(0.005)
        ray.kill(pool.actors[1], no_restart=True)
        th.join(timeout=300)
        assert out["r"] == want and pool.stats.restarts == 1 and pool.stats.reissued_chunks >= 1
        assert [i["folder"] for i in pool.call_all("info")] == [str(d / "iter_01" / "prm")] * 2   # PRM replayed
    finally:
        pool.shutdown()


STAGE_MARKERS = [   # (stage to kill in, kill once this ledger entry is recorded, the entry that stage records)
    ("label", ("iter_01", "sample"), ("iter_01", "label")), ("PRM fit", ("iter_01", "label"), ("iter_01", "prm")),
    ("score", ("iter_01", "prm"), ("iter_01", "score")), ("pairs", ("iter_01", "score"), ("iter_01", "pairs")),
    ("train", ("iter_01", "pairs"), ("iter_01", "train")), ("eval", ("iter_01", "train"), ("iter_01", "eval")),
    ("next iteration", ("iter_01", "eval"), ("iter_02", "sample")),
    ("outcome baseline", ("iter_02", "eval"), ("baselines/outcome/iter_01", "train"))]


@pytest.mark.slow
def test_driver_sigkill_in_every_stage_resumes_to_identical_results(mini_run, m0_run, tmp_path, ray_session):
    """One run, SIGKILLed once inside each stage in turn and resumed each time, ends exactly like the
    uninterrupted reference run."""
    ref, _ = mini_run
    d = copy_m0(m0_run, tmp_path / "run")
    (d / "config.yaml").write_text(C.dump(mini_config()))
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    cmd = [sys.executable, "-m", "sitf_ray.cli", "resume", str(d)]
    recorded = lambda it, entry: entry in Ledger(d / it).data      # noqa: E731
    for stage, after, named in STAGE_MARKERS:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 900
        while not recorded(*after):
            assert p.poll() is None, f"driver ended before reaching {stage}"
            assert time.time() < deadline
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # the kill landed before the stage it names was recorded: the resume has that stage to redo
        assert not recorded(*named), f"the kill meant for {stage} landed after it finished"
        print(f"\nkilled the driver during: {stage}")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_json(d / "results.json") == read_json(ref / "results.json")
    for k in (1, 2):
        for f in ("samples.jsonl", "labels.jsonl", "scored.jsonl"):
            assert read_jsonl(d / f"iter_{k:02d}" / f) == read_jsonl(ref / f"iter_{k:02d}" / f), f


# --------------------------------------------------------------------------------------------- bad input

def test_unreachable_ray_address_is_one_clear_line(tmp_path):
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{free_port()}", RAY_AUTH_MODE="disabled")
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "quickstart", "--out", str(tmp_path / "r")],
                       env=env, capture_output=True, text=True, timeout=300)
    print(f"\nunreachable cluster reported after {time.time() - t:.0f} s")
    assert r.returncode == 1
    assert "cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_impossible_resources_fail_with_the_reason(ray_session, monkeypatch, m0):
    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.rollout.engines import EngineSpec
    monkeypatch.setenv("SITF_SCHEDULE_TIMEOUT", "5")     # a joined cluster may grow: it waits this long
    with pytest.raises(RuntimeError, match=r"generator pool \(2 replicas, strategy PACK\): asked for "
                                           r"2 x \{CPU 1, GPU 4\}, placed not within 5 s; the cluster has CPU 8"):
        GeneratorPool(EngineSpec(model=str(m0)), replicas=2, cpus=1, gpus=4)


@pytest.mark.parametrize("overrides, message", [
    (["cluster.generator_replicas=0"], "cluster.generator_replicas: Input should be greater than or equal to 1"),
    (["cluster.kv_cache_bytes=10"], "cluster.kv_cache_bytes: Input should be greater than or equal to 1048576"),
    (["cluster.placement_strategy=RANDOM"], "cluster.placement_strategy: Input should be"),
    (["model.tiny.head_dim=16"], "model.tiny.head_dim: Input should be greater than or equal to 32"),
    (["task.name=imagenet"], "task.name: Input should be"),
    (["iterations=-1"], "iterations: Input should be greater than or equal to 0"),
])
def test_impossible_configs_are_rejected_before_any_work(overrides, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "quickstart", "--out", str(tmp_path / "r"), *overrides],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("config error: " + message), r.stderr
    assert not (tmp_path / "r").exists()


def test_bad_task_file_fails_before_any_work_and_keeps_the_run(mini_run, tmp_path):
    """A run pointed at a broken data file stops with file:line:field, and an existing run dir is untouched."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": "#### 3"}\n{"question": "", "answer": "#### 4"}\n')
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "run", str(ROOT / "configs" / "smollm2-gsm8k.yaml"),
                        "--out", str(tmp_path / "r"), f"task.path={bad}"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, RAY_ADDRESS=""))
    assert r.returncode != 0
    assert "bad.jsonl line 2" in r.stderr and "question" in r.stderr and "Traceback" not in r.stderr
    d, _ = mini_run
    before = (d / "results.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "run", str(ROOT / "configs" / "quickstart.yaml"),
                        "--out", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "different config" in r.stderr
    assert (d / "results.json").read_bytes() == before


# ---------------------------------------------------------------------------------------- hostile code

HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n",
    "memory bomb": "x = []\nwhile True: x.append(' ' * 10**7)\n",
    "infinite loop": "while True: pass\n",
    "enormous output": "import sys\nwhile True: sys.stdout.write('x' * 65536)\n",
    "socket to loopback": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.send(b'hi')\n",
    "write outside": "open('{outside}', 'w').write('pwned')\n",
    "delete outside": "import os\nos.remove('{victim}')\n",
    "exit 0 early": "import sys\nsys.exit(0)\n",
    "os._exit early": "import os\nos._exit(0)\n",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "read secrets": "import os\nassert os.environ.get('SITF_SECRET') == 'hunter2'\n",
    "patch AssertionError": "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {{}})\n",
}


def test_hostile_programs_never_pass_and_never_harm(tmp_path, monkeypatch):
    import socket

    from sitf_ray.tasks.sandbox import bwrap_available, check_many
    monkeypatch.setenv("SITF_SECRET", "hunter2")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.1)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    outside = tmp_path / "pwned.txt"
    progs = [(name, code.format(port=srv.getsockname()[1], outside=outside, victim=victim))
             for name, code in HOSTILE.items()]
    tests = "assert 1 + 1 == 3\n"     # the checker must say 'not passed' whatever the program does first
    t = time.time()
    results = check_many([(code, tests) for _, code in progs] * 2, workers=4, timeout=5)
    dt = time.time() - t
    got_connection = True
    try:
        srv.accept()
    except (socket.timeout, BlockingIOError):
        got_connection = False
    report = {name: r.status for (name, _), r in zip(progs * 2, results)}
    print(f"\n{len(results)} hostile programs in {dt:.1f} s ({len(results) / dt:.1f} programs/s): {report}")
    assert all(r.status != "passed" for r in results), report
    # isolation (docs/RELIABILITY.md: every promise runs against bubblewrap): fails, never skips, without it
    assert bwrap_available() and all(r.isolated for r in results), "bubblewrap is missing or cannot isolate here"
    assert not got_connection, "a sandboxed program reached a loopback port"
    assert not outside.exists(), "a sandboxed program wrote outside its directory"
    assert victim.exists() and victim.read_text() == "keep me", "a sandboxed program changed or deleted a file"
