"""MMLU math (Hendrycks et al. 2021, MIT), evaluation only, in two variants.

* `TASK` (the default, name 'mmlu_math'): the SIPF paper's MMLU_Math, 354 open-ended items whose
  gold MMLU choice is a number (high-school, college and elementary mathematics). No choices are
  shown; the model answers "The answer is X" and is right when float(X) == float(answer). We parse X
  without `eval` (the paper evals it): integers, decimals, thousands separators, '$', a leading sign
  and simple fractions like '3/4' are understood.
* `TASK_MC` / `load_multiple_choice()`: all 1064 test questions of the five math subjects
  (abstract_algebra, college_mathematics, elementary_mathematics, high_school_mathematics,
  high_school_statistics) as four-way multiple choice, scored by the letter (`extract_letter`).

Only a `test` split exists; other splits raise a ValueError.
"""
from __future__ import annotations

import re
from typing import Optional

from ..data import STR, STR_LIST, data_path, hub_rows, read_jsonl, source_path
from .base import DataError, Task, normalize_number, numbers_equal, split_lines

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


_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_FRACTION = re.compile(r"(-?)\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")


def parse_number(s: str) -> Optional[str]:
    """The first number in `s` as a normalised string; 'a/b' fractions are divided out."""
    m_num = re.search(_NUMBER, s)
    m_frac = _FRACTION.search(s)
    if m_frac and (m_num is None or m_frac.start() <= m_num.start() + 1):
        den = float(m_frac.group(3))
        if den == 0:
            return None
        val = float(m_frac.group(2)) / den * (-1 if m_frac.group(1) else 1)
        return normalize_number(repr(round(val, 12))) if "e" not in repr(val) else repr(val)
    return normalize_number(m_num.group(0)) if m_num else None


def extract_answer(text: str) -> Optional[str]:
    """From the last 'The answer is X' (else '#### X', else the last number in the text)."""
    hits = re.findall(r"[Tt]he (?:final )?answer is[:\s]*([^\n]*)", text)
    for h in reversed(hits):
        v = parse_number(h)
        if v is not None:
            return v
    m = re.findall(r"####\s*([^\n]*)", text)
    if m and parse_number(m[-1]) is not None:
        return parse_number(m[-1])
    nums = re.findall(_NUMBER, text)
    return normalize_number(nums[-1]) if nums else None


def is_correct(row: dict, completion: str) -> bool:
    return numbers_equal(extract_answer(completion), str(row["answer"]))


TASK = Task(name="mmlu_math", load=load, prompt=prompt, target=lambda row: None, split_steps=split_lines,
            extract_answer=extract_answer, is_correct=is_correct, stop=["\nQuestion:"])


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
