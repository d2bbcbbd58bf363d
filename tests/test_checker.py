"""Step checkers (a calculator check of the arithmetic a model writes), the paper's sampling filter and
rollouts that must pass the checker to count as hits. Pure Python: scripted generators, no Ray, no vLLM.

A reward checker is part of what the policy learns from: a parsing bug or a hole becomes learned behaviour,
so besides true and false equations these tests try the ways a model could write a false one past it.
"""
from __future__ import annotations

import gzip
import json
import random
import re

import pytest

from sitf_ray import config as C
from sitf_ray.rollout.engines.base import Completion
from sitf_ray.feedback.labeling import Prober, label_samples, rollout_hits, versus_oracle
from sitf_ray.rollout.sampling import sample_paths
from sitf_ray.tasks import arith, get_task
from sitf_ray.tasks.base import passes_step_check
from sitf_ray.tasks.equations import equations_true
from sitf_ray.tasks.gsm8k import clean_solution

from conftest import ROOT

ARITH, GSM8K = get_task("arith"), get_task("gsm8k")

TRUE = [
    "Natalia sold 48/2 = 24 clips in May.",
    "Natalia sold 48+24 = 72 clips altogether in April and May.",
    "She pays $1,200 + $300 = $1,500 in total",
    "1,000 * 0.05 = 50", "$1.50 * 4 = $6.00", "12 x 3 = 36", "12 × 3 = 36", "12 ÷ 3 = 4", "12 * 3 = 36",
    "3 hours * 60 minutes/hour = 180 minutes", "$5/hour * 3 hours = $15", "3 packs * 4 pens each = 12 pens",
    "5 apples + 3 apples = 8 apples", "100 basketballs x (10 / 100) = 10 basketballs",
    "20% of 50 = 10", "50 * 20% = 10", "25% + 15% = 40%", "100% - 20% = 80%", "1/4 of 20 = 5",
    "5 + 3 + 2 = 10", "5 + 3 = 8 + 2 = 10", "2 * 3 + 4 = 10", "2 * (3 + 4) = 14", "2(3+4) = 14",
    "10 / 3 = 3.33", "10 / 3 = 3.3", "2/3 = 0.67", "2/3 = 0.66", "25 / 1/3 = 75", "1 and 1/4 * 12 = 15",
    "-5 + 3 = -2", "5 - 8 = -3", "2^10 = 1024", "2**3 = 8", "24 = 48 / 2",
    "Step 1: 5 + 3 = 8", "1. 5 + 3 = 8", "1) 5 + 3 = 8", "12 + 7 = 19, 19 - 5 = 14",
    r"\frac{48}{2} = 24", r"$\frac{3}{4} \times 8 = 6$", "１２ + 7 = １９", "12 − 7 = 5",
    "**Step 1:** 48 / 2 = 24", "*48 / 2 = 24*", "3 ** 2 = 9", "1_000 + 1 = 1,001", "= 30 + M trees",
    # no equation, or none that can be read as arithmetic: nothing to check
    "The answer is 28", "", "She has 5 apples.", "===", "= = 5 + + 3 ( ) )(", "x = 5", "1 dozen = 12",
    "2 hours = 120 minutes", "Woody = 1.5 years = 18 months", "Let x be the cost. 2x + 3 = 11", "3x = 30",
    "p + p/2 + 3 = 69", "He left at 7:50 + 30 minutes = 8:20 a.m.", "12 plus 7 is 20",
]
FALSE = [
    "12 + 7 = 20", "Natalia sold 48/2 = 25 clips in May.", "She pays $1,200 + $300 = $1,600 in total",
    "5 + 3 + 2 = 11", "2 * 3 + 4 = 14", "3 hours * 60 minutes/hour = 190 minutes", "20% of 50 = 15",
    "10 / 3 = 4", "2/3 = 0.5", "5 - 8 = 3", "2^10 = 1000", "25 = 48/2", "5 / 0 = 3", "1e999 + 1 = 5",
    "Every tray needs 80 cookies and she's making 3 trays so 8*3 = 240", r"\frac{48}{2} = 25",
]
# How a false "12 + 7 = 20" could be written to slip past a checker: every one is still caught.
GAMING = [
    "12 + 7 = 20.", "12+7=20", "12 + 7 =20", "12 + 7 = 20 apples", "$12 + $7 = $20", "12 + 7 = 20%",
    "12 + 7 == 20", "12 + 7 equals 20", "(12 + 7 = 20)", "12 + 7 = 19 = 20", "12 + 7 = 19 + 0 = 20",
    "12 + 7\n= 20", "12 +\n7 = 20", "12 + 7 = 19.9", "12 + 7 = 19.0000001", "12 + 7 = 2 0", "１２ + 7 = ２０",
    "12 + 7 = 20 = 19", "Then 12 + 7 = 20, so", "12 x 7 = 20", "12 + 7 = 20\nThe answer is 19",
    "12 + 7 = 19\n19 - 5 = 15", "12 apples + 7 apples = 20 apples",
    "**12 + 7 = 20**", "*12 + 7 = 20*", "__12 + 7 = 20__", "**Step 1:** 12 + 7 = 20", "`12 + 7 = 20`",
    "1) 12 + 7 = 20", "Step 2 12 + 7 = 20", "So I get a 12 + 7 = 20", "12 + 7 = 20 +", "12 + 7 = 20 - so",
    "$$12 + 7 = 20$$", r"\(12 + 7 = 20\)", "12 + 7 = 20 (19?)",
]


