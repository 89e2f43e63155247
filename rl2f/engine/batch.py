"""One batch of the built-in engine as data, after nano-vllm's split of scheduler and
sequence state: which samples a batch holds and how its prompts are prefilled (`pack`,
`_Plan`, `_prefill_groups`), and the per-row state its decode loop carries (`_Rows`). The
phases that run the model on them are in builtin.py, sampling in sampling.py.

Two row numberings: a plan's batch rows (row b is one sample of one prompt; outputs are
written in these) and the decode rows of `_Rows`: the batch rows not dropped yet, in order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from rl2f.engine.sampling import row_uniform, stream_key
from rl2f.engine.types import SamplingParams
from rl2f.model.kv_cache import KVCache


@dataclasses.dataclass
class _Unit:
    """Some samples of one request: one prefilled prompt row fanned out to len(samples) rows."""

    req: int
    samples: list[int]  # which of the request's n samples
    width: int  # prompt tokens to run through the model: those the prefix cache does not hold


def pack(units: list[_Unit], max_rows: int) -> list[list[_Unit]]:
    """Group units into batches of <= max_rows rows; prompts with a similar number of tokens
    to prefill go together, so little of the batch is padding."""
    units = sorted(units, key=lambda u: u.width)
    batches, cur, rows = [], [], 0
    for u in units:
        if cur and rows + len(u.samples) > max_rows:
            batches.append(cur)
            cur, rows = [], 0
        cur.append(u)
        rows += len(u.samples)
    if cur:
        batches.append(cur)
    return batches


@dataclasses.dataclass
class _Plan:
    """What a batch computes, decided on the host before any forward: its prompt rows (one per
    unit, by ascending prefill width), how they are prefilled, and its batch rows (one per
    sample) with what each may generate."""

    units: list[_Unit]
    prompts: list[list[int]]  # per prompt row
    hits: list[tuple[Any, int]]  # per prompt row: (kept prefix-cache entry or None, tokens it holds)
    groups: list[tuple[int, int, int]]  # prefill runs (a, b, W): rows [a, b) run their last W columns
    reuse: list[int]  # per prompt row: leading tokens copied from its kept entry instead of run
    row_unit: list[int]  # per batch row: its prompt row
    row_sample: list[int]  # per batch row: its sample index within the request
    params: list[SamplingParams]  # per batch row
    keys: list[int]  # per batch row: its noise stream (sampling.stream_key)
    budget: list[int]  # per batch row: max_tokens, capped by the context length
    stop_ids: list[list[int]]  # per batch row: the tokenizer's stop ids and the request's
    width: int  # columns of the left-padded prompts: the longest prompt
    max_new: int  # decode steps at most: the largest budget

    @classmethod
    def make(cls, units, prompts, params, seeds, hits, max_len, group_cost, stop_ids) -> "_Plan":
        """Per request: `prompts`, `params`, `seeds`, `hits`; `stop_ids`: the tokenizer's."""
        units = sorted(units, key=lambda u: u.width)  # ascending, for _prefill_groups
        groups = _prefill_groups([u.width for u in units], group_cost)
        unit_prompts = [prompts[u.req] for u in units]
        reuse = [max(0, len(unit_prompts[i]) - W) for a, b, W in groups for i in range(a, b)]
        rows = [(i, u, s) for i, u in enumerate(units) for s in u.samples]
        sps = [params[u.req] for _, u, _ in rows]
        budget = [sp.max_tokens if max_len is None else min(sp.max_tokens, max_len - len(unit_prompts[i]))
                  for (i, _, _), sp in zip(rows, sps)]
        return cls(units, unit_prompts, [hits[u.req] for u in units], groups, reuse,
                   row_unit=[i for i, _, _ in rows], row_sample=[s for _, _, s in rows], params=sps,
                   keys=[stream_key(seeds[u.req], s) for _, u, s in rows], budget=budget,
                   stop_ids=[list(dict.fromkeys([*stop_ids, *sp.stop_token_ids])) for sp in sps],
                   width=max(map(len, unit_prompts)), max_new=max(budget))

    def start(self, b: int) -> int:
        """The first cache column of batch row b (its prompt's first token)."""
        return self.width - len(self.prompts[self.row_unit[b]])


