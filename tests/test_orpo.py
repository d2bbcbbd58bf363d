"""ORPO: our loss and gradients equal TRL's; DDP on Ray Train equals one worker; Ray Data pairs train."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sitf_ray.orpo import collate, encode_example, orpo_loss

PAIRS = [
    {"prompt": "Question: Ann has 3 pens, buys 4 more. How many pens now?\nAnswer:\n",
     "chosen": "3 + 4 = 7\nThe answer is 7", "rejected": "3 - 4 = 1\nThe answer is 1"},
    {"prompt": "Question: Ben has 9 cups, loses 2, then doubles them. How many cups now?\nAnswer:\n",
     "chosen": "9 - 2 = 7\n7 * 2 = 14\nThe answer is 14", "rejected": "9 + 2 = 11\n11 * 2 = 22\nThe answer is 22"},
    {"prompt": "Question: Kim has 8 eggs, keeps half. How many eggs now?\nAnswer:\n",
     "chosen": "8 / 2 = 4\nThe answer is 4", "rejected": "The answer is 16"},
    {"prompt": "Question: Leo has 5 nuts, eats 1. How many nuts now?\nAnswer:\n",
     "chosen": "5 - 1 = 4\nThe answer is 4", "rejected": "5 - 1 = 4\n4 + 1 = 5\nThe answer is 5"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny Llama + our tokenizer (the loss check needs no training)."""
    from sitf_ray import config as C
    from sitf_ray.models import build_tiny
    d = tmp_path_factory.mktemp("tiny")
    cfg = C.build(overrides=["model.tiny.num_layers=2"])
    return build_tiny(cfg, d / "m", seed=0)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_orpo_loss_and_grads_equal_trl(tiny, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, max_length=256,
                      per_device_train_batch_size=4, use_cpu=True, bf16=False, report_to=[],
                      remove_unused_columns=False, dataloader_num_workers=0)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS),
                          processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    model.zero_grad()
    trl_loss, _ = trainer.get_batch_loss_metrics(model, batch)
    trl_loss.backward()
    trl_grads = _grads(model)

    ours_batch = {k: batch[k] for k in batch if k.startswith(("chosen_", "rejected_"))}
    model.zero_grad()
    loss, m = orpo_loss(model, ours_batch, beta=0.1, nll_on_prompt=True)
    loss.backward()
    ours = _grads(model)
    print(f"\nTRL ORPO loss {trl_loss.item():.8f}  ours {loss.item():.8f}")
    assert abs(loss.item() - trl_loss.item()) < 1e-5
    assert trl_grads.keys() == ours.keys()
    worst = max((ours[k] - trl_grads[k]).abs().max().item() for k in ours)
    assert worst < 1e-5, worst

    # Our own tokenisation (BOS + prompt | response + EOS, prompt masked) gives the same tensors as TRL's.
    rows = [dict(zip(("chosen_input_ids", "chosen_labels"), encode_example(tok, p["prompt"], p["chosen"], 256, 128)))
            | dict(zip(("rejected_input_ids", "rejected_labels"), encode_example(tok, p["prompt"], p["rejected"], 256, 128)))
            for p in PAIRS]
    mine = collate(rows, tok.pad_token_id)
    model.zero_grad()
    loss2, _ = orpo_loss(model, mine, beta=0.1, nll_on_prompt=True)
    assert abs(loss2.item() - trl_loss.item()) < 1e-5


