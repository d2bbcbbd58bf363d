"""What a user reads and keeps, with commands typed as the README types them (a subprocess, its own fresh
local Ray, no RAY_ADDRESS, no RAY_AUTH_MODE): a short `sitf-ray quickstart` (one SIPF iteration from the shared
M_0, so generators, labelling rollouts, the PRM, Ray Data pairs, Ray Train fits and the evaluation all run),
interrupted with Ctrl-C part-way through labelling, then `sitf-ray resume` twice; stdout and stderr go to a
pipe, as under `ray job submit`, CI or `| tee`."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import MINI, ROOT, TEST_OVERRIDES, copy_m0
from sitf_ray.runs.artifacts import Ledger

OURS = [
    re.compile(r"^--- [\w-]+: iteration \d+/\d+ ---$"),            # pipeline.run_method
    re.compile(r"^\[[^\]]+\] \d+\.\d s  "),                        # progress.summary
    re.compile(r"^.+: \d+/(\d+|\?) \w+ \[\d\d:\d\d"),              # progress.LineBar
    re.compile(r"^quickstart finished in "),
    re.compile(r"^Ray's own logs \(this console shows only sitf-ray's\): "),
    re.compile(r"^\[(ray|resume|tracking|serve)\] "),        # init_ray, resume, tracking.finish, serve
]
SHORT = ["method=sipf", "iterations=1", "baselines=[]", "cluster.generator_replicas=1", "cluster.train_workers=1",
         "cluster.chunk_size=8"]     # small chunks: labelling is interrupted between many of them
SITF_RAY = str(Path(sys.executable).with_name("sitf-ray"))     # .venv/bin/sitf-ray, as the README types it


def user_env() -> dict:
    """The environment a user's shell has: no RAY_ADDRESS (a fresh local Ray), no RAY_AUTH_MODE (Ray's own
    default), no test-only settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "SITF_PROGRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def foreign_lines(out: str) -> list[str]:
    lines = out.splitlines()
    table = set()
    if any(ln.startswith("method ") for ln in lines):
        a = next(i for i, ln in enumerate(lines) if ln.startswith("method "))
        b = next((i for i, ln in enumerate(lines) if i > a and not ln.strip()), len(lines))
        table = set(range(a, max(b, a + 1) + 3))
    return [ln for i, ln in enumerate(lines) if ln.strip() and i not in table and not any(r.match(ln) for r in OURS)]


def test_quickstart_interrupted_then_resumed_as_typed(m0_run, tmp_path):
    """Ctrl-C in the middle of labelling, `sitf-ray resume DIR`, then `sitf-ray resume DIR` on the finished run.
    The user sees only sitf-ray's lines (no Ray INFO, no carriage returns), the interrupt names the run's
    path, the resumed labelling keeps the chunks finished before Ctrl-C, and no call rewrites what an
    earlier call recorded: timings.json's calls add up, results.json stays byte for byte (issue 21.3)."""
    run_dir = copy_m0(m0_run, tmp_path / "run")
    mini = [o for o in MINI if not o.startswith(("iterations=", "baselines=", "cluster.train_workers="))]
    cmd = [SITF_RAY, "quickstart", "--out", str(run_dir), *TEST_OVERRIDES, *mini, *SHORT]
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, env=user_env(), cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    partial = run_dir / "iter_01" / "partial" / "label"
    deadline = time.time() + 600
    while not (partial.is_dir() and len(list(partial.glob("*.pkl"))) >= 2):
        assert p.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline, "labelling never started"
        time.sleep(0.02)
    # Freeze the driver, check it is still labelling, then Ctrl-C: the interrupt lands where the test saw the
    # run (labelling on 2 cores of a fast CPU took 0.57 s, and a Ctrl-C sent after it once went unanswered).
    p.send_signal(signal.SIGSTOP)
    try:
        assert "label" not in Ledger(run_dir / "iter_01").data, "labelling finished before the interrupt"
        p.send_signal(signal.SIGINT)
    finally:
        p.send_signal(signal.SIGCONT)
    assert p.wait(timeout=120) == 130, log.read_text()[-4000:]
    assert "label" not in Ledger(run_dir / "iter_01").data, "the run went on past the interrupted stage"
    first = log.read_text()
    print(f"\n--- console, interrupted ---\n{first}")
    assert first.strip().splitlines()[-1] == f"interrupted; `sitf-ray resume {run_dir}` continues where this stopped"
    kept = len(list(partial.glob("*.pkl")))
    t1 = __import__("json").loads((run_dir / "timings.json").read_text())
    assert len(t1["calls"]) == 1 and t1["total_seconds"] > 0

    r = subprocess.run([SITF_RAY, "resume", str(run_dir)], env=user_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=900)
    out = r.stdout.decode(errors="replace")
    print(f"\n--- console, resumed ---\n{out!r}" if "\r" in out else f"\n--- console, resumed ---\n{out}")
    assert r.returncode == 0, out[-4000:]
    assert "\r" not in out and "\x1b[" not in out, "carriage returns or escapes in a log"
    m = re.search(r"^\[resume\] generator\.generate: (\d+) of (\d+) chunks kept from an interrupted call$", out, re.M)
    assert m and int(m.group(1)) >= 1, "the interrupted labelling started again from nothing"
    assert kept >= int(m.group(1))
    foreign = foreign_lines(out)
    print("--- not ours ---\n" + "\n".join(foreign))
    assert not foreign, foreign
    lines = out.splitlines()
    for stage in ("[label]", "[prm]", "[score]", "[pairs]", "[train orpo]", "[eval sipf iter 1]"):
        assert sum(ln.startswith(stage + " ") for ln in lines) == 1, stage     # one summary line per stage
    where = Path(lines[-1].split(": ", 1)[1].split()[0])
    assert lines[-1].startswith("Ray's own logs") and where.is_dir() and (where / "ray-data").is_dir()
    assert not partial.parent.exists()                  # the stages are recorded: their kept chunks are gone
    t2 = __import__("json").loads((run_dir / "timings.json").read_text())
    assert t2["calls"][0] == t1["calls"][0]                 # the interrupted call, as it recorded itself
    assert len(t2["calls"]) == 2 and abs(t2["total_seconds"] - sum(c["seconds"] for c in t2["calls"])) < 0.01
    assert "over 2 calls" in (run_dir / "report.md").read_text()
    results = (run_dir / "results.json").read_bytes()

    r = subprocess.run([SITF_RAY, "resume", str(run_dir)], env=user_env(), cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "finished run" in r.stdout
    t3 = __import__("json").loads((run_dir / "timings.json").read_text())
    assert t3["calls"][:2] == t2["calls"] and len(t3["calls"]) == 3          # nothing earlier rewritten
    assert t3["total_seconds"] > t2["total_seconds"] and len(t3["weight_syncs"]) >= len(t2["weight_syncs"])
    assert (run_dir / "results.json").read_bytes() == results
    assert "over 3 calls" in (run_dir / "report.md").read_text()
