"""Hugging Face config.json -> `ModelConfig`, the one description our decoder is built from.

Every family difference the decoder needs (norm offset, sandwich norms, q/k norm, biases,
embedding scale, attention scale, sliding-window layers, RoPE per layer type) becomes an
explicit field here, so `modeling.py` branches on features, not on family names.

Missing keys take the defaults of the transformers config class of that family, because
real checkpoints rely on them: Gemma 3 multimodal configs ship a sparse `text_config`
(e.g. no `vocab_size`, `num_attention_heads`, `head_dim`). Both RoPE formats are read: the
transformers 5.x `rope_parameters` (flat, or nested by layer type for Gemma 3) and the
older `rope_theta` / `rope_scaling` / `rope_local_base_freq` keys.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

from rl2f.errors import UserError

Family = Literal["llama", "qwen2", "qwen3", "gemma3"]
LayerType = Literal["full_attention", "sliding_attention"]

# architectures[0] -> (family, is the Gemma 3 multimodal wrapper)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", False),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
    "Gemma3ForCausalLM": ("gemma3", False),
    "Gemma3ForConditionalGeneration": ("gemma3", True),
}
MODEL_TYPES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", False),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "gemma3_text": ("gemma3", False),
    "gemma3": ("gemma3", True),
}
CAUSAL_LM_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
TEXT_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}

# The defaults of transformers' config classes (5.x) for the keys we read.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                  max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False, mlp_bias=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=None),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=None, hidden_act="silu",
                  max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
                  max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, bos_token_id=None, eos_token_id=None, pad_token_id=None),
    "gemma3": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                   hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                   attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
                   sliding_window_pattern=6, final_logit_softcapping=None, attn_logit_softcapping=None,
                   bos_token_id=2, eos_token_id=1, pad_token_id=0),
}
_NULL_IS_DEFAULT = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "hidden_act", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
                    "tie_word_embeddings", "rope_theta", "rope_local_base_freq", "query_pre_attn_scalar",
                    "sliding_window_pattern", "max_window_layers")
_ROPE_TYPES = ("default", "linear", "llama3")
_ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")


@dataclasses.dataclass
class RopeParams:
    """Rotary embedding of one layer type (HF `rope_parameters[...]`)."""

    theta: float  # base of the inverse frequencies
    rope_type: Literal["default", "linear", "llama3"] = "default"
    factor: float = 1.0  # linear: positions / factor; llama3: long-wavelength divisor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclasses.dataclass
class ModelConfig:
    """Everything the decoder needs, family differences spelled out as features."""

    family: Family
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    final_logit_softcapping: float | None = None  # logits = c * tanh(logits / c)
    attn_logit_softcapping: float | None = None  # same on attention scores
    hidden_act: str = "silu"  # of the gated MLP: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU)
    qkv_bias: bool = False  # Qwen2 always; Llama/Qwen3/Gemma3 with attention_bias
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k (Qwen 3, Gemma 3)
    norm_offset: bool = False  # Gemma: scale by (1 + w) in fp32, not w
    sandwich_norm: bool = False  # Gemma: extra post-attention / pre+post-feedforward norms
    embed_scale: float | None = None  # Gemma: embeddings * sqrt(hidden), in the model dtype
    attn_scale: float = 0.0  # softmax scale: head_dim**-0.5, Gemma: query_pre_attn_scalar**-0.5
    layer_types: list[str] = dataclasses.field(default_factory=list)  # per layer: full/sliding
    sliding_window: int | None = None  # keys with q_pos - k_pos >= window are masked (local layers)
    rope: dict[str, RopeParams] = dataclasses.field(default_factory=dict)  # by layer type
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: list[int] = dataclasses.field(default_factory=list)  # config + generation_config
    pad_token_id: int | None = None
    name_or_path: str = ""  # checkpoint directory it was read from
    architecture: str = ""  # HF architectures[0] of the checkpoint
    hf_module_prefix: str = "model."  # decoder's module path in the HF model (PEFT keys)
    torch_dtype: str | None = None  # dtype the checkpoint was saved in ("bfloat16", ...)

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        if not self.attn_scale:
            self.attn_scale = self.head_dim ** -0.5
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                             f"{self.num_hidden_layers} layers")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding_attention layers need a sliding_window")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @property
    def is_multimodal(self) -> bool:
        return self.hf_module_prefix != "model."


def read_config(path: str | Path) -> ModelConfig:
    """Read `path/config.json` (+ `generation_config.json` for extra EOS ids)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        what = "directory does not exist" if not path.exists() else "no config.json in it"
        raise UserError(f"{cfg_file}: not a Hugging Face checkpoint ({what})")
    hf = _read_json(cfg_file)
    gen_file = path / "generation_config.json"
    gen = _read_json(gen_file) if gen_file.is_file() else {}
    return parse_hf_config(hf, name_or_path=str(path), generation_config=gen, where=str(cfg_file))


