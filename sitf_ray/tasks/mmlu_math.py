"""MMLU math (Hendrycks et al. 2021, MIT), evaluation only, in two variants.

* `TASK` (the default, name 'mmlu_math'): the SIPF paper's MMLU_Math, 354 open-ended items whose
  gold MMLU choice is a number (high-school, college and elementary mathematics). No choices are
  shown; the model answers "The answer is X" and is right when X equals the answer as a number (the paper
  compares float(X) with float(answer); we allow a relative 1e-6). We parse X without `eval` (the paper
  evals it) with the math tasks' one number parser (answers.py): signs, thousands separators, decimals,
  fractions ('3/4', '\\frac{3}{4}'), mixed numbers, percentages, '\\boxed{}' and LaTeX delimiters.
  One gold answer is not a number: item 120's "2,2,4" (three sides) became 224 by the paper's
  comma-dropping; only "224" matches it.
* `TASK_MC` / `load_multiple_choice()`: all 1064 test questions of the five math subjects
  (abstract_algebra, college_mathematics, elementary_mathematics, high_school_mathematics,
  high_school_statistics) as four-way multiple choice, scored by the letter (`extract_letter`).

Only a `test` split exists; other splits raise a ValueError.
"""
from __future__ import annotations

import re
from typing import Optional

from sitf_ray.data import STR, STR_LIST, data_path, hub_rows, read_jsonl, source_path
from sitf_ray.tasks.base import DataError, Task, extract_final_number, normalize_number, numbers_equal, split_lines

FILE = "sipf/mmlu_math_test.jsonl"
MC_FILE = "mmlu_math5_test.jsonl"
SPEC = {"question": STR, "answer": STR}
MC_SPEC = {"subject": STR, "question": STR, "choices": STR_LIST, "answer": STR}
LETTERS = "ABCD"

_CACHE: dict = {}


def _only_test(split: str, name: str) -> None:
    if split != "test":
        raise ValueError(f"{name} has only a 'test' split (evaluation only), not {split!r}")


def _clean_answer(raw: str) -> Optional[str]:
    """'2,000' -> '2000', '0.547' -> '0.547' (as the paper: strip, drop commas, must be a float)."""
    t = raw.strip().replace(",", "")
    try:
        float(t)
    except ValueError:
        return None
    return normalize_number(t) if re.fullmatch(r"-?\d+(?:\.\d+)?", t) else t


def load(split: str, cfg) -> list[dict]:
    _only_test(split, "mmlu_math")
    hub, path = getattr(cfg, "hub", None), getattr(cfg, "path", None)
    key = ("open", hub, path)
    if key not in _CACHE:
        src = f"hub:{hub}" if hub else source_path(path, FILE, "test")
        raw = hub_rows(hub, "test", SPEC) if hub else read_jsonl(src, SPEC)
        name = src if hub else src.name
        rows = []
        for i, r in enumerate(raw):
            ans = _clean_answer(r["answer"])
            if ans is None:
                raise DataError(f"{name} line {r['_line']}: field 'answer' is not a number: {r['answer']!r}")
            rid = r.get("idx", i)
            rows.append({"id": f"mmlu_math-{rid}", "question": r["question"].strip(), "answer": ans,
                         "answer_raw": r["answer"]})
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(x for x in ids if ids.count(x) > 1)
            raise DataError(f"{name}: duplicate idx in id {dup!r}")
        _CACHE[key] = rows
    rows = _CACHE[key]
    n = getattr(cfg, "n_test", None)
    return rows[:n] if n else rows


