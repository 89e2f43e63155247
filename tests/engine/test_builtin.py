"""The built-in engine against independent references: a naive no-cache decode, a fresh
forward pass over the finished sequence, hand-derived stop cuts, and the model without LoRA.
Tiny random models in fp32 on CPU."""
import copy

import pytest
import torch

from rl2f.engine import BuiltinEngine, SamplingParams, make_engine
from rl2f.errors import UserError
from rl2f.model.tiny import build_tiny_model

V = 96
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43, 44]]


class PieceTokenizer:
    """Test tokenizer: id i decodes to a 1- or 2-character piece, so a stop string can end
    in the middle of a token. Only the engine's needs: encode, decode, stop_ids, pad_id."""

    def __init__(self, stop_ids=(V - 1,)):
        self.stop_ids = list(stop_ids)
        self.pad_id = 0
        self.eos_id = V - 1

    def encode(self, text):
        return [1 + ord(c) % (V - 2) for c in text]

    def decode(self, ids):
        return "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + (i // 26) % 2) for i in ids)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return build_tiny_model("llama", vocab_size=V, seed=0)[1].eval()


def _engine(model, **kw):
    return BuiltinEngine(model, kw.pop("tokenizer", PieceTokenizer()), **kw)


def _naive_greedy(model, prompt, n_tokens):
    """Reference: recompute the whole sequence every step, one prompt, no padding, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def _forward_logprobs(model, prompt, tokens, temperature):
    """Reference: log_softmax(logits / T) of each generated token from one fresh forward."""
    seq = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(seq)[0, len(prompt) - 1:-1].double()  # (n, V) predicting each token
    return torch.log_softmax(logits / temperature, -1)[torch.arange(len(tokens)), torch.tensor(tokens)]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_greedy_equals_naive_decode(family, llama):
    """Greedy decoding of a left-padded batch of prompts of different lengths, with cache and
    fan-out, gives exactly the tokens of a no-cache one-prompt-at-a-time decode (gemma3 with
    a sliding window of 8, which the 24 generated tokens pass)."""
    model = llama if family == "llama" else build_tiny_model(
        "gemma3", vocab_size=V, seed=1, sliding_window=8)[1].eval()
    eng = _engine(model, tokenizer=PieceTokenizer(stop_ids=()), sync_every=5)
    outs = eng.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, n=2))
    for prompt, out in zip(PROMPTS, outs):
        ref = _naive_greedy(model, prompt, 24)
        assert out.prompt_token_ids == prompt
        assert [c.token_ids for c in out.outputs] == [ref, ref]
        assert all(c.finish_reason == "length" for c in out.outputs)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_equal_fresh_forward(llama, temperature, top_p):
    """Returned log-probs are log_softmax(logits / T) over the full vocabulary at the sampled
    tokens (before top-p truncation), equal to a fresh forward over the finished sequence."""
    eng = _engine(llama, tokenizer=PieceTokenizer(stop_ids=()))
    sp = SamplingParams(n=3, temperature=temperature, top_p=top_p, max_tokens=16, seed=3)
    for prompt, out in zip(PROMPTS, eng.generate(PROMPTS, sp)):
        for c in out.outputs:
            ref = _forward_logprobs(llama, prompt, c.token_ids, temperature)
            assert len(c.logprobs) == len(c.token_ids) == 16
            assert torch.allclose(torch.tensor(c.logprobs, dtype=torch.float64), ref, atol=1e-4, rtol=0)


def test_top_p_only_samples_the_nucleus(llama):
    """With top_p, every sampled token lies in the nucleus of its step's distribution."""
    eng = _engine(llama, tokenizer=PieceTokenizer(stop_ids=()))
    out = eng.generate([PROMPTS[0]], SamplingParams(n=8, temperature=1.0, top_p=0.3, max_tokens=6, seed=0))[0]
    for c in out.outputs:
        seq = torch.tensor([PROMPTS[0] + c.token_ids])
        with torch.no_grad():
            probs = llama(seq)[0, len(PROMPTS[0]) - 1:-1].softmax(-1)  # (n, V)
        for p, tok in zip(probs, c.token_ids):
            assert p[p > p[tok]].sum() < 0.3  # mass strictly above the token is below top_p


