"""What a user reads: the console of a real `sitf-ray quickstart` (a short one: one outcome-method iteration
from the shared M_0, so generators, Ray Data pairs, a Ray Train fit and the evaluation all run) with
stdout and stderr going to a pipe, as under `ray job submit`, CI or `| tee`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import MINI, ROOT, TEST_OVERRIDES, copy_m0

OURS = [
    re.compile(r"^--- [\w-]+: iteration \d+/\d+ ---$"),            # pipeline.run_method
    re.compile(r"^\[[^\]]+\] \d+\.\d s  "),                        # progress.summary
    re.compile(r"^.+: \d+/(\d+|\?) \w+ \[\d\d:\d\d"),              # progress.LineBar
    re.compile(r"^quickstart finished in "),
    re.compile(r"^Ray's own logs \(this console shows only sitf-ray's\): "),
]
SHORT = ["method=outcome", "iterations=1", "baselines=[]", "cluster.generator_replicas=1",
         "cluster.train_workers=1"]


def test_quickstart_console_shows_ours_and_says_where_ray_logs_went(m0_run, tmp_path):
    run_dir = copy_m0(m0_run, tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # its own local Ray, as a user's
    env.update(SITF_PROGRESS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    mini = [o for o in MINI if not o.startswith(("iterations=", "baselines=", "cluster.train_workers="))]
    cmd = [sys.executable, "-m", "sitf_ray.cli", "quickstart", "--out", str(run_dir), *TEST_OVERRIDES, *mini,
           *SHORT]
    p = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=900)
    out = p.stdout.decode(errors="replace")
    print(f"\n--- console ---\n{out!r}" if "\r" in out else f"\n--- console ---\n{out}")
    assert p.returncode == 0, out[-4000:]
    assert "\r" not in out and "\x1b[" not in out[: out.find("Ray's own logs")], "carriage returns in a log"
    lines = out.splitlines()
    table = range(next(i for i, ln in enumerate(lines) if ln.startswith("method ")),
                  next(i for i, ln in enumerate(lines) if ln.startswith("quickstart finished")))
    foreign = [ln for i, ln in enumerate(lines)
               if ln.strip() and i not in table and not any(r.match(ln) for r in OURS)]
    print(f"\n--- console ({len(lines)} lines, {len(foreign)} not sitf-ray's) ---\n{out}--- not ours ---\n" + "\n".join(foreign))
    assert len(foreign) <= 20
    assert not [ln for ln in foreign if re.search(r"\bINFO\b", ln)], "Ray INFO logs reached the console"
    for stage in ("[generators]", "[sample]", "[pairs]", "[train orpo]", "[eval outcome iter 1]"):
        assert sum(ln.startswith(stage) for ln in lines) == 1, stage     # one summary line per stage
    where = Path(lines[-1].split(": ", 1)[1].split()[0])
    assert lines[-1].startswith("Ray's own logs") and where.is_dir() and (where / "ray-data").is_dir()
    assert any(f.stat().st_size for f in (where / "ray-data").iterdir())   # Ray Data's INFO went here
