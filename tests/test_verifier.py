"""The arith verifier: built once per verifier config on Ray Train, cached, shared by seeds, rebuilt on change."""
from __future__ import annotations

from sitf_ray import config as C

SMALL = ["verifier.n_gold=240", "verifier.n_holdout=20", "verifier.epochs=1", "verifier.batch_size=32",
         "verifier.model.hidden_size=64", "verifier.model.num_heads=2", "verifier.model.num_layers=1",
         "verifier.model.intermediate_size=128", "verifier.model.vocab_size=300", "cluster.train_workers=2"]


def _finals(storage):
    return sorted(p.name for p in (storage / "train-session").glob("verifier-*__final"))


def test_verifier_cache_is_reused_by_seeds_and_rebuilt_when_its_config_changes(tmp_path, ray_session):
    from sitf_ray.feedback.verifier import ensure_verifier, gold_rows, read_info, verifier_folder
    ov = SMALL + [f"model.cache_dir={tmp_path / 'models'}"]
    cfg = C.build(overrides=ov)
    storage = tmp_path / "rt"
    a = ensure_verifier(cfg, str(storage))
    info = read_info(a)
    assert info["steps"] == 8 and info["train_problems"] == 240 and 0 <= info["holdout_accuracy"] <= 1
    assert (a / "config.json").exists() and (a / "tokenizer.json").exists()
    stamp = (a / "verifier.json").stat().st_mtime_ns
    # another seed, another run: the same verifier, and nothing trained again
    other = C.build(overrides=ov + ["seed=7"])
    assert verifier_folder(other) == a
    assert ensure_verifier(other, str(tmp_path / "rt2")) == a
    assert (a / "verifier.json").stat().st_mtime_ns == stamp and not (tmp_path / "rt2").exists()
    assert _finals(storage) == [f"{a.name}__final"]
    # its config changed: a new verifier beside the old one
    b = ensure_verifier(C.build(overrides=ov + ["verifier.n_gold=260"]), str(storage))
    assert b != a and read_info(b)["train_problems"] == 260 and (a / "verifier.json").exists()
    assert len(_finals(storage)) == 2
    # its problems never repeat and come from its own range of operations
    train, held = gold_rows(cfg)
    qs = [r["question"] for r in train + held]
    assert len(set(qs)) == len(qs) and {len(r["ops"]) for r in train} <= set(range(1, 7))
