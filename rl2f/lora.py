"""LoRA on our model, saved and loaded in PEFT's on-disk format.

`apply_lora` swaps the target `nn.Linear` layers for `LoRALinear`, which keeps the base
parameters under their own names (`...q_proj.weight`, `...q_proj.bias`), so a base
checkpoint still loads into a LoRA model unchanged, and adds `lora_A` (r, in) and `lora_B`
(out, r). The update is `x @ A^T @ B^T * alpha / r` (or `alpha / sqrt(r)` with rsLoRA); B
starts at zero, so a fresh adapter is the base model exactly.

`adapters_disabled(model)` switches every adapter off: the base serves as the reference
policy (KL) and as the teacher, with no second copy of the weights.

`save_adapter` / `load_adapter` speak PEFT's format (adapter_config.json +
adapter_model.safetensors, keys `base_model.model.<HF module path>.lora_A.weight`), so PEFT
and vLLM load our adapters and we load theirs. Our decoder lives under `model.` while the
HF checkpoint may put it under another prefix (`model.language_model.` for
Gemma3ForConditionalGeneration); `model.config.hf_module_prefix` bridges the two.

Which code computes an enabled, unmerged LoRA layer: `forward_path` decides for
`LoRALinear.forward`, `rollout_path` for a BuiltinEngine batch with the adapter on
(`rollout_adapter`). Neither looks at the device: the CPU and CUDA rows agree by
construction, and tests/test_lora.py checks every row against the two functions (and runs
the CPU rows, and the CUDA rows where there is a GPU).

| device | base     | adapter  | training      | no grad  | rollout      |
|--------|----------|----------|---------------|----------|--------------|
| cpu    | float32  | float32  | fold_autograd | addmm    | fold_weights |
| cpu    | float32  | bfloat16 | cast_add      | cast_add | fold_weights |
| cpu    | bfloat16 | float32  | cast_add      | cast_add | cast_add     |
| cpu    | bfloat16 | bfloat16 | addmm         | addmm    | addmm        |
| cuda   | float32  | float32  | fold_autograd | addmm    | fold_weights |
| cuda   | bfloat16 | float32  | cast_add      | cast_add | cast_add     |
| cuda   | bfloat16 | bfloat16 | addmm         | addmm    | addmm        |
| cuda   | float16  | float32  | cast_add      | cast_add | cast_add     |

- fold_autograd: `_FoldedLoRA`, y = x (W + s B A)^T with a hand-written backward (a third
  less of the adapter's training work). Only in fp32: in bf16 the fold would round small updates
  away. "training" is grad mode with the base frozen and no LoRA dropout; with dropout (or a
  trainable base) a layer takes the "no grad" column.
- addmm: y = x W^T, then y + (s x A^T) B^T inside one GEMM (base and adapter of one dtype).
- cast_add: the update computed in the adapter dtype, cast to the base dtype, added.
- fold_weights: `folded_lora`, the adapter folded into per-call copies of the weights, the
  layers run as plain linears: one matmul per layer per token instead of three. The default
  of BuiltinEngine (fold_lora=True); without it, or under torch.distributed (whose sharded
  parameters must not be swapped), a rollout takes the "no grad" column.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from rl2f.config import LORA_SHORT_TARGETS as _SHORT
from rl2f.config import LORA_TARGETS as TARGETS
from rl2f.atomic import atomic_directory
from rl2f.errors import UserError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Where the text decoder sits in HF checkpoints we may meet (longest first, so that
# "model.language_model." is tried before "model."). transformers < 5 saved
# Gemma3ForConditionalGeneration as "language_model.model.".
_DECODER_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Multimodal parts of a Gemma 3 checkpoint that our text-only model does not have; a PEFT
# adapter trained on the full model may carry LoRA for them, which cannot affect text.
_VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.",
                    "vision_tower.", "multi_modal_projector.")
_KEY_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclasses.dataclass
class LoRAConfig:
    """The adapter shape and scale, recorded on the model as `model.lora_config`."""

    rank: int  # r
    alpha: float  # lora_alpha; scale = alpha / r (alpha / sqrt(r) with rsLoRA)
    targets: tuple[str, ...]  # full module names, sorted ("q_proj", ...)
    dropout: float = 0.0  # on the adapter input only, as in PEFT
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return _scale(self.rank, self.alpha, self.use_rslora)


def _scale(rank: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


FOLD_AUTOGRAD, ADDMM, CAST_ADD, FOLD_WEIGHTS = "fold_autograd", "addmm", "cast_add", "fold_weights"


def forward_path(base_dtype: torch.dtype, adapter_dtype: torch.dtype, *, grad: bool, dropout: bool = False,
                 base_trainable: bool = False) -> str:
    """Which code `LoRALinear.forward` runs for an enabled, unmerged layer (the table in the
    module docstring)."""
    if grad and not dropout and not base_trainable and base_dtype == adapter_dtype == torch.float32:
        return FOLD_AUTOGRAD
    return ADDMM if base_dtype == adapter_dtype else CAST_ADD


def rollout_path(base_dtype: torch.dtype, adapter_dtype: torch.dtype, *, fold: bool = True,
                 distributed: bool = False) -> str:
    """Which code a rollout batch with the adapter on runs (`rollout_adapter`; the table in the
    module docstring): the weights folded in fp32, else a layer's no-grad forward."""
    if fold and base_dtype == torch.float32 and not distributed:
        return FOLD_WEIGHTS
    return forward_path(base_dtype, adapter_dtype, grad=False)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a low-rank update; `weight`/`bias` keep the base's names."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, dtype: torch.dtype | None = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        # The very Parameter objects of the base layer: no copy, and any tying survives.
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dtype = dtype or base.weight.dtype
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dtype))
        # PEFT's init: A as nn.Linear's default (kaiming-uniform, a=sqrt(5)), B zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scale = _scale(rank, alpha, use_rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # False inside adapters_disabled()
        self.merged = False  # True while the update is folded into self.weight

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scale={self.scale:g}, merged={self.merged}")

    def _rank_states(self, x: torch.Tensor) -> torch.Tensor:
        """scale * x @ A^T (..., r), in the adapter dtype (fp32 by default, as PEFT's
        autocast_adapter_dtype). The scale goes on these r columns, not on the out columns
        of the update: one pass over a small tensor instead of a large one."""
        return F.linear(x.to(self.lora_A.dtype), self.lora_A) * self.scale

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rank_states(x), self.lora_B).to(x.dtype)  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            # Disabled while merged: take the update back out (exact only up to rounding).
            y = F.linear(x, self.weight, self.bias)
            return y if self.enabled else y - self._update(x)
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        path = forward_path(self.weight.dtype, self.lora_A.dtype, grad=torch.is_grad_enabled(),
                            dropout=not isinstance(self.dropout, nn.Identity), base_trainable=self.weight.requires_grad)
        if path == FOLD_AUTOGRAD:
            return self._fold_autograd(x)
        if path == CAST_ADD:
            return self._cast_add(x)
        return self._addmm(x)

    def _fold_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 training: the update folded into the weight, the backward written out."""
        return _FoldedLoRA.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)

    def _cast_add(self, x: torch.Tensor) -> torch.Tensor:
        """A base of another dtype (bf16/fp16): the update is rounded to it, then added."""
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        h = self._rank_states(self.dropout(x))  # (..., r)
        return y + F.linear(h, self.lora_B).to(y.dtype)

    def _addmm(self, x: torch.Tensor) -> torch.Tensor:
        """y + h @ B^T inside the GEMM: no separate pass to add the update (nor in backward)."""
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        h = self._rank_states(self.dropout(x))  # (..., r)
        return torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, h.shape[-1]),
                           self.lora_B.t()).view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A in fp32: the update as a dense (out, in) matrix."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into `weight` (for inference or export); no-op if merged."""
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of `weight`. Exact to float rounding in fp32; in bf16 the
        round trip drifts by up to one bf16 ulp per element, so keep a copy if that matters."""
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False


class _FoldedLoRA(torch.autograd.Function):
    """Training forward of a LoRA layer whose base, adapter and input are all fp32 (in bf16
    the fold would round small updates away): y = x @ (W + s B A)^T + bias, the update
    folded into one weight, and a backward written out: dx = dy @ (W + s B A),
    dB = s dy^T (x A^T), dA = s (dy B)^T x.

    Autograd of the unfolded form spends 2 N in out + 3 N r (in + out) multiply-adds on N
    tokens (the update's two GEMMs forward, four backward); this spends 2 N in out +
    2 N r (in + out) plus the fold, r in out, independent of N: a third of the adapter's
    work, and one graph node instead of five. The result equals the unfolded layer up to
    float round-off (the rollout already samples with the folded weights, `folded_lora`).
    The base weight and bias are frozen: they get no gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale: float):
        folded = torch.addmm(weight, lora_B, lora_A, alpha=scale)  # (out, in)
        ctx.save_for_backward(x, folded, lora_A, lora_B)
        ctx.scale = scale
        return F.linear(x, folded, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, folded, lora_A, lora_B = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_A = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, folded).view(x.shape)  # (..., in)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            x2 = x.reshape(-1, x.shape[-1])  # (N, in)
            grad_B = torch.mm(g.t(), torch.mm(x2, lora_A.t())).mul_(ctx.scale)  # (out, r)
            grad_A = torch.mm(torch.mm(g, lora_B).t(), x2).mul_(ctx.scale)  # (r, in)
        return grad_x, None, None, grad_A, grad_B, None


