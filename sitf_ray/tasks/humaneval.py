"""HumanEval (Chen et al. 2021, MIT): 164 hand-written Python functions, evaluation only.

The prompt is the function signature with its docstring; the model writes the body. pass@1 follows
the official harness: the program ``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"``
runs in the sandbox (`sitf_ray.tasks.sandbox.check_program`, which adds an unforgeable pass verdict).
Generation stops at the official stop strings, so a completion is just the body. A completion that
is a fenced block instead (a chat model's habit) is read too: a block that defines the entry point
replaces the prompt's stub (the prompt still runs first, for its imports and helpers), a block without
one is taken as the body. Steps are code lines as written (`base.split_code_lines`, lossless).

Only a `test` split exists: asking for sft/train/val raises a ValueError (train on MBPP instead).
"""
from __future__ import annotations

import re
from typing import Optional

from sitf_ray.data import STR, hub_rows, read_jsonl, source_path
from sitf_ray.tasks.base import Task, split_code_lines
from sitf_ray.tasks.code import fenced_blocks, pick_block
from sitf_ray.tasks.sandbox import CPU_SECONDS, check_program, passed_many

FILE = "HumanEval.jsonl"
SPEC = {"task_id": STR, "prompt": STR, "entry_point": STR, "canonical_solution": STR, "test": STR}
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]

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
    """Code lines as written, blank lines kept with the next line: "\\n".join(steps) is the text itself."""
    return split_code_lines(text)


def extract_answer(text: str) -> Optional[str]:
    """The function body: the completion cut at the first official stop string (a fenced completion:
    the content of its block)."""
    if text.lstrip().startswith(("```", "~~~")):
        block = pick_block(fenced_blocks(text), None)
        return block if block and block.strip() else None
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
    body = text[:cut].rstrip()
    return body if body.strip() else None


def solution(row: dict, completion: str) -> Optional[str]:
    """The program text judged with the tests: the prompt followed by the body, or, when the completion
    holds a fenced block defining the entry point, the prompt with a stub body followed by that block."""
    block = pick_block(fenced_blocks(completion), row["entry_point"]) if "```" in completion or "~~~" in completion \
        else None
    if block is not None and re.search(rf"^def[ \t]+{re.escape(row['entry_point'])}[ \t]*\(", block, re.M):
        return row["prompt"] + "    pass\n\n" + block + "\n"
    body = extract_answer(completion)
    return None if body is None else row["prompt"] + body + "\n"


def program(row: dict, completion: str) -> str:
    """The exact program the official harness runs (for logs and debugging)."""
    return f"{row['prompt']}{completion}\n{row['test']}\ncheck({row['entry_point']})\n"


def is_correct(row: dict, completion: str, *, cpu_seconds: int = CPU_SECONDS, timeout: Optional[float] = None) -> bool:
    """Does the completion pass the task's check()? cpu_seconds: the sandbox's time limit; timeout: its
    wall-clock backstop (None = the sandbox's default)."""
    program = solution(row, completion)
    if program is None:
        return False
    res = check_program(program, row["test"], entry_point=row["entry_point"], cpu_seconds=cpu_seconds,
                        timeout=timeout)
    return res.status == "passed"


def is_correct_many(rows: list[dict], completions: list[str], *, workers: int = 4, cpu_seconds: int = CPU_SECONDS,
                    timeout: Optional[float] = None) -> list[bool]:
    """is_correct for many (row, completion) pairs, programs run concurrently; input order kept."""
    programs = [solution(r, c) for r, c in zip(rows, completions)]
    return passed_many([None if p is None else (p, r["test"], r["entry_point"]) for r, p in zip(rows, programs)],
                       workers=workers, cpu_seconds=cpu_seconds, timeout=timeout)


TASK = Task(name="humaneval", load=load, prompt=prompt, target=target, split_steps=split_steps,
            extract_answer=extract_answer, is_correct=is_correct, join_steps="\n".join, stop=STOP,
            is_code=True, is_correct_many=is_correct_many)

__all__ = ["TASK", "load", "prompt", "target", "split_steps", "extract_answer", "is_correct", "program",
           "is_correct_many", "solution"]
