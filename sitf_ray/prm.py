"""The process reward model: a base LM with a 2-way head read at the end of every step.

Input text is prompt + step_1 + "\\n" + ... + step_n + "\\n"; step i is scored at the token that holds the
newline closing it (the model has seen the whole step there), like TRL's PRMTrainer separator tokens.
The model is transformers' `*ForTokenClassification` (num_labels=2) initialised from the policy (or any
model folder); it is trained with cross-entropy against hard or soft step labels on Ray Train (trainer.fit),
and `PRMScorer` actors serve it: per-step P(correct) and a path reward (mean of steps, as the paper; min or
last as options).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

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


def aggregate(step_scores: list[float], how: str) -> float:
    """Path reward from per-step P(correct): mean (the SIPF paper), min, last step, or product (the
    probability that every step is right, if steps were independent; Lightman et al. 2023)."""
    if not step_scores:
        return 0.0
    if how == "mean":
        return float(np.mean(step_scores))
    if how == "min":
        return float(min(step_scores))
    if how == "last":
        return float(step_scores[-1])
    if how == "product":
        return float(np.prod(step_scores))
    raise ValueError(f"prm.aggregate must be mean, min, last or product (got {how!r})")


class PRMModel:
    """A loaded PRM (full folder, or a LoRA adapter over a base) that scores step lists in batches.
    dtype: the torch dtype name it runs in (a resolved one, not 'auto': precision.resolve)."""

    def __init__(self, folder: str, max_len: int = 512, threads: Optional[int] = None, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from .policy_folder import read_policy_meta
        if threads:
            torch.set_num_threads(threads)
        meta = read_policy_meta(folder)
        self.tok = AutoTokenizer.from_pretrained(folder)
        if meta["kind"] == "adapter":
            from peft import PeftModel
            base = AutoModelForTokenClassification.from_pretrained(meta["base"], num_labels=2, dtype=torch.float32)
            self.model = PeftModel.from_pretrained(base, folder).merge_and_unload()    # fp32 merge, then cast
        else:
            self.model = AutoModelForTokenClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
        self.model.to(device=device, dtype=getattr(torch, dtype)).eval()
        self.device, self.max_len = device, max_len
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    @torch.no_grad()
    def score(self, items: list[dict], batch_size: int = 64) -> list[list[float]]:
        """items: {'prompt', 'steps'} -> P(step correct) per step (0.0 for steps cut off by max_len)."""
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            enc = [step_end_tokens(self.tok, it["prompt"], list(it["steps"]), self.max_len) for it in chunk]
            n = max(len(ids) for ids, _ in enc)
            ids = torch.full((len(enc), n), self.pad, dtype=torch.long)
            mask = torch.zeros((len(enc), n), dtype=torch.long)
            for j, (x, _) in enumerate(enc):
                ids[j, :len(x)] = torch.tensor(x)
                mask[j, :len(x)] = 1
            probs = F.softmax(self.model(input_ids=ids.to(self.device),
                                         attention_mask=mask.to(self.device)).logits.float(), -1)[..., 1].cpu()
            for j, (_, pos) in enumerate(enc):
                out.append([float(probs[j, p]) if p >= 0 else 0.0 for p in pos])
        return out


def auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); nan when one class is missing."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):   # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