def test_orpo_response_only_nll_differs_only_by_the_mask(tiny):
    """Our default (the ORPO paper: NLL over the response) vs TRL's (prompt + response)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.orpo import sequence_logps, token_nll
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    rows = [dict(zip(("chosen_input_ids", "chosen_labels"), encode_example(tok, p["prompt"], p["chosen"], 256, 128)))
            | dict(zip(("rejected_input_ids", "rejected_labels"), encode_example(tok, p["prompt"], p["rejected"], 256, 128)))
            for p in PAIRS]
    b = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        loss, m = orpo_loss(model, b, beta=0.5)
        logits = model(input_ids=b["chosen_input_ids"], attention_mask=b["chosen_attention_mask"]).logits
        nll = token_nll(logits, b["chosen_labels"])
        pw = sequence_logps(logits, b["chosen_labels"], average=True)
    assert abs(m["nll"] - nll.item()) < 1e-5
    assert abs(m["logp_chosen"] - pw.mean().item()) < 1e-5
    assert abs(loss.item() - (nll.item() - 0.5 * m["or_term"])) < 1e-5


def _fit(tiny, tmp_path, name, workers, rows, hp, objective="orpo"):
    import ray.data

    from sitf_ray.trainer import FitJob, fit
    ds = ray.data.from_items(rows) if isinstance(rows, list) else rows
    hp = {"max_len": 256, "max_prompt_len": 128} | hp
    job = FitJob(name=name, storage=str(tmp_path / "rt"), init_model=str(tiny), out_dir=str(tmp_path / name),
                 objective=objective, hp=hp, seed=0, workers=workers, cpus_per_worker=1, threads=1)
    return fit(job, {"train": ds})


def test_two_ddp_workers_equal_one_worker(tiny, tmp_path, ray_session):
    """One step on 8 equal-length pairs: 2 workers x 4 (gradients averaged by DDP) == 1 worker x 8."""
    from safetensors.torch import load_file
    rows = [{"prompt": f"Question: Ann has {a} pens, buys {b} more. How many pens now?\nAnswer:\n",
             "chosen": f"{a} + {b} = {a + b}\nThe answer is {a + b}",
             "rejected": f"{a} - {b} = {a - b}\nThe answer is {a - b}"} for a, b in
            [(5, 2), (4, 3), (6, 1), (3, 2), (4, 1), (6, 2), (5, 3), (7, 1)]]   # equal token counts
    hp = {"lr": 0.5, "epochs": 1, "batch_size": 8, "warmup_steps": 0, "beta": 0.1, "optimizer": "sgd",
          "min_lr_ratio": 1.0, "max_grad_norm": 1e9, "nll_on_prompt": True}
    one = _fit(tiny, tmp_path, "w1", 1, rows, hp)
    two = _fit(tiny, tmp_path, "w2", 2, rows, hp)
    assert one.steps == two.steps == 1
    a, b = load_file(f"{one.out_dir}/model.safetensors"), load_file(f"{two.out_dir}/model.safetensors")
    init = load_file(f"{tiny}/model.safetensors")
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nmax |w1 - w2| = {diff:.2e} (largest update {moved:.2e})")
    assert moved > 1e-3 and diff < 1e-5


def test_ray_data_pairs_train_and_log_odds_grow(tiny, tmp_path, ray_session):
    from sitf_ray.pairs import build_pairs, read_pairs, training_dataset
    scored = []
    for i, p in enumerate(PAIRS * 3):
        q = f"q{i}"
        scored += [{"id": f"{q}-a", "qid": q, "prompt": p["prompt"], "path": p["chosen"], "reward": 0.9, "correct": True},
                   {"id": f"{q}-b", "qid": q, "prompt": p["prompt"], "path": p["rejected"], "reward": 0.2,
                    "correct": False}]
    st = build_pairs(scored, tmp_path / "pairs", eta=0.3, strategy="top_m", max_per_question=2,
                     require_correct_chosen=False, seed=1, iteration=1, num_shards=2)
    assert st["pairs"] == 12 and st["shards"] == 2
    ds = training_dataset([tmp_path / "pairs"])
    rows = ds.take_all()
    assert len(rows) == 12 and set(rows[0]) == {"pair_key", "prompt", "chosen", "rejected"}
    hp = {"lr": 3e-3, "epochs": 6, "batch_size": 4, "warmup_steps": 0, "beta": 0.5, "min_lr_ratio": 1.0}
    res = _fit(tiny, tmp_path, "grow", 1, ds, hp)   # streamed from the parquet shards
    first, last = res.history[0]["log_odds"], res.history[-1]["log_odds"]
    print(f"\nlog-odds chosen vs rejected: epoch 1 {first:.3f} -> epoch {len(res.history)} {last:.3f}")
    assert last > first + 0.5
    assert json.loads((tmp_path / "grow" / "sitf_policy.json").read_text())["kind"] == "full"
    assert len(read_pairs(tmp_path / "pairs")) == 12


def test_dpo_and_sft_objectives_train_on_ray_train(tiny, tmp_path, ray_session):
    """The baselines' objectives run through the same loop: DPO's margin over the frozen reference grows,
    and SFT lowers the NLL of the completions."""
    import ray.data
    rows = PAIRS * 4
    res = _fit(tiny, tmp_path, "dpo", 1, rows, {"lr": 3e-3, "epochs": 4, "batch_size": 4, "warmup_steps": 0,
                                                 "beta": 0.5, "min_lr_ratio": 1.0}, objective="dpo")
    assert res.history[0]["margin"] < res.history[-1]["margin"] and res.history[-1]["pair_acc"] > 0.9
    sft_rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in rows]
    from sitf_ray.trainer import FitJob, fit
    job = FitJob(name="sft", storage=str(tmp_path / "rt"), init_model=str(tiny), out_dir=str(tmp_path / "sft"),
                 objective="sft", hp={"lr": 3e-3, "epochs": 4, "batch_size": 4, "max_len": 256, "max_prompt_len": 128},
                 seed=0, workers=1, threads=1)
    res = fit(job, {"train": ray.data.from_items(sft_rows)})
    assert res.history[-1]["nll"] < 0.5 * res.history[0]["nll"]
    # an exact step budget (the matched-compute SFT baseline): 5 steps, though one epoch is 4
    job.name, job.out_dir, job.hp = "sft-steps", str(tmp_path / "sft-steps"), dict(job.hp, epochs=1, max_steps=5)
    assert fit(job, {"train": ray.data.from_items(sft_rows)}).steps == 5


def test_training_steps_reach_the_driver_progress_bar(tiny, tmp_path, ray_session, monkeypatch, capfd):
    """Worker stdout is not forwarded, so rank 0 sends its step count through a Ray queue to the driver's bar."""
    monkeypatch.setenv("SITF_PROGRESS", "1")
    res = _fit(tiny, tmp_path, "progress", 1, PAIRS * 4, {"lr": 1e-3, "epochs": 2, "batch_size": 4,
                                                           "warmup_steps": 0, "beta": 0.1})
    err = capfd.readouterr().err
    assert res.steps == 2 * math.ceil(len(PAIRS) * 4 / 4)
    assert "[train] progress" in err and f"{res.steps}/{res.steps}" in err and "loss " in err
