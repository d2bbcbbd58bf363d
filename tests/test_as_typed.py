"""README commands as a user types them: `.venv/bin/sitf-ray ...` in a subprocess, with the user's environment
(no RAY_ADDRESS: each command starts its own local Ray; no RAY_AUTH_MODE: Ray's default), asserting on what
the user sees: exit status, console lines, files, HTTP answers (issue 21).

The interrupted-and-resumed quickstart is in test_console.py; `ray job submit` in test_cluster.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, make_config
from test_console import OURS, SITF_RAY, user_env


def sitf(*args, cwd=None, timeout=300, env=None):
    t = time.time()
    r = subprocess.run([SITF_RAY, *map(str, args)], env=env or user_env(), cwd=cwd or ROOT, capture_output=True,
                       text=True, timeout=timeout)
    r.seconds = time.time() - t
    return r


def ctrl_c(p: subprocess.Popen) -> None:
    """Stop a command started in its own session as a user does, with Ctrl-C (its local Ray goes with it);
    SIGKILL if it is still there after 60 s."""
    if p.poll() is not None:          # already stopped (a test pressed Ctrl-C itself)
        return
    os.killpg(p.pid, signal.SIGINT)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory) -> Path:
    """A run directory with a config and an M_0 policy folder only (no PRM, no results.json)."""
    from sitf_ray import config as C
    d = tmp_path_factory.mktemp("bare") / "run"
    (d / "iter_00" / "policy").mkdir(parents=True)
    (d / "config.yaml").write_text(C.dump(make_config()))
    return d


def _one_error_line(r, code: int, *needles: str):
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def test_an_empty_config_file_is_an_error_not_a_default_run(tmp_path):
    for text in ("", "# nothing but a comment\n", "\n\n"):
        (tmp_path / "empty.yaml").write_text(text)
        r = sitf("run", tmp_path / "empty.yaml", "--out", tmp_path / "out")
        _one_error_line(r, 2, "empty.yaml: the config file is empty")
        assert not (tmp_path / "out").exists() and "[ray]" not in r.stdout


def test_a_yaml_error_names_its_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: 1\ntask: {name: arith\nmethod: sipf\n")
    r = sitf("run", tmp_path / "bad.yaml")
    line = _one_error_line(r, 2, "bad.yaml: not valid YAML at line 3, column 7")
    assert "expected ',' or '}'" in line


def test_validate_cluster_names_real_keys_and_prints_only_its_own_lines(tmp_path):
    (tmp_path / "big.yaml").write_text("cluster: {scorer_cpus: 500, train_cpus: 500, generator_cpus: 500}\n")
    r = sitf("validate-cluster", "cluster.yaml", "--config", tmp_path / "big.yaml")
    assert r.returncode == 2
    assert "INFO" not in r.stdout + r.stderr, r.stderr
    for role, key in (("generator", "cluster.generator_*"), ("prm_scorer", "cluster.scorer_*"),
                      ("train_worker", "cluster.train_*")):
        assert any(ln.startswith(f"cluster.yaml: {role}: ") and key in ln for ln in r.stderr.splitlines()), r.stderr
    assert "cluster.prm_*" not in r.stderr
    ok = sitf("validate-cluster", "cluster.yaml")
    assert ok.returncode == 0 and ok.stdout.strip() == "cluster.yaml: valid" and not ok.stderr.strip(), ok.stderr


@pytest.mark.parametrize("args, needle", [
    (["report", "{missing}"], "no such run directory"),
    (["report", "{bare}"], "no results.json (the run has not finished; `sitf-ray resume"),
    (["eval-prm", "{bare}"], "no trained PRM (iter_*/prm)"),
    (["eval", "{bare}", "--iteration", "7"], "no policy for iteration 7 (iterations with a policy: 0)"),
    (["eval", "{missing}"], "no such run directory"),
    (["resume", "{missing}"], "no such run directory"),
    (["serve", "{bare}", "replica=2"], "serve: unknown option 'replica'"),
    (["serve", "{bare}", "replicas=0"], "serve: replicas must be >= 1"),
], ids=["report-missing", "report-unfinished", "eval-prm-no-prm", "eval-no-iteration", "eval-missing",
        "resume-missing", "serve-typo", "serve-zero"])
def test_user_errors_are_one_line_exit_2_before_ray_starts(args, needle, bare_run, tmp_path):
    args = [a.format(missing=tmp_path / "nothing-here", bare=bare_run) for a in args]
    r = sitf(*args)
    _one_error_line(r, 2, "error: ", needle)
    assert "[ray] starting" not in r.stdout                          # nothing was started for a user error


def test_a_request_the_cluster_can_never_place_stops_with_one_line(m0_run, tmp_path):
    """`sitf-ray quickstart cluster.train_cpus=64` on a machine with a handful of CPUs: not a silent wait but
    one line naming what was asked and what the cluster has, non-zero exit, and the wait it states: at once
    for a request no node could hold, else SITF_SCHEDULE_TIMEOUT (10 s here)."""
    from conftest import TEST_OVERRIDES, copy_m0
    run_dir = copy_m0(m0_run, tmp_path / "run")
    r = sitf("quickstart", "--out", run_dir, *TEST_OVERRIDES, "cluster.train_cpus=64", "iterations=1",
             "baselines=[]", timeout=300, env=user_env() | {"SITF_SCHEDULE_TIMEOUT": "10"})
    line = _one_error_line(r, 1, "error: Ray Train workers", "64", "the cluster has CPU")
    print(f"\n{line}\n(after {r.seconds:.0f} s)")
    assert "placed never (no node of this local cluster is that large)" in line or "not within 10 s" in line


@pytest.fixture(scope="module")
def served(mini_run, tmp_path_factory):
    """`sitf-ray serve DIR --port P` as a user starts it (fresh local Ray with the machine's defaults)."""
    d, _ = mini_run
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    f = open(log, "wb")
    p = subprocess.Popen([SITF_RAY, "serve", str(d), "--port", str(port)], env=user_env(), cwd=ROOT, stdout=f,
                         stderr=subprocess.STDOUT, start_new_session=True)
    url, t0 = f"http://127.0.0.1:{port}", time.time()
    # the command's "[serve] ... serving" line is its promise that the API answers: wait for that line only
    # (bounded), then the first request below must succeed with no retry
    while not any(ln.startswith("[serve] ") and " serving " in ln for ln in log.read_text().splitlines()):
        assert p.poll() is None, log.read_text()[-4000:]
        assert time.time() - t0 < 240, "serve printed no 'serving' line within 240 s:\n" + log.read_text()[-4000:]
        time.sleep(0.5)
    print(f"\nserve said 'serving' after {time.time() - t0:.0f} s")
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    yield url, log, p
    ctrl_c(p)
    f.close()


def test_serve_as_typed_answers_the_openai_client(served):
    import openai
    url, log, _ = served
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = c.models.list().data[0].id
    q = [{"role": "user", "content": "Ann has 5 pens, buys 3 more. How many pens now?"}]
    chat = c.chat.completions.create(model=model, messages=q, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model=model, messages=q, max_tokens=16, temperature=0, stream=True)
             if ch.choices]
    assert "".join(parts) == chat.choices[0].message.content          # greedy: streamed == whole
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=model, prompt="Q: 2 + 3 = ?\nA:", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed
    for bad in (dict(messages=q, max_tokens=10**6), dict(messages=[], max_tokens=4)):   # bad requests: 4xx
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=model, **bad)
        assert 400 <= e.value.status_code < 500, e.value
    console = log.read_text()
    print(f"--- serve console ---\n{console}")
    foreign = [ln for ln in console.splitlines() if ln.strip() and not any(r.match(ln) for r in OURS)]
    assert not foreign, foreign


