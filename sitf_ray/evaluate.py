"""Accuracy / pass@1 on a task's test split: greedy decoding through the generator pool.

Math tasks compare the final answer; code tasks (MBPP, HumanEval) run the completion with the tests in
the sandbox (task.is_correct does that), many programs at a time.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .engines.base import GenParams
from .tasks.base import Task


def evaluate(pool, task: Task, rows: list[dict], max_tokens: int, seed: int = 0, workers: int = 4) -> dict:
    t0 = time.time()
    params = GenParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=tuple(task.stop))
    outs = pool.generate([task.prompt(r) for r in rows], params, seed=seed, desc="eval (greedy)")
    texts = [o[0].text for o in outs]
    if task.is_code:   # sandboxed runs are processes: overlap them
        with ThreadPoolExecutor(max_workers=workers) as ex:
            ok = list(ex.map(lambda rt: bool(task.is_correct(*rt)), zip(rows, texts)))
    else:
        ok = [bool(task.is_correct(r, t)) for r, t in zip(rows, texts)]
    preds = [{"qid": r["id"], "completion": t, "answer": task.extract_answer(t), "correct": c}
             for r, t, c in zip(rows, texts, ok)]
    return {"task": task.name, "n": len(rows), "correct": sum(ok), "accuracy": sum(ok) / max(1, len(rows)),
            "seconds": time.time() - t0, "predictions": preds}
