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
    cfg = C.build(overrides=["task.arith.max_value=10", "task.arith.sft_ops=[1,1]", "task.arith.n_sft=100000"]).task
    with pytest.raises(ValueError, match="cannot draw 100000 distinct sft problems"):
        TASK.load("sft", cfg)


def test_each_split_draws_from_its_own_range_of_operations():
    cfg = C.build(overrides=["task.arith.sft_ops=[2,3]", "task.arith.train_ops=[4,5]", "task.arith.eval_ops=[2,5]",
                             "task.arith.n_sft=300", "task.arith.n_train=300", "task.arith.n_val=100",
                             "task.arith.n_test=300"]).task
    lens = {s: [len(r["ops"]) for r in TASK.load(s, cfg)] for s in ("sft", "train", "val", "test")}
    assert set(lens["sft"]) == {2, 3} and set(lens["train"]) == {4, 5}
    assert set(lens["val"]) | set(lens["test"]) == {2, 3, 4, 5}
    questions = [r["question"] for s in lens for r in TASK.load(s, cfg)]
    assert len(set(questions)) == len(questions)              # no question in two splits


def test_the_run_seed_draws_the_splits_unless_data_seed_is_given():
    q = {s: [r["question"] for r in TASK.load("test", C.build(overrides=[f"seed={s}"]).task)] for s in (0, 1)}
    assert q[0] != q[1]
    pinned = C.build(overrides=["seed=1", "task.arith.data_seed=0"]).task
    assert [r["question"] for r in TASK.load("test", pinned)] == q[0]


def test_strict_accuracy_needs_the_answer_and_every_step():
    from sitf_ray.rollout.sampling import check_all, strict_all
    row = {"id": "x", "question": "Ann has 12 pens, buys 7 more, then gives away 5, then doubles them.",
           "answer": "28", "start": 12, "ops": [["+", 7], ["-", 5], ["*", 2]], "values": [19, 14, 28]}
    texts = ["12 + 7 = 19\n19 - 5 = 14\n14 * 2 = 28\nThe answer is 28",     # right all along
             "7 + 12 = 19\n19 - 5 = 14\n14 + 14 = 28\nThe answer is 28",    # other spellings of right steps
             "12 + 7 = 19\n19 - 5 = 15\n15 * 2 = 28\nThe answer is 28",     # lucky: wrong steps, right answer
             "12 + 7 = 19\n19 * 2 = 38\n38 - 10 = 28\nThe answer is 28",    # lucky: wrong operations
             "12 + 7 = 19\n19 - 5 = 14\nThe answer is 28",                  # skipped a step
             "12 + 7 = 19\n19 - 5 = 14\n14 * 2 = 28\nThe answer is 29"]     # right steps, wrong answer
    ok = check_all(TASK, [row] * len(texts), texts)
    assert ok == [True, True, True, True, True, False]
    assert strict_all(TASK, [row] * len(texts), texts, ok) == [True, True, False, False, False, False]
    assert strict_all(get_task("gsm8k"), [row], texts[:1], ok[:1]) is None       # no oracle, no strict figure
