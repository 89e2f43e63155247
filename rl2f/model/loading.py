"""Load a Hugging Face checkpoint directory into `CausalLM` without a second copy of the weights.

The model is built on the meta device (no memory, no init), materialised uninitialised in
the target dtype and device, and every parameter is filled straight from the safetensors
files (`safetensors_io.read_into`). Peak memory is the model plus the largest single tensor
when a dtype conversion is needed; for a bf16 checkpoint loaded as bf16 on CPU, the model alone.

Checkpoint layouts (keys -> our `model.*` names):
- `*ForCausalLM`: `model.*`, `lm_head.weight`.
- Gemma3ForConditionalGeneration, transformers >= 4.52: `model.language_model.*`,
  `lm_head.weight` (often absent: tied). Older layout: `language_model.model.*`,
  `language_model.lm_head.weight`. `model.vision_tower.*` / `multi_modal_projector.*` are
  never read. `config.hf_module_prefix` is "model.language_model." for both, the module path
  of the decoder inside today's transformers model (what PEFT adapter keys must name).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rl2f.errors import UserError
from rl2f.model import safetensors_io as st
from rl2f.model.config import ModelConfig, read_config
from rl2f.model.modeling import CausalLM

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
# Layouts of the Gemma 3 multimodal checkpoint: (decoder prefix, lm_head key)
_MULTIMODAL_LAYOUTS = [("model.language_model.", "lm_head.weight"),
                       ("language_model.model.", "language_model.lm_head.weight")]
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32, device="cpu") -> CausalLM:
    """Read config.json + safetensors weights from `path` into a CausalLM (eval mode)."""
    path = Path(path)
    dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"dtype must be a floating point type (float32, bfloat16, float16), got {dtype!r}")
    cfg = read_config(path)
    tensors, where = find_weights(path)

    decoder_prefix, lm_head_key = "model.", "lm_head.weight"
    if cfg.is_multimodal:
        for prefix, head in _MULTIMODAL_LAYOUTS:
            if prefix + "embed_tokens.weight" in tensors:
                decoder_prefix, lm_head_key = prefix, head
                break
    if not cfg.tie_word_embeddings and lm_head_key not in tensors and cfg.family == "gemma3":
        cfg.tie_word_embeddings = True  # Gemma checkpoints drop lm_head: it is the embedding

    with torch.device("meta"):
        model = CausalLM(cfg)
    model.tie_weights()

    def ckpt_key(name: str) -> str:
        return lm_head_key if name == "lm_head.weight" else decoder_prefix + name[len("model."):]

    # Every parameter's tensor and shape is checked on the meta model, before any memory is
    # allocated: a config.json that disagrees with the weights (a 4e9 vocabulary) is named here
    # instead of failing an allocation deep inside torch.
    plan = {}  # parameter name -> TensorInfo
    for name, param in model.named_parameters():  # a tied lm_head is listed once, as embed_tokens
        key = ckpt_key(name)
        info = tensors.get(key)
        if info is None:
            raise UserError(f"{where.get(key, where['*'])}: tensor {key!r} is missing "
                            f"(needed for {cfg.architecture} parameter {name})")
        if tuple(param.shape) != info.shape:
            raise UserError(f"{info.file}: tensor {key!r} has shape {list(info.shape)}, but "
                            f"{path / 'config.json'} makes {name} {list(param.shape)} (a config.json "
                            f"that does not describe these weights?)")
        plan[name] = info
    model.to(dtype=dtype)
    model.to_empty(device=device)
    model.tie_weights()
    params = dict(model.named_parameters())
    plan = [(info, params[name].detach()) for name, info in plan.items()]
    used = {info.name for info, _ in plan} | {lm_head_key}
    unexpected = [k for k in tensors if k.startswith(decoder_prefix) and k not in used
                  and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise UserError(f"{tensors[unexpected[0]].file}: tensor {unexpected[0]!r} is not part of a "
                        f"{cfg.family} decoder as configured in config.json "
                        f"({len(unexpected)} such tensors; unsupported model variant?)")

    by_file: dict[Path, list] = {}
    for info, dest in plan:
        by_file.setdefault(info.file, []).append((info, dest))
    with torch.no_grad():
        for file, items in by_file.items():
            items.sort(key=lambda it: it[0].begin)  # sequential reads
            try:
                f = open(file, "rb", buffering=0)
            except OSError as e:
                raise UserError(f"{file}: cannot open: {e.strerror or e}") from None
            with f:
                for info, dest in items:
                    st.check(info)
                    if not st.tensor_is_float(info):
                        raise UserError(f"{file}: tensor {info.name!r} has dtype {info.dtype}, "
                                        f"a float weight is expected (quantized checkpoints are not supported)")
                    st.read_into(f, info, dest)
                    _check_finite(dest, info, file)
    return model.eval()


FINITE_SAMPLE = 4096  # values checked per tensor: a cheap check, not a scan of every weight


def _check_finite(t: torch.Tensor, info: st.TensorInfo, file: Path) -> None:
    """Refuse a tensor whose evenly spaced sample of FINITE_SAMPLE values holds a NaN or an
    infinity (a corrupt or badly converted checkpoint), before it writes NaN log-probs for a
    whole run. A few bad values inside an otherwise finite tensor can pass this check."""
    flat = t.reshape(-1)
    sample = flat[:: max(1, flat.numel() // FINITE_SAMPLE)]
    if not bool(torch.isfinite(sample).all()):
        raise UserError(f"{file}: tensor {info.name!r} holds non-finite values (NaN or inf; checked: "
                        f"{FINITE_SAMPLE} evenly spaced values of every tensor)")


def find_weights(path: Path) -> tuple[dict[str, st.TensorInfo], dict[str, Path]]:
    """All tensors of the checkpoint by name (headers only), and for error messages the file
    each name is expected in (`'*'`: the file to name for a tensor no file lists)."""
    index_file = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if single.is_file():
        return st.read_header(single), {"*": single}
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{index_file}: not a safetensors index (expected a JSON object "
                            f"with a 'weight_map')") from None
        tensors: dict[str, st.TensorInfo] = {}
        where: dict[str, Path] = {"*": index_file}
        headers: dict[str, dict[str, st.TensorInfo]] = {}
        for key, fname in weight_map.items():
            if not isinstance(fname, str) or not fname or Path(fname).is_absolute() or ".." in Path(fname).parts:
                raise UserError(f"{index_file}: weight_map[{key!r}] must name a shard file in {path}, "
                                f"got {fname!r}")
            file = path / fname
            where[key] = file
            if fname not in headers:
                if not file.is_file():
                    raise UserError(f"{index_file}: shard {fname} (holding {key!r}) does not exist")
                headers[fname] = st.read_header(file)
            if key in headers[fname]:
                tensors[key] = headers[fname][key]
        return tensors, where
    files = sorted(path.glob("*.safetensors"))
    if not files:
        others = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pth")]
        hint = f" (found {', '.join(others[:3])}: convert to safetensors)" if others else ""
        raise UserError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    tensors = {}
    for file in files:
        tensors.update(st.read_header(file))
    return tensors, {"*": files[0]}


def check_tokenizer_fits(tokenizer, config: ModelConfig) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding for (a mismatched
    tokenizer.json): its base vocabulary and every special id the runner uses (bos, eos, pad,
    stop ids) must be below config.vocab_size. Otherwise the first such id fails as an index
    error deep inside the embedding. The run assembly calls it once both are loaded."""
    vocab = config.vocab_size
    where = f"{tokenizer.source} (model {config.name_or_path or 'config'}, vocab_size {vocab})"
    base = tokenizer.backend.get_vocab_size(with_added_tokens=False)
    if base > vocab:
        raise UserError(f"{where}: the tokenizer's vocabulary has {base} tokens, more than the model's "
                        f"{vocab} embeddings: a tokenizer for another model?")
    named = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id,
             **{f"stop {tokenizer.id_to_token(i)!r}": i for i in tokenizer.stop_ids}}
    for what, i in named.items():
        if i is not None and not 0 <= i < vocab:
            raise UserError(f"{where}: the {what} token id {i} is beyond the model's vocabulary")


def load_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint directory, without loading weights."""
    return read_config(path)
