"""One decoder for Llama 3, Qwen 2/2.5, Qwen 3 and Gemma 3 (text), with HF module names.

Module and parameter names are those of transformers' `*ForCausalLM`
(`model.layers.{i}.self_attn.q_proj.weight`, ...), so checkpoints load by name and LoRA can
write PEFT keys 1:1. Family differences come from `ModelConfig` features:

- RMSNorm: Llama/Qwen scale by w after casting back to the input dtype; Gemma scales by
  (1 + w) in fp32 and casts after (transformers PR 29402).
- Gemma: embeddings * sqrt(hidden) in the model dtype (sqrt(3072) = 55.5 in bf16, as HF),
  sandwich norms around attention and MLP, softmax scale query_pre_attn_scalar**-0.5,
  GeGLU, 5 sliding-window layers per global layer with their own RoPE base.
- Qwen 3 and Gemma 3 RMS-normalise q and k per head before RoPE; Qwen 2 has q/k/v biases.

Masks are built once per forward per layer type from the caller's (B, S) padding mask:
key column s is visible to the query at column q when s <= q, the key is not padding and
(local layers) q - s < sliding_window. Columns are positions in the padded row, exactly as
transformers' mask functions index them, and the same rule applies during cached decoding.
Attention is PyTorch's SDPA, with two CPU exceptions that measured faster there: masked
attention takes grouped KV heads as they are (enable_gqa), and one-query decoding is two
batched GEMMs (`Attention._decode_cpu`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rl2f.model.config import ModelConfig, RopeParams
from rl2f.model.kv_cache import KVCache

# enable_gqa landed in torch 2.5; older versions expand the KV heads instead.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: bool):
        super().__init__()
        self.eps = eps
        self.offset = offset
        # Gemma stores w with the effective scale 1 + w, so "identity" is 0, not 1.
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.dtype == self.weight.dtype == torch.float32
                and (x.requires_grad or self.weight.requires_grad)):
            return _RMSNormFunction.apply(x, self.weight, self.offset, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (x32 * (1.0 + self.weight.float())).type_as(x)
        return self.weight * x32.to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm of an fp32 input in training, with its backward written out: y = x r s, with
    r = rsqrt(mean(x^2) + eps) per row and s = 1 + w (Gemma) or w; dx = r (g s - x^ mean(g s x^)),
    x^ = x r, dw = sum of g x^ over the rows. Three passes over x forward and four back,
    where autograd of the composite takes about twice that."""

    @staticmethod
    def forward(ctx, x, weight, offset: bool, eps: float):
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        normed = x * r  # (..., d)
        scale = 1.0 + weight if offset else weight
        ctx.save_for_backward(normed, r, scale)
        return normed * scale

    @staticmethod
    def backward(ctx, grad_out):
        normed, r, scale = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gs = grad_out * scale
            mean = torch.linalg.vecdot(gs, normed).unsqueeze(-1).div_(normed.shape[-1])  # (..., 1)
            grad_x = torch.addcmul(gs, normed, mean, value=-1.0).mul_(r)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out * normed).reshape(-1, normed.shape[-1]).sum(0)
        return grad_x, grad_w, None, None


def rope_inv_freq(p: RopeParams, head_dim: int, device=None) -> torch.Tensor:
    """(head_dim/2,) fp32 inverse frequencies, with linear or Llama 3.1 scaling."""
    inv = 1.0 / (p.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    if p.rope_type == "linear":
        inv = inv / p.factor
    elif p.rope_type == "llama3":
        # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band
        # between low_freq_wavelen and high_freq_wavelen interpolated smoothly.
        old_len = p.original_max_position_embeddings
        low_wavelen = old_len / p.low_freq_factor
        high_wavelen = old_len / p.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / p.factor, inv)
        smooth = (old_len / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
        smoothed = (1 - smooth) * scaled / p.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D), cos/sin (B, T, D)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each KV head serving n_rep query heads."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


