"""The tiny embedded default checkpoint: a few-million-parameter random model + tiny tokenizer.

`build_tiny_checkpoint(out_dir)` writes a normal Hugging Face checkpoint directory
(config.json in the family's HF format, model.safetensors, tokenizer files), so both
`rl2f.model.load_model` and transformers load it. Weights are random, deterministic from
`seed`: it serves the CPU demo and the tests, where only shapes and plumbing matter.
Default family: Gemma 3, the paper's model (5 local : 1 global layers, as the real ones).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rl2f.errors import UserError
from rl2f.model.config import CAUSAL_LM_ARCH, TEXT_MODEL_TYPE, parse_hf_config
from rl2f.model.gguf import cache_root
from rl2f.model.modeling import CausalLM, RMSNorm
from rl2f.model.tokenizer import build_tiny_tokenizer, tiny_special_ids, write_tokenizer

FAMILIES = ("gemma3", "llama", "qwen2", "qwen3")


def tiny_config(family: str = "gemma3", vocab_size: int = 512, **overrides) -> dict:
    """A tiny HF-format config dict (what config.json holds) for `family`; `overrides` are
    HF keys (e.g. sliding_window=8, num_key_value_heads=1, tie_word_embeddings=False)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
    c = dict(architectures=[CAUSAL_LM_ARCH[family]], model_type=TEXT_MODEL_TYPE[family],
             vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
             rms_norm_eps=1e-6, dtype="float32", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gemma3":
        c.update(num_hidden_layers=6, intermediate_size=512, hidden_activation="gelu_pytorch_tanh",
                 query_pre_attn_scalar=32, sliding_window=64, tie_word_embeddings=True,
                 layer_types=["sliding_attention"] * 5 + ["full_attention"],
                 # local layers: base 10k; global: base 1M with linear x8 scaling (Gemma 3 4B-27B)
                 rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                  "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                     "rope_theta": 1_000_000.0}},
                 attention_bias=False, final_logit_softcapping=None, attn_logit_softcapping=None)
    elif family == "llama":
        c.update(hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 256})
    else:  # qwen2, qwen3
        c.update(hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
                 rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
        if family == "qwen3":
            c.update(attention_bias=False)
    c.update(overrides)
    if "num_hidden_layers" in overrides and "layer_types" not in overrides and family == "gemma3":
        n = c["num_hidden_layers"]
        c["layer_types"] = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
    return c


def init_tiny_weights(model: CausalLM, seed: int = 0, std: float = 0.02) -> CausalLM:
    """Deterministic random init: N(0, std) matrices, zero biases, identity norms, and
    embeddings (the tied lm_head) at std 1/sqrt(hidden), so rows have norm ~1. At std 0.02 the
    largest logit a normalised hidden state can reach is ~2.6: a LoRA-only fine-tune (norms and
    lm_head frozen) could then never make any token confident, and SFT stalls near uniform."""
    gen = torch.Generator().manual_seed(seed)
    embed_std = model.config.hidden_size**-0.5
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(0.0 if module.offset else 1.0)
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            if name.endswith("bias"):
                p.zero_()
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * embed_std)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def write_checkpoint(out_dir: str | Path, hf_config: dict, model: CausalLM) -> Path:
    """Write config.json + model.safetensors (a tied lm_head is left out, as HF does)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return out


def build_tiny_model(family: str = "gemma3", vocab_size: int = 512, seed: int = 0, **overrides):
    """(hf_config dict, randomly initialised CausalLM) without touching the disk."""
    hf = tiny_config(family, vocab_size, **overrides)
    model = CausalLM(parse_hf_config(hf, name_or_path="tiny"))
    return hf, init_tiny_weights(model, seed)


def build_tiny_checkpoint(out_dir: str | Path, family: str = "gemma3", seed: int = 0, **overrides) -> Path:
    """Write the embedded default checkpoint (model + tokenizer) to `out_dir`; return its path."""
    tok = build_tiny_tokenizer(family, seed=seed)
    overrides = {**tiny_special_ids(tok, family), **overrides}
    hf, model = build_tiny_model(family, tok.get_vocab_size(), seed, **overrides)
    out = write_checkpoint(out_dir, hf, model)
    write_tokenizer(tok, out, family)
    return out


def checkpoint_dir(path: str, family: str = "gemma3", seed: int = 0) -> Path:
    """A run config's `model.path`, or for "" the embedded tiny checkpoint of `family` and
    `seed`, written once to the cache ($RL2F_CACHE), atomically."""
    if path:
        where = Path(path).expanduser()
        if not (where / "config.json").is_file():
            raise UserError(f"model.path: {where} is not a checkpoint directory (no config.json)")
        return where
    where = cache_root() / f"tiny-{family}-seed{seed}"
    if (where / "config.json").is_file():
        return where
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.tmp-", dir=where.parent))
    build_tiny_checkpoint(tmp, family=family, seed=seed)
    try:
        os.rename(tmp, where)
    except OSError:  # another rank or process won the race: theirs is the same checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
    return where