def prompt(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer:\n"


def parse_number(s: str) -> Optional[str]:
    """The first number in `s` as canonical text; fractions, mixed numbers and LaTeX understood (answers.py)."""
    return normalize_number(s)


def extract_answer(text: str) -> Optional[str]:
    """The final number: last \\boxed{}, else the last 'The answer is X', else '#### X', else the last number."""
    return extract_final_number(text)


def is_correct(row: dict, completion: str) -> bool:
    return numbers_equal(extract_answer(completion), str(row["answer"]))


TASK = Task(name="mmlu_math", load=load, prompt=prompt, target=lambda row: None, split_steps=split_lines,
            extract_answer=extract_answer, is_correct=is_correct, stop=["\nQuestion:"], answer_prefix="The answer is")


# --------------------------------------------------------------------------- multiple choice variant
def load_multiple_choice(split: str = "test", cfg=None) -> list[dict]:
    """The five MMLU math subjects, four-way multiple choice (1064 test rows)."""
    _only_test(split, "mmlu_math (multiple choice)")
    path = getattr(cfg, "path", None) if cfg is not None else None
    hub = getattr(cfg, "hub", None) if cfg is not None else None
    key = ("mc", hub, path)
    if key not in _CACHE:
        src = f"hub:{hub}" if hub else (source_path(path, MC_FILE, "test") if path else data_path(MC_FILE))
        raw = hub_rows(hub, "test", MC_SPEC) if hub else read_jsonl(src, MC_SPEC)
        name = src if hub else src.name
        rows, counts = [], {}
        for r in raw:
            if len(r["choices"]) != 4:
                raise DataError(f"{name} line {r['_line']}: field 'choices' must have 4 entries, "
                                f"got {len(r['choices'])}")
            letter = r["answer"].strip().upper()
            if letter not in LETTERS or len(letter) != 1:
                raise DataError(f"{name} line {r['_line']}: field 'answer' must be one of A-D, "
                                f"got {r['answer']!r}")
            k = counts[r["subject"]] = counts.get(r["subject"], -1) + 1
            rows.append({"id": f"mmlu-{r['subject']}-{k}", "subject": r["subject"],
                         "question": r["question"].strip(), "choices": list(r["choices"]), "answer": letter})
        _CACHE[key] = rows
    rows = _CACHE[key]
    n = getattr(cfg, "n_test", None) if cfg is not None else None
    return rows[:n] if n else rows


def prompt_multiple_choice(row: dict) -> str:
    opts = "\n".join(f"({L}) {c}" for L, c in zip(LETTERS, row["choices"]))
    return f"Question: {row['question']}\nOptions:\n{opts}\nAnswer:\n"


# A letter after "answer is"/"answer:": upper case, or lower case only in parentheses or before
# punctuation/end of text, so "the answer is a prime" is not read as (A).
_AFTER = r"\s*(?:\(\s*([A-Da-d])\s*\)|([A-D])(?![A-Za-z0-9])|([a-d])(?=\s*(?:[.!,;)]|$)))"
_LETTER_PATTERNS = [
    re.compile(r"(?i:answer\s+is\s*:?)" + _AFTER),
    re.compile(r"(?i:answer\s*[:=])" + _AFTER),
    re.compile(r"(?:^|\n)\s*\(?([A-D])\)?\s*[.:)](?:\s|$)"),                 # "B. 12" / "(B): ..."
    re.compile(r"\(([A-D])\)"),                                           # "(B)" anywhere
    re.compile(r"(?<![A-Za-z0-9])([A-D])[\s.!)]*$"),                      # bare letter at the end
]


def extract_letter(text: str) -> Optional[str]:
    """'A'..'D' from "The answer is (B)", "answer: b", "B. 12", "... (C)", a bare letter at the end."""
    for pat in _LETTER_PATTERNS:
        for m in reversed(list(pat.finditer(text))):
            letter = next((g for g in m.groups() if g), None)
            if letter:
                return letter.upper()
    return None


def is_correct_multiple_choice(row: dict, completion: str) -> bool:
    return extract_letter(completion) == row["answer"]


TASK_MC = Task(name="mmlu_math_mc", load=load_multiple_choice, prompt=prompt_multiple_choice,
               target=lambda row: None, split_steps=split_lines, extract_answer=extract_letter,
               is_correct=is_correct_multiple_choice, stop=["\nQuestion:"])

__all__ = ["TASK", "TASK_MC", "load", "load_multiple_choice", "prompt", "prompt_multiple_choice",
           "extract_answer", "extract_letter", "is_correct", "is_correct_multiple_choice", "parse_number"]
