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
596 and 642 got determinism fixes, see data/README.md). Steps are code lines with their indentation.
A completion is correct when its code passes all of the task's `test_list` asserts (after
`test_setup_code`) in the sandbox (`sitf_ray.sandbox.check_program`: the verdict cannot be forged by
exiting early or by objects that claim to equal anything).
"""
from __future__ import annotations

import re
from typing import Optional

from ..data import INT, STR, STR_LIST, hub_rows, read_jsonl, source_path
from .base import DataError, Task

FILE = "mbpp.jsonl"
SPEC = {"task_id": INT, "text": STR, "code": STR, "test_list": STR_LIST, "test_setup_code": STR}
RANGES = {"prompt": (1, 10), "test": (11, 510), "val": (511, 600), "sft": (601, 974), "train": (601, 974)}
LIMITS = {"sft": "n_sft", "train": "n_train", "val": "n_val", "test": "n_test"}
STOP = ["\n'''", '\n"""', "\nassert", "\nif __name__", "\n```", "\nprint(", "\nQuestion:", "\n# Test"]
TIMEOUT = 10.0     # seconds per program in the sandbox (a few MBPP gold solutions take ~1 s)

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
    rows = [r for r in _all_rows(cfg) if lo <= r["task_id"] <= hi]
    n = getattr(cfg, LIMITS.get(split, ""), None)
    return rows[:n] if n else rows


def tests_text(row: dict) -> str:
    """The program the sandbox runs after the solution: setup code, then every assert."""
    setup = row.get("test_setup_code") or ""
    return (setup + "\n" if setup.strip() else "") + "\n".join(row["test_list"]) + "\n"


def prompt(row: dict) -> str:
    tests = "\n".join(row["test_list"])
    return f"'''\n{row['question']} Your code should satisfy these tests:\n{tests}\n'''\n"


def target(row: dict) -> Optional[str]:
    return row.get("answer")


def split_steps(text: str) -> list[str]:
    """Non-empty code lines, indentation kept (it is part of the program)."""
    return [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:\n```|\Z)", re.S | re.I)
_CODE_START = re.compile(r"^(def |class |import |from |@|[A-Za-z_][A-Za-z_0-9]*\s*=)")


def _compiles(code: str) -> bool:
    try:
        compile(code, "<completion>", "exec")
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def extract_answer(text: str) -> Optional[str]:
    """The code in a completion: a ```python block if any, else the text up to a stop marker.

    Leading prose before the first code line and trailing lines that break compilation are dropped.
    Returns None when nothing that looks like code is left.
    """
    m = _FENCE.search(text)
    if m:
        code = m.group(1)
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


def is_correct(row: dict, completion: str, *, timeout: float = TIMEOUT) -> bool:
    from ..sandbox import check_program   # the sandbox is only needed for code tasks
    code = extract_answer(completion)
    if code is None:
        return False
    return check_program(code, tests_text(row), timeout=timeout).status == "passed"


def is_correct_many(rows: list[dict], completions: list[str], *, workers: int = 4,
                    timeout: float = TIMEOUT) -> list[bool]:
    """is_correct for many (row, completion) pairs, programs run concurrently; input order kept."""
    from ..sandbox import passed_many
    codes = [extract_answer(c) for c in completions]
    return passed_many([None if c is None else (c, tests_text(r)) for r, c in zip(rows, codes)],
                       workers=workers, timeout=timeout)


TASK = Task(name="mbpp", load=load, prompt=prompt, target=target, split_steps=split_steps,
            extract_answer=extract_answer, is_correct=is_correct, join_steps="\n".join, stop=STOP,
            is_code=True, is_correct_many=is_correct_many)

__all__ = ["TASK", "load", "prompt", "target", "split_steps", "extract_answer", "is_correct", "tests_text",
           "normalize_code", "is_correct_many"]
