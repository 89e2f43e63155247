"""Sampling utilities of the built-in engine: counter-based noise, top-k / top-p truncation,
one sampling step, stop-string matching, and a sample cut at its stop (`completion`).

Noise is counter-based (like Philox): the uniform of (request seed, sample index, decode
step) is a pure function of those integers, computed with an integer hash on the device. So
a seeded request draws the same tokens whichever batch it lands in and on any device, and
sampling needs no per-request generator object or host synchronisation. A token is drawn by
inverting the row's CDF at that uniform (float64 cumulative sums, 48-bit uniforms): an exact
draw from softmax(logits / T) restricted to the kept tokens, with one random number per row
rather than one per vocabulary entry (the Gumbel-max trick needs V).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from rl2f.engine.types import CompletionOutput, SamplingParams

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2^32 for uint32 values held in int64, never overflowing int64: c's top bit
    is split off because x * c could pass 2^63."""
    r = x * (c & 0x7FFFFFFF)
    if c >> 31:
        r = r + ((x & 1) << 31)
    return r & _M32


def mix32(x):
    """A bijective 32-bit integer hash (Wellons' lowbias32); works on Python ints and on int64
    tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def request_seed(seed: int, prompt_ids) -> int:
    """A request's seed mixed with its prompt: one seed shared by many prompts (a whole GRPO
    batch) must not give them the same noise, while the same (seed, prompt) still gives the
    same samples in any batch. (Python's hash of a tuple of ints is fixed across runs.)"""
    return (seed ^ (hash(tuple(prompt_ids)) * 0x9E3779B97F4A7C15)) % (1 << 63)


def stream_key(seed: int, sample_index: int) -> int:
    """The 32-bit noise stream of sample `sample_index` of a request with `seed`."""
    seed %= 1 << 64
    k = mix32((seed & _M32) ^ 0x2545F491)
    k = mix32(k ^ (seed >> 32))
    return mix32(k ^ (sample_index & _M32) ^ 0x9E3779B9)


def row_uniform(keys: torch.Tensor, step) -> torch.Tensor:
    """(B,) float64 uniforms in (0, 1), one per row: a function of (keys[row], step) only.
    `step` may be an int64 tensor that broadcasts with `keys`: (B, 1) keys and (1, S) steps
    give every step's uniforms at once, (B, S).

    Two 24-bit draws make 48 bits, so the CDF inversion resolves probabilities far below
    those a 262k vocabulary gives its rarest tokens."""
    high = mix32(keys ^ mix32((step * 0x632BE5AB + 0x6A09E667) & _M32))  # (B,)
    low = mix32(high ^ 0x5BD1E995)
    return ((high >> 8).to(torch.float64) * float(1 << 24) + (low >> 8).to(torch.float64) + 0.5) / float(1 << 48)


def truncation_mask(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Tokens kept by top-k then top-p (vLLM's order: top-p on the top-k-renormalised probs).

    scaled: (B, V) logits / T; top_k: (B,) int64, V = off; top_p: (B,) float, 1.0 = off.
    A token is kept when the probability mass strictly above it is < top_p, so the most
    likely token is always kept. Returns (B, V) bool.
    """
    V = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
    rank = torch.arange(V, device=scaled.device)
    keep = rank.unsqueeze(0) < top_k.unsqueeze(1)  # (B, V)
    probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V)
    keep &= mass_before < top_p.unsqueeze(1)
    keep[:, 0] = True  # float round-off must never empty a row
    return torch.zeros_like(keep).scatter(-1, order, keep)  # (B, V) in vocabulary order


def sample_step(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    keys: torch.Tensor | None,
    step: int,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    all_greedy: bool = False,
    any_greedy: bool = True,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; return (tokens (B,), logprobs (B,)).

    logits: (B, V) any float dtype; temperature: (B,) float32 with 0 = greedy for that row;
    top_k / top_p: (B,) or None when no row truncates (skips the vocabulary sort);
    all_greedy / any_greedy: whether every / some row is greedy (False skips the argmax);
    uniform: (B,) row_uniform(keys, step) when the caller drew it already (a decode loop
    draws every step's at once: the hash is ~40 small integer ops, not worth per step);
    then `keys` is not needed.
    The log-prob is log_softmax(logits / T) at the token over the full vocabulary (T = 1 for
    greedy rows), i.e. before truncation: what the trainer recomputes.
    """
    logits = logits.float()
    greedy_row = temperature == 0  # (B,)
    scaled = logits / torch.where(greedy_row, 1.0, temperature).unsqueeze(1)  # (B, V)
    logp = torch.log_softmax(scaled, dim=-1)  # (B, V)
    if all_greedy:
        tokens = logits.argmax(dim=-1)  # (B,)
    else:
        probs = logp.exp()  # (B, V)
        if top_k is not None:
            probs = probs.masked_fill(~truncation_mask(scaled, top_k, top_p), 0.0)
        cdf = probs.cumsum(dim=-1, dtype=torch.float64)  # (B, V)
        # the first token whose CDF passes u * (kept mass): a zero-probability token never is
        u = row_uniform(keys, step) if uniform is None else uniform
        target = (u * cdf[:, -1]).unsqueeze(1)  # (B, 1)
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=scaled.shape[-1] - 1)  # (B,)
        if any_greedy:
            tokens = torch.where(greedy_row, logits.argmax(dim=-1), tokens)
    return tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1)


# --- stop strings ---------------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Earliest occurrence of any stop string in `text`: (char index, stop string) or None.
    At equal positions the longer stop string wins (it is the more specific match)."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
            best = (i, s)
    return best


def truncate_at_stop(
    token_ids: Sequence[int], decode: Callable[[list[int]], str], stops: Sequence[str]
) -> tuple[int, str, str] | None:
    """Cut a generation at its first stop string.

    Returns (n_tokens, text, stop) or None when no stop string occurs: `n_tokens` is the
    shortest prefix of `token_ids` whose decoded text contains a stop string (the token that
    completes it is kept, with any characters of it past the stop string), and `text` is that
    decoded prefix up to, not including, the stop string.
    """
    ids = list(token_ids)
    if not stops or find_stop(decode(ids), stops) is None:
        return None
    lo, hi = 1, len(ids)  # binary search: containment only grows as tokens are appended
    while lo < hi:
        mid = (lo + hi) // 2
        if find_stop(decode(ids[:mid]), stops) is None:
            lo = mid + 1
        else:
            hi = mid
    text = decode(ids[:lo])
    pos, stop = find_stop(text, stops)
    return lo, text[:pos], stop


def tail_has_stop(
    token_ids: Sequence[int], checked: int, decode: Callable[[list[int]], str], stops: Sequence[str]
) -> bool:
    """Whether a stop string ends among the tokens after the first `checked` (the earlier
    ones were already checked). Decodes only a tail window: a stop string of c characters
    spans at most 4c byte-level tokens, plus slack for partial characters."""
    window = 4 * max(len(s) for s in stops) + 4
    start = max(0, checked - window)
    return find_stop(decode(list(token_ids[start:])), stops) is not None


def completion(index: int, ids: list[int], logprobs: list[float], sp: SamplingParams, stop_ids,
               decode: Callable[[list[int]], str]) -> CompletionOutput:
    """Sample `index` of a request as returned: its tokens (and their log-probs) cut at its
    stop token or first stop string, as types.py says."""
    ends_with_stop_token = bool(ids) and ids[-1] in stop_ids
    body = ids[:-1] if ends_with_stop_token else ids
    cut = truncate_at_stop(body, decode, sp.stop) if sp.stop else None
    n = len(ids)
    if cut is not None:
        n, text, stop_reason = cut
        finish = "stop"
    elif ends_with_stop_token:
        text, stop_reason, finish = decode(body), ids[-1], "stop"
    else:
        text, stop_reason, finish = decode(ids), None, "length"
    return CompletionOutput(index=index, text=text, token_ids=ids[:n], logprobs=logprobs[:n] if sp.logprobs else None,
                            finish_reason=finish, stop_reason=stop_reason)