@dataclass
class SharedPrefix:
    """A training forward in which rows that begin with the same tokens compute them once,
    and no padding token is computed at all.

    GRPO's G samples of a prompt share the prompt, often most of each row: a plain padded
    forward computes it G times, in the forward and again in the backward. Here the rows are
    laid out as `G_p * P` prefix slots (the distinct prefixes, left-padded to P columns)
    followed by `B * T` suffix slots (the rows' continuations, right-padded to T columns),
    and the input is one packed stream (1, N) of the real tokens of that layout, in its
    order (`real`: their slots). Norms, projections and MLPs, most of the work, run on the
    stream once; only attention sees the padded layout: q, k, v are scattered into it, the
    prefixes attend causally among themselves, then suffix row b attends to its prefix's keys
    and values (`rows[b]`) followed by its own, so gradients from every row reach the prefix;
    the outputs of the real slots are gathered back into the stream. (Right padding in a
    micro-batch of dialogues is a third of its slots and more: rows solved early are short.)

    The result equals the plain forward of the concatenated rows (up to float rounding):
    with the prefix left-padded and the suffix after it, a token's column distance to any
    real token equals its position distance, so the mask rule of this module (causal,
    padding, sliding window by column) is unchanged, and positions continue from the prefix.
    Padded slots hold zeros; their outputs are never gathered, so they get no gradient.
    """

    prefix_mask: torch.Tensor  # (G_p, P) 1 = real token (left padding)
    suffix_mask: torch.Tensor  # (B, T) 1 = real token (right padding)
    rows: torch.Tensor  # (B,) long: the prefix row each suffix row continues
    real: torch.Tensor = field(init=False)  # (N,) long: the layout slot of each stream token

    def __post_init__(self):
        self.real = torch.cat((self.prefix_mask.flatten(), self.suffix_mask.flatten())).nonzero().squeeze(1)

    @property
    def n_tokens(self) -> int:
        """N, the stream's length: the real tokens of the layout."""
        return self.real.numel()

    @property
    def n_slots(self) -> int:
        return self.prefix_mask.numel() + self.suffix_mask.numel()

    def layout(self, stream: torch.Tensor, dim: int) -> torch.Tensor:
        """The stream's N entries along `dim` scattered into the layout's slots (zeros elsewhere)."""
        shape = list(stream.shape)
        shape[dim] = self.n_slots
        return stream.new_zeros(shape).index_copy(dim, self.real, stream)

    def suffix_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """(1, N, H) states of the stream -> (B, T, H) states of the suffix rows."""
        B, T = self.suffix_mask.shape
        return self.layout(hidden[0], 0)[self.prefix_mask.numel():].view(B, T, hidden.shape[-1])

    def positions(self, key_mask: torch.Tensor) -> torch.Tensor:
        """(1, N) position ids by the module's rule for padded rows (real tokens counted from
        0), applied to each prefix and to each suffix row after its prefix (`key_mask`)."""
        P = self.prefix_mask.shape[1]
        prefix = (self.prefix_mask.long().cumsum(-1) - 1).clamp(min=0)  # (G_p, P)
        suffix = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]  # (B, T)
        return torch.cat((prefix.flatten(), suffix.flatten()))[self.real][None]

    def key_mask(self) -> torch.Tensor:
        """(B, P + T) padding mask of each suffix row's keys: its prefix, then itself."""
        return torch.cat((self.prefix_mask[self.rows], self.suffix_mask), dim=1)

    def attend(self, attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               masks: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Stream (1, H, N, D) q and (1, Hkv, N, D) k, v; `masks` = (prefix, suffix) boolean
        masks from DecoderModel; `attend` is the layer's masked attention. -> (1, N, H * D)."""
        (Gp, P), (B, T) = self.prefix_mask.shape, self.suffix_mask.shape
        n = Gp * P

        def split(x):  # (1, h, N, D) -> (Gp, h, P, D), (B, h, T, D) in the padded layout
            x = self.layout(x[0], 1)  # (h, slots, D)
            h, d = x.shape[0], x.shape[2]
            return (x[:, :n].reshape(h, Gp, P, d).transpose(0, 1),
                    x[:, n:].reshape(h, B, T, d).transpose(0, 1))

        (qp, qs), (kp, ks), (vp, vs) = split(q), split(k), split(v)
        out_p = attend(qp, kp, vp, masks[0])  # (Gp, H, P, D)
        ks = torch.cat((kp.index_select(0, self.rows), ks), dim=2)  # (B, Hkv, P + T, D)
        vs = torch.cat((vp.index_select(0, self.rows), vs), dim=2)
        out_s = attend(qs, ks, vs, masks[1])  # (B, H, T, D)
        width = q.shape[1] * q.shape[3]
        out = torch.cat((out_p.transpose(1, 2).reshape(n, width), out_s.transpose(1, 2).reshape(B * T, width)))
        return out.index_select(0, self.real)[None]  # (1, N, H * D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_logit_softcapping
        self.window = cfg.sliding_window if cfg.layer_types[layer_idx] == "sliding_attention" else None
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, self.n_kv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, self.n_kv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.norm_offset)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.norm_offset)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | SharedPrefix | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(cache, SharedPrefix):  # one packed stream: prefixes once, then their rows
            return self.o_proj(cache.attend(self._attend, q, k, v, mask))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D)
            # A local layer's T queries see none of the keys before column S - T - window + 1:
            # leave them out of the attention rather than mask them (exact; cached decoding
            # then costs O(window), not O(S), per token).
            start = k.shape[2] - T - self.window + 1 if self.window is not None and mask is not None else 0
            if start > 0:
                k, v, mask = k[:, :, start:], v[:, :, start:], mask[..., start:]
        out = self._attend(q, k, v, mask)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, T, D) queries against (B, Hkv, S, D) keys/values under a boolean mask
        (None: plain causal) -> (B, H, T, D)."""
        B, _, T, _ = q.shape
        n_rep = self.n_heads // self.n_kv
        if self.softcap is not None:
            return self._eager(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
        if mask is None:  # no padding, no cache: the fused causal kernels (flash on GPU)
            gqa = {"enable_gqa": True} if _SDPA_GQA and n_rep > 1 else {}
            if not gqa:
                k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, **gqa)
        if T == 1 and q.device.type == "cpu":
            return self._decode_cpu(q, k, v, mask)
        if T == 1 and n_rep > 1:
            # Cached decoding: the n_rep query heads of a KV head become n_rep query rows
            # against it (one mask row serves them all), so the cache is never expanded.
            qg = q.view(B, self.n_kv, n_rep, self.head_dim)  # (B, Hkv, n_rep, D)
            out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=self.scale)
            return out.view(B, self.n_heads, 1, self.head_dim)  # (B, H, 1, D)
        if _SDPA_GQA and n_rep > 1 and q.device.type == "cpu":
            # The CPU flash kernel takes grouped KV heads with a mask as they are: no expanded
            # copy of K/V in the forward, nor of their gradients in the backward (~20% faster).
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
        # Expanded KV + a boolean mask keeps the memory-efficient kernel usable on GPU.
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                              attn_mask=mask, scale=self.scale)  # (B, H, T, D)

    def _decode_cpu(self, q, k, v, mask):
        """One query per row on the CPU, as two batched GEMMs: the n_rep query heads of a KV
        head are n_rep rows against its keys (the cache is never expanded), the padding mask
        an additive bias of the first. The CPU flash kernel spends more on its per-head set-up
        than on so few scores (2-3x slower with two threads, ~15% with one)."""
        B, S, D, n_rep = q.shape[0], k.shape[2], self.head_dim, self.n_heads // self.n_kv
        qg = q.reshape(B * self.n_kv, n_rep, D)
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias.expand(B, self.n_kv, n_rep, S).reshape(B * self.n_kv, n_rep, S)  # mask: (B or 1, 1, 1, S)
        scores = torch.baddbmm(bias, qg.float(), k.reshape(B * self.n_kv, S, D).transpose(1, 2).float(),
                               alpha=self.scale)  # (B * Hkv, n_rep, S)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return torch.bmm(probs, v.reshape(B * self.n_kv, S, D)).view(B, self.n_heads, 1, D)

    def _eager(self, q, k, v, mask):
        """Explicit attention, needed for tanh soft-capping of the scores (Gemma 2 style)."""
        T, S = q.shape[2], k.shape[2]
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # (B, H, T, S)
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = {"silu": F.silu, "gelu": F.gelu,
                    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_type = cfg.layer_types[layer_idx]
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)  # noqa: E731
        self.input_layernorm = norm()
        # Llama/Qwen: the pre-MLP norm. Gemma: the norm of the attention output (sandwich).
        self.post_attention_layernorm = norm()
        self.sandwich = cfg.sandwich_norm
        if self.sandwich:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def forward(self, x, cos, sin, mask, cache):
        if self.sandwich:
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """HF's `model`: embed_tokens, layers, norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # nn.Embedding's own normal_ init on the meta device pulls in torch's Python meta
        # decompositions (sympy, dynamo: ~150 MB RSS, seconds): pass the weight instead.
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.gradient_checkpointing = False  # recompute each layer in backward (training only)
        self._inv_freq: dict[tuple[str, str], torch.Tensor] = {}  # not a buffer: survives meta init

    def inv_freq(self, layer_type: str, device) -> torch.Tensor:
        key = (layer_type, str(device))
        if key not in self._inv_freq:
            self._inv_freq[key] = rope_inv_freq(self.config.rope[layer_type], self.config.head_dim, device)
        return self._inv_freq[key]

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        if isinstance(cache, SharedPrefix):
            return self._forward_shared(input_ids, cache)
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        S = past + T
        device = input_ids.device
        if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"attention_mask must be (B, S) = ({B}, {S}) including cached tokens, "
                             f"got {tuple(attention_mask.shape)}")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache holds {cache.batch_size} rows, input has {B}")
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, S, device=device).expand(B, T)
            else:
                # Left padding: the first real token is position 0.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)

        masks = self._masks(attention_mask, T, past, device)
        x = self._layers(input_ids, position_ids, masks, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def _forward_shared(self, input_ids: torch.Tensor, plan: SharedPrefix) -> torch.Tensor:
        """The packed (1, N) stream of `plan` (see SharedPrefix) -> (1, N, H) states."""
        (_, P), (B, T) = plan.prefix_mask.shape, plan.suffix_mask.shape
        if tuple(input_ids.shape) != (1, plan.n_tokens) or tuple(plan.rows.shape) != (B,):
            raise ValueError(f"shared-prefix stream must be (1, {plan.n_tokens}) with {B} rows, "
                             f"got {tuple(input_ids.shape)} and {tuple(plan.rows.shape)}")
        device = input_ids.device
        keys = plan.key_mask()  # (B, P + T)
        prefix = self._masks(plan.prefix_mask, P, 0, device)
        suffix = self._masks(keys, T, P, device)
        masks = {t: (prefix[t], suffix[t]) for t in prefix}
        return self.norm(self._layers(input_ids, plan.positions(keys), masks, plan))

    def _layers(self, input_ids, position_ids, masks: dict, cache) -> torch.Tensor:
        """Embedding, RoPE and the decoder layers (the final norm is the caller's)."""
        cfg, device = self.config, input_ids.device
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if cfg.embed_scale is not None:
            x = x * torch.tensor(cfg.embed_scale, dtype=x.dtype, device=device)
        rope = {}
        for t in set(cfg.layer_types):
            freqs = position_ids[..., None].float() * self.inv_freq(t, device)  # (B, T, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
            rope[t] = (emb.cos().to(x.dtype), emb.sin().to(x.dtype))
        for layer in self.layers:
            cos, sin = rope[layer.layer_type]
            mask = masks[layer.layer_type]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        return x

    def _masks(self, attention_mask, T: int, past: int, device) -> dict[str, torch.Tensor | None]:
        """Boolean (B or 1, 1, T, S) masks per layer type; None = plain causal (no cache, no padding)."""
        cfg = self.config
        S = past + T
        types = set(cfg.layer_types)
        window = cfg.sliding_window
        local_needed = "sliding_attention" in types and window is not None and S > window
        if attention_mask is None and past == 0 and not local_needed:
            return {t: None for t in types}
        q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
        full = k_pos <= q_pos  # (T, S)
        if attention_mask is not None:
            full = full[None] & attention_mask.bool()[:, None, :]  # (B, T, S)
            # A left-pad query sees no real key; letting it see itself keeps softmax finite.
            full = full | (k_pos == q_pos)
        else:
            full = full[None]  # (1, T, S)
        masks = {"full_attention": None if attention_mask is None and past == 0 else full[:, None]}
        if "sliding_attention" in types:  # config guarantees a window when such layers exist
            masks["sliding_attention"] = (full & (q_pos - k_pos < window))[:, None]
        return masks


class CausalLM(nn.Module):
    """Decoder + LM head. `forward` gives logits, `hidden_states` the final-normed states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) final-normed hidden states. See the module docstring
        for the mask; `cache` gets the T new keys/values and its length advanced."""
        return self.model(input_ids, attention_mask, position_ids, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states -> (..., V) logits, soft-capped when the config says so."""
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        # self.model, not self.hidden_states: under FSDP2 both forward and hidden_states are
        # hooked methods of the root, and nesting them ran the root's hooks twice; the inner
        # post-hook left the root idle, so the outer one resharded it and every decode forward
        # inside `unsharded()` all-gathered it again (a hang when ranks decode different
        # numbers of steps; tests/train/test_distributed.py).
        return self.logits(self.model(input_ids, attention_mask, position_ids, cache))  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty preallocated cache for `batch_size` rows of up to `max_len` tokens."""
        w = self.model.embed_tokens.weight
        cfg = self.config
        return KVCache.allocate(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len,
                                cfg.head_dim, dtype or w.dtype, w.device)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype
