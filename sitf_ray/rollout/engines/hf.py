"""transformers.generate behind the engines.base interface: the fallback and the reference engine."""
from __future__ import annotations

import tempfile
from pathlib import Path

from sitf_ray.cluster.precision import resolve as resolve_dtype
from sitf_ray.rollout.engines.base import Completion, EngineSpec, GenParams, WireState, files_digest, resolve_device, state_digest


class HFEngine:
    def __init__(self, spec: EngineSpec, batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.spec, self.batch_size = spec, batch_size
        self.device = resolve_device(spec.device)
        if self.device == "cpu":
            torch.set_num_threads(spec.threads)
        self.tok = AutoTokenizer.from_pretrained(spec.model)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.precision = resolve_dtype(spec.dtype, self.device)      # 'auto' follows this node's hardware
        self.model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=getattr(torch, self.precision.dtype))
        self.model.to(self.device).eval()
        self.base_state = None      # kept only once an adapter is loaded
        self.version, self.digest = 0, ""

    def generate(self, prompts: list[str], params: GenParams, seed: int) -> list[list[Completion]]:
        import torch
        torch.manual_seed(seed)
        out: list[list[Completion]] = []
        eos = self.tok.eos_token_id
        for i in range(0, len(prompts), self.batch_size):
            batch = prompts[i:i + self.batch_size]
            enc = self.tok(batch, return_tensors="pt", padding=True).to(self.device)
            kw = dict(max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                      pad_token_id=self.tok.pad_token_id, eos_token_id=eos)
            if params.ignore_eos:
                kw.update(min_new_tokens=params.max_tokens)
            if params.temperature > 0:
                kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            else:
                kw.update(do_sample=False)
            with torch.no_grad():
                gen = self.model.generate(**enc, **kw)[:, enc.input_ids.shape[1]:]
            for j in range(len(batch)):
                outs = []
                for s in range(params.n):
                    ids = gen[j * params.n + s].tolist()
                    stopped = eos in ids
                    if stopped:
                        ids = ids[:ids.index(eos)]
                    while ids and ids[-1] == self.tok.pad_token_id and self.tok.pad_token_id != eos:
                        ids.pop()
                    text = self.tok.decode(ids, skip_special_tokens=True)
                    for st in params.stop:
                        if st in text:
                            text, stopped = text[:text.index(st)], True
                    outs.append(Completion(text, len(ids), "stop" if stopped else "length"))
                out.append(outs)
        return out

    def load_state(self, state, version: int) -> str:
        """Full weights: a WireState or a torch state dict; returns the digest of what was loaded."""
        self.model.load_state_dict(state.tensors() if isinstance(state, WireState) else state, strict=False)
        self.base_state = None
        self.version, self.digest = version, state_digest(state)
        return self.digest

    def load_adapter(self, files: dict[str, bytes], version: int) -> str:
        """Merge a peft adapter into a copy of the base weights (the base is kept for the next adapter)."""
        from peft import PeftModel
        if self.base_state is None:
            self.base_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        else:
            self.model.load_state_dict(self.base_state)
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                (Path(d) / name).write_bytes(data)
            merged = PeftModel.from_pretrained(self.model, d).merge_and_unload()
        self.model = merged.to(self.device).eval()
        self.version, self.digest = version, files_digest(files)
        return self.digest

    def close(self):
        pass
