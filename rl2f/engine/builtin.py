"""The built-in rollout engine: our model, in-process, batched, with a preallocated KV cache
and a prefix cache that carries a dialogue's keys/values from one turn to the next.

Per batch: the distinct prompts are left-padded and prefilled ONCE, the cache and the last
logits are fanned out to the n samples of each prompt, and a decode loop samples one token
per row per step. Finished rows (stop token or max_tokens, detected on the device) keep
decoding harmlessly until the next host sync, every `sync_every` steps, where stop strings
are checked on decoded text, the loop ends when every row is done, and finished rows are
dropped from the cache when enough of them pile up. Nothing else in the loop synchronises
with the host: noise is counter-based (see sampling.py) and outputs are written into
preallocated buffers. On the CPU there is no asynchronous device to stall, so the default
is a host check after every step: no forward is spent on a batch whose rows have all
stopped (the demo's attempts stop after 6 of their 8 tokens: 2 of 7 decode forwards saved).
Under torch.distributed every rank decodes on its own: a rollout forward makes no
collective (the trainer holds the model unsharded), so ranks may stop at different steps.

Prefix cache (vLLM's automatic prefix caching, in whole sequences rather than blocks): when
a batch ends, the keys/values of every finished sequence (prompt + generated tokens, the
last sampled token excluded: it was never fed to the model) are kept, keyed by their token
ids. A later prompt that starts with a kept sequence copies those keys/values into its
cache rows and prefills only the rest: the episode runner sends the whole dialogue every
turn, and each turn then prefills the last sampled token, the teacher's message and the
template around it, not the dialogue again. Every position's keys/values depend only on
the tokens up to it, so the results are those of a fresh prefill up to float round-off
(the same sampled tokens for the same seed, log-probs within fp32 round-off).
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

The engine shares the trainer's model: weights updated by an optimizer step are used by the
next `generate`. Student requests (use_adapter=True) run with the LoRA adapter on (in fp32,
folded into per-call weight copies: `_folded_lora`), teacher / reference requests with it
off (`rl2f.lora.adapters_disabled`), in the same engine.
Output conventions (log-probs, stop tokens, stop strings) are in types.py. `engine.stats`
counts the work done (see `EngineStats`).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from rl2f.engine.sampling import (
    request_seed,
    row_uniform,
    sample_step,
    stream_key,
    tail_has_stop,
    truncate_at_stop,
)
from rl2f.engine.types import CompletionOutput, RequestOutput, SamplingParams, per_request
from rl2f.errors import UserError
from rl2f.lora import adapters_disabled, load_adapter, lora_layers

_BLOCK = 16  # tokens per hashed block of the prefix index


@dataclasses.dataclass
class EngineStats:
    """Work counters, summed over calls (`engine.stats`) or for the last call
    (`engine.last_stats`). Token counts are per distinct prefilled prompt (a prompt fanned
    out to n samples counts once) and exclude padding."""

    calls: int = 0  # generate() calls
    prompt_tokens: int = 0  # prompt tokens of the prefilled rows
    cached_tokens: int = 0  # of those, tokens whose keys/values came from the prefix cache
    prefill_tokens: int = 0  # of those, tokens run through the model: prompt - cached
    generated_tokens: int = 0  # tokens returned (all samples)
    decode_steps: int = 0  # batched forwards of one token per row

    def add(self, other: "EngineStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclasses.dataclass
class _Unit:
    """Some samples of one request: one prefilled prompt row fanned out to len(samples) rows."""

    req: int
    samples: list[int]  # which of the request's n samples


@contextlib.contextmanager
def _folded_lora(model: torch.nn.Module):
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


class BuiltinEngine:
    """Batched generation with our `CausalLM`; vLLM-shaped `generate`."""

    collective = False  # each rank generates on its own (see the module docstring)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_batch_size: int = 64,
        max_len: int | None = None,
        sync_every: int | None = None,
        compact_fraction: float = 0.25,
        prefix_cache_bytes: int = 256 << 20,
        fold_lora: bool = True,
        prefill_group_cost: int | None = None,
    ):
        """max_batch_size: sequences decoded together (prompts x samples); max_len: prompt +
        generation tokens per sequence (default: the model's max_position_embeddings);
        sync_every: decode steps between host checks (default: 1 on the CPU, where a check
        costs nothing; 8 on an accelerator, where each one stalls
        the queue of launched kernels); compact_fraction: drop finished rows
        from the cache once they are this fraction of the batch; prefix_cache_bytes: memory
        for the keys/values kept between calls (0 = no prefix cache); fold_lora: run student
        batches of an fp32 model with the adapter folded into per-call weight copies
        (`_folded_lora`: one matmul per LoRA layer instead of three, for one copy of the
        adapted weights during the call); never in bf16/fp16, where W + BA would round
        small updates away, nor under torch.distributed, whose sharded parameters must not
        be swapped; prefill_group_cost: what one more prefill forward costs, in prefilled
        tokens, when the rows of a batch are split by how much each has to prefill (default:
        64 on the CPU, where a forward of the tiny model costs about as much as 64 tokens;
        on an accelerator, where padding costs little until it is compute-bound, no split)."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = int(max_batch_size)
        self.max_len = max_len or getattr(model.config, "max_position_embeddings", None)
        if sync_every is None:
            # Also under torch.distributed: a rollout forward runs no collective (`unsharded`,
            # and CausalLM.forward runs the root's FSDP hooks once), so a rank may stop
            # decoding whenever its own rows have stopped.
            sync_every = 1 if model.device.type == "cpu" else 8
        self.sync_every = max(1, int(sync_every))
        self.compact_fraction = compact_fraction
        if prefill_group_cost is None:
            prefill_group_cost = 64 if model.device.type == "cpu" else 1 << 40
        self.prefill_group_cost = int(prefill_group_cost)
        self.adapter_on = True  # False after set_adapter(None): student requests run the base
        self._next_request_id = 0
        cfg = model.config
        per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize
        self.prefix_cache = PrefixCache(prefix_cache_bytes, per_token) if prefix_cache_bytes > 0 else None
        self.fold_lora = fold_lora
        self._weights_key = self._weights_version()
        self.stats = EngineStats()  # summed over calls
        self.last_stats = EngineStats()  # the last call's

    def set_adapter(self, version: int | None, path: str | Path | None = None) -> None:
        """The engine shares the trainer's model, so after an optimiser step the new weights
        are already live and `path` is None. A `path` loads that PEFT adapter into the model
        (evaluation of saved adapters); `version=None` makes student requests run the base.
        Either way the weights may have changed: the prefix cache is cleared."""
        if path is not None:
            load_adapter(self.model, path)
        self.adapter_on = version is not None
        self.release()

    def release(self) -> None:
        """Drop every kept sequence of the prefix cache (e.g. when a rollout ends; without
        this call, LRU eviction keeps it within prefix_cache_bytes)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def sleep(self) -> None:
        """Between a rollout and training: the prefix cache goes (see `Engine.sleep`)."""
        self.release()

    def wake(self) -> None:
        pass

    def _weights_version(self) -> int:
        """Moves whenever a parameter is replaced or written in place (its version counter)."""
        return hash(tuple((id(p), p._version) for p in self.model.parameters()))

    # --- public API -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int] | str],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_adapter: bool | Sequence[bool] = True,
    ) -> list[RequestOutput]:
        """Sample `n` completions per prompt (token-id lists, or strings to encode)."""
        prompts = [self._prompt_ids(p) for p in prompts]
        params = per_request(sampling_params or SamplingParams(), len(prompts), "sampling_params")
        flags = [bool(f) and self.adapter_on for f in per_request(use_adapter, len(prompts), "use_adapter")]
        seeds = [request_seed(sp.seed, ids) if sp.seed is not None
                 else int(torch.randint(0, 2**62, ()).item()) for sp, ids in zip(params, prompts)]
        results: list[list[CompletionOutput | None]] = [[None] * sp.n for sp in params]
        weights = self._weights_version()
        if weights != self._weights_key:
            self.release()
            self._weights_key = weights
        stats = EngineStats(calls=1)
        # the kept sequence (and how many of its tokens) each prompt starts with
        hits = [self.prefix_cache.lookup(tuple(p), f) if self.prefix_cache is not None else (None, 0)
                for p, f in zip(prompts, flags)]

        was_training = self.model.training
        self.model.eval()  # LoRA dropout off while sampling
        try:
            with torch.inference_mode():
                for flag in (True, False):
                    units = [_Unit(r, list(range(s, min(s + self.max_batch_size, params[r].n))))
                             for r in range(len(prompts)) if flags[r] == flag
                             for s in range(0, params[r].n, self.max_batch_size)]
                    if not units:
                        continue
                    with self._adapter_context(flag):
                        for batch in self._pack(units, prompts, hits):
                            self._run_batch(batch, prompts, params, seeds, results, hits, flag, stats)
        finally:
            self.model.train(was_training)
        self.stats.add(stats)
        self.last_stats = stats

        outputs = []
        for r, ids in enumerate(prompts):
            outputs.append(RequestOutput(
                request_id=str(self._next_request_id),
                prompt_token_ids=list(ids),
                outputs=results[r],
            ))
            self._next_request_id += 1
        return outputs

    def _adapter_context(self, use_adapter: bool):
        if not use_adapter:
            return adapters_disabled(self.model)
        if self.fold_lora and self.model.dtype == torch.float32 and not _distributed():
            return _folded_lora(self.model)
        return contextlib.nullcontext()

    # --- batching ---------------------------------------------------------------------------

    def _prompt_ids(self, p: Sequence[int] | str) -> list[int]:
        ids = self.tokenizer.encode(p) if isinstance(p, str) else list(map(int, p))
        if not ids:
            raise UserError("generate() got an empty prompt; a prompt needs at least one token")
        if self.max_len is not None and len(ids) >= self.max_len:
            raise UserError(f"a prompt of {len(ids)} tokens leaves no room to generate "
                            f"within max_len={self.max_len}")
        return ids

    def _pack(self, units: list[_Unit], prompts: list[list[int]], hits) -> list[list[_Unit]]:
        """Group units into batches of <= max_batch_size rows; prompts with a similar number
        of tokens to prefill (beyond what the prefix cache holds) go together, so little of
        the batch is padding."""
        units = sorted(units, key=lambda u: len(prompts[u.req]) - hits[u.req][1])
        batches, cur, rows = [], [], 0
        for u in units:
            if cur and rows + len(u.samples) > self.max_batch_size:
                batches.append(cur)
                cur, rows = [], 0
            cur.append(u)
            rows += len(u.samples)
        if cur:
            batches.append(cur)
        return batches

    # --- one batch ----------------------------------------------------------------------------

    def _run_batch(self, units, prompts, params, seeds, results, hits, flag, stats) -> None:
        model, dev = self.model, self.model.device
        units = sorted(units, key=lambda u: len(prompts[u.req]) - hits[u.req][1])  # for _prefill_groups
        pad_id = getattr(self.tokenizer, "pad_id", None) or 0
        plen = [len(prompts[u.req]) for u in units]
        Tp = max(plen)
        # per-row generation budget: max_tokens, capped by the context length
        row_units = [(i, u, s) for i, u in enumerate(units) for s in u.samples]
        budget = []
        for _, u, _ in row_units:
            b = params[u.req].max_tokens
            if self.max_len is not None:
                b = min(b, self.max_len - len(prompts[u.req]))
            budget.append(b)
        max_new = max(budget)
        B, total = len(row_units), Tp + max_new

        # prefill each distinct prompt once: a group of rows runs its last W columns through
        # the model, where W covers the longest part of any of its rows that the prefix cache
        # does not hold; the columns before them are copied from the kept sequences. Rows are
        # grouped by that length (one long teacher message must not pad every row to it).
        groups = _prefill_groups([p - hits[u.req][1] for p, u in zip(plen, units)], self.prefill_group_cost)
        reuse = [max(0, plen[i] - W) for a, b, W in groups for i in range(a, b)]
        mask = (torch.arange(Tp) >= torch.tensor([Tp - n for n in plen]).unsqueeze(1)).long().to(dev)  # (P, Tp)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (P, Tp)
        cache = model.new_cache(len(units), total)
        for i, n in enumerate(reuse):  # one copy of every layer's keys (and values) per row
            if n:
                entry, start = hits[units[i].req][0], Tp - plen[i]
                cache.key_buffer[:, i, :, start:start + n] = entry.keys[:, :, :n]  # (L, Hkv, n, D)
                cache.value_buffer[:, i, :, start:start + n] = entry.values[:, :, :n]
        last = []
        for a, b, W in groups:  # each group writes its columns Tp - W.. of its cache rows
            rows = cache.rows(a, b, length=Tp - W)
            ids = [prompts[units[i].req][-W:] if plen[i] >= W else [pad_id] * (W - plen[i]) + prompts[units[i].req]
                   for i in range(a, b)]  # the rows' last W columns, left-padded
            hidden = model.hidden_states(torch.tensor(ids, device=dev), attention_mask=mask[a:b],
                                         position_ids=positions[a:b, Tp - W:], cache=rows)  # (b - a, W, H)
            last.append(hidden[:, -1])  # only the last position's logits are ever needed
        cache.length = Tp
        logits = model.logits(torch.cat(last) if len(last) > 1 else last[0])  # (P, V)
        stats.prompt_tokens += sum(plen)
        stats.cached_tokens += sum(reuse)
        stats.prefill_tokens += sum(plen) - sum(reuse)

        # fan out: row b of the decode batch is sample `s` of unit `i`
        counts = [len(u.samples) for u in units]
        src = torch.tensor([i for i, _, _ in row_units], device=dev)  # (B,)
        if len(set(counts)) == 1:
            if counts[0] > 1:
                cache = cache.repeat_interleave(counts[0])
        else:
            cache = cache.index_select(src)
        logits = logits.index_select(0, src)  # (B, V)
        attn = torch.ones((B, total), dtype=torch.long, device=dev)
        attn[:, :Tp] = mask.index_select(0, src)
        next_pos = torch.tensor([plen[i] for i, _, _ in row_units], device=dev)  # (B,)

        # per-row sampling settings
        sps = [params[u.req] for _, u, _ in row_units]
        V = logits.shape[-1]
        temperature = torch.tensor([sp.temperature for sp in sps], dtype=torch.float32, device=dev)
        keys = torch.tensor([stream_key(seeds[u.req], s) for _, u, s in row_units], device=dev)
        uniforms = row_uniform(keys[:, None], torch.arange(max_new, device=dev)[None])  # (B, max_new): every step's
        truncate = any(sp.top_k is not None or sp.top_p < 1.0 for sp in sps)
        top_k = torch.tensor([V if sp.top_k is None else sp.top_k for sp in sps], device=dev) if truncate else None
        top_p = torch.tensor([sp.top_p for sp in sps], dtype=torch.float32, device=dev) if truncate else None
        all_greedy, any_greedy = all(sp.greedy for sp in sps), any(sp.greedy for sp in sps)
        base_stop = list(getattr(self.tokenizer, "stop_ids", None) or [])
        stop_sets = [list(dict.fromkeys([*base_stop, *sp.stop_token_ids])) for sp in sps]
        width = max(1, max(len(s) for s in stop_sets))
        stop_table = torch.tensor([s + [-1] * (width - len(s)) for s in stop_sets], device=dev)  # (B, S)
        row_budget = torch.tensor(budget, device=dev)  # (B,)
        string_rows = [b for b, sp in enumerate(sps) if sp.stop]

        # outputs, in batch-row coordinates; `active` maps decode rows to batch rows
        out_tokens = torch.full((B, max_new), pad_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros((B, max_new), dtype=torch.float32, device=dev)
        lengths = row_budget.clone()  # tokens kept per row; rows that never stop use the budget
        active = torch.arange(B, device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)  # of the active rows
        checked = [0] * B  # tokens already searched for stop strings, per batch row
        active_host = list(range(B))
        kept = []  # (batch row, keys, values) of rows whose keys/values the prefix cache keeps
        starts = [Tp - plen[i] for i, _, _ in row_units]  # first column of each batch row

        for t in range(max_new):
            tok, lp = sample_step(logits, temperature, keys, t, top_k, top_p, all_greedy, any_greedy, uniforms[:, t])
            out_tokens[active, t] = tok
            out_lp[active, t] = lp
            hit_stop = (tok.unsqueeze(1) == stop_table).any(-1)  # (B',)
            newly = ~finished & (hit_stop | (t + 1 >= row_budget))
            lengths[active] = torch.where(newly, t + 1, lengths[active])
            finished |= newly
            if t + 1 == max_new:
                break
            if (t + 1) % self.sync_every == 0:
                done = finished.tolist()
                if string_rows:
                    done = self._check_stop_strings(done, active_host, out_tokens, t + 1, sps, checked)
                    finished = torch.tensor(done, device=dev)
                    # a row ended by a stop string keeps what it has; _finalize cuts it exactly
                    lengths[active] = torch.where(finished, lengths[active].clamp(max=t + 1), lengths[active])
                n_done = sum(done)
                if n_done == len(done):
                    break
                if n_done >= self.compact_fraction * len(done):
                    if self.prefix_cache is not None:
                        kept += self._slice_rows(cache, [i for i, d in enumerate(done) if d], active_host,
                                                 starts, lengths.tolist(), Tp)
                    keep_host = [i for i, d in enumerate(done) if not d]
                    keep = torch.tensor(keep_host, device=dev)
                    cache = cache.index_select(keep)
                    active, tok, finished = active[keep], tok[keep], finished[keep]
                    active_host = [active_host[i] for i in keep_host]
                    attn, next_pos, temperature = attn[keep], next_pos[keep], temperature[keep]
                    keys, uniforms = keys[keep], uniforms[keep]
                    stop_table, row_budget = stop_table[keep], row_budget[keep]
                    if truncate:
                        top_k, top_p = top_k[keep], top_p[keep]
            S = Tp + t + 1
            logits = model(tok.unsqueeze(1), attention_mask=attn[:, :S],
                           position_ids=(next_pos + t).unsqueeze(1), cache=cache)[:, -1]  # (B', V)
            stats.decode_steps += 1

        # one transfer each, then plain lists: no per-row tensor ops from here on
        out_tokens, out_lp, lengths = out_tokens.tolist(), out_lp.tolist(), lengths.tolist()
        if self.prefix_cache is not None:
            kept += self._slice_rows(cache, range(len(active_host)), active_host, starts, lengths, Tp)
            for b, k, v in kept:
                i, u, _ = row_units[b]
                tokens = tuple(prompts[u.req]) + tuple(out_tokens[b][:k.shape[2] - plen[i]])
                self.prefix_cache.store(tokens, k, v, flag, replaces=hits[u.req][0])
        self._finalize(row_units, sps, stop_sets, out_tokens, out_lp, lengths, results, stats)

    @staticmethod
    def _slice_rows(cache, rows, active_host, starts, lengths, Tp):
        """Copies of the keys/values of the given decode rows: prompt + generated tokens up to,
        not including, each row's last (never fed to the model). Returns (batch row, keys,
        values) with (L, Hkv, n, D) tensors."""
        out = []
        for r in rows:  # one copy of a column range of every layer per row: no index tensors
            b = active_host[r]
            start, end = starts[b], Tp + lengths[b] - 1
            out.append((b, cache.key_buffer[:, r, :, start:end].clone(), cache.value_buffer[:, r, :, start:end].clone()))
        return out

    def _check_stop_strings(self, done, active_host, out_tokens, n, sps, checked) -> list[bool]:
        """Host check of stop strings for the unfinished active rows that have any."""
        rows = [i for i, b in enumerate(active_host) if not done[i] and sps[b].stop]
        if not rows:
            return done
        batch_rows = torch.tensor([active_host[i] for i in rows], device=out_tokens.device)
        toks = out_tokens[batch_rows, :n].tolist()
        done = list(done)
        for i, ids in zip(rows, toks):
            b = active_host[i]
            stops = sps[b].stop
            if tail_has_stop(ids, checked[b], self.tokenizer.decode, stops):
                # the tail decode can differ from the full one at its cut: confirm
                done[i] = truncate_at_stop(ids, self.tokenizer.decode, stops) is not None
            checked[b] = n
        return done

    def _finalize(self, row_units, sps, stop_sets, out_tokens, out_lp, lengths, results, stats) -> None:
        """Cut each row at its stop token or stop string and write its CompletionOutput."""
        decode = self.tokenizer.decode
        for b, (_, u, s) in enumerate(row_units):
            sp = sps[b]
            n = lengths[b]
            ids = out_tokens[b][:n]
            ends_with_stop_token = bool(ids) and ids[-1] in stop_sets[b]
            body = ids[:-1] if ends_with_stop_token else ids
            cut = truncate_at_stop(body, decode, sp.stop) if sp.stop else None
            if cut is not None:
                n, text, stop_reason = cut
                finish = "stop"
            elif ends_with_stop_token:
                text, stop_reason, finish = decode(body), ids[-1], "stop"
            else:
                text, stop_reason, finish = decode(ids), None, "length"
            results[u.req][s] = CompletionOutput(
                index=s,
                text=text,
                token_ids=ids[:n],
                logprobs=out_lp[b][:n] if sp.logprobs else None,
                finish_reason=finish,
                stop_reason=stop_reason,
            )
            stats.generated_tokens += n


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

