"""Preallocated key/value cache for batched incremental decoding.

One (B, n_kv_heads, max_len, head_dim) key and value buffer per layer, filled left to right:
a forward with `cache=` writes its T new tokens at columns [length, length + T) and advances
`length`. Column s of the cache is column s of the caller's (B, S) attention mask, so left
padding written during prefill stays masked for every later step.

GRPO samples G completions per prompt: prefill the B prompts once, then
`repeat_interleave(G)` fans the cache out to B*G rows (row b*G + g is sample g of prompt b,
as `torch.repeat_interleave` orders them); `index_select(rows)` drops finished rows.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class KVCache:
    """Per-layer key/value buffers and how many columns are filled."""

    keys: list[torch.Tensor]  # per layer (B, n_kv_heads, max_len, head_dim)
    values: list[torch.Tensor]  # per layer (B, n_kv_heads, max_len, head_dim)
    length: int = 0  # columns [0, length) hold real keys/values

    @classmethod
    def allocate(cls, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int,
                 head_dim: int, dtype: torch.dtype, device) -> "KVCache":
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        return cls(keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)])

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, Hkv, T, D) new keys/values after `length`; return all S = length + T columns.

        `length` itself is advanced by the model once every layer has written (`advance`)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def rows(self, start: int, end: int, length: int) -> "KVCache":
        """Rows [start, end) as a cache of views (what it writes lands in this cache's buffers),
        filled up to column `length`: a group of rows can be prefilled on its own."""
        return KVCache(keys=[k[start:end] for k in self.keys], values=[v[start:end] for v in self.values],
                       length=length)

    def repeat_interleave(self, g: int) -> "KVCache":
        """B rows -> B*g rows, each row repeated g times in place (prefill once, sample g)."""
        return KVCache(keys=[k.repeat_interleave(g, dim=0) for k in self.keys],
                       values=[v.repeat_interleave(g, dim=0) for v in self.values], length=self.length)

    def index_select(self, rows) -> "KVCache":
        """Keep the given rows (in that order), e.g. the unfinished sequences."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.keys[0].device)
        return KVCache(keys=[k.index_select(0, rows) for k in self.keys],
                       values=[v.index_select(0, rows) for v in self.values], length=self.length)
