"""Preallocated key/value cache for batched incremental decoding.

One (B, n_kv_heads, max_len, head_dim) key and value buffer per layer (views of one buffer
for all layers), filled left to right: a forward with `cache=` writes its T new tokens at columns [length, length + T) and advances
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
    """Key and value buffers of every layer, (L, B, n_kv_heads, max_len, head_dim) each, and
    how many columns are filled. One buffer for all layers: a row's keys/values of every
    layer are one copy in or out (the prefix cache's), not one per layer."""

    key_buffer: torch.Tensor  # (L, B, n_kv_heads, max_len, head_dim)
    value_buffer: torch.Tensor
    length: int = 0  # columns [0, length) hold real keys/values

    @classmethod
    def allocate(cls, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int,
                 head_dim: int, dtype: torch.dtype, device) -> "KVCache":
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def keys(self) -> tuple[torch.Tensor, ...]:
        """Per layer (B, n_kv_heads, max_len, head_dim) views."""
        return self.key_buffer.unbind(0)

    @property
    def values(self) -> tuple[torch.Tensor, ...]:
        return self.value_buffer.unbind(0)

    @property
    def batch_size(self) -> int:
        return self.key_buffer.shape[1]

    @property
    def max_len(self) -> int:
        return self.key_buffer.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, Hkv, T, D) new keys/values after `length`; return all S = length + T columns.

        `length` itself is advanced by the model once every layer has written (`advance`)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        keys, values = self.key_buffer[layer], self.value_buffer[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def rows(self, start: int, end: int, length: int) -> "KVCache":
        """Rows [start, end) as a cache of views (what it writes lands in this cache's buffers),
        filled up to column `length`: a group of rows can be prefilled on its own."""
        return KVCache(self.key_buffer[:, start:end], self.value_buffer[:, start:end], length)

    def repeat_interleave(self, g: int) -> "KVCache":
        """B rows -> B*g rows, each row repeated g times in place (prefill once, sample g)."""
        return KVCache(self.key_buffer.repeat_interleave(g, dim=1), self.value_buffer.repeat_interleave(g, dim=1),
                       self.length)

    def index_select(self, rows) -> "KVCache":
        """Keep the given rows (in that order), e.g. the unfinished sequences."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.key_buffer.device)
        return KVCache(self.key_buffer.index_select(1, rows), self.value_buffer.index_select(1, rows), self.length)
