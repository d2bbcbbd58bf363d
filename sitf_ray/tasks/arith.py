"""The embedded quickstart task: seeded synthetic multi-step word problems with an exact step oracle.

    Question: Ann has 12 pens, buys 7 more, then gives away 5, then doubles them. How many pens now?
    Answer:
    12 + 7 = 19
    19 - 5 = 14
    14 * 2 = 28
    The answer is 28

Every step is checkable, so labels and PRM scores can be measured against the truth (DESIGN.md §5).
Splits are carved from one seeded pool of distinct questions, so no test question is ever trained on.
"""
from __future__ import annotations

import random
import re
from typing import Optional

from sitf_ray.tasks.base import Task, extract_final_number, numbers_equal, split_lines
from sitf_ray.tasks.equations import equations_true

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kim", "Leo",
         "Mia", "Ned", "Ola", "Pam", "Raj", "Sue", "Tom", "Uma", "Vic", "Wes", "Zoe"]
ITEMS = ["pens", "apples", "coins", "books", "cards", "shells", "stamps", "marbles", "eggs", "cups",
         "toys", "rocks", "beads", "seeds", "nuts", "pins"]
# Clauses per operation. '*' and '/' name their operand in words ("triples", "keeps a third"), so a
# step is not just copying a number: the model has to map the words to the operation and its operand.
ADD = ["buys {x} more", "finds {x} more", "gets {x} more", "wins {x} more"]
SUB = ["gives away {x}", "loses {x}", "sells {x}", "eats {x}"]
MUL = {2: "doubles them", 3: "triples them", 4: "gets 4 times as many"}
DIV = {2: "keeps half", 3: "keeps a third", 4: "keeps a quarter"}


def clause(op: str, x: int) -> str:
    if op == "+":
        return ADD[x % len(ADD)].format(x=x)
    if op == "-":
        return SUB[x % len(SUB)].format(x=x)
    return (MUL if op == "*" else DIV)[x]


STEP_RE = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
ANSWER_RE = re.compile(r"^\s*The answer is\s+(-?\d+)\s*$")


def _apply(a: int, op: str, b: int) -> Optional[int]:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b and a % b == 0 else None
    return None


