"""MBPP, Mostly Basic Python Problems (Austin et al. 2021, CC-BY-4.0): 974 tasks with 3 asserts each.

Prompt (SIPF's format; the model continues with code):

    '''
    Write a function to find the similar elements from the given two tuple lists. Your code should satisfy these tests:
    assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)
    ...
    '''

Standard split by task_id: prompt 1-10 (unused), test 11-510, val 511-600, sft = train = 601-974.
`sft` rows carry the gold code as target; `train` is the same 374 tasks for self-improvement (there is
no separate pool; the pipeline only uses their tests). We vendor the fixed upstream file (tasks 341,
596 and 642 got determinism fixes, see data/README.md). Steps are code lines as written (indentation
kept, blank lines kept with the next line: `base.split_code_lines`).

Two grading protocols, chosen by split (each loaded row carries `prompt_tests` and `grade_tests`):

* evaluation (`test`, `val`, `prompt`): the paper's and MBPP's own protocol (Austin et al. 2021; SIPF
  reports pass@1 on the 500 test tasks this way): the prompt shows the task's three `test_list`
  asserts and the completion must pass those three. Reported pass@1 uses this, so it compares with the
  paper's numbers; it cannot tell a solution from a lookup table of the three shown inputs.
* training rewards (`sft`, `train`): the prompt shows only the FIRST assert (it names the function and
  shows its signature); the completion must pass all three `test_list` asserts plus the
  `challenge_test_list` asserts where a task has them (only tasks 11-47 do, all in `test`). Two of the
  three graded asserts were never shown, so a lookup table of the shown input fails and
  self-training cannot learn to write one.

A completion is correct when its code passes the graded asserts (after `test_setup_code`) in the
sandbox (`sitf_ray.tasks.sandbox.check_program`: the verdict cannot be forged by exiting early or by objects
whose methods lie). The code is taken from the completion as the model wrote it (`extract_code`).
"""
from __future__ import annotations

import ast
import re
from typing import Optional

from sitf_ray.data import INT, STR, STR_LIST, hub_rows, read_jsonl, source_path
from sitf_ray.tasks.base import DataError, Task, split_code_lines
from sitf_ray.tasks.code import fenced_blocks, pick_block
from sitf_ray.tasks.sandbox import CPU_SECONDS, check_program, passed_many

FILE = "mbpp.jsonl"
SPEC = {"task_id": INT, "text": STR, "code": STR, "test_list": STR_LIST, "test_setup_code": STR}
RANGES = {"prompt": (1, 10), "test": (11, 510), "val": (511, 600), "sft": (601, 974), "train": (601, 974)}
LIMITS = {"sft": "n_sft", "train": "n_train", "val": "n_val", "test": "n_test"}
TRAINING_SPLITS = ("sft", "train")   # rewards: one assert shown, all asserts (+ challenge) graded
STOP = ["\n'''", '\n"""', "\nassert", "\nif __name__", "\n```", "\nprint(", "\nQuestion:", "\n# Test"]

_CACHE: dict = {}


def _all_rows(cfg) -> list[dict]:
    hub, path = getattr(cfg, "hub", None), getattr(cfg, "path", None)
    key = (hub, path)
    if key in _CACHE:
        return _CACHE[key]
    if hub:   # the hub's 'full' config splits the same 974 tasks four ways: join them back
        raw = []
        for split in ("prompt", "test", "validation", "train"):
            raw += hub_rows(hub, split, SPEC, id_field="task_id", may_be_empty=["test_setup_code"])
        seen = set()
        for r in raw:
            if r["task_id"] in seen:
                raise DataError(f"hub:{hub}: duplicate task_id {r['task_id']}")
            seen.add(r["task_id"])
    else:
        raw = read_jsonl(source_path(path, FILE, "all"), SPEC, id_field="task_id",
                         may_be_empty=["test_setup_code"])
    rows = []
    for r in sorted(raw, key=lambda r: r["task_id"]):
        rows.append({"id": f"mbpp-{r['task_id']}", "task_id": r["task_id"], "question": r["text"].strip(),
                     "answer": normalize_code(r["code"]), "test_list": [t.strip() for t in r["test_list"]],
                     "test_setup_code": normalize_code(r["test_setup_code"]),
                     "challenge_test_list": list(r.get("challenge_test_list") or [])})
    _CACHE[key] = rows
    return rows


