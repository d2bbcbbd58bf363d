"""Process reward estimation on real generator actors (vLLM) with the test M_0 as simulator."""
from __future__ import annotations

import pytest

from sitf_ray.rollout.generators import GeneratorPool
from sitf_ray.rollout.engines import EngineSpec, GenParams
from sitf_ray.feedback.labeling import agreement, label_samples, prf, versus_oracle
from sitf_ray.tasks import arith, get_task

from conftest import make_config

TASK = get_task("arith")


@pytest.fixture(scope="module")
def pool(m0, ray_session):
    p = GeneratorPool(EngineSpec(model=str(m0), kind="vllm", max_model_len=256), replicas=2, cpus=1, chunk_size=32)
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def solved(pool):
    """Questions M_0 solves greedily, with its own (fully correct) greedy solution."""
    cfg = make_config()
    rows = TASK.load("test", cfg.task) + TASK.load("val", cfg.task)
    outs = pool.generate([TASK.prompt(r) for r in rows], GenParams(n=1, temperature=0.0, max_tokens=48), seed=0)
    good = []
    for r, o in zip(rows, outs):
        steps = TASK.split_steps(o[0].text)
        if all(TASK.step_oracle(r, steps)) and len(steps) >= 3:
            good.append((r, steps))
    assert len(good) >= 10, f"M_0 solved only {len(good)} test questions cleanly"
    return good[:12]


def corrupt(row, steps, at):
    """Break step `at`: its result is off by 3 and later steps carry the wrong value forward."""
    out, v = list(steps[:at]), None
    prev = row["start"] if at == 0 else row["values"][at - 1]
    for i in range(at, len(row["ops"])):
        op, x = row["ops"][i]
        a = prev if v is None else v
        v = arith._apply(a, op, x)
        if i == at:
            v = (v or 0) + 3
        out.append(f"{a} {op} {x} = {v}")
    out.append(f"The answer is {v}")
    return out


def hand_made(solved):
    """Per question: its correct path, and wrong paths whose first error is at each possible step."""
    samples, rows, truth = [], {}, {}
    for r, steps in solved:
        rows[r["id"]] = r
        samples.append({"id": f"{r['id']}-ok", "qid": r["id"], "steps": steps, "correct": True})
        truth[f"{r['id']}-ok"] = [1] * len(steps)
        for at in range(len(r["ops"])):
            bad = corrupt(r, steps, at)
            sid = f"{r['id']}-bad{at}"
            samples.append({"id": sid, "qid": r["id"], "steps": bad, "correct": TASK.is_correct(r, "\n".join(bad))})
            truth[sid] = [1] * at + [0] * (len(bad) - at)
    return samples, rows, truth


def test_mc_labels_find_the_known_first_error(pool, solved):
    samples, rows, truth = hand_made(solved)
    # Greedy simulator (K=2 identical rollouts): from a correct prefix M_0 finishes its own correct solution,
    # so every step before the known first error must come out correct. From a wrong prefix it usually
    # carries the wrong value on, but it can also recover by recomputing from the question: the label
    # must then say exactly what an independent greedy continuation says.
    labels, st = label_samples(samples, rows, TASK, "mc", pool, k=2, delta=0, temperature=0.0, max_tokens=48)
    by_id = {s["id"]: s for s in samples}
    greedy = GenParams(n=1, temperature=0.0, max_tokens=48)
    exact = 0
    for r in labels:
        want, s = truth[r["id"]], by_id[r["id"]]
        first = want.index(0) if 0 in want else len(want)
        assert r["labels"][:first] == [1] * first
        if first < len(want):
            assert r["labels"][-1] == 0                        # the wrong answer line needs no rollout
            prefixes = [TASK.prompt(rows[s["qid"]]) + "\n".join(s["steps"][:i + 1]) + "\n"
                        for i in range(first, len(want) - 1)]
            outs = pool.generate(prefixes, greedy, seed=0)
            recovered = [int(TASK.is_correct(rows[s["qid"]], "\n".join(s["steps"][:i + 1]) + "\n" + o[0].text))
                         for i, o in zip(range(first, len(want) - 1), outs)]
            assert r["labels"][first:-1] == recovered
            exact += int(r["labels"].index(0) == first)
    wrong = sum(0 in v for v in truth.values())
    print(f"\nknown first error found exactly in {exact}/{wrong} wrong paths (the rest: M_0 recovered)")
    assert exact >= 0.7 * wrong
    # correct paths and complete paths cost no rollouts; shared prefixes are probed once
    n_needed = len({(s["qid"], tuple(s["steps"][:i + 1])) for s in samples if not s["correct"]
                    for i in range(len(s["steps"]) - 1)})
    assert st.prefixes_probed == n_needed and st.rollouts == 2 * n_needed


def test_binary_search_matches_per_step_scan_with_fewer_rollouts(pool, solved):
    samples, rows, truth = hand_made(solved)
    mc, st_mc = label_samples(samples, rows, TASK, "mc", pool, k=2, temperature=0.0, max_tokens=48)
    bs, st_bs = label_samples(samples, rows, TASK, "binary", pool, k=2, temperature=0.0, max_tokens=48)
    # Bisection assumes that once a prefix fails every longer one fails; where the per-step scan agrees
    # (the simulator did not recover mid-path) the two must give the same labels.
    def monotone(labels):
        return labels == sorted(labels, reverse=True)
    same = [(b["labels"], m["labels"]) for b, m in zip(bs, mc) if monotone(m["labels"])]
    assert all(monotone(r["labels"]) for r in bs)
    assert len(same) >= 0.8 * len(mc) and all(b == m for b, m in same)
    assert agreement(mc, bs) >= 0.9
    print(f"\nrollouts: per-step {st_mc.rollouts}, binary search {st_bs.rollouts}")
    assert st_bs.rollouts < st_mc.rollouts