# --------------------------------------------------------------------------- apply / query

def apply_lora(model: nn.Module, rank: int, alpha: float, targets=TARGETS, dropout: float = 0.0,
               use_rslora: bool = False, seed: int | None = None,
               dtype: torch.dtype | None = torch.float32) -> nn.Module:
    """Wrap the Linear layers named in `targets` with LoRA; freeze everything else.

    `targets`: full (q_proj, ..., down_proj) or short (q, ..., down) names. `seed` makes the
    A init reproducible without touching the global RNG. `dtype` is the adapter parameters'
    dtype (None: the base weights' dtype). Returns the model, changed in place.
    """
    return _apply(model, rank, alpha, targets, dropout, use_rslora, seed, dtype, where="apply_lora")


def _apply(model, rank, alpha, targets, dropout, use_rslora, seed, dtype, where: str):
    if getattr(model, "lora_config", None) is not None:
        raise UserError(f"{where}: the model already has LoRA applied "
                        f"({model.lora_config}); call remove_lora(model) first")
    if isinstance(targets, str):
        targets = (targets,)
    full = []
    for t in targets:
        name = _SHORT.get(t, t)
        if name not in TARGETS:
            raise UserError(f"{where}: unknown LoRA target '{t}' "
                            f"(known: {', '.join(TARGETS)} or {', '.join(_SHORT)})")
        full.append(name)
    full = tuple(sorted(set(full)))
    if not isinstance(rank, int) or rank < 1:
        raise UserError(f"{where}: LoRA rank must be an integer >= 1, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"{where}: LoRA dropout must be in [0, 1), got {dropout}")

    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in full]
    if not found:
        raise UserError(f"{where}: no Linear layer named {list(full)} in the model")
    for name, m in found:
        limit = min(m.in_features, m.out_features)
        if rank > limit:
            raise UserError(f"{where}: an adapter rank above what the config allows: rank {rank} > "
                            f"{limit} = min(in_features, out_features) of '{name}' "
                            f"({m.in_features} -> {m.out_features})")

    for p in model.parameters():
        p.requires_grad_(False)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=found[0][1].weight.device).manual_seed(seed)
    for name, m in found:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, LoRALinear(m, rank, alpha, dropout, use_rslora, dtype, gen))
    model.lora_config = LoRAConfig(rank, alpha, full, dropout, use_rslora)
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Undo apply_lora: put plain nn.Linear layers back (unmerging first), drop lora_config."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            m.unmerge()
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                            device="meta")
            lin.weight, lin.bias = m.weight, m.bias
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, lin)
    model.lora_config = None
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(module name, layer) for every LoRALinear, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (what the optimizer trains)."""
    return [p for _, m in lora_layers(model) for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors keyed by our module names (`model.layers.0.self_attn.q_proj.lora_A`),
    detached: for training checkpoints. `model.load_state_dict(sd, strict=False)` restores."""
    out = {}
    for name, m in lora_layers(model):
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """All adapters off inside the block (the base model); each layer's previous state is
    restored on exit, so nesting and exceptions are safe."""
    layers = [m for _, m in lora_layers(model)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, state in zip(layers, before):
            m.enabled = state


@contextlib.contextmanager
def folded_lora(model: nn.Module):
    """Run the adapter folded into the weights: each LoRA layer's `weight` is swapped for a
    copy of W + scale * B @ A and its update switched off, then the very same Parameter
    objects are put back (the model's own weights are never written). One matmul per layer
    per token instead of three; equal to the unfolded forward up to fp32 round-off."""
    layers = [m for _, m in lora_layers(model) if m.enabled and not m.merged]
    saved = [m.weight for m in layers]
    folded = [torch.nn.Parameter(m.weight + m.delta_weight().to(m.weight.dtype), requires_grad=False)
              for m in layers]
    try:
        for m, w in zip(layers, folded):
            m.weight, m.enabled = w, False
        yield
    finally:
        for m, w in zip(layers, saved):
            m.weight, m.enabled = w, True


def rollout_adapter(model: nn.Module, use_adapter: bool, fold: bool = True, distributed: bool = False):
    """The context a rollout batch runs in: the adapter off (`adapters_disabled`), folded into
    per-call weight copies (`folded_lora`, where `rollout_path` says so), or on as it is."""
    if not use_adapter:
        return adapters_disabled(model)
    layer = next((m for _, m in lora_layers(model)), None)  # one model, one base and one adapter dtype
    if layer is not None and rollout_path(layer.weight.dtype, layer.lora_A.dtype, fold=fold,
                                          distributed=distributed) == FOLD_WEIGHTS:
        return folded_lora(model)
    return contextlib.nullcontext()


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (see LoRALinear.merge)."""
    for _, m in lora_layers(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every adapter back out of its base weight (see LoRALinear.unmerge)."""
    for _, m in lora_layers(model):
        m.unmerge()


# --------------------------------------------------------------------------- PEFT format

def _hf_prefix(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "hf_module_prefix", None) or "model."


def _name_or_path(model: nn.Module):
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    return str(name) if name else None


def _to_hf(name: str, prefix: str) -> str:
    """Our module name -> the HF checkpoint's module path."""
    if not name.startswith("model."):
        raise ValueError(f"LoRA layer '{name}' is outside the decoder 'model.'")
    return prefix + name[len("model."):]


def _from_hf(path: str, prefix: str) -> str | None:
    """The HF checkpoint's module path -> our module name; None if not in the text decoder."""
    # Longest first: "model.language_model.x" must not be read as "model." + "language_model.x".
    for p in sorted({prefix, *_DECODER_PREFIXES}, key=len, reverse=True):
        if path.startswith(p):
            return "model." + path[len(p):]
    return None


def peft_config_dict(model: nn.Module) -> dict:
    """adapter_config.json for the model's LoRA: the keys PEFT 0.13 knows (each with PEFT's
    default where we have no say), so every PEFT >= 0.13 and vLLM read it."""
    c: LoRAConfig = model.lora_config
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": _name_or_path(model),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        # vLLM's PEFTHelper types lora_alpha as int: write 16, not 16.0, when it is whole.
        "lora_alpha": int(c.alpha) if float(c.alpha).is_integer() else c.alpha,
        "lora_dropout": c.dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": c.rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(c.targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": c.use_rslora,
    }


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A parameter as one plain tensor: an FSDP2-sharded one (a DTensor) is gathered alone."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors on the CPU under PEFT's key names. Under FSDP2 each LoRA
    parameter is all-gathered alone, never the base weights (for a 12B model, 0.24 GiB
    instead of 22 GiB): a collective, so every rank calls it, in the same order."""
    if getattr(model, "lora_config", None) is None:
        raise UserError("the model has no LoRA applied: there is no adapter to save")
    prefix = _hf_prefix(model)
    tensors = {}
    for name, m in lora_layers(model):
        key = "base_model.model." + _to_hf(name, prefix)
        # unmerged tensors are what PEFT stores; merging never changes A or B.
        tensors[f"{key}.lora_A.weight"] = _whole(m.lora_A.detach()).to("cpu").contiguous()
        tensors[f"{key}.lora_B.weight"] = _whole(m.lora_B.detach()).to("cpu").contiguous()
    return tensors


def save_adapter(model: nn.Module, directory: str | os.PathLike, write: bool = True) -> Path:
    """Write the adapter as a PEFT directory. Under FSDP2 every rank calls this (the LoRA
    tensors are gathered, a collective: `adapter_tensors`) and one writes (`write`, e.g.
    `d.is_main`). Atomic: files go to a temporary sibling directory which is then renamed
    into place, so a crash leaves the old adapter or the new one, never half of one. A write
    error is an OSError naming the file."""
    if getattr(model, "lora_config", None) is None:
        raise UserError(f"save_adapter({directory}): the model has no LoRA applied")
    directory = Path(directory)
    tensors = adapter_tensors(model)
    if not write:
        return directory

    with atomic_directory(directory) as tmp:
        _save_safetensors(tensors, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config_dict(model), indent=2, sort_keys=True))
    return directory


def _save_safetensors(tensors: dict, file: Path) -> None:
    """safetensors' save_file, with an I/O failure (a full disk) raised as the OSError it is
    (safetensors reports it as a SafetensorError carrying only "os error N" in its text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(file), metadata={"format": "pt"})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(file)) from None


