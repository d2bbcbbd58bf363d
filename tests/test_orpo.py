"""ORPO: our loss and gradients equal TRL's; DDP on Ray Train equals one worker; Ray Data pairs train."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sitf_ray.train.policy_objectives import collate, encode_example, orpo_loss

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
    from sitf_ray.train.model_sources import build_tiny
    d = tmp_path_factory.mktemp("tiny")
    cfg = C.build(overrides=["model.tiny.num_layers=2"])
    return build_tiny(cfg, d / "m", seed=0)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# (dtype, loss tolerance, gradient tolerance relative to the largest gradient): float32, and the mixed
# precision training uses where bf16 is native (precision.autocast: fp32 weights, bf16 matmuls), both
# losses computed under the same autocast; TRL takes log-softmax of the bf16 logits in bf16, we upcast first
PRECISIONS = [("float32", 1e-5, None), ("bfloat16", 1e-3, 1e-2)]


@pytest.mark.parametrize("dtype,tol,gtol", PRECISIONS, ids=[p[0] for p in PRECISIONS])
def test_orpo_loss_and_grads_equal_trl(tiny, tmp_path, dtype, tol, gtol):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from sitf_ray.cluster.precision import autocast

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
    with autocast(dtype, "cpu"):
        trl_loss, _ = trainer.get_batch_loss_metrics(model, batch)
    trl_loss.backward()
    trl_grads = _grads(model)

    ours_batch = {k: batch[k] for k in batch if k.startswith(("chosen_", "rejected_"))}
    model.zero_grad()
    with autocast(dtype, "cpu"):
        loss, m = orpo_loss(model, ours_batch, beta=0.1, nll_on_prompt=True)
    loss.backward()
    ours = _grads(model)
    print(f"\n{dtype}: TRL ORPO loss {trl_loss.item():.8f}  ours {loss.item():.8f}")
    assert abs(loss.item() - trl_loss.item()) < tol
    assert trl_grads.keys() == ours.keys()
    worst = max((ours[k] - trl_grads[k]).abs().max().item() for k in ours)
    scale = max(g.abs().max().item() for g in trl_grads.values())
    print(f"{dtype}: largest gradient difference {worst:.3g} (largest gradient {scale:.3g})")
    assert worst < (tol if gtol is None else gtol * scale), worst

    # Our own tokenisation (BOS + prompt | response + EOS, prompt masked) gives the same tensors as TRL's.
    rows = [dict(zip(("chosen_input_ids", "chosen_labels"), encode_example(tok, p["prompt"], p["chosen"], 256, 128)))
            | dict(zip(("rejected_input_ids", "rejected_labels"), encode_example(tok, p["prompt"], p["rejected"], 256, 128)))
            for p in PAIRS]
    mine = collate(rows, tok.pad_token_id)
    model.zero_grad()
    with autocast(dtype, "cpu"):
        loss2, _ = orpo_loss(model, mine, beta=0.1, nll_on_prompt=True)
    assert abs(loss2.item() - trl_loss.item()) < tol


def test_orpo_response_only_nll_differs_only_by_the_mask(tiny):
    """Our default (the ORPO paper: NLL over the response) vs TRL's (prompt + response)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.train.policy_objectives import sequence_logps, token_nll
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

    from sitf_ray.train.session import FitJob, fit
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
    from sitf_ray.feedback.pairs import build_pairs, read_pairs
    from sitf_ray.train.datasets import training_dataset
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
    from sitf_ray.train.session import FitJob, fit
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


# ------------------------------------------------------------------------------------ numerics at the edges
@pytest.mark.parametrize("x", [0.0, -1e-12, -1e-9, -1e-7, -1e-6, -1e-3, -math.log(2) + 1e-6, -math.log(2),
                               -math.log(2) - 1e-6, -1.0, -20.0, -100.0, -1e4])
def test_log1mexp_value_and_gradient_are_finite_at_the_edges(x):
    """x = -1e-9 gave a NaN gradient (the unused branch of torch.where leaked it); x = 0 gave -inf."""
    from sitf_ray.train.policy_objectives import LOG1MEXP_EDGE, log1mexp
    t = torch.tensor([x], dtype=torch.float32, requires_grad=True)
    y = log1mexp(t)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(t.grad).all(), (y, t.grad)
    ref = math.log(-math.expm1(min(x, LOG1MEXP_EDGE)))          # float64 reference (clamped at the edge)
    assert abs(y.item() - ref) <= 1e-5 * max(1.0, abs(ref))


