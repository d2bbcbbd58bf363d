"""What every task provides: rows, a prompt, a step splitter and an answer check.

A task is a plain dataclass of functions so that the pipeline, labeler and evaluator never branch on
the task name. Rows are dicts with at least ``id``, ``question`` and ``answer``; code tasks add tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from sitf_ray.data import DataError  # noqa: F401  (tasks raise it; data/ defines it, below tasks)

# One number parser and one equality for every math task (answers.py), re-exported for the tasks.
from sitf_ray.tasks.answers import extract_final_number, normalize_number, numbers_equal  # noqa: F401


@dataclass
class Task:
    name: str
    load: Callable[..., list[dict]]                # load(split, cfg) -> rows
    prompt: Callable[[dict], str]                  # text the policy continues
    target: Callable[[dict], Optional[str]]        # gold solution text (SFT), None if unknown
    split_steps: Callable[[str], list[str]]        # solution text -> steps
    extract_answer: Callable[[str], Optional[str]]  # completion -> normalised final answer
    is_correct: Callable[[dict, str], bool]         # (row, completion) -> right?
    # Exact per-step oracle (only the synthetic task has one): (row, steps) -> [correct so far?]
    step_oracle: Optional[Callable[[dict, list[str]], list[bool]]] = None
    join_steps: Callable[[list[str]], str] = field(default="\n".join)  # steps -> solution text
    stop: list[str] = field(default_factory=list)  # extra stop strings for generation
    answer_prefix: Optional[str] = None            # how a final answer starts ('The answer is'); None for code
    is_code: bool = False
    # Many checks at once (code tasks run their sandboxed programs concurrently): (rows, completions) -> bools
    is_correct_many: Optional[Callable[[list, list], list]] = None
    # Step checker: (solution text) -> is every step's arithmetic true? (arith, gsm8k: every `a op b = c`
    # the model wrote; tasks/equations.py). None = nothing to check (always passes). Used by the paper's
    # sampling filter (sampling.require_valid_equations) and by labeling.check_rollouts.
    step_check: Optional[Callable[[str], bool]] = None


def passes_step_check(task: Task, text: str) -> bool:
    """The task's step checker on one solution text; True for tasks without one."""
    return task.step_check is None or bool(task.step_check(text))


def split_lines(text: str) -> list[str]:
    """Steps are non-empty lines (the paper splits on newlines)."""
    return [ln.strip() for ln in text.strip().split("\n") if ln.strip()]


def split_code_lines(text: str) -> list[str]:
    """Steps of code: each non-blank line, as written, with the blank lines just before it.

    Lossless: ``"\n".join(split_code_lines(t))`` is `t` itself (CRLF read as LF) without its leading and
    trailing blank lines, so a program judged, trained on or continued from its steps is the program the
    model wrote: blank lines and trailing spaces inside a triple-quoted string are part of its meaning.
    """
    steps: list[str] = []
    pending: list[str] = []
    for ln in text.replace("\r\n", "\n").split("\n"):
        if not ln.strip():
            pending.append(ln)
            continue
        steps.append("\n".join(pending + [ln]) if steps else ln)
        pending = []
    return steps

