"""Preference pairs: the first-error strategy (step-level pairs that share the exact prefix)."""
from __future__ import annotations

import pandas as pd

from sitf_ray.pairs import build_pairs, first_error, pairs_for_question, read_pairs

PROMPT = "Question: Ann has 12 pens, buys 7 more, then gives away 5, then doubles them. How many pens now?\nAnswer:\n"


def path(i, steps, scores, correct):
    return {"id": f"q-{i}", "qid": "q", "prompt": PROMPT, "path": "\n".join(steps), "steps": steps,
            "step_scores": scores, "reward": sum(scores) / len(scores), "correct": correct}


GOOD = ["12 + 7 = 19", "19 - 5 = 14", "14 * 2 = 28", "The answer is 28"]
SAMPLES = [
    path(0, GOOD, [0.9, 0.9, 0.9, 0.9], True),
    path(1, GOOD[:2] + ["14 * 2 = 26", "The answer is 26"], [0.9, 0.9, 0.2, 0.1], False),     # error at step 2
    path(2, GOOD[:1] + ["19 - 5 = 15", "15 * 2 = 30", "The answer is 30"], [0.9, 0.1, 0.1, 0.1], False),  # at 1
    path(3, ["12 + 7 = 20", "20 - 5 = 15", "15 * 2 = 30", "The answer is 30"], [0.2, 0.1, 0.1, 0.1], False),  # at 0
    path(4, GOOD[:1] + ["19 - 5 = 15", "15 * 2 = 28", "The answer is 28"], [0.9, 0.3, 0.2, 0.4], True),  # lucky
]


def test_first_error_index():
    assert first_error([0.9, 0.4, 0.9], 0.5, False) == 1
    assert first_error([0.9, 0.9], 0.5, False) == 1          # a wrong answer is wrong at its last step at least
    assert first_error([0.9, 0.9], 0.5, True) == -1


def test_first_error_pairs_share_the_exact_prefix_before_the_first_error():
    out = pairs_for_question(pd.DataFrame(SAMPLES), eta=0.1, strategy="first_error", max_per_question=8,
                             require_correct_chosen=True, seed=0, iteration=1)
    by_rejected = {r.rejected_id: r for r in out.itertuples()}
    assert set(by_rejected) == {"q-1", "q-2", "q-3", "q-4"}
    for r in out.itertuples():
        chosen = next(s for s in SAMPLES if s["id"] == r.chosen_id)
        rejected = next(s for s in SAMPLES if s["id"] == r.rejected_id)
        e = first_error(rejected["step_scores"], 0.5, rejected["correct"])
        prefix = "".join(st + "\n" for st in rejected["steps"][:e])
        assert r.prompt == PROMPT + prefix                               # the shared prefix moved into the prompt
        assert chosen["steps"][:e] == rejected["steps"][:e]              # ... and both paths really share it
        assert r.chosen == "\n".join(chosen["steps"][e:]) and r.rejected == "\n".join(rejected["steps"][e:])
        assert chosen["steps"][e] != rejected["steps"][e] and r.chosen_correct
        assert r.prompt + r.chosen == PROMPT + chosen["path"] and r.prompt + r.rejected == PROMPT + rejected["path"]
    assert by_rejected["q-4"].chosen_id == "q-0"                        # a lucky path is a rejected one


def test_first_error_needs_a_chosen_path_with_the_same_prefix():
    lonely = [SAMPLES[0], path(5, ["12 - 7 = 5"] + GOOD[1:], [0.9, 0.2, 0.2, 0.2], False)]
    # q-5's first error is step 1, but no right path shares its step 0: no pair
    out = pairs_for_question(pd.DataFrame(lonely), eta=0.1, strategy="first_error", max_per_question=8,
                             require_correct_chosen=True, seed=0, iteration=1)
    assert out.empty


def test_first_error_pairs_through_ray_data(tmp_path, ray_session):
    scored = [dict(s, qid=f"q{j}", id=f"q{j}-{s['id']}") for j in range(3) for s in SAMPLES]
    st = build_pairs(scored, tmp_path / "pairs", eta=0.1, strategy="first_error", max_per_question=8,
                     require_correct_chosen=True, seed=1, iteration=1, num_shards=2)
    df = read_pairs(tmp_path / "pairs")
    assert st["pairs"] == len(df) == 12 and st["questions_with_pairs"] == 3
    assert all(p.startswith(PROMPT) for p in df.prompt)