@pytest.mark.parametrize("text", TRUE)
def test_true_or_unreadable_equations_pass(text):
    assert equations_true(text) is True


@pytest.mark.parametrize("text", FALSE + GAMING)
def test_false_equations_fail_however_they_are_written(text):
    assert equations_true(text) is False
    assert GSM8K.step_check(text) is False


def test_arith_checker_is_exact_and_reads_every_spelling():
    assert arith.answer_equations_valid("12 + 7 = 19\n19 / 2 = 9\nThe answer is 9") is False   # inexact division
    assert arith.answer_equations_valid("12 + 7 = 19\n19 - 5 = 14\n14 * 2 = 28\nThe answer is 28") is True
    assert arith.answer_equations_valid("30 / 3 = 10\nThe answer is 10") is True
    assert equations_true("7 / 2 = 3") is True and arith.answer_equations_valid("7 / 2 = 3") is False
    for text in GAMING:
        assert ARITH.step_check(text) is False, text
    assert ARITH.step_check("The answer is 19") is True and ARITH.step_check("") is True


def test_the_arith_checker_passes_gold_and_never_passes_what_the_oracle_calls_arithmetic_false():
    rows = ARITH.load("train", C.build().task)[:300]
    rng = random.Random(0)
    for r in rows:
        gold = ARITH.target(r)
        assert ARITH.step_check(gold), gold
        steps = gold.split("\n")
        i = rng.randrange(len(steps) - 1)
        a, op, b, c = arith.STEP_RE.match(steps[i]).groups()
        steps[i] = f"{a} {op} {b} = {int(c) + rng.choice([-2, -1, 1, 3])}"
        assert not ARITH.step_check("\n".join(steps))               # a false result is caught ...
        assert not all(ARITH.step_oracle(r, steps))                 # ... and the oracle agrees it is wrong


def test_gsm8k_gold_solutions_and_calculator_annotations_pass():
    """The data set's own calculator annotations (<<48/2=24>>) all pass; of its gold solutions the ones that
    fail are, on inspection, the data set's own slips ('8*3 = 240', '2*8 = 24 hours')."""
    rows = [json.loads(line) for line in gzip.open(ROOT / "sitf_ray/data/gsm8k_train.jsonl.gz", "rt")][::7]
    annotations = [a for r in rows for a in re.findall(r"<<([^<>]*)>>", r["answer"])]
    assert len(annotations) > 3000 and all(equations_true(a) for a in annotations)
    texts = [clean_solution(r["answer"])[0] for r in rows]
    failing = [t for t in texts if not GSM8K.step_check(t)]
    assert len(failing) <= 0.01 * len(texts), failing[:5]


def test_odd_text_never_crashes():
    rng = random.Random(1)
    alphabet = "0123456789+-*/^=()[]{}.,%$x :\n\\abc½−×÷" + "\u202f"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert equations_true(text) in (True, False)
        assert equations_true(text, exact=True) in (True, False)
    assert equations_true("(" * 3000 + "1" + ")" * 3000 + " = 2") in (True, False)
    assert equations_true("1+" * 3000 + "1 = 3001") is True
    assert equations_true("9" * 5000 + " * 9" * 50 + " = 1") is False
    assert equations_true("10^10^10^10 = 5") is False                # not evaluated: not trusted


