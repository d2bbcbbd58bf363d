"""Reliability: faults (dead actors, dead trainers, dead drivers), bad input, hostile code, load, fuzz."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from sitf_ray import config as C
from sitf_ray.runs.artifacts import read_json, read_jsonl

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
            if ckpts.exists() and any(p.name.startswith("hurt__epoch") for p in ckpts.iterdir()):
                pids = _train_worker_pids()
                if pids:
                    time.sleep(0.5)     # inside epoch 2
                    os.kill(pids[-1], signal.SIGKILL)
                    killed["pid"] = pids[-1]
                    return
            time.sleep(0.2)

    th = threading.Thread(target=killer)
    th.start()
    hurt = fit(job("hurt"), {"train": ray.data.from_items(rows)})
    th.join()
    assert killed, "the worker was never killed (training finished too fast?)"
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
        t0 = time.time()
        want = pool.map("score", items, 8)
        once = time.time() - t0
        out = {}
        th = threading.Thread(target=lambda: out.update(r=pool.map("score", items, 8)))
        th.start()
        # kill a replica while the second request is under way: a fixed sleep lost the race on a fast CPU (the
        # whole request took under 0.5 s), so wait only for the request to start, then a tenth of its duration
        while pool.stats.requests < 2:
            time.sleep(0.005)
        time.sleep(once / 10)
        ray.kill(pool.actors[1], no_restart=True)
        th.join(timeout=300)
        assert out["r"] == want and pool.stats.restarts == 1 and pool.stats.reissued_chunks >= 1
        assert [i["folder"] for i in pool.call_all("info")] == [str(d / "iter_01" / "prm")] * 2   # PRM replayed
    finally:
        pool.shutdown()


STAGE_MARKERS = [   # kill the driver as soon as this file exists: the stage after it is then running
    ("label", "iter_01/samples.jsonl"), ("score", "iter_01/prm_train.json"), ("pairs", "iter_01/scored.jsonl"),
    ("train", "iter_01/pairs"), ("eval", "iter_01/train.json"), ("next iteration", "iter_01/DONE"),
    ("outcome baseline", "iter_02/DONE")]


@pytest.mark.slow
def test_driver_sigkill_in_every_stage_resumes_to_identical_results(mini_run, m0_run, tmp_path, ray_session):
    """One run, SIGKILLed once inside each stage in turn and resumed each time, ends exactly like the
    uninterrupted reference run."""
    ref, _ = mini_run
    d = copy_m0(m0_run, tmp_path / "run")
    (d / "config.yaml").write_text(C.dump(mini_config()))
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    cmd = [sys.executable, "-m", "sitf_ray.cli", "resume", str(d)]
    for stage, marker in STAGE_MARKERS:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 900
        while not (d / marker).exists():
            assert p.poll() is None, f"driver ended before reaching {stage}"
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        p.send_signal(signal.SIGKILL)
        p.wait()
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
    if bwrap_available():   # isolation: no loopback connection, nothing written or deleted outside
        assert not got_connection and not outside.exists() and victim.read_text() == "keep me"
    assert os.getpid() and threading.main_thread().is_alive()   # we are still here


# --------------------------------------------------------------------------------------- serve: load, fuzz

@pytest.fixture(scope="module")
def api(mini_run, ray_session):
    from ray import serve

    from sitf_ray.serving.app import start
    d, _ = mini_run
    url = start(str(d), port=free_port(), name="sitf-reliability")
    yield url
    serve.shutdown()


def test_serve_under_bounded_loopback_load(api):
    """16 concurrent clients for 30 s on loopback: no errors; latency percentiles reported."""
    import requests
    body = {"prompt": "Question: Ann has 5 pens, buys 3 more. How many pens now?\nAnswer:\n", "max_tokens": 32,
            "temperature": 1.0}
    stop_at = time.time() + 30
    lat, errors = [], []

    def client():
        s = requests.Session()
        while time.time() < stop_at:
            t = time.time()
            try:
                r = s.post(f"{api}/v1/completions", json=body, timeout=60)
                if r.status_code != 200:
                    errors.append(r.status_code)
            except Exception as e:  # connection errors count as failures
                errors.append(repr(e))
            lat.append(time.time() - t)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda _: client(), range(16)))
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"\nserve load: {len(lat)} requests from 16 clients in 30 s ({len(lat) / 30:.1f} req/s), "
          f"p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, errors {len(errors)}")
    assert not errors and len(lat) >= 16


# The fuzz draws the same cases on every run (CI must not be a coin toss). Fresh randomness, on demand:
#   SITF_FUZZ_SEED=random pytest tests/test_reliability.py -k fuzz -s     (prints the seed it drew)
#   SITF_FUZZ_SEED=<n> ... replays one; SITF_FUZZ_EXAMPLES=<k> draws k cases per operation (default 25).
FUZZ_SEED = 14_2025

# The cases are drawn in a fresh interpreter that imports only schemathesis: with a fixed seed its draws
# still depend on the drawing process's memory layout (checked: allocating objects, or importing more
# modules, before drawing changes the cases), so drawing inside the test session would tie them to
# whichever tests ran first.
DRAW = """
import json, sys
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
url, rng_seed, examples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cases = []
def keep(case):
    body = None if type(case.body).__name__ == "NotSet" else case.body
    cases.append({"method": case.method, "path": case.formatted_path, "body": body})