def test_fan_out(llama):
    """n samples of one prompt: all different at temperature 1, all identical at temperature
    0; outputs are indexed 0..n-1."""
    eng = _engine(llama, tokenizer=PieceTokenizer(stop_ids=()))
    hot = eng.generate([PROMPTS[1]], SamplingParams(n=6, temperature=1.0, max_tokens=12, seed=1))[0]
    assert [c.index for c in hot.outputs] == list(range(6))
    assert len({tuple(c.token_ids) for c in hot.outputs}) == 6
    cold = eng.generate([PROMPTS[1]], SamplingParams(n=6, temperature=0.0, max_tokens=12))[0]
    assert len({tuple(c.token_ids) for c in cold.outputs}) == 1


def _first_new_token_at(tokens, k):
    """An index >= k whose token does not occur earlier, so stopping on it stops there."""
    for i in range(k, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return i
    raise AssertionError("no fresh token in the greedy continuation")


def test_stop_tokens_and_length(llama):
    """A stop token (from SamplingParams or the tokenizer's stop_ids) ends generation with
    finish_reason 'stop': the token is kept in token_ids and logprobs but not in the text;
    max_tokens gives 'length'."""
    tok = PieceTokenizer(stop_ids=())
    greedy = _naive_greedy(llama, PROMPTS[0], 20)
    i = _first_new_token_at(greedy, 4)
    stop = greedy[i]
    for eng, sp in [
        (_engine(llama, tokenizer=tok, sync_every=3), SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop])),
        (_engine(llama, tokenizer=PieceTokenizer(stop_ids=[stop])), SamplingParams(temperature=0, max_tokens=20)),
    ]:
        c = eng.generate([PROMPTS[0]], sp)[0].outputs[0]
        assert c.token_ids == greedy[: i + 1] and len(c.logprobs) == i + 1
        assert (c.finish_reason, c.stop_reason) == ("stop", stop)
        assert c.text == tok.decode(greedy[:i])
    c = _engine(llama, tokenizer=tok).generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=5))[0].outputs[0]
    assert c.token_ids == greedy[:5] and (c.finish_reason, c.stop_reason) == ("length", None)
    assert c.text == tok.decode(greedy[:5])


@pytest.mark.parametrize("sync_every", [1, 4, 64])
def test_stop_strings(llama, sync_every):
    """A stop string ends generation ('stop', stop_reason = the string) whenever the host
    checks; text ends right before it; token_ids end with the token that completes it
    (here one that runs past it), as a naive token-by-token scan finds."""
    tok = PieceTokenizer(stop_ids=())
    greedy = _naive_greedy(llama, PROMPTS[1], 30)
    # a stop string that starts inside token k-1's text and ends inside token k's, k >= 4
    k = next(j for j in range(4, 30) if len(tok.decode([greedy[j]])) == 2)
    start = len(tok.decode(greedy[:k])) - 1
    stop = tok.decode(greedy[: k + 1])[start:start + 2]
    n = next(m for m in range(1, 31) if stop in tok.decode(greedy[:m]))  # naive scan
    full = tok.decode(greedy[:n])
    eng = _engine(llama, tokenizer=tok, sync_every=sync_every)
    c = eng.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30, stop=[stop]))[0].outputs[0]
    assert c.token_ids == greedy[:n] and len(c.logprobs) == n
    assert c.text == full[: full.index(stop)]
    assert len(full) > len(c.text) + len(stop)  # the completing token runs past the stop
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)


