"""The Ray Train session behind every fit: jobs share one worker group, failures come back as clear errors,
a finished job is handed back, tiny datasets still train on every worker."""
from __future__ import annotations

import pytest


def _job(m0, tmp_path, name, **kw):
    from sitf_ray.train.session import FitJob
    hp = {"lr": 1e-3, "epochs": 1, "batch_size": 8, "warmup_steps": 0, "max_len": 256, "max_prompt_len": 128}
    return FitJob(name=name, storage=str(tmp_path / "rt"), init_model=str(m0), out_dir=str(tmp_path / name),
                  objective="sft", hp=hp | kw.pop("hp", {}), seed=0, workers=2, threads=1, **kw)


ROWS = [{"prompt": f"Question: Ann has {a} pens, buys {b} more. How many pens now?\nAnswer:\n",
         "completion": f"{a} + {b} = {a + b}\nThe answer is {a + b}"} for a in range(2, 9) for b in range(1, 5)]


def _worker_pids() -> set[int]:
    from ray.util.state import list_actors
    return {a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])}


def test_fits_share_one_session_and_its_workers(m0, tmp_path, ray_session):
    import ray.data

    from sitf_ray.train.session import close_session, fit, session
    close_session()
    a = fit(_job(m0, tmp_path, "first"), {"train": ray.data.from_items(ROWS)})
    pids = _worker_pids()
    b = fit(_job(m0, tmp_path, "second", hp={"epochs": 2}), {"train": ray.data.from_items(ROWS)})
    assert _worker_pids() == pids and len(pids) == 2          # the same two processes ran both jobs
    assert a.steps == 4 and b.steps == 8      # 14 rows a worker, global batch 8 = 4 a worker: 4 steps/epoch
    assert b.first_step_at > a.last_step_at
    s = session(str(tmp_path / "rt"), 2)
    assert (tmp_path / "rt" / "train-session" / "second__final" / "fit_result.json").exists()
    # a finished job is handed back from its final checkpoint, without training again
    again = fit(_job(m0, tmp_path, "second", hp={"epochs": 2}), {"train": ray.data.from_items(ROWS)})
    assert again.steps == 8 and again.first_step_at == b.first_step_at
    assert session(str(tmp_path / "rt"), 2) is s


def test_fewer_rows_than_workers_trains_on_every_worker(m0, tmp_path, ray_session):
    import ray.data

    from sitf_ray.train.session import fit
    res = fit(_job(m0, tmp_path, "one-row"), {"train": ray.data.from_items(ROWS[:1])})
    assert res.steps == 1


def test_a_failing_job_raises_a_clear_error_and_the_next_fit_works(m0, tmp_path, ray_session):
    import ray.data

    from sitf_ray.train.session import FitError, fit
    bad = _job(m0, tmp_path, "broken")
    bad.init_model = str(tmp_path / "no-such-model")
    with pytest.raises(FitError, match=r"fit broken failed on a training worker(.|\n)*no-such-model"):
        fit(bad, {"train": ray.data.from_items(ROWS)})
    ok = fit(_job(m0, tmp_path, "after"), {"train": ray.data.from_items(ROWS)})
    assert ok.steps == 4


def test_lr_holds_at_its_floor_after_decay_epochs(m0, tmp_path, ray_session):
    """sft.decay_epochs: the cosine ends at epoch 1 of 3 and the lr stays at min_lr_ratio * lr after it
    (transformers' cosine alone would climb back up past its end)."""
    import ray.data

    from sitf_ray.train.session import fit
    res = fit(_job(m0, tmp_path, "held", hp={"epochs": 3, "decay_epochs": 1, "warmup_steps": 1,
                                             "min_lr_ratio": 0.1}), {"train": ray.data.from_items(ROWS)})
    lrs = [h["step_log"]["learning_rate"] for h in res.history]
    assert [len(x) for x in lrs] == [4, 4, 4]
    assert lrs[0][0] == 0.0 and lrs[0][1] == pytest.approx(1e-3)          # warm-up, then the cosine
    assert lrs[0][1] > lrs[0][2] > lrs[0][3] > 1e-4
    assert lrs[1] + lrs[2] == pytest.approx([1e-4] * 8)


_GLOO = """
import os, sys, datetime, torch, torch.distributed as dist
rank = int(sys.argv[1])
dist.init_process_group("gloo", store=dist.FileStore(sys.argv[2], 2), rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=30))
dist.all_reduce(torch.ones(4))                 # both ranks connected
if rank == 1:
    os._exit(9)                                # dies like a SIGKILLed worker
try:
    dist.all_reduce(torch.ones(1 << 20))
except Exception as e:
    from sitf_ray.train.worker import peer_lost
    print("LOST" if peer_lost(e) else "OTHER", type(e).__name__, str(e)[:200])
    sys.exit(0)
print("NO ERROR")
"""


def test_a_collective_broken_by_a_dead_peer_is_told_apart_from_a_job_error(tmp_path):
    """Survivors of a killed worker must not report the job as failed (Ray Train restarts the group and the
    job resumes); real gloo errors from a dead peer are recognised, a job's own errors are not."""
    import subprocess
    import sys

    from sitf_ray.train.worker import peer_lost
    script = tmp_path / "gloo.py"
    script.write_text(_GLOO)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    out = procs[0].communicate(timeout=120)[0]
    procs[1].wait(timeout=60)
    assert "LOST" in out, out[-2000:]
    assert not peer_lost(RuntimeError("fit broken: no-such-model is not a folder"))
    assert not peer_lost(ValueError("Connection closed by peer"))     # only runtime errors of a collective
