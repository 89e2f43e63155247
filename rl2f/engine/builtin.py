"""The built-in rollout engine: our model, in-process, batched, with a preallocated KV cache
and a prefix cache that carries a dialogue's keys/values from one turn to the next
(prefix_cache.py).

A batch runs in phases (`_run_batch`), over the data of batch.py: plan (on the host: which
prompt rows, how each is prefilled, what each sample may generate), prefill (each distinct
prompt ONCE, its leading columns copied from the prefix cache where it holds them), fan-out
(the cache and the last logits copied to the n samples of each prompt, with each row's
sampling tables: the decode state `_Rows`), decode (one token per row per step), harvest
(kept keys/values to the prefix cache, each row cut at its stop into a CompletionOutput).

Decode: finished rows (stop token or max_tokens, detected on the device) keep decoding
harmlessly until the next host sync, every `sync_every` steps, where stop strings are
checked on decoded text, the loop ends when every row is done, and finished rows are
dropped from the cache when enough of them pile up. Nothing else in the loop synchronises
with the host: noise is counter-based (see sampling.py) and outputs are written into
preallocated buffers. On the CPU there is no asynchronous device to stall, so the default
is a host check after every step: no forward is spent on a batch whose rows have all
stopped (the demo's attempts stop after 6 of their 8 tokens: 2 of 7 decode forwards saved).
Under torch.distributed every rank decodes on its own: a rollout forward makes no
collective (the trainer holds the model unsharded), so ranks may stop at different steps.

The engine shares the trainer's model: weights updated by an optimizer step are used by the
next `generate`. Student requests (use_adapter=True) run with the LoRA adapter on (in fp32,
folded into per-call weight copies: `rl2f.lora.rollout_adapter`), teacher / reference
requests with it off, in the same engine.
Output conventions (log-probs, stop tokens, stop strings) are in types.py. `engine.stats`
counts the work done (see `EngineStats`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from rl2f.engine.batch import _Plan, _Rows, _Unit, pack
from rl2f.engine.prefix_cache import PrefixCache
from rl2f.engine.sampling import completion, request_seed, sample_step, tail_has_stop, truncate_at_stop
from rl2f.engine.types import CompletionOutput, RequestOutput, SamplingParams, per_request
from rl2f.errors import UserError
from rl2f.lora import load_adapter, rollout_adapter


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


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


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
        (`rl2f.lora.folded_lora`: one matmul per LoRA layer instead of three, for one copy of
        the adapted weights during the call; the table of rl2f.lora says where it applies);
        prefill_group_cost: what one more prefill forward costs, in prefilled
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
                    units = [_Unit(r, list(range(s, min(s + self.max_batch_size, params[r].n))),
                                   len(prompts[r]) - hits[r][1])
                             for r in range(len(prompts)) if flags[r] == flag
                             for s in range(0, params[r].n, self.max_batch_size)]
                    if not units:
                        continue
                    with rollout_adapter(self.model, flag, self.fold_lora, _distributed()):
                        for batch in pack(units, self.max_batch_size):
                            self._run_batch(batch, prompts, params, seeds, hits, flag, results, stats)
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

    # --- requests ---------------------------------------------------------------------------

    def _prompt_ids(self, p: Sequence[int] | str) -> list[int]:
        ids = self.tokenizer.encode(p) if isinstance(p, str) else list(map(int, p))
        if not ids:
            raise UserError("generate() got an empty prompt; a prompt needs at least one token")
        if self.max_len is not None and len(ids) >= self.max_len:
            raise UserError(f"a prompt of {len(ids)} tokens leaves no room to generate "
                            f"within max_len={self.max_len}")
        return ids

    # --- one batch, in phases ------------------------------------------------------------------

    def _run_batch(self, units, prompts, params, seeds, hits, flag: bool, results, stats: EngineStats) -> None:
        plan = _Plan.make(units, prompts, params, seeds, hits, self.max_len, self.prefill_group_cost,
                          getattr(self.tokenizer, "stop_ids", None) or [])
        cache, logits, mask = self._prefill(plan, stats)
        rows, logits = _Rows.fan_out(plan, cache, logits, mask)
        out, rows, kept = self._decode(plan, rows, logits, stats)
        self._harvest(plan, out, rows, kept, flag, results, stats)

    def _prefill(self, plan: _Plan, stats: EngineStats):
        """Each distinct prompt once, left-padded to the plan's width: a group of prompt rows
        runs its last W columns through the model, where W covers the longest part of any of
        its rows that the prefix cache does not hold; the columns before them are copied from
        the kept sequences. Returns the (P rows) cache, the last position's logits (P, V) and
        the attention mask (P, Tp)."""
        model, dev, Tp = self.model, self.model.device, plan.width
        plen = [len(p) for p in plan.prompts]
        pad_id = getattr(self.tokenizer, "pad_id", None) or 0
        mask = (torch.arange(Tp) >= torch.tensor([Tp - n for n in plen]).unsqueeze(1)).long().to(dev)  # (P, Tp)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (P, Tp)
        cache = model.new_cache(len(plen), Tp + plan.max_new)
        for i, n in enumerate(plan.reuse):  # one copy of every layer's keys (and values) per row
            if n:
                entry, start = plan.hits[i][0], Tp - plen[i]
                cache.key_buffer[:, i, :, start:start + n] = entry.keys[:, :, :n]  # (L, Hkv, n, D)
                cache.value_buffer[:, i, :, start:start + n] = entry.values[:, :, :n]
        last = []
        for a, b, W in plan.groups:  # each group writes its columns Tp - W.. of its cache rows
            rows = cache.rows(a, b, length=Tp - W)
            ids = [p[-W:] if len(p) >= W else [pad_id] * (W - len(p)) + p
                   for p in plan.prompts[a:b]]  # the rows' last W columns, left-padded
            hidden = model.hidden_states(torch.tensor(ids, device=dev), attention_mask=mask[a:b],
                                         position_ids=positions[a:b, Tp - W:], cache=rows)  # (b - a, W, H)
            last.append(hidden[:, -1])  # only the last position's logits are ever needed
        cache.length = Tp
        logits = model.logits(torch.cat(last) if len(last) > 1 else last[0])  # (P, V)
        stats.prompt_tokens += sum(plen)
        stats.cached_tokens += sum(plan.reuse)
        stats.prefill_tokens += sum(plen) - sum(plan.reuse)
        return cache, logits, mask

    def _decode(self, plan: _Plan, rows: _Rows, logits: torch.Tensor, stats: EngineStats):
        """Sample a token per row per step until every row has stopped. Returns the outputs in
        batch rows (tokens, log-probs (B, max_new) and lengths (B,)), the rows still held, and
        the keys/values of those dropped on the way that the prefix cache keeps."""
        dev, B, Tp = logits.device, len(plan.params), plan.width
        all_greedy, any_greedy = all(sp.greedy for sp in plan.params), any(sp.greedy for sp in plan.params)
        stop_strings = any(sp.stop for sp in plan.params)
        out_tokens = torch.zeros((B, plan.max_new), dtype=torch.long, device=dev)  # read only where written
        out_lp = torch.zeros((B, plan.max_new), dtype=torch.float32, device=dev)
        lengths = torch.tensor(plan.budget, device=dev)  # tokens kept per row; rows that never stop use the budget
        kept = []
        for t in range(plan.max_new):
            rows.tok, lp = sample_step(logits, rows.temperature, None, t, rows.top_k, rows.top_p, all_greedy,
                                       any_greedy, rows.uniforms[:, t])
            out_tokens[rows.index, t] = rows.tok
            out_lp[rows.index, t] = lp
            hit_stop = (rows.tok.unsqueeze(1) == rows.stop_table).any(-1)  # (B',)
            newly = ~rows.finished & (hit_stop | (t + 1 >= rows.budget))
            lengths[rows.index] = torch.where(newly, t + 1, lengths[rows.index])
            rows.finished |= newly
            if t + 1 == plan.max_new:
                break
            if (t + 1) % self.sync_every == 0:
                done = rows.finished.tolist()
                if stop_strings:
                    done = self._check_stop_strings(plan, rows, done, out_tokens, t + 1)
                    rows.finished = torch.tensor(done, device=dev)
                    # a row ended by a stop string keeps what it has; `completion` cuts it exactly
                    lengths[rows.index] = torch.where(rows.finished, lengths[rows.index].clamp(max=t + 1),
                                                      lengths[rows.index])
                n_done = sum(done)
                if n_done == len(done):
                    break
                if n_done >= self.compact_fraction * len(done):
                    if self.prefix_cache is not None:
                        kept += rows.keys_values([i for i, d in enumerate(done) if d], plan, lengths.tolist())
                    rows = rows.select([i for i, d in enumerate(done) if not d])
            logits = self.model(rows.tok.unsqueeze(1), attention_mask=rows.attn[:, :Tp + t + 1],
                                position_ids=(rows.next_pos + t).unsqueeze(1), cache=rows.cache)[:, -1]  # (B', V)
            stats.decode_steps += 1
        return (out_tokens, out_lp, lengths), rows, kept

    def _harvest(self, plan: _Plan, out, rows: _Rows, kept: list, flag: bool, results, stats: EngineStats) -> None:
        """The prefix cache keeps every row's keys/values; each row is cut at its stop and
        written to `results` as a CompletionOutput."""
        # one transfer each, then plain lists: no per-row tensor ops from here on
        out_tokens, out_lp, lengths = (x.tolist() for x in out)
        if self.prefix_cache is not None:
            kept += rows.keys_values(range(len(rows.batch_row)), plan, lengths)
            for b, k, v in kept:
                i = plan.row_unit[b]
                tokens = tuple(plan.prompts[i]) + tuple(out_tokens[b][:k.shape[2] - len(plan.prompts[i])])
                self.prefix_cache.store(tokens, k, v, flag, replaces=plan.hits[i][0])
        for b, (sp, stop_ids, n) in enumerate(zip(plan.params, plan.stop_ids, lengths)):
            c = completion(plan.row_sample[b], out_tokens[b][:n], out_lp[b][:n], sp, stop_ids, self.tokenizer.decode)
            results[plan.units[plan.row_unit[b]].req][c.index] = c
            stats.generated_tokens += len(c.token_ids)

    def _check_stop_strings(self, plan: _Plan, rows: _Rows, done: list[bool], out_tokens, n: int) -> list[bool]:
        """Host check of stop strings for the unfinished decode rows that have any."""
        todo = [i for i, b in enumerate(rows.batch_row) if not done[i] and plan.params[b].stop]
        if not todo:
            return done
        batch_rows = torch.tensor([rows.batch_row[i] for i in todo], device=out_tokens.device)
        toks = out_tokens[batch_rows, :n].tolist()
        done = list(done)
        for i, ids in zip(todo, toks):
            stops = plan.params[rows.batch_row[i]].stop
            if tail_has_stop(ids, rows.checked[i], self.tokenizer.decode, stops):
                # the tail decode can differ from the full one at its cut: confirm
                done[i] = truncate_at_stop(ids, self.tokenizer.decode, stops) is not None
            rows.checked[i] = n
        return done

