"""Cluster operation: cluster.yaml validation, `ray job submit` to a real local head, metrics, mirroring."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sitf_ray import config as C
from sitf_ray.runs.artifacts import read_json
from sitf_ray.cluster.validate import validate_cluster

from conftest import ROOT, TEST_OVERRIDES, copy_m0

CLUSTER = ROOT / "cluster.yaml"


def test_cluster_yaml_is_valid_for_every_recipe():
    for cfg in sorted((ROOT / "configs").glob("*.yaml")):
        assert validate_cluster(str(CLUSTER), str(cfg)) == [], cfg.name


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.pop("provider"), "provider"),
    (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="six"), "six"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(flavour="large"), "flavour"),
    (lambda c: c.update(max_workers=0) or c["available_node_types"]["cpu_worker"].update(min_workers=2),
     "max_workers"),
    (lambda c: c["available_node_types"].pop("gpu_worker"), "no node type offers"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers=2), "GPU at once"),
])
def test_broken_cluster_files_are_rejected(tmp_path, mutate, expected):
    raw = yaml.safe_load(CLUSTER.read_text())
    mutate(raw)
    bad = tmp_path / "cluster.yaml"
    bad.write_text(yaml.safe_dump(raw))
    problems = validate_cluster(str(bad), str(ROOT / "configs" / "gemma2b-gsm8k.yaml"))
    assert problems and any(expected in p for p in problems), problems


def test_validate_cluster_cli_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "validate-cluster", str(CLUSTER)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "valid" in ok.stdout
    (tmp_path / "c.yaml").write_text("cluster_name: x\n")
    bad = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "validate-cluster", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "c.yaml:" in bad.stderr


def test_ray_job_submit_runs_a_tiny_training(ray_head, m0_run, tmp_path):
    """As docs/CLUSTER.md types it, on a real head started with the venv's `ray` (venv not on PATH):
    `ray job submit --working-dir . -- $PWD/.venv/bin/python jobs/train.py CFG --out DIR`: SUCCEEDED, and
    the job log holds no raw HF bar and no raylet start-up warning."""
    out = copy_m0(m0_run, tmp_path / "job-run")
    bucket = f"file://{tmp_path}/bucket/job-run"      # stands in for s3://...: same pyarrow code path
    cfg = C.build(overrides=TEST_OVERRIDES + ["iterations=1", "sampling.n=4", "labeling.k=2", "prm.epochs=1",
                                              "train.epochs=1", "pairs.eta=0.05", f"storage={bucket}"])
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(C.dump(cfg))
    (out / "config.yaml").write_text(C.dump(cfg))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {"RAY_AUTH_MODE": "disabled", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    t = time.time()
    p = subprocess.run([ray_bin, "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT),
                        "--runtime-env-json", json.dumps({"excludes": ["/.venv", "/.cache", "/runs", "/.git"]}),
                        "--", sys.executable, "jobs/train.py", str(cfg_path), "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    print(f"\nray job submit: rc {p.returncode} in {time.time() - t:.0f} s")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert re.search(r"Job '[^']+' succeeded", p.stdout), p.stdout[-2000:]
    assert "Writing model shards" not in p.stdout and "worker processes have been started" not in p.stdout, p.stdout
    res = read_json(out / "results.json")
    assert [r["k"] for r in res["iterations"]] == [0, 1]
    for f in ("samples.jsonl", "labels.jsonl", "scored.jsonl", "eval.json", "DONE"):
        assert (out / "iter_01" / f).exists(), f
    assert any((out / "iter_01" / "pairs").glob("*.parquet"))
    listing = subprocess.run([ray_bin, "job", "list", "--address", ray_head["dashboard"]], env=env,
                             capture_output=True, text=True, timeout=120).stdout
    assert "SUCCEEDED" in listing
    mirrored = tmp_path / "bucket" / "job-run"
    assert read_json(mirrored / "results.json") == res                 # the run is in the bucket ...
    assert any((mirrored / "ray_train").iterdir())                      # ... with Ray Train's checkpoints


def test_a_job_run_by_an_interpreter_without_the_project_says_which_to_name(tmp_path):
    """`ray job submit -- python jobs/train.py` where `python` is not the project's environment: one line
    naming the interpreter that ran and the one to name, exit 2 (it was a ModuleNotFoundError traceback)."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    p = subprocess.run([str(bare / "bin" / "python"), "jobs/train.py", "configs/quickstart.yaml"], cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "lacks sitf-ray's dependencies (ray" in p.stderr, p.stderr
    assert "$PWD/.venv/bin/python jobs/train.py" in p.stderr and "Traceback" not in p.stderr


def test_metrics_endpoint_has_every_dashboard_metric(ray_head, mini_run):
    """After a short run, Ray's Prometheus endpoint exports every metric the Grafana dashboard queries."""
    dash = json.loads((ROOT / "dashboards" / "grafana.json").read_text())
    wanted = set()
    for panel in dash["panels"]:
        for tgt in panel["targets"]:
            wanted |= set(re.findall(r"ray_sitf_[a-z_]+", tgt["expr"]))
    assert len(wanted) >= 8
    missing = wanted
    for _ in range(30):   # metrics are flushed to the agent every few seconds
        text = urllib.request.urlopen(ray_head["metrics"], timeout=10).read().decode()
        exported = set(re.findall(r"^(ray_sitf_[a-z_]+?)(?:_bucket|_count|_sum)?\{", text, re.M))
        missing = {m.removesuffix("_bucket") for m in wanted} - exported
        if not missing:
            break
        time.sleep(2)
    assert not missing, f"dashboard metrics not exported: {sorted(missing)}"


def test_run_mirrors_to_a_storage_uri(mini_run, tmp_path, ray_session):
    """storage=<uri> mirrors the run directory; `resume <uri>` fetches and continues it (file:// here)."""
    from sitf_ray.runs.artifacts import mirror_down, mirror_up
    d, _ = mini_run
    uri = f"file://{tmp_path}/bucket/run"
    mirror_up(d, uri)
    back = mirror_down(uri, tmp_path / "restored")
    assert read_json(back / "results.json") == read_json(d / "results.json")
    assert (back / "iter_02" / "policy" / "model.safetensors").read_bytes() == \
        (d / "iter_02" / "policy" / "model.safetensors").read_bytes()