def make_problem(rng: random.Random, min_ops: int, max_ops: int, max_value: int) -> dict:
    """One problem: start value, a chain of operations, canonical intermediate values."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(2, max(2, max_value // 4))
    v, ops, values = start, [], []
    for _ in range(rng.randint(min_ops, max_ops)):
        choices = []
        if v + 1 <= max_value:
            choices.append("+")
        if v > 1:
            choices.append("-")
        if 2 * v <= max_value:
            choices.append("*")
        divs = [d for d in DIV if v % d == 0]
        if divs:
            choices.append("/")
        op = rng.choice(choices)
        if op == "+":
            x = rng.randint(1, min(max_value - v, max(1, max_value // 3)))
        elif op == "-":
            x = rng.randint(1, v - 1)
        elif op == "*":
            x = rng.choice([m for m in MUL if v * m <= max_value])
        else:
            x = rng.choice(divs)
        v = _apply(v, op, x)
        ops.append((op, x))
        values.append(v)
    clauses = [clause(op, x) for op, x in ops]
    question = f"{name} has {start} {item}, " + ", then ".join(clauses) + f". How many {item} now?"
    return {"question": question, "answer": str(v), "start": start,
            "ops": [[op, x] for op, x in ops], "values": values}


def gold_solution(row: dict) -> str:
    lines, prev = [], row["start"]
    for (op, x), v in zip(row["ops"], row["values"]):
        lines.append(f"{prev} {op} {x} = {v}")
        prev = v
    lines.append(f"The answer is {row['answer']}")
    return "\n".join(lines)


def _pool(cfg) -> dict[str, list[dict]]:
    """All splits from one seeded stream of distinct questions (cached per config); each split draws from
    its own range of operations (ArithConfig.sft_ops / train_ops / eval_ops)."""
    key = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else repr(cfg)
    if key in _CACHE:
        return _CACHE[key]
    rng = random.Random(cfg.data_seed)
    sizes = {"test": cfg.n_test, "val": cfg.n_val, "sft": cfg.n_sft, "train": cfg.n_train}
    seen, out = set(), {}
    for split, n in sizes.items():
        lo, hi = cfg.ops(split)
        rows, stale = [], 0   # stale: draws since the last new question; the space is exhausted when it grows
        while len(rows) < n:
            stale += 1
            if stale > 5000:
                raise ValueError(f"arith: cannot draw {n} distinct {split} problems with max_value={cfg.max_value}, "
                                 f"ops {lo}-{hi}; lower task.arith.n_{split} or raise task.arith.max_value")
            p = make_problem(rng, lo, hi, cfg.max_value)
            if p["question"] in seen:
                continue
            seen.add(p["question"])
            rows.append(dict(p, id=f"arith-{split}-{len(rows)}"))
            stale = 0
        out[split] = rows
    _CACHE[key] = out
    return out


_CACHE: dict = {}


def load(split: str, cfg) -> list[dict]:
    """Rows of one split; cfg is the TaskConfig (or its .arith section)."""
    pool = _pool(getattr(cfg, "arith", cfg))
    if split not in pool:
        raise ValueError(f"arith: unknown split {split!r}; expected one of {sorted(pool)}")
    return pool[split]


def prompt(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer:\n"


def extract_answer(text: str) -> Optional[str]:
    m = re.search(r"The answer is\s+(-?\d+)", text)
    return str(int(m.group(1))) if m else None


def is_correct(row: dict, completion: str) -> bool:
    return numbers_equal(extract_answer(completion), str(row["answer"]))


def step_oracle(row: dict, steps: list[str]) -> list[bool]:
    """For each prefix steps[:i+1]: can it still be completed into a fully correct solution?

    A step is right when its equation is arithmetically true and lands on the canonical running value
    of that step (any operand order or spelling, e.g. 19 + 19 = 38 for doubling); the answer line is right
    when it follows all operations and states the answer. Once a step is wrong, every later prefix is wrong.
    """
    out, ok, n_ops = [], True, len(row["ops"])
    for i, step in enumerate(steps):
        if ok:
            m, a = STEP_RE.match(step), ANSWER_RE.match(step)
            if i < n_ops and m:
                x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                ok = _apply(x, op, y) == z and z == row["values"][i]
            elif i == n_ops and a:
                ok = int(a.group(1)) == int(row["answer"])
            else:
                ok = False
        out.append(ok)
    return out


def answer_equations_valid(text: str) -> bool:
    """Every equation in the text is exactly true (the paper's filter for math samples; arith's step checker).

    Any spelling is read ("12+7=20.", "12 + 7 = 19 = 20", a line break before the '='), not only the canonical
    `a op b = c` line, so a false step cannot pass by being written differently; division must be exact."""
    return equations_true(text, exact=True)


TASK = Task(name="arith", load=load, prompt=prompt, target=gold_solution, split_steps=split_lines,
            extract_answer=extract_answer, is_correct=is_correct, step_oracle=step_oracle,
            answer_prefix="The answer is", step_check=answer_equations_valid)


def corpus(cfg, n: int = 2000) -> list[str]:
    """Text for training the tokenizer: prompts + gold solutions of a fresh seeded stream."""
    rng = random.Random(cfg.data_seed + 1)
    lo = min(r[0] for r in (cfg.sft_ops, cfg.train_ops, cfg.eval_ops))
    hi = max(r[1] for r in (cfg.sft_ops, cfg.train_ops, cfg.eval_ops))
    out = []
    for _ in range(n):
        p = make_problem(rng, lo, hi, cfg.max_value)
        out.append(prompt(p) + gold_solution(p))
    return out


__all__ = ["TASK", "make_problem", "gold_solution", "step_oracle", "extract_final_number", "answer_equations_valid"]
