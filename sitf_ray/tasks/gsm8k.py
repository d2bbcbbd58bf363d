"""GSM8K grade-school math (Cobbe et al. 2021, MIT): 7473 train and 1319 test word problems.

    Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many ...
    Answer:
    Natalia sold 48/2 = 24 clips in May.
    Natalia sold 48+24 = 72 clips altogether in April and May.
    The answer is 72

The gold target is the data set's solution with the `<<48/2=24>>` calculator annotations removed and
the final `#### 72` line replaced by `The answer is 72` (what SIPF trains on). Steps are lines.

Splits (disjoint, all carved by position so they are stable):
  * val   = the LAST n_val train rows (default 100), held out of everything else;
  * sft   = the first n_sft of the remaining train rows (gold solutions used for M_0);
  * train = the n_train rows after those (questions + final answers for self-improvement);
  * test  = the test file (first n_test if set).
  Defaults: n_train = 2000, n_sft = all other rows (7473 - 100 - 2000 = 5373). Give one of them and the
  other takes the rest of the pool; give both and their sum must fit (7373 with n_val = 100).
  `max_gold_steps=S` first keeps only problems whose gold solution has at most S reasoning lines (train
  1960 / test 326 rows for S=2), then splits as above.
Data: the vendored files, `cfg.path` (directory, '{source}' template or one JSONL file with
`question`/`answer`), or `cfg.hub` (e.g. 'openai/gsm8k:main').
"""
from __future__ import annotations

import re
from typing import Optional

from sitf_ray.data import STR, hub_rows, read_jsonl, source_path
from sitf_ray.tasks.base import DataError, Task, extract_final_number, normalize_number, numbers_equal, split_lines
from sitf_ray.tasks.equations import equations_true

FILES = {"train": "gsm8k_train.jsonl.gz", "test": "gsm8k_test.jsonl"}
SPEC = {"question": STR, "answer": STR}
DEFAULT_N_TRAIN = 2000
DEFAULT_N_VAL = 100

_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"(?:^|\n)####\s*(.+?)\s*$")


def clean_solution(raw: str) -> tuple[str, str]:
    """(solution with 'The answer is N', N) from a raw GSM8K answer; DataError if no '#### N' line."""
    m = _FINAL.search(raw)
    if not m:
        raise ValueError("no final '#### N' line")
    final = m.group(1).strip()
    body = _CALC.sub("", raw[:m.start()]).rstrip()
    text = f"{body}\nThe answer is {final}" if body else f"The answer is {final}"
    return text, final


def _rows(source: str, cfg) -> list[dict]:
    hub = getattr(cfg, "hub", None)
    if hub:
        raw = hub_rows(hub, source, SPEC)
        origin = f"hub:{hub}[{source}]"
    else:
        path = source_path(getattr(cfg, "path", None), FILES[source], source)
        raw = read_jsonl(path, SPEC)
        origin = path.name
    out = []
    for i, r in enumerate(raw):
        try:
            solution, final = clean_solution(r["answer"])
        except ValueError as e:
            raise DataError(f"{origin} line {r['_line']}: field 'answer' has {e}") from None
        answer = normalize_number(final)
        if answer is None:
            raise DataError(f"{origin} line {r['_line']}: field 'answer' ends in '#### {final}', not a number")
        out.append({"id": f"gsm8k-{source}-{i}", "question": r["question"].strip(), "answer": answer,
                    "solution": solution})
    return out


_CACHE: dict = {}


def gold_steps(row: dict) -> int:
    """Reasoning lines of the gold solution (without the final 'The answer is N' line)."""
    return len(split_lines(row["solution"])) - 1


def _source(source: str, cfg) -> list[dict]:
    key = (source, getattr(cfg, "path", None), getattr(cfg, "hub", None))
    if key not in _CACHE:
        _CACHE[key] = _rows(source, cfg)
    rows = _CACHE[key]
    s = getattr(cfg, "max_gold_steps", None)
    return [r for r in rows if gold_steps(r) <= s] if s else rows


def split_sizes(n_rows: int, n_sft: Optional[int], n_train: Optional[int], n_val: Optional[int]) -> tuple[int, int, int]:
    """(n_sft, n_train, n_val) carved from `n_rows` train rows; ValueError when they do not fit."""
    n_val = DEFAULT_N_VAL if n_val is None else n_val
    pool = n_rows - n_val
    if pool <= 0:
        raise ValueError(f"gsm8k: n_val={n_val} leaves no train rows (there are {n_rows})")
    if n_sft is None and n_train is None:
        n_train = min(DEFAULT_N_TRAIN, pool // 2)
    if n_sft is None:
        n_sft = pool - n_train
    if n_train is None:
        n_train = pool - n_sft
    if n_sft < 0 or n_train < 0 or n_sft + n_train > pool:
        raise ValueError(f"gsm8k: n_sft={n_sft} + n_train={n_train} exceed the {pool} train rows left "
                         f"after n_val={n_val}")
    return n_sft, n_train, n_val


def load(split: str, cfg) -> list[dict]:
    if split == "test":
        rows = _source("test", cfg)
        n = getattr(cfg, "n_test", None)
        return rows[:n] if n else rows
    if split not in ("sft", "train", "val"):
        raise ValueError(f"gsm8k: unknown split {split!r}; expected one of sft, train, val, test")
    rows = _source("train", cfg)
    n_sft, n_train, n_val = split_sizes(len(rows), getattr(cfg, "n_sft", None),
                                        getattr(cfg, "n_train", None), getattr(cfg, "n_val", None))
    if split == "val":
        return rows[len(rows) - n_val:]
    if split == "sft":
        return rows[:n_sft]
    return rows[n_sft:n_sft + n_train]


def prompt(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer:\n"


def target(row: dict) -> Optional[str]:
    return row.get("solution")


def extract_answer(text: str) -> Optional[str]:
    """Final number: 'The answer is N' (last one), else '#### N', else the last number in the text.

    Handles '$1,234.50' -> '1234.5', '18 dollars' -> '18', '7.0' -> '7', '-7'.
    """
    return extract_final_number(text)


def is_correct(row: dict, completion: str) -> bool:
    return numbers_equal(extract_answer(completion), str(row["answer"]))


TASK = Task(name="gsm8k", load=load, prompt=prompt, target=target, split_steps=split_lines,
            extract_answer=extract_answer, is_correct=is_correct, stop=["\nQuestion:"], answer_prefix="The answer is",
            step_check=equations_true)   # a calculator check of the model's own arithmetic (rounding allowed)

__all__ = ["TASK", "load", "prompt", "target", "extract_answer", "is_correct", "clean_solution",
           "split_sizes"]
