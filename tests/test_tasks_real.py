"""The real-data tasks on their vendored files: loading, splits, answer extraction, code checking."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pydantic import ValidationError

from sitf_ray.config import TaskConfig
from sitf_ray.data import DATA_DIR
from sitf_ray.tasks import DataError, get_task
from sitf_ray.tasks import gsm8k, humaneval, mbpp, mmlu_math


SLACK = 60.0   # sandbox wall clock for programs that should finish (the test machine may be busy)


def ns(**kw):
    base = dict(path=None, hub=None, n_sft=None, n_train=None, n_val=None, n_test=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_registry_and_task_shape():
    for name in ("gsm8k", "mbpp", "humaneval", "mmlu_math"):
        task = get_task(name)
        assert task.name == name
        assert callable(task.load) and callable(task.is_correct)
    assert get_task("mbpp").is_code and get_task("humaneval").is_code and not get_task("gsm8k").is_code


def test_vendored_files_match_the_readme():
    readme = (DATA_DIR / "README.md").read_text()
    files = ["gsm8k_train.jsonl.gz", "gsm8k_test.jsonl", "mbpp.jsonl", "HumanEval.jsonl",
             "mmlu_math5_test.jsonl", "sipf/mmlu_math_test.jsonl"]
    total = 0
    for name in files:
        data = (DATA_DIR / name).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() in readme, name
    assert total < 5 * 2 ** 20


# ------------------------------------------------------------------------------------- GSM8K
def test_gsm8k_default_splits_are_sane_and_disjoint():
    cfg = TaskConfig(name="gsm8k")
    sizes = {s: len(gsm8k.load(s, cfg)) for s in ("sft", "train", "val", "test")}
    assert sizes == {"sft": 5373, "train": 2000, "val": 100, "test": 1319}
    ids = [r["id"] for s in ("sft", "train", "val") for r in gsm8k.load(s, cfg)]
    assert len(ids) == len(set(ids)) == 7473
    qs = {s: {r["question"] for r in gsm8k.load(s, cfg)} for s in ("sft", "train", "val")}
    assert not (qs["sft"] & qs["val"]) and not (qs["train"] & qs["val"])


def test_gsm8k_split_sizes_from_config():
    cfg = ns(n_sft=100, n_train=50, n_val=20, n_test=30)
    assert [len(gsm8k.load(s, cfg)) for s in ("sft", "train", "val", "test")] == [100, 50, 20, 30]
    assert gsm8k.load("val", cfg)[-1]["id"] == "gsm8k-train-7472"
    assert gsm8k.split_sizes(7473, 1000, None, 100) == (1000, 6373, 100)
    assert gsm8k.split_sizes(7473, None, 500, 100) == (6873, 500, 100)
    with pytest.raises(ValueError, match="exceed"):
        gsm8k.load("sft", ns(n_sft=7000, n_train=1000))
    with pytest.raises(ValueError, match="unknown split"):
        gsm8k.load("dev", ns())


def test_gsm8k_easy_subset_by_gold_steps():
    cfg = ns(n_sft=100, n_train=50, n_val=20, n_test=30, max_gold_steps=2)
    rows = {s: gsm8k.load(s, cfg) for s in ("sft", "train", "val", "test")}
    assert [len(v) for v in rows.values()] == [100, 50, 20, 30]
    assert all(gsm8k.gold_steps(r) <= 2 for v in rows.values() for r in v)
    ids = [r["id"] for s in ("sft", "train", "val") for r in rows[s]]
    assert len(set(ids)) == 170
    # ids keep the row's place in the full file; the subset skips the longer problems
    assert rows["test"][-1]["id"] != "gsm8k-test-29"
    assert len(gsm8k.load("test", ns(max_gold_steps=2))) == 326
    with pytest.raises(ValueError, match="exceed"):
        gsm8k.load("sft", ns(n_sft=1900, n_train=100, max_gold_steps=2))
    with pytest.raises(ValidationError, match="gsm8k only"):
        TaskConfig(name="arith", max_gold_steps=2)


def test_gsm8k_gold_targets_and_answers_on_real_rows():
    raw = [json.loads(line) for line in (DATA_DIR / "gsm8k_test.jsonl").read_text().splitlines()[:50]]
    rows = gsm8k.load("test", ns(n_test=50))
    for r, src in zip(rows, raw):
        final = src["answer"].split("####")[-1].strip()
        gold = gsm8k.target(r)
        assert "<<" not in gold and "####" not in gold
        assert gold.endswith(f"The answer is {final}")
        assert gsm8k.extract_answer(gold) == r["answer"] == gsm8k.extract_answer(src["answer"])
        assert float(r["answer"]) == float(final.replace(",", ""))
        assert gsm8k.is_correct(r, gold)
        assert not gsm8k.is_correct(r, f"The answer is {float(r['answer']) + 1}")
        steps = gsm8k.TASK.split_steps(gold)
        assert steps[-1] == f"The answer is {final}" and all(s.strip() == s and s for s in steps)
    first = rows[0]
    assert gsm8k.prompt(first) == f"Question: {first['question']}\nAnswer:\n"
    # train rows: thousands separators in '#### 1,080' are normalised
    train = gsm8k.load("sft", ns())
    assert any(r["answer"] == "1080" for r in train)


@pytest.mark.parametrize("text,expected", [
    ("The answer is $1,234.50", "1234.5"),
    ("#### -7", "-7"),
    ("so she pays 18 dollars", "18"),
    ("The answer is 7.0", "7"),
    ("It costs $5 each.\nThe answer is 40.", "40"),
    ("The answer is -$3", "-3"),
    ("The answer is 12 apples, not 15", "12"),
    ("The final answer is: 1,000,000", "1000000"),
    ("no number here", None),
])
def test_gsm8k_tricky_answers(text, expected):
    assert gsm8k.extract_answer(text) == expected


# -------------------------------------------------------------------------------------- MBPP
def test_mbpp_standard_splits():
    cfg = ns()
    split_ids = {s: [r["task_id"] for r in mbpp.load(s, cfg)] for s in ("prompt", "test", "val", "sft", "train")}
    assert {s: len(v) for s, v in split_ids.items()} == {"prompt": 10, "test": 500, "val": 90, "sft": 374,
                                                          "train": 374}
    assert split_ids["test"][0] == 11 and split_ids["test"][-1] == 510 and split_ids["sft"][0] == 601
    assert not set(split_ids["test"]) & set(split_ids["sft"])
    assert [r["task_id"] for r in mbpp.load("test", ns(n_test=5))] == [11, 12, 13, 14, 15]


def test_mbpp_vendored_file_has_the_determinism_fixes():
    rows = {r["task_id"]: r for r in mbpp._all_rows(ns())}
    assert "tuple(sorted(s))" in rows[341]["answer"] and "ordered tuples" in rows[341]["question"]
    assert all("sys.getsizeof" in t for t in rows[596]["test_list"])
    assert "sorted(set(sub))" in rows[642]["answer"]
    assert all("\r" not in r["answer"] for r in rows.values())


def test_mbpp_prompt_target_and_steps():
    row = mbpp.load("test", ns(n_test=1))[0]
    p = mbpp.prompt(row)
    assert p.startswith("'''\n") and p.endswith("\n'''\n")
    assert " Your code should satisfy these tests:\n" in p and row["test_list"][0] in p
    code = "def f(x):\n    if x:\n        return 1\n\n    return 2\n"
    assert mbpp.split_steps(code) == ["def f(x):", "    if x:", "        return 1", "\n    return 2"]
    assert mbpp.TASK.join_steps(mbpp.split_steps(code)) == code.rstrip("\n")
    assert mbpp.target(row) == row["answer"] and mbpp.TASK.is_code
    assert "\n'''" in mbpp.TASK.stop


def test_mbpp_extract_answer():
    fenced = "Here you go:\n```python\ndef f(x):\n    return x * 2\n```\nThis doubles x."
    assert mbpp.extract_answer(fenced) == "def f(x):\n    return x * 2"
    chatter = "def f(x):\n    return x * 2\nThis function doubles its input."
    assert mbpp.extract_answer(chatter) == "def f(x):\n    return x * 2"
    prose_first = "Sure! Below is the solution.\nimport math\ndef f(x):\n    return math.floor(x)\n"
    assert mbpp.extract_answer(prose_first) == "import math\ndef f(x):\n    return math.floor(x)"
    stopped = "def f(x):\n    return x\n'''\nassert f(1) == 1\n"
    assert mbpp.extract_answer(stopped) == "def f(x):\n    return x"
    assert mbpp.extract_answer("I do not know.") is None


def test_mbpp_training_rewards_are_graded_on_asserts_the_prompt_did_not_show():
    """Training splits show one assert and grade all (plus challenge asserts); evaluation splits keep the
    paper's protocol (three shown, the same three graded)."""
    train = mbpp.load("train", ns(n_train=3))
    for row in train:
        shown = [t for t in row["test_list"] if t in mbpp.prompt(row)]
        assert shown == row["test_list"][:1] and row["grade_tests"] == row["test_list"]
        assert all(t in mbpp.tests_text(row) for t in row["test_list"])
    test = mbpp.load("test", ns(n_test=1))[0]
    assert all(t in mbpp.prompt(test) for t in test["test_list"]) and test["grade_tests"] == test["test_list"]
    row11 = next(r for r in mbpp._all_rows(ns()) if r["task_id"] == 11)
    graded = mbpp.with_protocol(row11, "train")["grade_tests"]
    assert row11["challenge_test_list"] and graded == row11["test_list"] + row11["challenge_test_list"]
    # the same task under both protocols: sft/train rows are copies, the cached rows are untouched
    assert "grade_tests" not in mbpp._all_rows(ns())[0]