def normalize_code(code: str) -> str:
    """CRLF -> LF, no trailing blanks (the upstream file has Windows line endings)."""
    return "\n".join(ln.rstrip() for ln in code.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip("\n")


def load(split: str, cfg) -> list[dict]:
    if split not in RANGES:
        raise ValueError(f"mbpp: unknown split {split!r}; expected one of {sorted(RANGES)}")
    lo, hi = RANGES[split]
    rows = [with_protocol(r, split) for r in _all_rows(cfg) if lo <= r["task_id"] <= hi]
    n = getattr(cfg, LIMITS.get(split, ""), None)
    return rows[:n] if n else rows


def with_protocol(row: dict, split: str) -> dict:
    """A copy of `row` with the asserts its prompt shows and those it is graded on (see the module doc)."""
    if split in TRAINING_SPLITS:
        return dict(row, prompt_tests=list(row["test_list"][:1]),
                    grade_tests=list(row["test_list"]) + list(row.get("challenge_test_list") or []))
    return dict(row, prompt_tests=list(row["test_list"]), grade_tests=list(row["test_list"]))


def tests_text(row: dict) -> str:
    """The program the sandbox runs after the solution: setup code, then every graded assert."""
    setup = row.get("test_setup_code") or ""
    graded = row.get("grade_tests") or row["test_list"]
    return (setup + "\n" if setup.strip() else "") + "\n".join(graded) + "\n"


def entry_point(row: dict) -> Optional[str]:
    """The function the asserts call: the first called name in the first assert that is not a builtin."""
    import builtins
    try:
        tree = ast.parse(row["test_list"][0])
    except (SyntaxError, IndexError):
        return None
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
                   key=lambda n: (n.lineno, n.col_offset))
    return next((c.func.id for c in calls if not hasattr(builtins, c.func.id)), None)


def prompt(row: dict) -> str:
    tests = "\n".join(row.get("prompt_tests") or row["test_list"])
    return f"'''\n{row['question']} Your code should satisfy these tests:\n{tests}\n'''\n"


def target(row: dict) -> Optional[str]:
    return row.get("answer")


def split_steps(text: str) -> list[str]:
    """Code lines as written, blank lines kept with the next line: "\\n".join(steps) is the text itself."""
    return split_code_lines(text)


_CODE_START = re.compile(r"^(def |class |import |from |@|[A-Za-z_][A-Za-z_0-9]*\s*=)")


def _compiles(code: str) -> bool:
    try:
        compile(code, "<completion>", "exec")
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def extract_answer(text: str) -> Optional[str]:
    """The code in a completion when the function's name is unknown: see extract_code."""
    return extract_code(text, None)


def extract_code(text: str, name: Optional[str]) -> Optional[str]:
    """The code in a completion: the fenced block that defines function `name` (see pick_block), else
    the text up to a stop marker.

    Leading prose before the first code line and trailing lines that break compilation are dropped.
    Returns None when nothing that looks like code is left.
    """
    block = pick_block(fenced_blocks(text), name)
    if block is not None:
        code = block
    else:
        code = text
        cut = min((i for i in (code.find(s) for s in STOP) if i >= 0), default=-1)
        if cut >= 0:
            code = code[:cut]
    lines = code.replace("\r\n", "\n").split("\n")
    if not _compiles("\n".join(lines)):   # prose before the code?
        for i, ln in enumerate(lines):
            if _CODE_START.match(ln):
                lines = lines[i:]
                break
    while lines and not _compiles("\n".join(lines)):   # chatter after the code?
        lines.pop()
    code = "\n".join(lines).strip("\n")
    return code if code.strip() else None


def is_correct(row: dict, completion: str, *, cpu_seconds: int = CPU_SECONDS, timeout: Optional[float] = None) -> bool:
    """Does the code of `completion` pass the row's graded asserts? cpu_seconds: the sandbox's time limit;
    timeout: its wall-clock backstop (None = the sandbox's default)."""
    code = extract_code(completion, entry_point(row))
    if code is None:
        return False
    return check_program(code, tests_text(row), cpu_seconds=cpu_seconds, timeout=timeout).status == "passed"


def is_correct_many(rows: list[dict], completions: list[str], *, workers: int = 4, cpu_seconds: int = CPU_SECONDS,
                    timeout: Optional[float] = None) -> list[bool]:
    """is_correct for many (row, completion) pairs, programs run concurrently; input order kept."""
    codes = [extract_code(c, entry_point(r)) for r, c in zip(rows, completions)]
    return passed_many([None if c is None else (c, tests_text(r)) for r, c in zip(rows, codes)],
                       workers=workers, cpu_seconds=cpu_seconds, timeout=timeout)


TASK = Task(name="mbpp", load=load, prompt=prompt, target=target, split_steps=split_steps,
            extract_answer=extract_answer, is_correct=is_correct, join_steps="\n".join, stop=STOP,
            is_code=True, is_correct_many=is_correct_many)

__all__ = ["TASK", "load", "prompt", "target", "split_steps", "extract_answer", "extract_code", "entry_point",
           "fenced_blocks", "pick_block", "is_correct", "tests_text", "normalize_code", "is_correct_many",
           "with_protocol"]
