"""Sampling utilities of the built-in engine: noise, truncation, one step, stop strings."""
import numpy as np
import pytest
import torch

from rl2f.engine.sampling import (
    find_stop,
    mix32,
    request_seed,
    sample_step,
    stream_key,
    tail_has_stop,
    truncate_at_stop,
    row_uniform,
    truncation_mask,
)
from rl2f.engine.types import SamplingParams
from rl2f.errors import UserError


def _lowbias32_numpy(x: np.ndarray) -> np.ndarray:
    """Reference hash in native uint32 arithmetic (numpy wraps on overflow)."""
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def test_mix32_matches_uint32_reference():
    """The int64 emulation of the 32-bit hash equals native uint32 arithmetic, on tensors and
    on Python ints, including values with the top bit set."""
    x = np.array([0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF], dtype=np.uint64)
    ref = _lowbias32_numpy(x)
    got = mix32(torch.tensor(x.astype(np.int64)))
    assert got.tolist() == ref.astype(np.int64).tolist()
    assert [mix32(int(v)) for v in x] == ref.astype(np.int64).tolist()


def test_noise_depends_only_on_key_and_step():
    """A row's uniform is the same whatever other rows share the batch (batch-composition
    independence of seeded sampling), and changes with the step and the key."""
    keys = torch.tensor([stream_key(7, 0), stream_key(7, 1), stream_key(8, 0)])
    full = row_uniform(keys, 3)
    assert torch.equal(full[1:2], row_uniform(keys[1:2], 3))
    assert len(set(full.tolist())) == 3
    assert not torch.equal(row_uniform(keys, 4), full)


def test_every_steps_noise_at_once_equals_step_by_step():
    """(B, 1) keys against (1, S) steps give, column by column, the per-step uniforms (what
    the decode loop draws up front)."""
    keys = torch.tensor([stream_key(s, i) for s in range(5) for i in range(3)])
    table = row_uniform(keys[:, None], torch.arange(12)[None])
    assert table.shape == (15, 12)
    for step in range(12):
        assert torch.equal(table[:, step], row_uniform(keys, step))


def test_noise_is_uniform():
    """Mean, variance and decile counts of the noise match U(0, 1); its resolution is finer
    than float32's 24 bits."""
    keys = torch.tensor([stream_key(s, i) for s in range(64) for i in range(64)])
    u = torch.cat([row_uniform(keys, step) for step in range(16)])
    assert u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts / u.numel() - 0.1).abs().max() < 0.005
    assert ((u * 2**24) % 1 != 0.5).float().mean() > 0.99  # the low 24 bits are used


def test_request_seed_mixes_the_prompt():
    """One seed shared by different prompts gives them different noise streams; the same
    (seed, prompt) always gives the same one."""
    assert request_seed(3, [1, 2, 3]) == request_seed(3, (1, 2, 3))
    assert len({request_seed(3, [1, 2, 3]), request_seed(3, [1, 2, 4]), request_seed(4, [1, 2, 3])}) == 3
    assert 0 <= request_seed(-1, [5]) < 2**63


def _sample_many(logits_row, temperature, n_rows=20000, top_k=None, top_p=None):
    V = logits_row.shape[0]
    logits = logits_row.expand(n_rows, V)
    keys = torch.tensor([stream_key(1234, i) for i in range(n_rows)])
    temp = torch.full((n_rows,), temperature)
    tk = None if top_k is None else torch.full((n_rows,), top_k)
    tp = None if top_p is None else torch.full((n_rows,), top_p)
    return sample_step(logits, temp, keys, 0, tk, tp)


def test_sampling_frequencies_match_softmax():
    """Sampling draws tokens with frequency softmax(logits / T), and returns
    log_softmax(logits / T) of the drawn token."""
    torch.manual_seed(0)
    logits = torch.randn(8) * 2
    T = 0.7
    tokens, lp = _sample_many(logits, T)
    freq = torch.bincount(tokens, minlength=8).float() / tokens.numel()
    ref = torch.softmax(logits / T, -1)
    assert (freq - ref).abs().max() < 0.015
    assert torch.allclose(lp, torch.log_softmax(logits / T, -1)[tokens], atol=1e-6)


