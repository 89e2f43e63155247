"""The built-in engine's prefix cache (vLLM's automatic prefix caching, in whole sequences
rather than blocks): when a batch ends, the keys/values of every finished sequence (prompt +
generated tokens, the last sampled token excluded: it was never fed to the model) are kept,
keyed by their token ids. A later prompt that starts with a kept sequence copies those
keys/values into its cache rows and prefills only the rest: the episode runner sends the
whole dialogue every turn, and each turn then prefills the last sampled token, the teacher's
message and the template around it, not the dialogue again. Every position's keys/values
depend only on the tokens up to it, so the results are those of a fresh prefill up to float
round-off (the same sampled tokens for the same seed, log-probs within fp32 round-off).
- Lookup: chain hashes of 16-token blocks find the kept sequences sharing the longest run
  of whole blocks with the prompt; the match is then extended token by token. Any common
  prefix is reused, not only a whole kept sequence.
- Memory: at most `prefix_cache_bytes` of keys/values (`PrefixCache.bytes_per_token` per
  token), least recently used entries evicted first; a sequence that extends a kept one
  replaces it (an episode holds one entry, its latest turn). Entries of finished episodes
  are not released explicitly: they age out by LRU, and `release()` drops everything.
- Validity: keys/values depend on the weights, so an entry is only served to requests with
  the same adapter flag (use_adapter on/off) and the same weights. `set_adapter` clears the
  cache: the trainer calls it after every optimiser step, which makes it the contract. As a
  second guard, `generate` clears it when any parameter's in-place version counter moved
  (load_adapter, non-fused optimisers; fused optimiser kernels do not bump it).
"""
from __future__ import annotations

import collections

import torch

_BLOCK = 16  # tokens per hashed block of the prefix index


class _Entry:
    """A kept sequence: its token ids and keys/values, (L, Hkv, n, D) each."""

    __slots__ = ("id", "flag", "tokens", "keys", "values", "hashes")

    def __init__(self, id_, flag, tokens, keys, values, hashes):
        self.id, self.flag, self.tokens, self.keys, self.values, self.hashes = id_, flag, tokens, keys, values, hashes


def _block_hashes(tokens: tuple, flag: bool, limit: int | None = None) -> list[int]:
    """Chain hashes of the whole 16-token blocks of `tokens`: hash j covers tokens [0, 16(j+1))
    and the adapter flag, so equal hashes mean equal prefixes (a collision is caught by the
    exact comparison in `lookup`)."""
    n = len(tokens) if limit is None else min(limit, len(tokens))
    h, out = hash(("rl2f-prefix", flag)), []
    for j in range(0, n - _BLOCK + 1, _BLOCK):
        h = hash((h, tokens[j:j + _BLOCK]))
        out.append(h)
    return out


class PrefixCache:
    """Keys/values of finished sequences under an LRU byte budget (see the module docstring)."""

    def __init__(self, budget_bytes: int, bytes_per_token: int):
        self.budget_bytes = int(budget_bytes)
        self.bytes_per_token = int(bytes_per_token)
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # LRU first
        self._index: dict[int, dict[int, None]] = {}  # block hash -> ids of entries holding that prefix
        self._exact: dict[tuple, int] = {}  # (flag, tokens) -> id
        self._tokens = 0
        self._next_id = 0

    @property
    def tokens(self) -> int:
        """Tokens held (the sum of the entries' lengths)."""
        return self._tokens

    @property
    def bytes(self) -> int:
        return self._tokens * self.bytes_per_token

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self._exact.clear()
        self._tokens = 0

    def lookup(self, tokens: tuple, flag: bool) -> tuple[_Entry | None, int]:
        """The kept entry sharing the longest prefix with `tokens`, and that prefix's length
        (at most len(tokens) - 1: the last prompt token is always run, for its logits)."""
        ids = None
        depth = 0
        for h in _block_hashes(tokens, flag, len(tokens) - 1):
            found = self._index.get(h)
            if not found:
                break
            ids, depth = found, depth + 1
        if ids is None:
            return None, 0
        cap, start = len(tokens) - 1, depth * _BLOCK
        best, best_m = None, 0
        for i in ids:
            e = self._entries[i]
            if e.tokens[:start] != tokens[:start]:  # a hash collision
                continue
            m, end = start, min(cap, len(e.tokens))
            while m < end and e.tokens[m] == tokens[m]:
                m += 1
            if m > best_m:
                best, best_m = e, m
        if best is not None:
            self._entries.move_to_end(best.id)
        return best, best_m

    def store(self, tokens: tuple, keys: torch.Tensor, values: torch.Tensor, flag: bool,
              replaces: _Entry | None = None) -> None:
        """Keep `tokens` with their keys/values ((L, Hkv, n, D) each). `replaces`, the entry
        this sequence was prefilled from, is dropped when the new sequence extends it."""
        n = len(tokens)
        if n * self.bytes_per_token > self.budget_bytes:
            return
        if replaces is not None and replaces.id in self._entries and tokens[:len(replaces.tokens)] == replaces.tokens:
            self._remove(replaces.id)
        old = self._exact.get((flag, tokens))
        if old is not None:
            self._entries.move_to_end(old)
            return
        e = _Entry(self._next_id, flag, tokens, keys, values, _block_hashes(tokens, flag))
        self._next_id += 1
        self._entries[e.id] = e
        self._exact[(flag, tokens)] = e.id
        for h in e.hashes:
            self._index.setdefault(h, {})[e.id] = None
        self._tokens += n
        while self.bytes > self.budget_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, entry_id: int) -> None:
        e = self._entries.pop(entry_id)
        del self._exact[(e.flag, e.tokens)]
        for h in e.hashes:
            ids = self._index[h]
            del ids[entry_id]
            if not ids:
                del self._index[h]
        self._tokens -= len(e.tokens)