def _lookup_table(row, asserts):
    """A 'solution' that returns the expected value for exactly the inputs of `asserts`."""
    import ast as _ast
    name, cases = mbpp.entry_point(row), []
    for t in asserts:
        test = _ast.parse(t).body[0].test
        call, expected = test.left, test.comparators[0]
        cases.append(f"    if args == ({', '.join(_ast.unparse(a) for a in call.args)},):\n"
                     f"        return {_ast.unparse(expected)}\n")
    return f"def {name}(*args):\n" + "".join(cases) + "    return None\n"


def test_mbpp_lookup_table_of_the_shown_asserts_earns_no_training_reward():
    import ast as _ast

    def plain(r):   # `assert f(<literals>) == <literal>` asserts only
        try:
            return all(_ast.literal_eval(_ast.unparse(_ast.parse(t).body[0].test.left.args[0])) is not None
                       and isinstance(_ast.parse(t).body[0].test.left, _ast.Call) for t in r["test_list"])
        except (ValueError, AttributeError, IndexError, SyntaxError):
            return False
    row = next(r for r in mbpp.load("train", ns()) if plain(r))
    shown = _lookup_table(row, row["prompt_tests"])
    assert not mbpp.is_correct(row, shown, timeout=SLACK)                       # the reward protocol
    assert mbpp.is_correct(row, row["answer"], timeout=SLACK)
    paper = mbpp.with_protocol(row, "test")
    assert mbpp.is_correct(paper, _lookup_table(row, row["test_list"]), timeout=SLACK)   # honest: the paper's
    # protocol (reported pass@1) cannot tell a lookup table of its three shown asserts from a solution