def test_confident_policy_batch_has_finite_orpo_gradients(tiny):
    """A policy whose chosen tokens have a huge logit margin: the chosen mean log-prob is exactly 0 in float32,
    the edge where log(1 - p_w) is -inf. Every gradient must stay finite (it was all NaN)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        model.model.norm.weight.mul_(1e4)          # logits x 1e4: the greedy tokens get probability 1
        prompt = tok(PAIRS[0]["prompt"], return_tensors="pt").input_ids
        chosen = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    n_prompt = prompt.shape[1]
    rejected = chosen.clone()
    rejected[n_prompt:] = (chosen[n_prompt:] + 7) % len(tok)   # other tokens: very unlikely
    labels_c = chosen.clone()
    labels_c[:n_prompt] = -100
    labels_r = rejected.clone()
    labels_r[:n_prompt] = -100
    ones = torch.ones_like(chosen)[None]
    b = {"chosen_input_ids": chosen[None], "chosen_attention_mask": ones, "chosen_labels": labels_c[None],
         "rejected_input_ids": rejected[None], "rejected_attention_mask": ones, "rejected_labels": labels_r[None]}
    model.zero_grad()
    loss, m = orpo_loss(model, b, beta=0.1)
    loss.backward()
    assert m["logp_chosen"] == 0.0            # the edge is really hit
    assert math.isfinite(loss.item())
    grads = _grads(model)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())


def test_sft_and_dpo_objectives_are_finite_at_their_edges(tiny):
    """SFT/NLL with no labelled token is 0 (it was 0/0 = NaN); DPO and ORPO on the confident policy with a
    reference equal to itself (margin 0) and with extreme logits keep finite losses and gradients."""
    from transformers import AutoModelForCausalLM

    from sitf_ray.train.policy_objectives import dpo_loss, sft_loss, token_nll
    logits = torch.randn(2, 5, 7, requires_grad=True)
    nll = token_nll(logits, torch.full((2, 5), -100))
    nll.backward()
    assert nll.item() == 0.0 and torch.isfinite(logits.grad).all()
    model = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        model.model.norm.weight.mul_(1e4)
    ids = torch.tensor([[1, 5, 9, 12, 7, 2]])
    labels = ids.clone()
    labels[:, :2] = -100
    ones = torch.ones_like(ids)
    b = {"chosen_input_ids": ids, "chosen_attention_mask": ones, "chosen_labels": labels,
         "rejected_input_ids": ids.flip(1), "rejected_attention_mask": ones, "rejected_labels": labels.flip(1)}
    for loss_fn in (lambda: dpo_loss(model, b, 0.1, model), lambda: orpo_loss(model, b, 0.1),
                    lambda: sft_loss(model, {"input_ids": ids, "attention_mask": ones, "labels": labels})):
        model.zero_grad()
        loss, _ = loss_fn()
        loss.backward()
        assert math.isfinite(loss.item()) and all(torch.isfinite(g).all() for g in _grads(model).values())


def test_encode_example_never_exceeds_max_len(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    long_prompt = "Question: " + "Ann has 3 pens and buys 4 more. " * 20 + "\nAnswer:\n"
    long_answer = "3 + 4 = 7\n" * 30 + "The answer is 7"
    for max_len in (16, 40):
        for max_prompt_len in range(1, max_len):
            for prompt, resp in ((long_prompt, long_answer), ("Q", "7"), (long_prompt, "7"), ("Q", long_answer)):
                ids, labels = encode_example(tok, prompt, resp, max_len, max_prompt_len)
                assert len(ids) == len(labels) <= max_len
                assert sum(x != -100 for x in labels) >= 1
                assert sum(x == -100 for x in labels) <= max_prompt_len
    for max_prompt_len in (16, 17):   # was accepted and gave 17 tokens for max_len 16
        with pytest.raises(ValueError, match="max_prompt_len .* less than max_len"):
            encode_example(tok, long_prompt, long_answer, 16, max_prompt_len)


def test_step_guard_verdicts():
    from sitf_ray.train.worker import skip_or_stop, step_is_finite
    assert step_is_finite(True, torch.tensor(3.0), 1)
    assert not step_is_finite(False, torch.tensor(3.0), 1)
    assert not step_is_finite(True, torch.tensor(float("nan")), 1)
    assert not step_is_finite(True, torch.tensor(float("inf")), 1)
    with pytest.warns(RuntimeWarning, match="fit 'f': step 7 skipped"):
        skip_or_stop("f", 7, 3, 3, float("nan"), float("nan"))
    with pytest.raises(RuntimeError, match="fit 'f': step 8 is the 4th optimizer step in a row"):
        skip_or_stop("f", 8, 4, 3, float("nan"), float("nan"))


def test_nonfinite_steps_are_skipped_then_stop_the_fit(tiny, tmp_path, ray_session):
    """A loss that is NaN on every batch (beta = NaN) through the real loop, 4 steps an epoch, at most 5 bad
    steps in a row: epoch 1's steps are skipped (its checkpoint holds the initial, finite weights), and the
    6th bad step in a row stops the fit with an error naming the fit and the step."""
    import ray.data
    from safetensors.torch import load_file

    from sitf_ray.train.session import SESSION_NAME, FitJob, fit
    hp = {"lr": 1e-2, "epochs": 2, "batch_size": 4, "warmup_steps": 0, "beta": float("nan"), "max_len": 256,
          "max_prompt_len": 128, "max_nonfinite_steps": 5}
    job = FitJob(name="nan-stop", storage=str(tmp_path / "rt"), init_model=str(tiny), out_dir=str(tmp_path / "x"),
                 objective="orpo", hp=hp, seed=0, workers=1, threads=1, max_failures=0)
    with pytest.raises(Exception, match=r"fit 'nan-stop': step 6 is the 6th optimizer step in a row"):
        fit(job, {"train": ray.data.from_items(PAIRS * 4)})
    states = sorted((tmp_path / "rt" / SESSION_NAME).glob("nan-stop__epoch*/state.pt"))
    assert len(states) == 1 and not (tmp_path / "x").exists()
    state = torch.load(states[0], weights_only=False)
    assert state["epoch"] == 1 and state["history"][0]["skipped_steps"] == 4
    init = load_file(f"{tiny}/model.safetensors")
    assert all(torch.equal(state["model"][k], init[k]) for k in init)


@pytest.mark.slow   # ~100 s: three fits, one in a separate driver process
def test_resume_after_the_driver_is_killed_at_an_epoch_checkpoint(tiny, tmp_path, ray_session):
    """A driver SIGKILLed right after the first epoch's checkpoint landed; re-running the same fit resumes at
    that epoch boundary and ends with the same steps, history (but wall times) and weights as a fit never
    interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from sitf_ray.train.session import SESSION_NAME, close_session
    rows = PAIRS * 6
    hp = {"lr": 3e-3, "epochs": 3, "batch_size": 4, "warmup_steps": 2, "beta": 0.1}
    clean = _fit(tiny, tmp_path, "clean", 1, rows, hp)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    driver = ("import json, sys, ray.data\n"
              "sys.path.insert(0, %r)\n"
              "from test_orpo import _fit\n"
              "from pathlib import Path\n"
              "_fit(Path(%r), Path(%r), 'cut', 1, json.loads(Path(%r).read_text()), json.loads(%r))\n"
              % (os.path.dirname(__file__), str(tiny), str(tmp_path), str(tmp_path / "rows.json"), json.dumps(hp)))
    proc = subprocess.Popen([sys.executable, "-c", driver], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir, deadline, state = tmp_path / "rt" / SESSION_NAME, time.time() + 300, None
    try:   # kill as soon as Ray Train has committed the epoch-1 checkpoint (its snapshot names it)
        while state is None and time.time() < deadline and proc.poll() is None:
            snap = run_dir / "checkpoint_manager_snapshot.json"
            try:
                names = [c["checkpoint_dir_name"] for c in json.loads(snap.read_text())["checkpoint_results"]]
            except (OSError, ValueError, KeyError):
                names = []
            state = next((run_dir / n / "state.pt" for n in names
                          if n.startswith("cut__epoch") and (run_dir / n / "state.pt").exists()), None)
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert state is not None, "no committed epoch checkpoint before the driver ended"
    saved = torch.load(state, weights_only=False)
    assert saved["epoch"] == 1
    close_session()      # this process now plays the restarted driver: a new session, restored from storage
    resumed = _fit(tiny, tmp_path, "cut", 1, rows, hp)
    assert resumed.history[0]["seconds"] == saved["history"][0]["seconds"], "did not resume from the checkpoint"

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert resumed.steps == clean.steps and resumed.epochs == clean.epochs == 3
    assert strip(resumed.history) == strip(clean.history)
    a, b = load_file(f"{clean.out_dir}/model.safetensors"), load_file(f"{resumed.out_dir}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