for op in schemathesis.openapi.from_url(url).get_all_operations():
    run = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                   database=None)(given(op.ok().as_strategy())(keep))
    seed(rng_seed)(run)()
json.dump(cases, sys.stdout, default=repr)
"""


def _fuzz_seed() -> int:
    v = os.environ.get("SITF_FUZZ_SEED", "").strip()
    if v == "random":
        import random
        return random.SystemRandom().randrange(2**32)
    return int(v) if v else FUZZ_SEED


def draw_cases(url: str, rng_seed: int, examples: int) -> list[dict]:
    """schemathesis' requests for every operation of the published schema: [{method, path, body}]."""
    import json
    r = subprocess.run([sys.executable, "-c", DRAW, f"{url}/openapi.json", str(rng_seed), str(examples)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _prompt_texts(body) -> list[str]:
    if not isinstance(body, dict):
        return []
    p = body.get("prompt", body.get("question"))
    out = [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)] if isinstance(p, list) else []
    for m in body.get("messages") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            out.append(m["content"])
    return out


# Edges random draws rarely reach: over the context in tokens (256 on the tiny model), over it only with
# max_tokens, non-ASCII and control text, lone surrogates, empty strings, streaming.
LONG = "7 * 8 = 56\n" * 60                       # ~420 tokens, 660 characters (under the 8000-character limit)
FUZZ_EDGES = {
    "/v1/completions": [{"prompt": LONG}, {"prompt": "1 + " * 100, "max_tokens": 200}, {"prompt": ["ok", LONG]},
                        {"prompt": "ünïcødé ✓ 数学 😀 " * 20}, {"prompt": "\x00\u200b\ufeff"}, {"prompt": "\ud800"},
                        {"prompt": ""}, {"prompt": [""]}, {"prompt": LONG, "stream": True},
                        {"prompt": "x", "stop": ["\ud800"]}],
    "/v1/chat/completions": [{"messages": [{"role": "user", "content": LONG}]},
                             {"messages": [{"role": "user", "content": "数学 " * 150}]},
                             {"messages": [{"role": "user", "content": "1 + " * 100}], "max_tokens": 200},
                             {"messages": [{"role": "user", "content": ""}]}, {"messages": []},
                             {"messages": [{"role": "user", "content": LONG}], "stream": True},
                             {"messages": [{"role": "assistant", "content": "x"}]}],
    "/v1/solve": [{"question": LONG}, {"question": "ünïcødé " * 10, "n": 2}, {"question": "\ud800"}],
    "/v1/score": [{"question": LONG, "solution": LONG * 5}, {"question": "数学", "steps": ["∑", "😀"]}],
}


def test_openapi_fuzz_never_5xx(api):
    """Requests drawn by schemathesis from the published OpenAPI schema from a fixed seed (see above), plus
    the fixed edge cases: no response is a server error. The same seed draws the same requests."""
    import requests
    rng_seed, examples = _fuzz_seed(), int(os.environ.get("SITF_FUZZ_EXAMPLES", "25"))
    drawn = draw_cases(api, rng_seed, examples)
    assert draw_cases(api, rng_seed, examples) == drawn            # deterministic: CI is not a coin toss
    edges = [{"method": "POST", "path": p, "body": b} for p, bodies in FUZZ_EDGES.items() for b in bodies]
    seen = {"status": {}, "non_ascii": 0, "long": 0}
    s = requests.Session()
    for i, case in enumerate(drawn + edges):
        kw = {} if case["body"] is None else {"json": case["body"]}
        r = s.request(case["method"], api + case["path"], timeout=120, **kw)
        seen["status"][r.status_code] = seen["status"].get(r.status_code, 0) + 1
        texts = _prompt_texts(case["body"])
        seen["non_ascii"] += i < len(drawn) and any(not t.isascii() for t in texts)
        seen["long"] += any(len(t) > 300 for t in texts)
        assert r.status_code < 500, (case, r.status_code, r.text[:300], f"SITF_FUZZ_SEED={rng_seed}")
    print(f"\nschema fuzz (SITF_FUZZ_SEED={rng_seed}, {examples} per operation): {len(drawn)} drawn requests "
          f"({seen['non_ascii']} with non-ASCII text) + {len(edges)} edge cases; status counts {seen['status']}")
    assert len(drawn) >= 50 and seen["non_ascii"] >= 1
    assert seen["long"] >= 8 and seen["status"].get(400, 0) >= 8   # the context limit was really reached