def test_serve_ctrl_c_stops_it_printing_only_our_lines(served):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) stops `serve` with exit 0, a
    "[serve] stopped" line and nothing of Ray's: a graceful serve.shutdown() into the dying controller printed
    "(raylet) Task ServeController.graceful_shutdown failed ..." (issue 29). Runs after the client test."""
    url, log, p = served
    assert p.poll() is None, log.read_text()[-3000:]
    ctrl_c(p)
    console = log.read_text()
    print(f"--- serve console after Ctrl-C ---\n{console}")
    assert p.returncode == 0, console[-3000:]
    assert console.rstrip().splitlines()[-1] == "[serve] stopped"
    foreign = [ln for ln in console.splitlines() if ln.strip() and not any(r.match(ln) for r in OURS)]
    assert not foreign, foreign
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_serve_with_a_request_the_cluster_can_never_place_stops_with_one_line(mini_run):
    d, _ = mini_run
    r = sitf("serve", d, "--port", free_port(), "threads=64", timeout=300,
             env=user_env() | {"SITF_SCHEDULE_TIMEOUT": "10"})
    line = _one_error_line(r, 1, "error: serve", "64", "the cluster has CPU")
    print(f"\n{line}\n(after {r.seconds:.0f} s)")
    assert "placed never (no node of this local cluster is that large)" in line or "within 10 s" in line


def test_eval_as_typed_says_what_it_starts_and_prints_only_ours(mini_run):
    """`sitf-ray eval DIR --iteration 1` was silent for 27-52 s while Ray and vLLM started (issue 21.6)."""
    import re
    d, res = mini_run
    r = sitf("eval", d, "--iteration", 1, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = (r.stdout + r.stderr).strip().splitlines()
    print("\n".join(lines))
    assert lines[0].startswith("[eval] ") and "starting Ray and a vLLM generator" in lines[0]
    last = re.compile(r"^.+/iter_01/policy: test accuracy (0|1)\.\d{4} \(\d+/\d+\)$")
    assert last.match(r.stdout.strip().splitlines()[-1])
    assert float(r.stdout.split("test accuracy ")[1].split()[0]) == round(res["iterations"][1]["accuracy"], 4)
    foreign = [ln for ln in lines if ln.strip() and not any(x.match(ln) for x in OURS + [last, re.compile(r"^\[eval\] ")])]
    assert not foreign, foreign


def test_eval_prm_says_what_it_starts_before_it_starts_it(mini_run):
    """`sitf-ray eval-prm DIR` was silent while Ray and vLLM started (issue 21.6): its first line comes before
    any of that (the rest of the command, best-of-N on the test split, is not waited for here)."""
    d, _ = mini_run
    p = subprocess.Popen([SITF_RAY, "eval-prm", str(d)], env=user_env(), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        t0 = time.time()
        first = p.stdout.readline()
        second = p.stdout.readline()
        print(f"\n{first}{second}(after {time.time() - t0:.1f} s)")
        assert first.startswith(f"[eval-prm] {d}: ") and "starts Ray and a vLLM generator" in first
        assert second.startswith("[ray] starting a local Ray")
    finally:
        ctrl_c(p)


def test_progress_lines_in_logs_come_every_30_s_not_every_10(capfd, monkeypatch):
    """Not a terminal: one plain progress line at most every LOG_INTERVAL_S. tqdm's monitor thread redrew a
    bar every 10 s (its maxinterval) once it had printed, whatever mininterval said. Shortened here to 12 s
    (the fault: a second line 10 s after the first)."""
    import tqdm

    from sitf_ray.runs import progress
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 12.0)
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 1)
    monkeypatch.setenv("SITF_PROGRESS", "1")
    stamps = []
    with progress.progress(total=1000, desc="probe") as bar:
        t0 = time.time()
        while time.time() - t0 < 27:
            time.sleep(0.25)
            bar.update(1)
            err = capfd.readouterr().err
            stamps += [time.time() - t0] * err.count("\n")
    print(f"\nprogress lines at {[round(s, 1) for s in stamps]} s")
    assert len(stamps) >= 2, stamps        # at least one interval measured: one line proves nothing
    assert all(b - a >= 11.5 for a, b in zip(stamps, stamps[1:])), stamps


def test_a_local_ray_starts_workers_as_fast_as_the_cpus_it_declares(tmp_path):
    """Every command's local Ray (no cluster.num_cpus, as the quickstart runs) lets the raylet start as many
    worker processes at once as it declares CPUs: with Ray's default (the machine's 2 cores) the quickstart's
    score stage printed "(raylet) WARNING: 8 PYTHON worker processes have been started ... 4x the maximum
    expected startup concurrency"."""
    import subprocess
    import sys
    code = ("import os; from sitf_ray.cluster.ray_init import init_ray, local_cpus; init_ray(); "
            "print(os.environ.get('RAY_worker_maximum_startup_concurrency'), local_cpus(None))")
    r = subprocess.run([sys.executable, "-c", code], env=user_env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, declared = r.stdout.strip().splitlines()[-1].split()
    assert got == declared, r.stdout