def parse_hf_config(hf: dict, name_or_path: str = "", generation_config: dict | None = None,
                    where: str = "config.json") -> ModelConfig:
    """Translate a HF config dict (any supported family, old or new RoPE keys) to ModelConfig."""
    if not isinstance(hf, dict):
        raise UserError(f"{where}: expected a JSON object")
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else None
    supported = (f"supported architectures: {', '.join(ARCHITECTURES)}; "
                 f"model_type: {', '.join(MODEL_TYPES)}")
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise UserError(f"{where}: unsupported architecture {arch!r} ({supported})")
        family, multimodal = ARCHITECTURES[arch]
    else:
        model_type = hf.get("model_type")
        if model_type not in MODEL_TYPES:
            raise UserError(f"{where}: unsupported model_type {model_type!r} ({supported})")
        family, multimodal = MODEL_TYPES[model_type]

    text = hf
    if multimodal:
        text = hf.get("text_config")
        if not isinstance(text, dict):
            raise UserError(f"{where}: Gemma3ForConditionalGeneration config has no text_config object")
        where = f"{where} [text_config]"
    c = dict(_DEFAULTS[family])
    c.update(text)
    # An explicit null means "none" for token ids, windows and soft-caps, but "default" here:
    for key in _NULL_IS_DEFAULT:
        if c.get(key) is None and key in _DEFAULTS[family]:
            c[key] = _DEFAULTS[family][key]
    if multimodal:  # the wrapper's own flag decides tying in transformers
        c["tie_word_embeddings"] = hf.get("tie_word_embeddings", True)

    def get(key, kind=None):
        value = c.get(key)
        if kind is not None and value is not None and not isinstance(value, kind):
            raise UserError(f"{where}: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    try:
        heads = get("num_attention_heads", int)
        hidden = get("hidden_size", int)
        kv_heads = get("num_key_value_heads", int) or heads
        head_dim = get("head_dim", int) or hidden // heads
        n_layers = get("num_hidden_layers", int)
        act = c.get("hidden_activation") if family == "gemma3" else c.get("hidden_act")
        if act not in _ACTIVATIONS:
            raise UserError(f"{where}: hidden activation {act!r} is not supported ({', '.join(_ACTIVATIONS)})")
        if c.get("use_bidirectional_attention"):
            raise UserError(f"{where}: use_bidirectional_attention=true (embedding models) is not supported")
        if (c.get("partial_rotary_factor") or 1.0) != 1.0:
            raise UserError(f"{where}: partial_rotary_factor != 1 is not supported")

        layer_types, window = _layer_types(family, c, n_layers, where)
        rope = _rope(family, c, where)
        if not set(layer_types) <= set(rope):
            rope = {t: rope.get(t, rope.get("full_attention")) for t in set(layer_types)}
        gemma = family == "gemma3"
        bias = bool(c.get("attention_bias", False))
        eos = _ids(c.get("eos_token_id")) + _ids(hf.get("eos_token_id") if multimodal else None)
        eos += _ids((generation_config or {}).get("eos_token_id"))
        eos = list(dict.fromkeys(eos))
        prefix = "model.language_model." if multimodal else "model."
        for key, value in (("vocab_size", get("vocab_size", int)), ("hidden_size", hidden), ("num_hidden_layers", n_layers),
                           ("num_attention_heads", heads), ("num_key_value_heads", kv_heads), ("head_dim", head_dim),
                           ("intermediate_size", get("intermediate_size", int))):
            # Sizes the weights must match (load_model checks them against the tensors);
            # here only what no checkpoint can be: bools, zero or negative sizes.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{where}: {key} must be a positive integer, got {value!r}")
        return ModelConfig(
            family=family,
            vocab_size=get("vocab_size", int),
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=get("intermediate_size", int),
            rms_norm_eps=_positive(get("rms_norm_eps", (int, float)), "rms_norm_eps", where),
            tie_word_embeddings=bool(c.get("tie_word_embeddings")),
            final_logit_softcapping=_opt_positive(c.get("final_logit_softcapping"), "final_logit_softcapping", where),
            attn_logit_softcapping=_opt_positive(c.get("attn_logit_softcapping"), "attn_logit_softcapping", where),
            hidden_act=act,
            qkv_bias=True if family == "qwen2" else bias,
            o_bias=False if family == "qwen2" else bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            qk_norm=family in ("qwen3", "gemma3"),
            norm_offset=gemma,
            sandwich_norm=gemma,
            embed_scale=math.sqrt(hidden) if gemma else None,
            attn_scale=_positive(get("query_pre_attn_scalar", (int, float)), "query_pre_attn_scalar", where) ** -0.5
            if gemma else head_dim ** -0.5,
            layer_types=layer_types,
            sliding_window=window,
            rope=rope,
            max_position_embeddings=int(c.get("max_position_embeddings") or 8192),
            bos_token_id=_first(c.get("bos_token_id")),
            eos_token_ids=eos,
            pad_token_id=_first(c.get("pad_token_id")),
            name_or_path=name_or_path,
            architecture=arch or (CAUSAL_LM_ARCH[family] if not multimodal else "Gemma3ForConditionalGeneration"),
            hf_module_prefix=prefix,
            torch_dtype=hf.get("torch_dtype") or hf.get("dtype") or text.get("torch_dtype") or text.get("dtype"),
        )
    except UserError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{where}: invalid model config: {e}") from None


def _layer_types(family: str, c: dict, n_layers: int, where: str) -> tuple[list[str], int | None]:
    if family == "gemma3":
        window = c.get("sliding_window")
        types = c.get("layer_types")
        if types is None:
            # transformers' backward-compatible reading of the old integer pattern
            pattern = int(c.get("sliding_window_pattern") or 6)
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    else:
        window = c.get("sliding_window") if c.get("use_sliding_window") else None
        types = c.get("layer_types")
        if types is None:
            start = c.get("max_window_layers", 0)
            types = ["sliding_attention" if window is not None and i >= start else "full_attention"
                     for i in range(n_layers)]
    types = list(types)
    bad = [t for t in types if t not in ("full_attention", "sliding_attention")]
    if bad:
        raise UserError(f"{where}: layer_types entry {bad[0]!r} is not supported")
    if len(types) != n_layers:
        raise UserError(f"{where}: layer_types has {len(types)} entries, num_hidden_layers is {n_layers}")
    if window is None:  # no window configured: "sliding" layers are plain causal, as in transformers
        types = ["full_attention"] * n_layers
    elif not isinstance(window, int) or window < 1:
        raise UserError(f"{where}: sliding_window must be a positive integer, got {window!r}")
    return types, window if "sliding_attention" in types else None


def _rope(family: str, c: dict, where: str) -> dict[str, RopeParams]:
    params = c.get("rope_parameters")
    scaling = c.get("rope_scaling")
    if family == "gemma3":
        nested = params if isinstance(params, dict) and ("full_attention" in params or
                                                       "sliding_attention" in params) else {}
        full = dict(nested.get("full_attention") or {})
        local = dict(nested.get("sliding_attention") or {})
        if isinstance(params, dict) and not nested:  # a flat dict applies to global layers
            full = dict(params)
        if isinstance(scaling, dict):  # old format: rope_scaling is for the global layers only
            full.update(scaling)
        full.setdefault("rope_theta", c.get("rope_theta"))
        local.setdefault("rope_theta", c.get("rope_local_base_freq"))
        return {"full_attention": _rope_params(full, c, f"{where} rope (global layers)"),
                "sliding_attention": _rope_params(local, c, f"{where} rope (local layers)")}
    # as transformers: an old-style rope_scaling replaces rope_parameters
    p = dict(scaling) if isinstance(scaling, dict) else (dict(params) if isinstance(params, dict) else {})
    p.setdefault("rope_theta", c.get("rope_theta"))
    rp = _rope_params(p, c, f"{where} rope")
    return {"full_attention": rp, "sliding_attention": rp}


def _rope_params(p: dict, c: dict, where: str) -> RopeParams:
    rope_type = p.get("rope_type", p.get("type", "default")) or "default"
    if rope_type not in _ROPE_TYPES:
        raise UserError(f"{where}: rope_type {rope_type!r} is not supported ({', '.join(_ROPE_TYPES)})")
    out = RopeParams(theta=_positive(p.get("rope_theta"), "rope_theta", where), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        out.factor = _positive(p.get("factor", 1.0), "factor", where)
    if rope_type == "llama3":
        out.low_freq_factor = _positive(p.get("low_freq_factor", 1.0), "low_freq_factor", where)
        out.high_freq_factor = _positive(p.get("high_freq_factor", 4.0), "high_freq_factor", where)
        out.original_max_position_embeddings = int(p.get("original_max_position_embeddings")
                                                   or c.get("max_position_embeddings") or 8192)
    return out


def _positive(value, key: str, where: str) -> float:
    """A finite number > 0 (json reads NaN, Infinity and negatives; each would make every
    log-prob NaN without an error), or a UserError naming the key."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: {key} must be a finite number > 0, got {value!r}")
    return float(value)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a JSON object")
    return data


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _first(value) -> int | None:
    ids = _ids(value)
    return ids[0] if ids else None


def _opt_positive(value, key: str, where: str) -> float | None:
    return None if value is None else _positive(value, key, where)