def test_tasks_without_a_checker_always_pass():
    for name in ("mbpp", "humaneval", "mmlu_math"):
        task = get_task(name)
        assert task.step_check is None and passes_step_check(task, "12 + 7 = 20")


# --------------------------------------------------------------------------------- scripted generators
class Scripted:
    """A generator pool whose completions are chosen by a function of the prompt (no model)."""

    def __init__(self, complete):
        self.complete, self.prompts = complete, []

    def generate(self, prompts, params, seed=0, desc="", partial_dir=None):
        self.prompts += list(prompts)
        return [[Completion(text, 5, "stop") for text in self.complete(p, params.n)] for p in prompts]


def arith_row(start=12, ops=(("+", 7), ("-", 5)), qid="q0"):
    v, values = start, []
    for op, x in ops:
        v = arith._apply(v, op, x)
        values.append(v)
    return {"id": qid, "question": f"question {qid}", "answer": str(v), "start": start,
            "ops": [list(o) for o in ops], "values": values}


def test_sampling_filter_drops_exactly_the_samples_with_a_false_equation():
    rows = [arith_row(qid="q0"), arith_row(20, (("*", 2), ("-", 10)), qid="q1")]
    paths = {
        "q0": ["12 + 7 = 19\n19 - 5 = 14\nThe answer is 14",      # right
               "12 + 7 = 20\n20 - 6 = 14\nThe answer is 14",      # right answer through a false equation
               "12 + 7 = 19\n19 - 4 = 15\nThe answer is 15",      # wrong answer, true equations (a wrong op)
               "12+7=20\nThe answer is 20",                       # false, unspaced
               "12 + 7 = 19\nThe answer is 19"],                  # true, premature
        "q1": ["20 * 2 = 40\n40 - 10 = 30\nThe answer is 30", "20 * 2 = 40\n40 - 10 = 31\nThe answer is 31"],
    }
    paths = {q: sorted(p) for q, p in paths.items()}
    pool = Scripted(lambda prompt, n: paths["q0" if "q0" in prompt else "q1"])
    for valid, want in ((None, 7), (ARITH.step_check, 4)):
        samples, st = sample_paths(pool, ARITH, rows, 5, 1.0, 1.0, 64, seed=0, valid=valid)
        kept = {s["path"] for s in samples}
        assert len(samples) == want and st["invalid"] == 7 - want
        if valid is not None:
            assert kept == {p for ps in paths.values() for p in ps if arith.answer_equations_valid(p)}
            assert "12 + 7 = 20\n20 - 6 = 14\nThe answer is 14" not in kept
            assert "12 + 7 = 19\n19 - 4 = 15\nThe answer is 15" in kept    # a false step, not a false equation


