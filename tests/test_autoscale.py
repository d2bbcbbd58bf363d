"""Autoscaling, exercised: cluster.yaml's node types on Ray's fake multi-node provider (fakecluster.py), and the
SIPF job on it with nodes launched, one lost, and all removed when idle (autoscale.py, `make autoscale-demo`)."""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from sitf_ray.cluster.fakecluster import check_config, fake_config, scale_resources

from conftest import ROOT

CLUSTER = ROOT / "cluster.yaml"


def _derive(raw, **kw):
    return fake_config(raw, gcs_address="127.0.0.1:1", requests_dir="/nonexistent", **kw)


def test_fake_config_keeps_cluster_yaml_node_types():
    """Generated, not copied: every node type of cluster.yaml with its name, GPUs, custom resources and
    min/max workers; CPUs scaled; the result passes Ray's own prepare_config + validate_config."""
    raw = yaml.safe_load(CLUSTER.read_text())
    raw["available_node_types"]["cpu_worker"]["resources"]["sandbox_slots"] = 3     # a custom resource
    raw["available_node_types"]["gpu_worker"]["min_workers"] = 1
    fake = check_config(_derive(raw, cpu_scale=0.25))
    real, got = raw["available_node_types"], fake["available_node_types"]
    assert set(got) == set(real) and fake["head_node_type"] == raw["head_node_type"]
    assert fake["max_workers"] == raw["max_workers"]
    assert fake["provider"]["module"] == "sitf_ray.cluster.fakecluster.FakeProvider"
    for name, t in real.items():
        res = {k: v for k, v in got[name]["resources"].items() if k != "object_store_memory"}
        assert res == scale_resources(t["resources"], 0.25), name
        assert {k: v for k, v in res.items() if k != "CPU"} == {k: v for k, v in t["resources"].items() if k != "CPU"}
        if name != raw["head_node_type"]:
            assert (got[name]["min_workers"], got[name]["max_workers"]) == (t.get("min_workers", 0), t["max_workers"])
    assert got["gpu_worker"]["resources"]["CPU"] == 2 and got["cpu_worker"]["resources"]["CPU"] == 4
    assert got["cpu_worker"]["resources"]["sandbox_slots"] == 3 and got["gpu_worker"]["min_workers"] == 1
    assert got["head"]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("resources, scale, expected", [
    ({"CPU": 8, "GPU": 1}, 0.25, {"CPU": 2, "GPU": 1}),
    ({"CPU": 1}, 0.25, {"CPU": 1}),                       # never scaled to zero CPUs ...
    ({"CPU": 0}, 0.25, {"CPU": 0}),                       # ... unless there were none (a CPU-less head)
    ({"CPU": 16, "tpu_slice": 2}, 0.5, {"CPU": 8, "tpu_slice": 2}),
])
def test_scale_resources(resources, scale, expected):
    assert scale_resources(resources, scale) == expected


def test_fake_config_follows_edits_of_cluster_yaml():
    """A change to cluster.yaml (a new node type, other limits) shows up in the fake cluster by itself."""
    raw = yaml.safe_load(CLUSTER.read_text())
    edited = copy.deepcopy(raw)
    edited["available_node_types"]["big_gpu"] = {"min_workers": 0, "max_workers": 2, "node_config": {},
                                                 "resources": {"CPU": 32, "GPU": 4}}
    edited["available_node_types"]["cpu_worker"]["max_workers"] = 9
    got = check_config(_derive(edited))["available_node_types"]
    assert got["big_gpu"]["resources"]["GPU"] == 4 and got["big_gpu"]["resources"]["CPU"] == 8
    assert got["cpu_worker"]["max_workers"] == 9
    assert "big_gpu" not in _derive(raw)["available_node_types"]


def test_reading_pairs_starts_no_actor_pool(ray_session, tmp_path):
    """The pairs are read by plain read tasks: Ray Data's default parquet reader would first place 32
    one-CPU FooterReader actors, which an autoscaler answers with ~8 new nodes (docs/CLUSTER.md)."""
    import pandas as pd
    import ray.data
    from ray.util.state import list_actors

    from sitf_ray.train.datasets import training_dataset
    for k in (1, 2):
        d = tmp_path / f"iter_{k:02d}" / "pairs"
        d.mkdir(parents=True)
        pd.DataFrame({"pair_key": [f"{k}a", f"{k}b"], "prompt": ["p", "q"], "chosen": ["c", "d"],
                      "rejected": ["r", "s"], "gap": [0.1, 0.2]}).to_parquet(d / "part-0.parquet")
    before = ray.data.DataContext.get_current().use_datasource_v2
    ds = training_dataset([tmp_path / "iter_01" / "pairs", tmp_path / "iter_02" / "pairs"])
    assert ray.data.DataContext.get_current().use_datasource_v2 == before     # only this read is routed
    rows = ds.take_all()
    assert sorted(r["pair_key"] for r in rows) == ["1a", "1b", "2a", "2b"] and "gap" not in rows[0]
    assert "ListFiles" not in ds.stats() and "ReadFilesParquetV2" not in ds.stats()
    job = ray.get_runtime_context().get_job_id()
    pool = list_actors(filters=[("class_name", "=", "FooterReader"), ("job_id", "=", job)],
                       raise_on_missing_output=False)
    assert pool == []


@pytest.mark.slow
def test_autoscale_demo(tmp_path):
    """`make autoscale-demo`: from zero workers the autoscaler launches the job's node types, generators
    land on GPU nodes, the job that loses a Ray Train worker's node (the provider terminates it) ends
    with the undisturbed run's results, and every worker is removed once idle."""
    from sitf_ray.cluster.autoscale import demo, problems
    out = tmp_path / "autoscale.json"
    rec = demo(out, tmp_path / "work")
    assert json.loads(out.read_text()) == json.loads(json.dumps(rec))
    print("\n" + json.dumps({k: rec.get(k) for k in ("jobs", "peak_workers_by_type", "node_loss", "scale_down")},
                            indent=1))
    assert problems(rec) == []
    assert rec["job_status"] == "SUCCEEDED"
    gens = rec["placement"]["undisturbed"]["generator"]
    assert len(gens) == 2 and {g["type"] for g in gens} == {"gpu_worker"}     # one GPU each: GPU nodes only
    assert len({g["node"] for g in gens}) == 2                                 # SPREAD: two nodes
    assert rec["peak_workers_by_type"]["gpu_worker"] >= 2
    loss = rec["node_loss"]
    assert any(a.startswith("RayTrainWorker") for a in loss["actors_lost"])     # lost while the PRM trained
    assert loss["ray_train_workers_restarted_in_fit"] >= 1                    # FailureConfig restarted them
    if any(a.startswith("Generator") for a in loss["actors_lost"]):
        assert loss["generators_restarted"] >= 1                              # ReplicaPool replaced the replica
    assert loss["identical_results"] and all(loss["identical_files"].values()), loss["identical_files"]
    assert rec["workers_after_idle"] == 0
