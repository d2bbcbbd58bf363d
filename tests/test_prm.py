"""The PRM: step-end token positions, Ray Train learning a separable labelling, scorer actors."""
from __future__ import annotations

import random

import pytest

from sitf_ray.feedback.scorers import scorer_pool
from sitf_ray.feedback.prm import PRMModel
from sitf_ray.feedback.quality import aggregate, auc
from sitf_ray.train.prm_objective import prm_encode_rows, step_end_tokens


def toy_paths(n: int, seed: int) -> list[dict]:
    """Steps are random equations; a step is 'correct' iff it is an addition (separable by one token)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps = []
        for _ in range(rng.randint(2, 4)):
            a, b = rng.randint(1, 30), rng.randint(1, 30)
            op = rng.choice("+-*")
            steps.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}")
        steps.append(f"The answer is {rng.randint(1, 60)}")
        labels = [int(" + " in s) for s in steps[:-1]] + [1]
        rows.append({"prompt": f"Question: toy {i}\nAnswer:\n", "steps": steps, "labels": labels,
                     "soft": [float(x) for x in labels]})
    return rows


def test_step_end_tokens_point_at_each_steps_newline(m0):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(m0)
    prompt, steps = "Question: Ann has 3 pens.\nAnswer:\n", ["3 + 4 = 7", "7 * 2 = 14", "The answer is 14"]
    ids, pos = step_end_tokens(tok, prompt, steps, 256)
    assert len(pos) == 3 and pos == sorted(pos)
    assert all(tok.decode([ids[p]]) == "\n" for p in pos)
    # text up to each position ends exactly with that step
    for p, s in zip(pos, steps):
        assert tok.decode(ids[1:p]).endswith(s)
    _, cut = step_end_tokens(tok, prompt, steps, pos[1])   # truncated: later steps are marked -1
    assert cut[-1] == -1 and cut[0] == pos[0]
    enc = prm_encode_rows([{"prompt": prompt, "steps": steps, "labels": [1, 0, 0], "soft": [1.0, 0.25, 0.0]}],
                          tok, 256, True)
    lab = enc[0]["step_labels"]
    assert [float(lab[p]) for p in pos] == [1.0, 0.25, 0.0] and (lab != -100).sum() == 3


def test_prm_learns_a_separable_labelling_and_scorers_serve_it(m0, tmp_path, ray_session):
    import ray.data

    from sitf_ray.train.session import FitJob, fit
    train, held = toy_paths(240, 0), toy_paths(60, 1)
    ds = ray.data.from_items(train)
    job = FitJob(name="prm-toy", storage=str(tmp_path / "rt"), init_model=str(m0), out_dir=str(tmp_path / "prm"),
                 objective="prm", hp={"lr": 2e-3, "epochs": 4, "batch_size": 32, "warmup_steps": 5, "max_len": 256},
                 seed=0, workers=2, cpus_per_worker=1, threads=1)
    res = fit(job, {"train": ds})
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    prm = PRMModel(str(tmp_path / "prm"))
    items = [{"prompt": r["prompt"], "steps": r["steps"]} for r in held]
    scores = prm.score(items)
    assert [len(s) for s in scores] == [len(r["steps"]) for r in held]
    flat_s = [x for s, r in zip(scores, held) for x in s[:-1]]
    flat_y = [y for r in held for y in r["labels"][:-1]]
    a = auc(flat_s, flat_y)
    print(f"\nPRM held-out step AUC on the toy labelling: {a:.3f}")
    assert a > 0.95

    pool = scorer_pool(replicas=2, cpus=1)
    try:
        pool.broadcast("load", str(tmp_path / "prm"), 256)
        served = pool.map("score", items, 16)
        assert len(served) == len(items)
        assert all(len(s) == len(r["steps"]) for s, r in zip(served, held))     # one score per step
        assert max(abs(x - y) for s, t in zip(served, scores) for x, y in zip(s, t)) < 1e-4
        assert [i["folder"] for i in pool.call_all("info")] == [str(tmp_path / "prm")] * 2
    finally:
        pool.shutdown()


def test_aggregate_and_auc():
    assert aggregate([0.2, 0.4, 0.9], "mean") == pytest.approx(0.5)
    assert aggregate([0.2, 0.4, 0.9], "min") == 0.2 and aggregate([0.2, 0.4, 0.9], "last") == 0.9
    with pytest.raises(ValueError):
        aggregate([0.1], "median")
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auc([0.3, 0.6], [1, 1]) != auc([0.3, 0.6], [1, 1])   # nan: one class only