def test_a_rollout_with_a_false_equation_is_never_a_hit():
    row = arith_row()
    texts = ["12 + 7 = 19\n19 - 5 = 14\nThe answer is 14", "12 + 7 = 20\n20 - 6 = 14\nThe answer is 14",
             "12 + 7 = 19\n19 - 5 = 14\n14 + 0 = 15\nThe answer is 14", "12 + 7 = 19\nThe answer is 14",
             "12 + 7 = 19\n19 - 5 = 13\nThe answer is 13"]
    assert rollout_hits(ARITH, [row] * 5, texts) == [True, True, True, True, False]
    assert rollout_hits(ARITH, [row] * 5, texts, check=True) == [True, False, False, True, False]
    # through the prober: the simulator continues '12 + 7 = 19' with a lucky false equation half the time
    pool = Scripted(lambda prompt, n: ["19 - 5 = 14\nThe answer is 14", "19 - 6 = 14\nThe answer is 14"] * (n // 2))
    key = ("q0", ("12 + 7 = 19",))
    for check, hits in ((False, 4), (True, 2)):
        prober = Prober(ARITH, {"q0": row}, pool, 4, 1.0, 32, 0, check=check)
        assert prober.hits([key]) == {key: hits}
        assert prober.failed_check == (2 if check else 0)


def lucky_samples():
    row = arith_row()
    steps_ok = ["12 + 7 = 19", "19 - 5 = 14", "The answer is 14"]
    steps_lucky = ["12 + 7 = 20", "20 - 6 = 14", "The answer is 14"]      # right answer, false first equation
    samples = [{"id": "ok", "qid": "q0", "steps": steps_ok, "correct": True},
               {"id": "lucky", "qid": "q0", "steps": steps_lucky, "correct": True}]
    return row, samples


@pytest.mark.parametrize("mode", ["binary", "mc"])
def test_labels_of_an_answer_correct_path_with_a_false_equation(mode):
    """A simulator that always lands on the answer (it recomputes from the question) makes every prefix look
    right; with check_rollouts its rollouts from a false prefix carry the false equation and miss, and the
    path's own text is no hit either."""
    row, samples = lucky_samples()
    pool = Scripted(lambda prompt, n: ["The answer is 14"] * n)
    for skip in (True, False):
        plain, _ = label_samples(samples, {"q0": row}, ARITH, mode, pool, k=2, skip_correct_paths=skip,
                                 answer_probe=False)
        assert [r["labels"] for r in plain] == [[1, 1, 1], [1, 1, 1]]    # today: the lucky path is all right
    labels, st = label_samples(samples, {"q0": row}, ARITH, mode, pool, k=2, skip_correct_paths=True,
                               answer_probe=False, check_rollouts=True)
    assert labels[0]["labels"] == [1, 1, 1]
    assert labels[1]["labels"] == [0, 0, 0] and labels[1]["oracle"] == [0, 0, 0]
    assert [r["correct"] for r in labels] == [True, True]                 # the answer itself was right
    assert st.extra["paths_failing_check"] == 1 and st.extra["rollouts_failing_check"] >= 1
    q = versus_oracle(labels)
    assert q["f1"] == 1.0 and q["path_precision"] == 1.0 and q["paths_all_right"] == 1
    assert versus_oracle(plain)["path_precision"] == 0.5


def test_check_rollouts_is_a_no_op_for_tasks_without_a_checker_and_for_oracle_labels():
    row, samples = lucky_samples()
    labels, st = label_samples(samples, {"q0": row}, ARITH, "oracle", check_rollouts=True)
    assert [r["labels"] for r in labels] == [[1, 1, 1], [0, 0, 0]] and "paths_failing_check" not in st.extra
    assert rollout_hits(get_task("mmlu_math"), [{"answer": "14"}], ["12 + 7 = 20\nThe answer is 14"],
                        check=True) == [True]


def test_the_default_checks_are_process_feedback_only():
    """Defaults (issue 20, docs/RESULTS.md section 8): the checker shapes SIPF's labels and PRM scores; the
    sampling filter, which would change what every arm sees, stays off unless asked for."""
    cfg = C.build()
    assert cfg.sampling.require_valid_equations is False
    assert cfg.labeling.check_rollouts and cfg.prm.check_steps
    cfg = C.build(overrides=["sampling.require_valid_equations=true", "labeling.check_rollouts=false",
                             "prm.check_steps=false"])
    assert cfg.sampling.require_valid_equations and not cfg.labeling.check_rollouts and not cfg.prm.check_steps


def test_checked_scores_never_score_a_false_equation_above_zero():
    from sitf_ray.feedback.scoring import checked_scores
    steps = ["12 + 7 = 19", "19 - 5 = 15", "15 * 2 = 30", "The answer is 30"]
    assert checked_scores(ARITH, steps, [0.9, 0.95, 0.8, 0.7]) == [0.9, 0.0, 0.8, 0.7]
    gsm = ["She has 48/2 = 24 clips.", "Then 24 + 48 = 70 clips.", "#### 70"]
    assert checked_scores(GSM8K, gsm, [0.6, 0.99, 0.5]) == [0.6, 0.0, 0.5]
    assert checked_scores(get_task("mmlu_math"), ["12 + 7 = 20"], [0.9]) == [0.9]    # no checker: no-op
    rng = random.Random(0)
    for _ in range(300):                        # any false a op b = c, however the PRM scores it
        a, b, op = rng.randint(0, 60), rng.randint(1, 60), rng.choice("+-*")
        c = eval(f"{a} {op} {b}") + rng.choice([-3, -1, 1, 2, 10])
        assert checked_scores(ARITH, [f"{a} {op} {b} = {c}"], [rng.random()]) == [0.0]
