"""Policy objectives: ORPO (SIPF), DPO ("w/o OR" ablation) and plain SFT/NLL (M_0, RFT, baselines).

ORPO (Hong et al. 2024), as the SIPF paper and TRL's ORPOTrainer define it:
    log_odds = (logp_w - logp_l) - (log(1 - p_w) - log(1 - p_l)),   logp = mean per-token log-prob of the response
    loss     = NLL(chosen) - beta * mean(log sigmoid(log_odds))
TRL takes the NLL over prompt + response (`nll_on_prompt=True` reproduces it exactly and is what the test
checks); the ORPO paper takes it over the response only, our default.

Text rows stream to the Ray Train workers as Ray Data shards; each worker tokenises its own shard
(`encode_rows`: the workers already hold a tokenizer, so no extra processes start) and pads per batch
(`collate`). The Ray Train loop itself is train/worker.py, fed by train/session.fit; train/objectives.py names these per objective.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


# -------------------------------------------------------------------------------------------- tokenising

def encode_example(tok, prompt: str, response: str, max_len: int, max_prompt_len: int) -> tuple[list, list]:
    """(input_ids, labels): BOS + prompt + response + EOS, prompt tokens masked; the prompt keeps its end.

    At most `max_len` tokens in all: the prompt is cut to `max_prompt_len` (keeping BOS and its end), the
    response to what is left (EOS may be cut off). ValueError unless 1 <= max_prompt_len < max_len, so
    that at least one response token is trained on.
    """
    if not 1 <= max_prompt_len < max_len:
        raise ValueError(f"max_prompt_len ({max_prompt_len}) must be at least 1 and less than max_len ({max_len})")
    p = tok(prompt).input_ids
    r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    if len(p) > max_prompt_len:
        keep_bos = max_prompt_len > 1 and tok.bos_token_id is not None and p[0] == tok.bos_token_id
        p = p[:1] + p[len(p) - (max_prompt_len - 1):] if keep_bos else p[len(p) - max_prompt_len:]
    r = r[:max_len - len(p)]
    return p + r, [IGNORE] * len(p) + r


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model_dir: str):
    """One tokenizer per worker process and model (Ray Data reuses its task workers)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


def encode_rows(rows: list[dict], tok, kind: str, max_len: int, max_prompt_len: int) -> list[dict]:
    """Text rows -> token rows: 'pairs' (prompt/chosen/rejected) or 'sft' (prompt/completion)."""
    out = []
    for r in rows:
        if kind == "pairs":
            c = encode_example(tok, r["prompt"], r["chosen"], max_len, max_prompt_len)
            j = encode_example(tok, r["prompt"], r["rejected"], max_len, max_prompt_len)
            out.append({"chosen_input_ids": c[0], "chosen_labels": c[1], "rejected_input_ids": j[0],
                        "rejected_labels": j[1]})
        else:
            ids, labels = encode_example(tok, r["prompt"], r["completion"], max_len, max_prompt_len)
            out.append({"input_ids": ids, "labels": labels})
    return out


def _obj(lists: list) -> np.ndarray:
    a = np.empty(len(lists), dtype=object)
    a[:] = [np.asarray(x, dtype=np.int64) for x in lists]
    return a


def _pad(seqs: list, value: int, length: Optional[int] = None) -> torch.Tensor:
    n = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out


def collate(rows: list[dict], pad_id: int) -> dict:
    """Right-pad a list of tokenised rows into tensors (pairs: chosen and rejected to one length)."""
    if "chosen_input_ids" in rows[0]:
        n = max(len(r[k]) for r in rows for k in ("chosen_input_ids", "rejected_input_ids"))
        b = {}
        for side in ("chosen", "rejected"):
            ids = [r[f"{side}_input_ids"] for r in rows]
            b[f"{side}_input_ids"] = _pad(ids, pad_id, n)
            b[f"{side}_attention_mask"] = _pad([np.ones(len(x), dtype=np.int64) for x in ids], 0, n)
            b[f"{side}_labels"] = _pad([r[f"{side}_labels"] for r in rows], IGNORE, n)
        return b
    ids = [r["input_ids"] for r in rows]
    b = {"input_ids": _pad(ids, pad_id), "attention_mask": _pad([np.ones(len(x), dtype=np.int64) for x in ids], 0),
         "labels": _pad([r["labels"] for r in rows], IGNORE)}
    if "weight" in rows[0]:
        b["weight"] = torch.tensor([float(r["weight"]) for r in rows])
    return b


# ---------------------------------------------------------------------------------------------- losses