CODE = "def f(x):\n    return x * 2"
FENCES = [   # (completion, what the model did)
    ("Usage:\n```python\nprint(f(2))\n```\nSolution:\n```python\n" + CODE + "\n```\n", "usage example first"),
    ("```python\n" + CODE + "\n```\nTest it:\n```python\nassert f(2) == 4\n```", "tests after"),
    ("```py\n" + CODE + "\n```", "py"), ("```Python3\n" + CODE + "\n```", "Python3"),
    ("```{python}\n" + CODE + "\n```", "{python}"), ("~~~python\n" + CODE + "\n~~~", "tilde fence"),
    ("````python\n" + CODE + "\n````", "four backticks"), ("```\n" + CODE + "\n```", "no language"),
    ("1. Write it:\n   ```python\n   def f(x):\n       return x * 2\n   ```\n", "indented in a list"),
    ("```python\n" + CODE + "\n", "never closed (cut off)"),
    ("```bash\npip install nothing\n```\n```python\n" + CODE + "\n```", "a shell block first"),
    ("```python\ndef f(x):\n    return x\n```\nFixed:\n```python\n" + CODE + "\n```", "draft, then the fix"),
    ("```python\nimport math\n```\n```python\ndef f(x):\n    return math.floor(x) * 2\n```", "imports apart"),
    # written loosely (issue 21): each failed before fenced_blocks read them as a reader would
    ("```python def f(x):\n    return x * 2\n```", "code on the tag's line"),
    ("```python import math\ndef f(x):\n    return math.floor(x) * 2\n```", "import on the tag's line"),
    ("Here it is:\n```def f(x): return x * 2```", "one line, fences on both ends"),
    ("```python\n" + CODE + "```\nDone.", "closed at the end of the last code line"),
    ("```python\n" + CODE + "\n``` That is all.\n", "closing fence followed by prose"),
    ("```python\nimport math\n```python\ndef f(x):\n    return math.floor(x) * 2\n```", "reopened, never closed"),
    ("~~~~\n" + CODE + "\n~~~~ end", "four tildes, prose after"),
    ("- Solution:\n\t```py\n\tdef f(x):\n\t    return x * 2\n\t```", "tab-indented in a list item"),
    ("Answer:\n```python\n" + CODE + "\n\nprint(f(2))", "never closed, usage after"),
]


