"""Preference pairs on hand-made rows: the first-error strategy (step-level pairs that share the exact prefix),
best_vs_rest and the chosen path's reward floor."""
from __future__ import annotations

import pandas as pd

from sitf_ray.feedback.pairs import build_pairs, first_error, pairs_for_question, read_pairs

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


def test_best_vs_rest_pairs_the_best_right_path_against_each_path_eta_below():
    out = pairs_for_question(pd.DataFrame(SAMPLES), eta=0.3, strategy="best_vs_rest", max_per_question=8,
                             require_correct_chosen=True, seed=0, iteration=1)
    assert set(out.chosen_id) == {"q-0"}                                  # one chosen: the best right path
    # q-1 (reward 0.525) is 0.375 below q-0 (0.9); q-4, the lucky one, is 0.45 below; q-2, q-3 further
    assert list(out.rejected_id) == ["q-3", "q-2", "q-4", "q-1"]          # widest gaps first
    capped = pairs_for_question(pd.DataFrame(SAMPLES), eta=0.3, strategy="best_vs_rest", max_per_question=2,
                                require_correct_chosen=True, seed=0, iteration=1)
    assert list(capped.rejected_id) == ["q-3", "q-2"]
    top_m = pairs_for_question(pd.DataFrame(SAMPLES), eta=0.3, strategy="top_m", max_per_question=8,
                               require_correct_chosen=True, seed=0, iteration=1)
    assert list(top_m.chosen_id) == ["q-0"]      # top_m uses the sound path once (q-4 has no free rejected)


def test_best_vs_rest_without_a_right_path_gives_nothing():
    wrong = [s for s in SAMPLES if not s["correct"]]
    out = pairs_for_question(pd.DataFrame(wrong), eta=0.1, strategy="best_vs_rest", max_per_question=8,
                             require_correct_chosen=True, seed=0, iteration=1)
    assert out.empty


def test_min_chosen_reward_keeps_a_path_the_prm_doubts_out_of_chosen():
    doubted = [dict(s, reward=0.48) if s["id"] == "q-0" else s for s in SAMPLES]   # right answer, PRM unsure
    for strategy in ("top_m", "best_vs_rest", "all", "first_error"):
        free = pairs_for_question(pd.DataFrame(doubted), eta=0.05, strategy=strategy, max_per_question=8,
                                  require_correct_chosen=True, seed=0, iteration=1)
        floored = pairs_for_question(pd.DataFrame(doubted), eta=0.05, strategy=strategy, max_per_question=8,
                                     require_correct_chosen=True, seed=0, iteration=1, min_chosen_reward=0.5)
        assert "q-0" in set(free.chosen_id) or strategy == "first_error"
        assert "q-0" not in set(floored.chosen_id) and "q-4" not in set(floored.chosen_id)   # q-4: 0.45
        assert floored.empty


def test_first_error_pairs_through_ray_data(tmp_path, ray_session):
    scored = [dict(s, qid=f"q{j}", id=f"q{j}-{s['id']}") for j in range(3) for s in SAMPLES]
    st = build_pairs(scored, tmp_path / "pairs", eta=0.1, strategy="first_error", max_per_question=8,
                     require_correct_chosen=True, seed=1, iteration=1, num_shards=2)
    df = read_pairs(tmp_path / "pairs")
    assert st["pairs"] == len(df) == 12 and st["questions_with_pairs"] == 3
    assert all(p.startswith(PROMPT) for p in df.prompt)