def test_seed_reproducible_and_batch_independent(llama):
    """Same seed -> same samples on a repeated call, in a batch with other requests, and with
    the samples split over several batches; another seed -> other samples."""
    tok = PieceTokenizer(stop_ids=())
    sp = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=42)
    alone = _engine(llama, tokenizer=tok).generate([PROMPTS[2]], sp)[0]
    again = _engine(llama, tokenizer=tok).generate([PROMPTS[2]], sp)[0]
    mixed = _engine(llama, tokenizer=tok).generate(
        [PROMPTS[1], PROMPTS[2]], [SamplingParams(n=3, max_tokens=7), sp])[1]
    split = _engine(llama, tokenizer=tok, max_batch_size=3).generate([PROMPTS[0], PROMPTS[2]], sp)[1]
    ids = lambda r: [c.token_ids for c in r.outputs]  # noqa: E731
    assert ids(alone) == ids(again) == ids(mixed) == ids(split)
    other = _engine(llama, tokenizer=tok).generate([PROMPTS[2]], SamplingParams(n=4, max_tokens=10, seed=43))[0]
    assert ids(other) != ids(alone)


def test_mixed_params_in_one_batch(llama):
    """Requests with different temperatures, max_tokens and stop sets share a batch without
    affecting each other: each equals the request run alone."""
    tok = PieceTokenizer(stop_ids=())
    sps = [SamplingParams(temperature=0, max_tokens=9),
           SamplingParams(n=2, temperature=0.8, top_k=5, max_tokens=14, seed=7),
           SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=8)]
    together = _engine(llama, tokenizer=tok).generate(PROMPTS[:3], sps)
    for p, sp, r in zip(PROMPTS, sps, together):
        alone = _engine(llama, tokenizer=tok).generate([p], sp)[0]
        assert [c.token_ids for c in r.outputs] == [c.token_ids for c in alone.outputs]
        assert all(len(c.token_ids) == sp.max_tokens for c in r.outputs)


def test_compaction_keeps_results(llama):
    """Dropping finished rows from the cache mid-generation (sync every step, compact at the
    first finished row) gives the same tokens and log-probs as never compacting."""
    tok = PieceTokenizer(stop_ids=list(range(60, 80)))  # ~20% of the vocabulary stops a row
    sp = SamplingParams(n=5, temperature=1.0, max_tokens=25, seed=11)
    a = _engine(llama, tokenizer=tok, sync_every=1, compact_fraction=0.01).generate(PROMPTS, sp)
    b = _engine(llama, tokenizer=tok, sync_every=1000, compact_fraction=2.0).generate(PROMPTS, sp)
    lengths = set()
    for ra, rb in zip(a, b):
        for ca, cb in zip(ra.outputs, rb.outputs):
            assert ca.token_ids == cb.token_ids and ca.finish_reason == cb.finish_reason
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-5)
            lengths.add(len(ca.token_ids))
    assert len(lengths) > 3  # rows really finished at different steps


def test_cpu_default_stops_decoding_when_every_row_has_stopped(llama):
    """On the CPU the engine checks the rows after every step by default: once every row has
    hit its stop token, no further forward is run (an accelerator's default checks every 8
    steps, and would run 19 here)."""
    greedy = _naive_greedy(llama, PROMPTS[0], 20)
    i = _first_new_token_at(greedy, 4)
    eng = _engine(llama, tokenizer=PieceTokenizer(stop_ids=[greedy[i]]))
    c = eng.generate([PROMPTS[0]], SamplingParams(n=3, temperature=0, max_tokens=20))[0].outputs
    assert [o.token_ids for o in c] == [greedy[: i + 1]] * 3
    # tokens 1..i+1 sampled; the forwards that produced tokens 2..i+1 are the decode steps
    assert eng.last_stats.decode_steps == i