@pytest.mark.parametrize("text,what", FENCES, ids=[f[1] for f in FENCES])
def test_mbpp_code_extraction_takes_the_block_defining_the_entry_point(text, what):
    code = mbpp.extract_code(text, "f")
    assert code is not None and "def f(x):" in code and "return x * 2" in code or "math.floor" in code, (what, code)
    ns_ = {}
    exec(code, ns_)
    assert ns_["f"](2) == 4, what


def test_code_is_judged_and_continued_as_written():
    """A right solution whose triple-quoted string holds a blank line: its steps give the text back, so the
    path judged and trained on and every rollout prefix are the program the model wrote (it failed when
    steps dropped blank lines)."""
    from sitf_ray.feedback.labeling import prefix_text
    row = {"id": "x", "task_id": 0, "question": "Return the banner.", "test_list": ["assert banner() == 'a\\n\\nb'"],
           "test_setup_code": "", "challenge_test_list": []}
    row = mbpp.with_protocol(row, "train")
    code = 'def banner():\n    text = """a\n\nb"""\n    return text   \n'
    assert mbpp.is_correct(row, code, timeout=SLACK)
    steps = mbpp.TASK.split_steps(code)
    path = mbpp.TASK.join_steps(steps)
    assert path == code.rstrip("\n") and mbpp.is_correct(row, path, timeout=SLACK)
    for i in range(1, len(steps) + 1):
        assert (mbpp.prompt(row) + code).startswith(prefix_text(mbpp.TASK, row, steps[:i]))
    body = '    s = """x\n\n    y"""\n    return s\n'
    assert humaneval.TASK.join_steps(humaneval.split_steps(body)) == body.rstrip("\n")


def test_humaneval_fenced_completion():
    row = humaneval.load("test", ns(n_test=3))[2]       # truncate_number
    fenced = f"```python\ndef {row['entry_point']}(number: float) -> float:\n    return number % 1.0\n```"
    assert humaneval.is_correct(row, fenced, timeout=SLACK)
    assert humaneval.is_correct(row, "```python\n    return number % 1.0\n```", timeout=SLACK)


def test_mbpp_gold_code_passes_and_wrong_code_fails():
    rows = mbpp.load("test", ns(n_test=6))
    for row in rows:
        assert mbpp.is_correct(row, row["answer"], timeout=SLACK), row["task_id"]
        assert mbpp.is_correct(row, "```python\n" + row["answer"] + "\n```\nDone.", timeout=SLACK)
    wrong = rows[0]["answer"].replace("return", "return None and ", 1)
    assert not mbpp.is_correct(rows[0], wrong, timeout=SLACK)
    assert not mbpp.is_correct(rows[0], rows[1]["answer"], timeout=SLACK)   # another task's code
    assert not mbpp.is_correct(rows[0], "import sys\nsys.exit(0)\n", timeout=SLACK)
    many = mbpp.is_correct_many(rows + rows[:1], [r["answer"] for r in rows] + ["no code here"], timeout=SLACK)
    assert many == [True] * len(rows) + [False]
    # test_setup_code (task 927 builds a tree with the solution's Node class)
    row927 = next(r for r in mbpp._all_rows(ns()) if r["task_id"] == 927)
    assert row927["test_setup_code"] and mbpp.is_correct(row927, row927["answer"], timeout=SLACK)


