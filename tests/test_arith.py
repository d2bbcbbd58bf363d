"""The embedded arith task: seeded splits, gold solutions, answer extraction and the exact step oracle."""
import pytest

from sitf_ray import config as C
from sitf_ray.tasks import arith, get_task

TASK = get_task("arith")


@pytest.fixture(scope="module")
def cfg():
    return C.build(overrides=["task.arith.n_sft=300", "task.arith.n_train=200", "task.arith.n_val=50",
                              "task.arith.n_test=100"]).task


def test_splits_are_seeded_distinct_and_sized(cfg):
    splits = {s: TASK.load(s, cfg) for s in ("sft", "train", "val", "test")}
    assert [len(splits[s]) for s in ("sft", "train", "val", "test")] == [300, 200, 50, 100]
    questions = [r["question"] for rows in splits.values() for r in rows]
    assert len(questions) == len(set(questions))          # no test question is ever trained on
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids))
    arith._CACHE.clear()
    assert TASK.load("test", cfg) == splits["test"]       # same seed, same rows
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        TASK.load("dev", cfg)


def test_gold_solutions_are_right_and_oracle_accepts_them(cfg):
    for row in TASK.load("sft", cfg):
        gold = TASK.target(row)
        assert TASK.is_correct(row, gold)
        steps = TASK.split_steps(gold)
        assert len(steps) == len(row["ops"]) + 1
        assert all(TASK.step_oracle(row, steps))
        assert 2 <= len(row["ops"]) <= 5 and all(0 <= v <= 60 for v in row["values"])


ROW = {"question": "Ann has 12 pens, buys 7 more, then gives away 5, then doubles them. How many pens now?",
       "answer": "28", "start": 12, "ops": [["+", 7], ["-", 5], ["*", 2]], "values": [19, 14, 28]}


@pytest.mark.parametrize("steps, expected", [
    (["12 + 7 = 19", "19 - 5 = 14", "14 * 2 = 28", "The answer is 28"], [1, 1, 1, 1]),
    (["7 + 12 = 19", "19 - 5 = 14", "14 + 14 = 28", "The answer is 28"], [1, 1, 1, 1]),  # other spellings
    (["12 + 7 = 20", "20 - 5 = 15", "15 * 2 = 30", "The answer is 30"], [0, 0, 0, 0]),   # arithmetic slip
    (["12 + 7 = 19", "19 + 5 = 24", "24 * 2 = 48", "The answer is 48"], [1, 0, 0, 0]),   # wrong operation
    (["12 + 7 = 19", "19 - 5 = 14", "14 * 3 = 42", "The answer is 42"], [1, 1, 0, 0]),   # wrong operand
    (["12 + 7 = 19", "19 - 5 = 14", "The answer is 14"], [1, 1, 0]),                     # skipped a step
    (["12 + 7 = 19", "19 - 5 = 14", "14 * 2 = 28", "The answer is 27"], [1, 1, 1, 0]),   # wrong answer line
    (["12 + 7 = 19", "nineteen minus five", "14 * 2 = 28", "The answer is 28"], [1, 0, 0, 0]),  # garbage
    (["12 + 7 = 19", "19 - 5 = 14", "14 * 2 = 28", "28 + 0 = 28", "The answer is 28"], [1, 1, 1, 0, 0]),
])
def test_oracle_on_hand_made_prefixes(steps, expected):
    assert [int(x) for x in arith.step_oracle(ROW, steps)] == expected
    # every prefix gets the same verdict on its own: the oracle is a property of prefixes
    for i in range(len(steps)):
        assert int(arith.step_oracle(ROW, steps[:i + 1])[-1]) == expected[i]


@pytest.mark.parametrize("text, answer", [
    ("12 + 7 = 19\nThe answer is 19", "19"), ("The answer is 007", "7"), ("The answer is -3", "-3"),
    ("12 + 7 = 19", None), ("the answer is 5", None), ("The answer is 4\nThe answer is 5", "4"),
])
def test_answer_extraction(text, answer):
    assert TASK.extract_answer(text) == answer


def test_equation_filter():
    assert arith.answer_equations_valid("12 + 7 = 19\n19 / 2 = 9\nThe answer is 9") is False
    assert arith.answer_equations_valid("12 + 7 = 19\nThe answer is 19") is True


def test_impossible_split_sizes_fail_clearly():
    cfg = C.build(overrides=["task.arith.max_value=10", "task.arith.min_ops=1", "task.arith.max_ops=1",
                             "task.arith.n_sft=100000"]).task
    with pytest.raises(ValueError, match="cannot draw .* distinct problems"):
        TASK.load("sft", cfg)
