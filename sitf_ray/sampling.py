"""Sampling N diverse step-by-step solutions per question with the policy (stage 1 of an iteration)."""
from __future__ import annotations

import difflib

from .engines.base import GenParams
from .tasks.base import Task


def normalize_steps(steps: list[str]) -> tuple:
    return tuple(" ".join(s.split()) for s in steps)


def sample_paths(pool, task: Task, rows: list[dict], n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int, dedupe: bool = True, valid=None,
                 code_similarity: float = 0.95) -> tuple[list[dict], dict]:
    """N completions per row -> sample dicts (id, qid, path, steps, answer, correct, n_tokens, finish).

    Dedupe: math paths by their normalised step sequence; code paths also when difflib similarity to a kept
    path is >= code_similarity (the paper dedupes code by edit distance). `valid(path) -> bool` drops paths
    (e.g. a false equation) before deduplication.
    """
    params = GenParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(task.stop))
    outs = pool.generate([task.prompt(r) for r in rows], params, seed=seed, desc=f"sample x{n}")
    samples, stats = [], {"generated": 0, "kept": 0, "duplicates": 0, "invalid": 0, "truncated": 0, "tokens": 0,
                          "correct": 0, "questions_with_correct": 0}
    for row, comps in zip(rows, outs):
        seen, kept_code, any_correct = set(), [], False
        for j, c in enumerate(comps):
            stats["generated"] += 1
            stats["tokens"] += c.n_tokens
            steps = task.split_steps(c.text)
            if not steps:
                steps = [c.text.strip() or "(empty)"]
            if valid is not None and not valid(c.text):
                stats["invalid"] += 1
                continue
            key = normalize_steps(steps)
            if dedupe and key in seen:
                stats["duplicates"] += 1
                continue
            if dedupe and task.is_code:
                code = "\n".join(key)
                if any(difflib.SequenceMatcher(None, code, k).ratio() >= code_similarity for k in kept_code):
                    stats["duplicates"] += 1
                    continue
                kept_code.append(code)
            seen.add(key)
            path = task.join_steps(steps)
            correct = bool(task.is_correct(row, path))
            any_correct |= correct
            stats["truncated"] += int(c.finish_reason == "length")
            stats["correct"] += int(correct)
            samples.append({"id": f"{row['id']}-s{j}", "qid": row["id"], "path": path, "steps": steps,
                            "answer": task.extract_answer(path), "correct": correct, "n_tokens": c.n_tokens,
                            "finish": c.finish_reason})
        stats["questions_with_correct"] += int(any_correct)
    stats["kept"] = len(samples)
    return samples, stats
