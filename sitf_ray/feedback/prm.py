"""The process reward model: a base LM with a 2-way head read at the end of every step.

Input text is prompt + step_1 + "\\n" + ... + step_n + "\\n"; step i is scored at the token that holds the
newline closing it (the model has seen the whole step there), like TRL's PRMTrainer separator tokens.
The model is transformers' `*ForTokenClassification` (num_labels=2) initialised from the policy (or any
model folder); it is trained with cross-entropy against hard or soft step labels on Ray Train (train/prm_objective.py),
and `PRMScorer` actors serve it: per-step P(correct) and a path reward (mean of steps, as the paper; min or
last as options).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sitf_ray.rollout.policy_folder import read_policy_meta
from sitf_ray.train.prm_objective import step_end_tokens


class PRMModel:
    """A loaded PRM (full folder, or a LoRA adapter over a base) that scores step lists in batches.
    dtype: the torch dtype name it runs in (a resolved one, not 'auto': precision.resolve)."""

    def __init__(self, folder: str, max_len: int = 512, threads: Optional[int] = None, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

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