def test_adapter_on_off(llama):
    """With LoRA (random nonzero B), use_adapter=True differs from False; False equals the
    model without LoRA; a mixed call equals separate calls; outputs carry the adapter
    version; the adapter is on again afterwards, the training flag restored, and the model
    still trains."""
    from rl2f.lora import apply_lora, lora_layers

    base = copy.deepcopy(llama)
    model = apply_lora(copy.deepcopy(llama), rank=4, alpha=8, seed=0)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.normal_(0, 0.5)
    model.train()
    tok = PieceTokenizer(stop_ids=())
    eng = _engine(model, tokenizer=tok)
    eng.set_adapter(7)
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    on = eng.generate(PROMPTS[:2], sp, use_adapter=True)
    off = eng.generate(PROMPTS[:2], sp, use_adapter=False)
    ref = _engine(base, tokenizer=tok).generate(PROMPTS[:2], sp)
    mixed = eng.generate(PROMPTS[:2], sp, use_adapter=[True, False])
    ids = lambda rs: [[c.token_ids for c in r.outputs] for r in rs]  # noqa: E731
    assert ids(off) == ids(ref)
    assert ids(on) != ids(off)
    assert ids(mixed) == [ids(on)[0], ids(off)[1]]
    assert model.training and all(m.enabled for _, m in lora_layers(model))
    # the shared model still trains after inference-mode generation (no inference tensors
    # cached inside it)
    model(torch.tensor([PROMPTS[0] + on[0].outputs[0].token_ids])).logsumexp(-1).mean().backward()
    assert all(m.lora_B.grad is not None for _, m in lora_layers(model))
    # adapter-on log-probs are the adapted model's, adapter-off the base's
    c = on[0].outputs[0]
    assert torch.allclose(torch.tensor(c.logprobs, dtype=torch.float64),
                          _forward_logprobs(model.eval(), PROMPTS[0], c.token_ids, 1.0), atol=1e-4)


def test_max_len_and_bad_prompts(llama):
    """max_len caps generation ('length'); prompts that fill max_len, empty prompts and
    per-request lists of the wrong length are UserErrors; string prompts are encoded."""
    tok = PieceTokenizer(stop_ids=())
    eng = _engine(llama, tokenizer=tok, max_len=14)
    c = eng.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=10))[0].outputs[0]
    assert len(c.token_ids) == 14 - len(PROMPTS[1]) and c.finish_reason == "length"
    with pytest.raises(UserError, match="max_len"):
        eng.generate([list(range(1, 15))], SamplingParams())
    with pytest.raises(UserError, match="empty"):
        eng.generate([[]], SamplingParams())
    with pytest.raises(UserError, match="sampling_params"):
        eng.generate([[1], [2]], [SamplingParams()])
    r = eng.generate(["hi"], SamplingParams(temperature=0, max_tokens=3))[0]
    assert r.prompt_token_ids == tok.encode("hi")
    with pytest.raises(UserError, match="unknown engine kind"):
        make_engine("tgi", model=llama, tokenizer=tok)


def test_with_real_checkpoint_and_tokenizer(tmp_path):
    """End to end on the tiny checkpoint (byte-level BPE tokenizer, chat template):
    make_engine('builtin', model_path=...) loads model and tokenizer; text is the decode of
    the ids without the stop token; a stop string found in a first sample cuts a rerun with
    the same seed right before it, with decode(token_ids) = text + stop + the tail of the
    completing token."""
    from rl2f.model import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ckpt", family="qwen3")
    eng = make_engine("builtin", model_path=str(path), max_batch_size=8)
    tok = eng.tokenizer
    prompt = tok.apply_chat([{"role": "user", "content": "What is 2 + 3?"}])
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=0)
    first = eng.generate([prompt, "def solve(n):"], sp)
    for r in first:
        for c in r.outputs:
            body = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
            assert c.text == tok.decode(body)
    assert first[1].prompt_token_ids == tok.encode("def solve(n):")
    c0 = first[0].outputs[0]
    text = tok.decode(c0.token_ids)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    sp_stop = SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=0, stop=[stop])
    c = eng.generate([prompt], sp_stop)[0].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)
    assert c.token_ids == c0.token_ids[: len(c.token_ids)]
    full = tok.decode(c.token_ids)
    assert full.startswith(c.text + stop) and stop not in c.text
    assert stop not in tok.decode(c.token_ids[:-1])  # the last kept token completes the stop