# --------------------------------------------------------------------------------- HumanEval
def test_humaneval_rows_and_splits():
    rows = humaneval.load("test", ns())
    assert len(rows) == 164 and rows[0]["id"] == "HumanEval/0"
    assert len({r["id"] for r in rows}) == 164
    assert humaneval.prompt(rows[0]) == rows[0]["prompt"]
    for split in ("sft", "train", "val"):
        with pytest.raises(ValueError, match="only a 'test' split"):
            humaneval.load(split, ns())


def test_humaneval_canonical_solutions_pass_and_wrong_bodies_fail():
    rows = humaneval.load("test", ns(n_test=5))
    for row in rows:
        assert humaneval.is_correct(row, row["answer"], timeout=SLACK), row["id"]
        # generation that ran past the body is cut at the official stop strings
        assert humaneval.is_correct(row, row["answer"] + "\n\ndef extra():\n    pass\n", timeout=SLACK)
    assert not humaneval.is_correct(rows[0], "    return False\n", timeout=SLACK)
    assert not humaneval.is_correct(rows[2], "    return 0.0\n", timeout=SLACK)
    assert not humaneval.is_correct(rows[1], "    import os\n    os._exit(0)\n", timeout=SLACK)
    bodies = [r["answer"] for r in rows] + ["    return False\n"]
    assert humaneval.is_correct_many(rows + rows[:1], bodies, timeout=SLACK) == [True] * 5 + [False]


def test_humaneval_extract_answer_and_program():
    row = humaneval.load("test", ns(n_test=1))[0]
    body = "    return False\n"
    assert humaneval.extract_answer(body + "\nif __name__ == '__main__':\n    print(1)") == body.rstrip()
    assert humaneval.extract_answer(body + "\n# tests\nassert x") == body.rstrip()
    prog = humaneval.program(row, body)
    assert prog.startswith(row["prompt"] + body) and prog.rstrip().endswith(f"check({row['entry_point']})")


# --------------------------------------------------------------------------------- MMLU math
def test_mmlu_math_open_ended_rows():
    rows = mmlu_math.load("test", ns())
    assert len(rows) == 354 and len({r["id"] for r in rows}) == 354
    for r in rows:
        float(r["answer"])
        if r["answer_raw"] == "2,2,4":   # a list of sides; the paper's comma-dropping made its gold 224
            assert r["answer"] == "224" and mmlu_math.is_correct(r, "The answer is 224")
            continue
        assert mmlu_math.is_correct(r, f"Let me think.\nThe answer is {r['answer_raw']}")
        assert mmlu_math.is_correct(r, f"The answer is {r['answer']}.")
        assert not mmlu_math.is_correct(r, f"The answer is {float(r['answer']) + 1}")
    by_raw = {r["answer_raw"]: r["answer"] for r in rows}
    assert by_raw["2,000"] == "2000" and by_raw["0.547"] == "0.547"
    with pytest.raises(ValueError, match="only a 'test' split"):
        mmlu_math.load("sft", ns())


@pytest.mark.parametrize("text,expected", [
    ("The answer is 3/4", "0.75"), ("The answer is $1,234.50", "1234.5"), ("The answer is -7.", "-7"),
    ("#### 12", "12"), ("it is 18 dollars", "18"), ("The answer is 0.0261", "0.0261"),
])
def test_mmlu_math_number_extraction(text, expected):
    assert mmlu_math.extract_answer(text) == expected