LOG1MEXP_EDGE = -1e-6   # log(1 - exp(x)) is -inf at x = 0: inputs above this edge are clamped to it


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable on both sides of -ln 2 (Maechler 2012), gradient finite everywhere.

    Each branch of the `torch.where` gets an input at which it is finite (its gradient is multiplied by 0
    where unused, and 0 * inf = NaN would leak otherwise), and x is clamped to <= LOG1MEXP_EDGE, so at
    x = 0 (a sequence of probability 1 in float32) the value is log(1e-6) = -13.8 with zero gradient
    instead of -inf with a NaN gradient. Shape: elementwise, any shape.
    """
    x = x.clamp(max=LOG1MEXP_EDGE)
    far = x < -math.log(2)
    x_far = torch.where(far, x, torch.full_like(x, -1.0))    # log1p(-exp(x)) is accurate here
    x_near = torch.where(far, torch.full_like(x, -0.5), x)   # log(-expm1(x)) is accurate here
    return torch.where(far, torch.log1p(-torch.exp(x_far)), torch.log(-torch.expm1(x_near)))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Sum (or mean) log-prob of the labelled tokens of each sequence (labels are shifted here)."""
    labels = labels[:, 1:]
    logits = logits[:, :-1, :]
    mask = labels != IGNORE
    safe = torch.where(mask, labels, 0)
    lp = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    s = (lp * mask).sum(-1)
    return s / mask.sum(-1).clamp(min=1) if average else s


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens of the whole batch (as nn.CrossEntropyLoss); 0, not NaN,
    when no token is labelled. logits [B, T, V], labels [B, T] (shifted here) -> scalar."""
    flat = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE,
                            reduction="sum")
    return total / (flat != IGNORE).sum().clamp(min=1)


def _right_pad(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    return F.pad(t, (0, n - t.shape[1]), value=value) if t.shape[1] < n else t


def concat_pairs(b: dict) -> dict:
    """Chosen and rejected stacked into one batch (one forward pass), padded to a common length."""
    n = max(b["chosen_input_ids"].shape[1], b["rejected_input_ids"].shape[1])
    out = {}
    for key, pad in (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE)):
        out[key] = torch.cat([_right_pad(b[f"chosen_{key}"], n, pad), _right_pad(b[f"rejected_{key}"], n, pad)])
    return out


def _concat_forward(model, b: dict) -> tuple[torch.Tensor, int, dict]:
    c = concat_pairs(b)
    logits = model(input_ids=c["input_ids"], attention_mask=c["attention_mask"], use_cache=False).logits
    return logits, b["chosen_input_ids"].shape[0], c


def orpo_loss(model, b: dict, beta: float, nll_on_prompt: bool = False) -> tuple[torch.Tensor, dict]:
    logits, n, c = _concat_forward(model, b)
    if nll_on_prompt:   # TRL: every non-pad token of prompt + chosen
        nll_labels = torch.where(c["attention_mask"][:n] == 1, c["input_ids"][:n], IGNORE)
    else:
        nll_labels = c["labels"][:n]
    nll = token_nll(logits[:n], nll_labels)
    logps = sequence_logps(logits, c["labels"], average=True)
    pw, pl = logps[:n], logps[n:]
    log_odds = (pw - pl) - (log1mexp(pw) - log1mexp(pl))
    ratio = F.logsigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    return loss, {"nll": nll.item(), "log_odds": log_odds.mean().item(), "or_term": ratio.mean().item(),
                  "logp_chosen": pw.mean().item(), "logp_rejected": pl.mean().item(),
                  "pair_acc": (pw > pl).float().mean().item()}


def dpo_loss(model, b: dict, beta: float, ref_model) -> tuple[torch.Tensor, dict]:
    logits, n, c = _concat_forward(model, b)
    labels = c["labels"]
    logps = sequence_logps(logits, labels, average=False)
    with torch.no_grad():
        ref_logits, _, _ = _concat_forward(ref_model, b)
        ref = sequence_logps(ref_logits, labels, average=False)
    margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, {"margin": margin.mean().item(), "pair_acc": (margin > 0).float().mean().item(),
                  "logp_chosen": logps[:n].mean().item(), "logp_rejected": logps[n:].mean().item()}


def sft_loss(model, b: dict) -> tuple[torch.Tensor, dict]:
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    loss = token_nll(logits, b["labels"])
    return loss, {"nll": loss.item()}


def policy_loss(objective: str, model, b: dict, hp: dict, ref_model=None) -> tuple[torch.Tensor, dict]:
    if objective == "orpo":
        return orpo_loss(model, b, hp["beta"], hp.get("nll_on_prompt", False))
    if objective == "dpo":
        return dpo_loss(model, b, hp["beta"], ref_model)
    if objective == "sft":
        return sft_loss(model, b)
    raise ValueError(f"unknown policy objective {objective!r}")

