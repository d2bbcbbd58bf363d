"""HumanEval (Chen et al. 2021, MIT): 164 hand-written Python functions, evaluation only.

The prompt is the function signature with its docstring; the model writes the body. pass@1 follows
the official harness: the program ``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"``
runs in the sandbox (`sitf_ray.sandbox.check_program`, which adds an unforgeable pass verdict).
Generation stops at the official stop strings, so a completion is just the body.

Only a `test` split exists: asking for sft/train/val raises a ValueError (train on MBPP instead).
"""
from __future__ import annotations

from typing import Optional

from ..data import STR, hub_rows, read_jsonl, source_path
from .base import Task

FILE = "HumanEval.jsonl"
SPEC = {"task_id": STR, "prompt": STR, "entry_point": STR, "canonical_solution": STR, "test": STR}
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
TIMEOUT = 10.0

_CACHE: dict = {}


def _rows(cfg) -> list[dict]:
    hub, path = getattr(cfg, "hub", None), getattr(cfg, "path", None)
    key = (hub, path)
    if key not in _CACHE:
        if hub:
            raw = hub_rows(hub, "test", SPEC, id_field="task_id")
        else:
            raw = read_jsonl(source_path(path, FILE, "test"), SPEC, id_field="task_id")
        _CACHE[key] = [{"id": r["task_id"], "task_id": r["task_id"], "question": r["prompt"],
                        "prompt": r["prompt"], "answer": r["canonical_solution"],
                        "entry_point": r["entry_point"].strip(), "test": r["test"]} for r in raw]
    return _CACHE[key]


def load(split: str, cfg) -> list[dict]:
    if split != "test":
        raise ValueError(f"humaneval has only a 'test' split (evaluation only), not {split!r}; "
                         "train on mbpp and evaluate on humaneval")
    rows = _rows(cfg)
    n = getattr(cfg, "n_test", None)
    return rows[:n] if n else rows


def prompt(row: dict) -> str:
    return row["prompt"]


def target(row: dict) -> Optional[str]:
    return row.get("answer")


def split_steps(text: str) -> list[str]:
    """Non-empty code lines, indentation kept."""
    return [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]


def extract_answer(text: str) -> Optional[str]:
    """The function body: the completion cut at the first official stop string."""
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
    body = text[:cut].rstrip()
    return body if body.strip() else None


def program(row: dict, completion: str) -> str:
    """The exact program the official harness runs (for logs and debugging)."""
    return f"{row['prompt']}{completion}\n{row['test']}\ncheck({row['entry_point']})\n"


def is_correct(row: dict, completion: str, *, timeout: float = TIMEOUT) -> bool:
    from ..sandbox import check_program
    body = extract_answer(completion)
    if body is None:
        return False
    res = check_program(row["prompt"] + body + "\n", row["test"], entry_point=row["entry_point"],
                        timeout=timeout)
    return res.status == "passed"


def is_correct_many(rows: list[dict], completions: list[str], *, workers: int = 4,
                    timeout: float = TIMEOUT) -> list[bool]:
    """is_correct for many (row, completion) pairs, programs run concurrently; input order kept."""
    from ..sandbox import passed_many
    bodies = [extract_answer(c) for c in completions]
    return passed_many([None if b is None else (r["prompt"] + b + "\n", r["test"], r["entry_point"])
                        for r, b in zip(rows, bodies)], workers=workers, timeout=timeout)


TASK = Task(name="humaneval", load=load, prompt=prompt, target=target, split_steps=split_steps,
            extract_answer=extract_answer, is_correct=is_correct, join_steps="\n".join, stop=STOP,
            is_code=True, is_correct_many=is_correct_many)

__all__ = ["TASK", "load", "prompt", "target", "split_steps", "extract_answer", "is_correct", "program",
           "is_correct_many"]