def test_mmlu_multiple_choice_rows():
    rows = mmlu_math.load_multiple_choice()
    assert len(rows) == 1064 and len({r["id"] for r in rows}) == 1064
    subjects = {}
    for r in rows:
        subjects[r["subject"]] = subjects.get(r["subject"], 0) + 1
        assert r["answer"] in "ABCD" and len(r["choices"]) == 4
        assert mmlu_math.is_correct_multiple_choice(r, f"The answer is ({r['answer']})")
    assert subjects == {"abstract_algebra": 100, "college_mathematics": 100, "elementary_mathematics": 378,
                        "high_school_mathematics": 270, "high_school_statistics": 216}
    p = mmlu_math.prompt_multiple_choice(rows[0])
    assert "(A) " in p and "(D) " in p


@pytest.mark.parametrize("text,expected", [
    ("The answer is (B)", "B"), ("B. 12", "B"), ("answer: b", "B"), ("answer: (c)", "C"),
    ("Answer: D", "D"), ("so it must be C", "C"), ("the answer is a prime number, so D", "D"),
    ("The answer is a.", "A"), ("I cannot tell", None),
])
def test_extract_letter(text, expected):
    assert mmlu_math.extract_letter(text) == expected


# ----------------------------------------------------------------------------- bad data rows
def _write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


GOOD_MBPP = {"task_id": 11, "text": "Write f.", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"],
             "test_setup_code": "", "challenge_test_list": []}


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.pop("text"), r"line 2: field 'text' is missing"),
    (lambda r: r.update(task_id="12"), r"line 2: field 'task_id' must be int, got str"),
    (lambda r: r.update(text="   "), r"line 2: field 'text' is empty"),
    (lambda r: r.update(test_list=["assert 1", 2]), r"line 2: field 'test_list' must be a list of str"),
    (lambda r: r.update(task_id=11), r"line 2: duplicate task_id 11 \(first on line 1\)"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, mutate, message):
    second = dict(GOOD_MBPP, task_id=12)
    mutate(second)
    path = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD_MBPP).encode(), json.dumps(second).encode()])
    mbpp._CACHE.clear()
    with pytest.raises(DataError, match="bad.jsonl " + message):
        mbpp.load("test", ns(path=path))


def test_invalid_utf8_and_json_are_reported(tmp_path):
    path = _write(tmp_path / "q.jsonl", [b'{"question": "ok?", "answer": "1"}', b'{"question": "\xff", "answer": "2"}'])
    with pytest.raises(DataError, match=r"q.jsonl line 2: invalid UTF-8"):
        mmlu_math.load("test", ns(path=path))
    path = _write(tmp_path / "j.jsonl", [b'{"question": "ok?", "answer": "1"}', b'{"question": '])
    with pytest.raises(DataError, match=r"j.jsonl line 2: not valid JSON"):
        mmlu_math.load("test", ns(path=path))
    path = _write(tmp_path / "n.jsonl", [b'{"question": "ok?", "answer": "one"}'])
    with pytest.raises(DataError, match=r"line 1: field 'answer' is not a number"):
        mmlu_math.load("test", ns(path=path))


def test_gsm8k_from_a_local_file(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
            for i in range(30)]
    src = tmp_path / "g.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = ns(path=str(src), n_val=5, n_sft=10)
    assert [len(gsm8k.load(s, cfg)) for s in ("sft", "train", "val", "test")] == [10, 15, 5, 30]
    assert gsm8k.target(gsm8k.load("sft", cfg)[3]) == "3 + 1 = 4\nThe answer is 4"
    bad = tmp_path / "nofinal.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "no final line"}) + "\n")
    with pytest.raises(DataError, match=r"nofinal.jsonl line 1: field 'answer' has no final '#### N' line"):
        gsm8k.load("test", ns(path=str(bad)))
    with pytest.raises(DataError, match="not found"):
        gsm8k.load("test", ns(path=str(tmp_path / "missing.jsonl")))


def test_data_readme_names_licenses():
    text = (DATA_DIR / "README.md").read_text()
    for word in ("MIT", "CC-BY-4.0", "openai/grade-school-math", "google-research", "openai/human-eval",
                 "hendrycks/test", "ChenKy23/SIPF"):
        assert word in text
    assert re.search(r"Austin", text)
