"""What every task provides: rows, a prompt, a step splitter and an answer check.

A task is a plain dataclass of functions so that the pipeline, labeler and evaluator never branch on
the task name. Rows are dicts with at least ``id``, ``question`` and ``answer``; code tasks add tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional


class DataError(ValueError):
    """A data row is unusable; the message names the file/row and the field."""


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
    is_code: bool = False
    # Many checks at once (code tasks run their sandboxed programs concurrently): (rows, completions) -> bools
    is_correct_many: Optional[Callable[[list, list], list]] = None


def split_lines(text: str) -> list[str]:
    """Steps are non-empty lines (the paper splits on newlines)."""
    return [ln.strip() for ln in text.strip().split("\n") if ln.strip()]


_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"


def normalize_number(s: str) -> Optional[str]:
    """'$1,234.50' -> '1234.5'; '7.0' -> '7'; returns None if no number."""
    m = re.search(_NUM, s)
    if not m:
        return None
    t = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        v = float(t)
    except ValueError:
        return None
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v).rstrip("0").rstrip(".")


def extract_final_number(text: str) -> Optional[str]:
    """Final answer from 'The answer is N', '#### N', or else the last number in the text."""
    for pat in (r"[Tt]he (?:final )?answer is[:\s]*(" + _NUM + ")", r"####\s*(" + _NUM + ")"):
        hits = re.findall(pat, text)
        if hits:
            return normalize_number(hits[-1])
    hits = re.findall(_NUM, text)
    return normalize_number(hits[-1]) if hits else None


def numbers_equal(a: Optional[str], b: Optional[str]) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a == b
