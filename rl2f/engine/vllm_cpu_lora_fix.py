"""A vLLM general plugin: on the CPU platform, tokens without an adapter get no LoRA delta.

vLLM marks a token of a request without a LoRA (the teacher's, the reference's) with adapter
index -1. The GPU Triton kernels skip such tokens; the PyTorch ops vLLM uses on CPU
(`vllm/lora/ops/torch_ops/lora_ops.py`, 0.32.0) gather `lora_weights[-1]` instead, i.e. the
*last* adapter slot, so a base request batched with or after student requests is silently
answered by the student's adapter (log-prob gaps of 2-5 nats). This is the fix of upstream
PR #48421: gather with the index clamped to 0 and zero the delta of the -1 rows. For valid
indices the result is bit for bit the original's.

Registered in setup.py under the `vllm.general_plugins` entry point, which vLLM loads in
every process it starts (the engine core included). `VLLMEngine` checks at start-up that
base requests are unaffected by a loaded adapter, so a vLLM that does not load this plugin
(or a platform with the same bug) is refused rather than trusted.
"""
from __future__ import annotations

import torch


def _gather(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    """(per-token LoRA weights with -1 rows taken from slot 0, mask of the -1 rows)."""
    no_lora = indices < 0
    selected = weights[indices.clamp(min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected, no_lora


def _delta(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    selected, no_lora = _gather(weights, indices, dtype)
    out = torch.einsum("bi, boi -> bo", inputs.to(dtype=dtype), selected)  # (tokens, out)
    return out.masked_fill(no_lora.unsqueeze(-1), 0.0)


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = _delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = _delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # LoRA adapter and model may add different amounts of padding to output
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = _delta(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


FIXED = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def register() -> None:
    """vLLM's plugin hook: replace the three gather ops wherever vLLM's CPU path names them.
    The `sgmv_*` (prefill) ops call the module's `bgmv_*`, so they are fixed too."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for module in (ops, package, punica_cpu):
        for name, fn in FIXED.items():
            setattr(module, name, fn)