def _read_config(cfg_path: Path) -> dict:
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: not found (a PEFT LoRA adapter directory holds "
                        f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; only 'LORA' adapters "
                        "are supported")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise UserError(f"{cfg_path}: missing key '{key}'")
    r = cfg["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UserError(f"{cfg_path}: r must be an integer >= 1, got {r!r}")
    alpha = cfg["lora_alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        # json reads NaN and Infinity; alpha 0 scales the adapter (and its gradient) to zero
        raise UserError(f"{cfg_path}: lora_alpha must be a finite number > 0, got {alpha!r}")
    dropout = cfg.get("lora_dropout")
    if dropout is not None and (not isinstance(dropout, (int, float)) or isinstance(dropout, bool)
                                or not 0 <= dropout < 1):
        raise UserError(f"{cfg_path}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    # Features that change the maths; refuse rather than silently compute something else.
    unsupported = {
        "use_dora": lambda v: bool(v), "fan_in_fan_out": lambda v: bool(v),
        "bias": lambda v: v not in (None, "none"), "modules_to_save": lambda v: bool(v),
        "rank_pattern": lambda v: bool(v), "alpha_pattern": lambda v: bool(v),
        "layers_to_transform": lambda v: v is not None, "layer_replication": lambda v: bool(v),
        "lora_bias": lambda v: bool(v), "trainable_token_indices": lambda v: bool(v),
    }
    for key, bad in unsupported.items():
        if key in cfg and bad(cfg[key]):
            raise UserError(f"{cfg_path}: {key}={cfg[key]!r} is not supported by rl2f's LoRA")
    if not isinstance(cfg.get("use_rslora", False), bool):  # "false" (a string) is true to bool()
        raise UserError(f"{cfg_path}: use_rslora must be true or false, got {cfg['use_rslora']!r}")
    return cfg


def adapter_digest(directory: str | os.PathLike | None) -> str | None:
    """SHA-256 over a PEFT adapter directory's config and weights files (None: no adapter):
    what names an adapter in the records of outputs it made, wherever it is copied."""
    if directory is None:
        return None
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = Path(directory) / name
        if not path.is_file():
            raise UserError(f"{directory}: not a PEFT adapter directory (no {name})")
        digest.update(name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_adapter(model: nn.Module, directory: str | os.PathLike, seed: int | None = None) -> nn.Module:
    """Load a PEFT-format LoRA adapter (ours or PEFT's) into the model.

    LoRA is applied first if the model has none (rank, alpha, rsLoRA and dropout from
    adapter_config.json; the target layers from the tensors present, which also covers
    PEFT's regex and "all-linear" target_modules); an existing LoRA of another shape is
    replaced. LoRA tensors for Gemma 3's vision tower are skipped with a warning (our model
    is text-only). Every other mismatch is a UserError naming the file and the key.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: adapter directory not found")
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    cfg = _read_config(cfg_path)
    if not w_path.is_file():
        extra = " (adapter_model.bin is not read: only safetensors)" \
            if (directory / "adapter_model.bin").exists() else ""
        raise UserError(f"{w_path}: not found{extra}")
    try:
        raw = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{w_path}: cannot read safetensors: {e}") from None

    rank, alpha = cfg["r"], float(cfg["lora_alpha"])
    use_rslora = bool(cfg.get("use_rslora", False))
    dropout = float(cfg.get("lora_dropout") or 0.0)
    base_name = cfg.get("base_model_name_or_path")
    ours_name = _name_or_path(model)
    made_for = (f" (adapter made for base_model_name_or_path={base_name!r}; "
                f"this model is {ours_name!r})")
    prefix = _hf_prefix(model)
    modules = dict(model.named_modules())

    # -- map file keys to our modules, checking each against the base layer
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    skipped = []
    for key, t in raw.items():
        m = _KEY_RE.match(key)
        if m is None:
            raise UserError(f"{w_path}: unexpected key '{key}' (expected "
                            "base_model.model.<module>.lora_A.weight / .lora_B.weight)")
        hf_path = m["module"]
        if hf_path.startswith(_VISION_PREFIXES):
            skipped.append(key)
            continue
        ours = _from_hf(hf_path, prefix)
        if ours is None:
            raise UserError(f"{w_path}: key '{key}' is for module '{hf_path}', which this model "
                            f"does not have{made_for}")
        base = modules.get(ours)
        if not isinstance(base, (nn.Linear, LoRALinear)):
            raise UserError(f"{w_path}: key '{key}' is for module '{hf_path}', which this model "
                            f"does not have as a Linear layer{made_for}")
        last = ours.rsplit(".", 1)[-1]
        if last not in TARGETS:
            raise UserError(f"{w_path}: key '{key}' targets '{last}', which rl2f's LoRA does not "
                            f"support (supported: {', '.join(TARGETS)})")
        ab = m["ab"]
        if not t.is_floating_point():
            raise UserError(f"{w_path}: key '{key}' has dtype {t.dtype}; LoRA weights must be floating point "
                            f"(F32, F16 or BF16)")
        if not torch.isfinite(t).all():
            raise UserError(f"{w_path}: key '{key}' holds non-finite values (nan or inf)")
        if t.ndim != 2:
            raise UserError(f"{w_path}: key '{key}' has shape {tuple(t.shape)}, expected a matrix")
        # A: (r, in), B: (out, r)
        expect = (rank, base.in_features) if ab == "A" else (base.out_features, rank)
        file_r = t.shape[0] if ab == "A" else t.shape[1]
        fits_base = (t.shape[1] == base.in_features) if ab == "A" else (t.shape[0] == base.out_features)
        if not fits_base:
            raise UserError(f"{w_path}: key '{key}' has shape {tuple(t.shape)} but the base layer "
                            f"'{ours}' needs {expect}{made_for}")
        if file_r != rank:
            raise UserError(f"{w_path}: key '{key}' has shape {tuple(t.shape)}, i.e. rank "
                            f"{file_r}, but {cfg_path.name} says r={rank}")
        limit = min(base.in_features, base.out_features)
        if rank > limit:
            raise UserError(f"{cfg_path}: an adapter rank above what the config allows: r={rank} > "
                            f"{limit} = min(in_features, out_features) of '{hf_path}'{made_for}")
        if ab in tensors.setdefault(ours, {}):
            raise UserError(f"{w_path}: two tensors for lora_{ab} of '{hf_path}' (key '{key}')")
        tensors[ours][ab] = t
    if skipped:
        warnings.warn(f"{w_path}: skipped {len(skipped)} LoRA tensors of the vision tower "
                      "(rl2f's Gemma 3 model is text-only)")
    if not tensors:
        raise UserError(f"{w_path}: no LoRA tensors for this model's decoder layers")
    for ours, pair in tensors.items():
        if len(pair) != 2:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise UserError(f"{w_path}: module '{_to_hf(ours, prefix)}' has no {missing} tensor")
    targets = tuple(sorted({n.rsplit(".", 1)[-1] for n in tensors}))
    listed = cfg.get("target_modules")
    if isinstance(listed, list):
        extra = [t for t in targets if t not in listed]
        if extra:
            raise UserError(f"{w_path}: has tensors for {extra}, which {cfg_path.name} "
                            f"target_modules={listed} does not list")

    # Every layer the file's targets will wrap needs tensors: a gap means another model
    # (say, one with fewer layers). Checked before touching the model, so that a failed
    # load leaves it as it was.
    wrap = [n for n, m in modules.items()
            if isinstance(m, (nn.Linear, LoRALinear)) and n.rsplit(".", 1)[-1] in targets]
    missing = [n for n in wrap if n not in tensors]
    if missing:
        raise UserError(f"{w_path}: no tensors for {len(missing)} of the model's "
                        f"{'/'.join(targets)} layers, e.g. '{_to_hf(missing[0], prefix)}'{made_for}")

    # -- (re)apply LoRA in the file's shape, then copy the tensors in
    current = getattr(model, "lora_config", None)
    if current is not None and (current.rank, current.targets) != (rank, targets):
        remove_lora(model)
        current = None
    if current is None:
        _apply(model, rank, alpha, targets, dropout, use_rslora, seed, torch.float32,
               where=str(cfg_path))
    else:
        model.lora_config = LoRAConfig(rank, alpha, targets, dropout, use_rslora)
    with torch.no_grad():
        for name, layer in lora_layers(model):
            was_merged = layer.merged
            layer.unmerge()
            layer.lora_A.copy_(tensors[name]["A"])
            layer.lora_B.copy_(tensors[name]["B"])
            layer.alpha, layer.use_rslora = alpha, use_rslora
            layer.scale = _scale(rank, alpha, use_rslora)
            layer.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            if was_merged:
                layer.merge()
    return model