def test_hard_and_soft_labels(pool, solved):
    samples, rows, _ = hand_made(solved[:6])
    wrong = [s for s in samples if not s["correct"]]
    labels, st = label_samples(wrong, rows, TASK, "mc", pool, k=4, delta=0, temperature=1.0, max_tokens=48, seed=3)
    for r in labels:
        for hard, soft in zip(r["labels"], r["soft"]):
            assert soft in (0.0, 0.25, 0.5, 0.75, 1.0)
            assert hard == int(soft * 4 > 0)
        assert r["soft"][-1] == 0.0                  # a wrong final answer is its own label
    stricter, _ = label_samples(wrong, rows, TASK, "mc", pool, k=4, delta=2, temperature=1.0, max_tokens=48, seed=3)
    for a, b in zip(labels, stricter):
        assert a["soft"] == b["soft"]                # same rollouts (same seed) ...
        assert b["labels"] == [int(s * 4 > 2) for s in b["soft"]]   # ... stricter threshold
    again, _ = label_samples(wrong, rows, TASK, "mc", pool, k=4, delta=0, temperature=1.0, max_tokens=48, seed=3)
    assert [r["soft"] for r in again] == [r["soft"] for r in labels]   # reproducible


def test_oracle_mode_and_quality_figures(solved):
    samples, rows, truth = hand_made(solved)
    labels, st = label_samples(samples, rows, TASK, "oracle")
    assert {r["id"]: r["labels"] for r in labels} == truth and st.rollouts == 0
    q = versus_oracle(labels)
    assert q["f1"] == 1.0 and q["accuracy"] == 1.0
    assert prf([1, 0, 1, 1], [1, 1, 0, 1]) == {"precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3),
                                               "accuracy": 0.5, "n": 4, "positives": 3}
    with pytest.raises(ValueError, match="no exact step oracle"):
        label_samples(samples, rows, get_task("gsm8k"), "oracle")


def lucky(row, steps, at):
    """A wrong step `at` carried forward, then the right answer anyway: what outcome feedback rewards."""
    bad = corrupt(row, steps, at)
    return bad[:-1] + [f"The answer is {row['answer']}"]


def test_answer_correct_paths_are_probed_when_a_right_answer_proves_nothing(pool, solved):
    """skip_correct_paths=False: a clean path costs one probe (the path without its answer line); a lucky
    path gets its first wrong step found, and its answer line is labelled wrong with it."""
    rows, samples, truth = {}, [], {}
    for r, steps in solved:
        rows[r["id"]] = r
        samples.append({"id": f"{r['id']}-ok", "qid": r["id"], "steps": steps, "correct": True})
        truth[f"{r['id']}-ok"] = [1] * len(steps)
        for at in range(len(r["ops"])):
            sid = f"{r['id']}-lucky{at}"
            samples.append({"id": sid, "qid": r["id"], "steps": lucky(r, steps, at), "correct": True})
            truth[sid] = [1] * at + [0] * (len(steps) - at)
    assert all(TASK.is_correct(rows[s["qid"]], "\n".join(s["steps"])) for s in samples)
    skipped, st0 = label_samples(samples, rows, TASK, "binary", pool, k=2, temperature=0.0, max_tokens=48)
    assert all(r["labels"] == [1] * len(r["steps"]) for r in skipped) and st0.rollouts == 0   # Math-Shepherd's rule
    labels, st = label_samples(samples, rows, TASK, "binary", pool, k=2, temperature=0.0, max_tokens=48,
                               skip_correct_paths=False)
    exact = sum(r["labels"] == truth[r["id"]] for r in labels)
    by_id = {s["id"]: s for s in samples}
    lucky_ids = [r["id"] for r in labels if not r["id"].endswith("-ok")]
    # an independent greedy continuation of each lucky path without its answer line: the simulator's verdict
    outs = pool.generate([TASK.prompt(rows[by_id[i]["qid"]]) + "\n".join(by_id[i]["steps"][:-1]) + "\n"
                          for i in lucky_ids], GenParams(n=1, temperature=0.0, max_tokens=48), seed=0)
    recovers = {i: TASK.is_correct(rows[by_id[i]["qid"]], "\n".join(by_id[i]["steps"][:-1]) + "\n" + o[0].text)
                for i, o in zip(lucky_ids, outs)}
    for r in labels:
        if r["id"].endswith("-ok"):
            assert r["labels"] == truth[r["id"]]          # M_0 finishes its own greedy solution
        elif recovers[r["id"]]:
            assert r["labels"] == [1] * len(r["steps"])    # the simulator recovered: MC calls the path right
        else:
            assert r["labels"][-1] == 0                    # the lucky answer line is labelled wrong with its error
            assert r["labels"] == sorted(r["labels"], reverse=True)
    print(f"\nlucky paths labelled exactly: {exact}/{len(labels)}; rollouts {st.rollouts}")
    assert exact >= 0.7 * len(labels)
    oracle = versus_oracle(labels)
    assert oracle["f1"] > versus_oracle(skipped)["f1"]
