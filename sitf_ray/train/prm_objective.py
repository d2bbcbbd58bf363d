"""The PRM objective on Ray Train workers: encode (prompt, steps, labels) with each step's label on the
token that closes it, collate, and the cross-entropy loss of the 2-way token-classification head against
hard or soft step labels (Math-Shepherd; TRL's PRMTrainer separator convention). The model that serves
the trained PRM is feedback/prm.py."""
from __future__ import annotations

import numpy as np
import torch

IGNORE = -100.0


def step_end_tokens(tok, prompt: str, steps: list[str], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt+steps and, per step, the index of the token closing it (-1 if cut off)."""
    text, ends = prompt, []
    for s in steps:
        text += s
        ends.append(len(text))          # index of the '\n' that closes this step
        text += "\n"
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    pos, j = [], 0
    for e in ends:
        while j < len(offsets) and not (offsets[j][0] <= e < offsets[j][1]):
            j += 1
        pos.append(j if j < min(len(ids), max_len) else -1)
    return ids[:max_len], pos


def prm_encode_rows(rows: list[dict], tok, max_len: int, soft: bool) -> list[dict]:
    """Label rows (prompt, steps, labels, soft) -> input_ids + per-token float labels (IGNORE elsewhere)."""
    out = []
    for r in rows:
        ids, pos = step_end_tokens(tok, r["prompt"], list(r["steps"]), max_len)
        lab = np.full(len(ids), IGNORE, dtype=np.float32)
        for p, h, s in zip(pos, r["labels"], r["soft"]):
            if p >= 0:
                lab[p] = float(s) if soft else float(h)
        out.append({"input_ids": np.asarray(ids, dtype=np.int64), "step_labels": lab})
    return out


def prm_collate(rows: list[dict], pad_id: int) -> dict:
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    lab = torch.full((len(rows), n), IGNORE)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.as_tensor(np.asarray(r["input_ids"], dtype=np.int64))
        mask[i, :k] = 1
        lab[i, :k] = torch.as_tensor(np.asarray(r["step_labels"], dtype=np.float32))
    return {"input_ids": ids, "attention_mask": mask, "step_labels": lab}


def prm_loss(model, b: dict) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the 2-way head against the (soft) label y at step-end tokens:
    -(y log p1 + (1-y) log p0), which is plain CE for hard labels."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    sel = b["step_labels"] != IGNORE
    y = b["step_labels"][sel]
    logp = logits[sel].log_softmax(-1)
    if y.numel() == 0:
        return logits.sum() * 0.0, {"step_acc": 0.0}
    loss = -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()
    acc = ((logp[:, 1] > logp[:, 0]).float() == (y > 0.5).float()).float().mean()
    return loss, {"step_acc": acc.item()}