def test_top_k_top_p_sampling_distribution():
    """With top-k and top-p, samples follow the truncated renormalised distribution, while
    the returned log-prob stays the untruncated log_softmax(logits / T)."""
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0])
    T = 1.0
    p = torch.softmax(logits / T, -1)
    # top_k=4 keeps tokens 0-3; renormalised, token 0+1 mass is below 0.8 so token 2 is kept
    # (mass above it < 0.8) and token 3 is dropped (mass above it >= 0.8)
    pk = p[:4] / p[:4].sum()
    assert pk[:2].sum() < 0.8 <= pk[:3].sum()
    tokens, lp = _sample_many(logits, T, top_k=4, top_p=0.8)
    assert set(tokens.tolist()) == {0, 1, 2}
    ref = pk[:3] / pk[:3].sum()
    freq = torch.bincount(tokens, minlength=6).float()[:3] / tokens.numel()
    assert (freq - ref).abs().max() < 0.015
    assert torch.allclose(lp, torch.log_softmax(logits, -1)[tokens], atol=1e-6)


def test_truncation_mask_hand_computed():
    """Hand-computed masks (probs 0.05, 0.5, 0.3, 0.15): top-k alone, top-p alone (keeps the
    token that crosses p), top-p on the top-k-renormalised probs, tiny top-p keeps the
    argmax; the mask comes back in vocabulary order."""
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]] * 5))
    V = 4
    top_k = torch.tensor([2, V, V, V, 2])
    top_p = torch.tensor([1.0, 0.7, 0.85, 1e-6, 0.6])
    assert truncation_mask(logits, top_k, top_p).tolist() == [
        [False, True, True, False],
        [False, True, True, False],
        [False, True, True, True],
        [False, True, False, False],
        # renormalised top-2 is (0.625, 0.375): mass above token 2 is 0.625 >= 0.6
        [False, True, False, False],
    ]


def test_greedy_rows_and_mixed_batch():
    """Temperature-0 rows take the argmax (their log-prob at T=1), sampled rows beside them
    are unaffected by the greedy rows."""
    torch.manual_seed(1)
    logits = torch.randn(4, 10)
    keys = torch.tensor([stream_key(0, i) for i in range(4)])
    temp = torch.tensor([0.0, 1.0, 0.0, 1.0])
    tok, lp = sample_step(logits, temp, keys, 5)
    assert tok[0] == logits[0].argmax() and tok[2] == logits[2].argmax()
    assert torch.allclose(lp[0], torch.log_softmax(logits[0], -1)[tok[0]])
    tok_s, _ = sample_step(logits[[1, 3]], temp[[1, 3]], keys[[1, 3]], 5)
    assert torch.equal(tok_s, tok[[1, 3]])
    tok_g, _ = sample_step(logits, torch.zeros(4), keys, 5, all_greedy=True)
    assert torch.equal(tok_g, logits.argmax(-1))


# --- stop strings ---------------------------------------------------------------------------

PIECES = ["Hel", "lo", " wor", "ld", "!\n", "\nAns", "wer", ":"]


def _decode(ids):
    return "".join(PIECES[i] for i in ids)


def test_find_stop_earliest_and_longest():
    """The earliest stop string wins; at the same position the longer one."""
    assert find_stop("abc\n\nAnswer", ["Answer", "\n\n"]) == (3, "\n\n")
    assert find_stop("abc\n\nx", ["\n", "\n\n"]) == (3, "\n\n")
    assert find_stop("abc", ["x"]) is None


def test_truncate_at_stop_keeps_completing_token():
    """The token that completes a stop string is kept (even when it runs past it); the text
    ends right before the stop string; tokens after it are dropped."""
    ids = [0, 1, 2, 3, 4, 5, 6, 7]  # "Hello world!\n\nAnswer:"
    assert truncate_at_stop(ids, _decode, ["\n\n"]) == (6, "Hello world!", "\n\n")
    # " wor" completes "o w" mid-token: the whole token is kept, the text stops at "Hell"
    assert truncate_at_stop(ids, _decode, ["o w"]) == (3, "Hell", "o w")
    assert truncate_at_stop(ids, _decode, ["Hel"]) == (1, "", "Hel")
    assert truncate_at_stop(ids, _decode, ["zzz"]) is None
    assert truncate_at_stop(ids, _decode, []) is None


def test_tail_has_stop():
    """Only stop strings ending in the unchecked tail are reported, including one that
    straddles the checked boundary."""
    ids = [0, 1, 2, 3, 4, 5]
    assert tail_has_stop(ids, 4, _decode, ["\n\n"])  # straddles tokens 4 and 5
    assert not tail_has_stop(ids, 6, _decode, ["zz"])


def test_sampling_params_validation():
    """Bad sampling parameters raise UserError naming the field; a single stop string is
    accepted like vLLM's."""
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(UserError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(UserError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop="\n").stop == ["\n"]