@dataclasses.dataclass
class _Rows:
    """Every per-row tensor and list of a decode batch: element r of each field belongs to
    decode row r. Finished rows are dropped by `select` alone, which re-selects every field,
    so none can be left in the old row order (a wrong sample, silently)."""

    batch_row: list[int]  # the row's batch row (plan and outputs)
    index: torch.Tensor  # (B',) batch_row on the device: where the row's outputs are written
    cache: KVCache  # its keys/values
    attn: torch.Tensor  # (B', prompt width + max_new) attention mask
    next_pos: torch.Tensor  # (B',) position of its first generated token
    temperature: torch.Tensor  # (B',) float32, 0 = greedy
    uniforms: torch.Tensor  # (B', max_new) float64: every step's sampling noise
    top_k: torch.Tensor | None  # (B',); None when no row of the batch truncates
    top_p: torch.Tensor | None  # (B',) float32; None likewise
    stop_table: torch.Tensor  # (B', S) its stop ids, padded with -1
    budget: torch.Tensor  # (B',) tokens it may generate
    checked: list[int]  # tokens already searched for its stop strings
    finished: torch.Tensor  # (B',) bool: stopped (it decodes on, harmlessly, until dropped)
    tok: torch.Tensor | None = None  # (B',) the token sampled at this step

    @classmethod
    def fan_out(cls, plan: _Plan, cache: KVCache, logits: torch.Tensor, mask: torch.Tensor):
        """The decode state of a prefilled plan: batch row b gets the cache, logits and mask
        of its prompt row, and its sampling tables. Returns it and the logits (B, V) of every
        row's first token."""
        dev, B, sps = logits.device, len(plan.row_unit), plan.params
        src = torch.tensor(plan.row_unit, device=dev)  # (B,)
        counts = [len(u.samples) for u in plan.units]
        if len(set(counts)) == 1:
            if counts[0] > 1:
                cache = cache.repeat_interleave(counts[0])
        else:
            cache = cache.index_select(src)
        attn = torch.ones((B, plan.width + plan.max_new), dtype=torch.long, device=dev)
        attn[:, :plan.width] = mask.index_select(0, src)
        keys = torch.tensor(plan.keys, device=dev)
        truncate = any(sp.top_k is not None or sp.top_p < 1.0 for sp in sps)
        V, S = logits.shape[-1], max(1, max(len(s) for s in plan.stop_ids))
        rows = cls(
            batch_row=list(range(B)),
            index=torch.arange(B, device=dev),
            cache=cache,
            attn=attn,
            next_pos=torch.tensor([len(plan.prompts[i]) for i in plan.row_unit], device=dev),
            temperature=torch.tensor([sp.temperature for sp in sps], dtype=torch.float32, device=dev),
            uniforms=row_uniform(keys[:, None], torch.arange(plan.max_new, device=dev)[None]),
            top_k=torch.tensor([V if sp.top_k is None else sp.top_k for sp in sps], device=dev) if truncate else None,
            top_p=torch.tensor([sp.top_p for sp in sps], dtype=torch.float32, device=dev) if truncate else None,
            stop_table=torch.tensor([s + [-1] * (S - len(s)) for s in plan.stop_ids], device=dev),
            budget=torch.tensor(plan.budget, device=dev),
            checked=[0] * B,
            finished=torch.zeros(B, dtype=torch.bool, device=dev),
        )
        return rows, logits.index_select(0, src)

    def select(self, keep: list[int]) -> "_Rows":
        """The decode rows `keep`, in that order, of every field."""
        index = torch.tensor(keep, device=self.index.device)

        def pick(value):
            if value is None:
                return None
            if isinstance(value, KVCache):
                return value.index_select(index)
            if isinstance(value, torch.Tensor):
                return value[index]
            if isinstance(value, list):
                return [value[i] for i in keep]
            raise TypeError(f"_Rows.select cannot re-select a {type(value).__name__}")

        return _Rows(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def keys_values(self, which, plan: _Plan, lengths: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Copies of the keys/values of decode rows `which`: prompt + generated tokens up to,
        not including, each row's last (never fed to the model); `lengths` per batch row.
        Returns (batch row, keys, values) with (L, Hkv, n, D) tensors."""
        out = []
        for r in which:  # one copy of a column range of every layer per row: no index tensors
            b = self.batch_row[r]
            start, end = plan.start(b), plan.width + lengths[b] - 1
            out.append((b, self.cache.key_buffer[:, r, :, start:end].clone(),
                        self.cache.value_buffer[:, r, :, start:end].clone()))
        return out


def _prefill_groups(widths: list[int], cost: int) -> list[tuple[int, int, int]]:
    """Split rows with ascending prefill `widths` into runs [a, b) that each prefill
    widths[b - 1] columns, minimising the padded tokens computed plus `cost` tokens for each
    extra forward: [(a, b, width)]. A run ends only where the width changes (an exact search
    over those few places: the widths of one batch take a handful of values)."""
    n = len(widths)
    ends = [i for i in range(1, n) if widths[i] != widths[i - 1]] + [n]
    best = {0: (0, -1)}  # run end -> (least cost of the rows before it, previous run end)
    for j in ends:
        best[j] = min((best[i][0] + (j - i) * widths[j - 1] + cost, i) for i in best)
    runs, j = [], n
    while j > 0:
        i = best[j][1]
        runs.append((i, j, widths[j - 1]))
        j = i
    return runs[::-1]
