"""The built-in engine's prefix cache: multi-turn episodes equal fresh prefills (and a fresh
forward over the finished dialogue), memory stays within the byte budget, and keys/values
are never served across an adapter or weight change. Tiny random models, fp32, CPU."""
import copy

import pytest
import torch

from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.engine.prefix_cache import PrefixCache
from rl2f.episodes import EpisodeRunner
from rl2f.lora import apply_lora, lora_layers
from rl2f.model import build_tiny_checkpoint, load_model, load_tokenizer
from rl2f.roles import Role
from rl2f.tasks import get_task
from rl2f.teacher import make_teacher

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The tiny Gemma 3 checkpoint (sliding window 64, which 5-turn dialogues pass) with a
    LoRA adapter whose B is nonzero, so adapter on and off differ."""
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    model = apply_lora(load_model(path), rank=4, alpha=8, seed=0)
    g = torch.Generator().manual_seed(0)  # module fixtures run before the per-test seed
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return model.eval(), load_tokenizer(path)


def _episodes(model, tok, **engine_kw):
    """Five-turn secret-number episodes through the real runner: 3 problems x 4 samples,
    ~15% of the vocabulary as extra stop tokens so attempts end at different steps, and a
    host sync every 2 steps so finished rows are dropped from the cache mid-batch."""
    task = get_task("secret")
    engine = BuiltinEngine(model, tok, sync_every=2, compact_fraction=0.01, **engine_kw)
    stops = list(range(100, 100 + tok.vocab_size // 7))
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=5, stop_token_ids=stops)
    runner = EpisodeRunner(task, _Recording(engine), tok, make_teacher("retry", task), sp, max_turns=5)
    return runner.run(task.problems(3, split="train"), group_size=4, seed=2), runner.engine.calls


class _Recording:
    """Passes calls to the engine and records each call's stats."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, params, use_adapter=True):
        outs = self.engine.generate(prompts, params, use_adapter)
        self.calls.append((sum(len(p) for p in prompts), self.engine.last_stats))
        return outs


def test_episode_equals_fresh_prefills(student):
    """A 5-turn episode with the prefix cache has the same tokens as with it off (every turn
    prefilled from scratch) and log-probs within fp32 round-off, both of which equal a fresh
    forward over the finished dialogue; after turn 1 each turn prefills only its new tokens
    (a constant amount per episode), not the growing dialogue, and the stats add up."""
    model, tok = student
    cached, calls = _episodes(model, tok)
    fresh, fresh_calls = _episodes(model, tok, prefix_cache_bytes=0)
    assert len(calls) == 5 and all(len(e.turns) == 5 for e in cached)  # the retry teacher never solves
    for a, b in zip(cached, fresh):
        assert a.token_ids == b.token_ids
        assert a.sampling_logprobs == pytest.approx(b.sampling_logprobs, abs=1e-5)
    lengths = {len(t.attempt) for e in cached for t in e.turns}
    assert len(lengths) > 2  # attempts really ended at different steps

    # independent reference: log_softmax of one forward over each finished dialogue
    for e in cached:
        with torch.no_grad():
            logits = model(torch.tensor([e.token_ids]))[0, :-1].double()  # (T-1, V) predicting token 1..
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(e.token_ids[1:])[:, None])[:, 0]
        student_pos = [i for i, r in enumerate(e.token_roles) if r == Role.STUDENT]
        got = torch.tensor([e.sampling_logprobs[i] for i in student_pos], dtype=torch.float64)
        assert torch.allclose(got, ref[[i - 1 for i in student_pos]], atol=1e-4)

    # prefill work: all of the prompt without the cache; later turns only the new tokens
    for (prompt_tokens, s), (_, f) in zip(calls, fresh_calls):
        assert s.prompt_tokens == f.prompt_tokens == f.prefill_tokens
        assert s.prefill_tokens + s.cached_tokens == s.prompt_tokens and f.cached_tokens == 0
    episodes = len(cached)
    per_episode = [s.prefill_tokens / episodes for _, s in calls[1:]]  # turns 2..5
    growth = [(calls[t + 1][0] - calls[t][0]) / episodes for t in range(1, 4)]  # dialogue tokens added
    assert calls[4][1].prompt_tokens > 3 * calls[1][1].prompt_tokens / 2  # the dialogue grows...
    assert max(per_episode) - min(per_episode) <= 1  # ...the work per turn does not
    assert max(per_episode) <= min(growth) + 1
    assert sum(s.generated_tokens for _, s in calls) == sum(r == Role.STUDENT for e in cached for r in e.token_roles)


def test_eviction_bounds_memory(student):
    """With a budget of a few sequences, the kept keys/values (measured as the entries'
    tensor bytes) never exceed it, the least recently used go first, and results still equal
    an engine without a cache."""
    model, tok = student
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 900, (40,), generator=g).tolist() for _ in range(6)]
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=3)
    probe = BuiltinEngine(model, tok)
    budget = 2 * 47 * probe.prefix_cache.bytes_per_token + 10  # two sequences of 40 + 8 - 1 tokens
    eng = BuiltinEngine(model, tok, prefix_cache_bytes=budget)
    ref = BuiltinEngine(model, tok, prefix_cache_bytes=0)
    outs = []
    for p in prompts:
        out = eng.generate([p], sp)[0].outputs[0]
        outs.append(out.token_ids)
        assert out.token_ids == ref.generate([p], sp)[0].outputs[0].token_ids
        entries = list(eng.prefix_cache._entries.values())
        held = sum(e.keys.nbytes + e.values.nbytes for e in entries)
        assert held == eng.prefix_cache.bytes <= budget
    assert len(eng.prefix_cache) == 2
    # the last two sequences are kept whole (the last sampled token was never fed to the
    # model), the first four evicted
    matched = [eng.prefix_cache.lookup(tuple(p + o + [5]), True)[1] for p, o in zip(prompts, outs)]
    assert matched == [0, 0, 0, 0] + [len(p) + len(o) - 1 for p, o in zip(prompts[4:], outs[4:])]


def test_prefix_cache_lru_and_replacement():
    """Unit behaviour: a lookup refreshes an entry, eviction takes the least recently used,
    a sequence extending the one it was prefilled from replaces it, and matches are any
    common prefix (not only whole entries), capped one token short of the prompt."""
    c = PrefixCache(budget_bytes=100, bytes_per_token=1)
    kv = lambda n: torch.zeros(1, 1, n, 1)  # noqa: E731
    a, b = tuple(range(40)), tuple(range(100, 140))
    c.store(a, kv(40), kv(40), True)
    c.store(b, kv(40), kv(40), True)
    assert c.lookup(a + (7, 8), True)[1] == 40  # a is now the most recent
    assert c.lookup(a, True)[1] == 39  # the last prompt token is always run
    assert c.lookup(a[:30] + (999,) * 10, True)[1] == 30  # a common prefix inside the entry
    assert c.lookup(a, False) == (None, 0)  # other adapter flag: never served
    c.store(tuple(range(200, 240)), kv(40), kv(40), True)  # over budget: b (LRU) goes
    assert c.lookup(b + (1,), True) == (None, 0) and c.tokens == 80
    entry, _ = c.lookup(a + (1,), True)
    c.store(a + (1, 2, 3), kv(43), kv(43), True, replaces=entry)
    assert len(c) == 2 and c.tokens == 83 and c.lookup(a + (1, 2, 3, 4), True)[1] == 43


def _weights_moved(model, how):
    """An optimiser-like step on the LoRA weights: `inplace` bumps the parameters' version
    counters as a non-fused optimiser does; `data` writes through .data, which does not (as
    fused optimiser kernels)."""
    with torch.no_grad():
        for _, m in lora_layers(model):
            target = m.lora_B.data if how == "data" else m.lora_B
            target.add_(torch.randn_like(m.lora_B) * 0.3)


@pytest.mark.parametrize("how,hand_off", [("data", True), ("inplace", False)])
def test_adapter_change_invalidates(student, how, hand_off):
    """After the weights change (plus the trainer's set_adapter hand-off, or with only an
    in-place write), a turn that the cache could extend gives exactly a fresh engine's
    result; adapter-off requests never reuse adapter-on keys/values."""
    model, tok = copy.deepcopy(student[0]), student[1]
    eng = BuiltinEngine(model, tok)
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=9)
    prompt = tok.apply_chat([{"role": "user", "content": "Secret 2-digit number, digit sum 9. Answer: ?"}])
    first = eng.generate([prompt], sp)[0].outputs[0]
    turn2 = prompt + first.token_ids + prompt
    eng.generate([turn2], sp)
    assert eng.last_stats.cached_tokens == len(prompt) + len(first.token_ids) - 1  # the cache is live

    off = eng.generate([turn2], sp, use_adapter=False)[0]
    assert eng.last_stats.cached_tokens == 0
    fresh_off = BuiltinEngine(model, tok).generate([turn2], sp, use_adapter=False)[0]
    assert [c.token_ids for c in off.outputs] == [c.token_ids for c in fresh_off.outputs]

    _weights_moved(model, how)
    if hand_off:
        eng.set_adapter(1)
    after = eng.generate([turn2], sp)[0]
    assert eng.last_stats.cached_tokens == 0
    fresh = BuiltinEngine(model, tok).generate([turn2], sp)[0]
    assert [c.token_ids for c in after.outputs] == [c.token_ids for c in fresh.outputs]
    assert [c.logprobs for c in after.outputs] == [c.logprobs for c in fresh.outputs]


def test_folded_lora_equals_unfolded_and_restores_the_model(student):
    """Student batches with the adapter folded into per-call weights give the tokens of the
    unfolded adapter and log-probs within fp32 round-off; afterwards every LoRA layer holds
    its own Parameter objects again, unchanged, with the adapter on."""
    model, tok = student
    before = {n: (m.weight, m.weight.detach().clone()) for n, m in lora_layers(model)}
    prompts = [[2, 5, 6, 7, 8, 9], [2, 30, 31]]
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=4)
    folded = BuiltinEngine(model, tok, fold_lora=True).generate(prompts, sp)
    plain = BuiltinEngine(model, tok, fold_lora=False).generate(prompts, sp)
    for a, b in zip(folded, plain):
        for ca, cb in zip(a.outputs, b.outputs):
            assert ca.token_ids == cb.token_ids
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-5)
    for n, m in lora_layers(model):
        assert m.weight is before[n][0] and torch.equal(m.weight, before[n][1]) and m.enabled


def test_mixed_batch_of_cached_and_fresh_prompts(student):
    """Calls mixing a prompt that extends a kept sequence (with fan-out) and fresh prompts
    equal the same calls without a cache. Rows whose uncached parts differ by less than a
    forward's cost run the same columns, as many as their longest uncached part: beside
    short fresh prompts the kept sequence is reused whole, beside a longer fresh prompt only
    the columns before that part."""
    model, tok = student
    g = torch.Generator().manual_seed(2)
    first = torch.randint(10, 900, (50,), generator=g).tolist()
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=7, seed=1)
    ref = BuiltinEngine(model, tok, prefix_cache_bytes=0)
    for fresh in ([[3, 4, 5], list(range(20, 30))], [torch.randint(10, 900, (60,), generator=g).tolist()]):
        eng = BuiltinEngine(model, tok)
        out = eng.generate([first], sp)[0].outputs[0].token_ids
        prompts = [first + out + [7] * 12, *fresh]
        got, want = eng.generate(prompts, sp), ref.generate(prompts, sp)
        kept = len(first) + len(out) - 1
        width = max(len(prompts[0]) - kept, *map(len, fresh))
        assert eng.last_stats.cached_tokens == len(prompts[0]) - width
        for a, b in zip(got, want):
            for ca, cb in zip(a.outputs, b.outputs):
                assert ca.token_ids == cb.token_ids
                assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-5)


def test_rows_are_prefilled_in_groups_of_similar_width(student):
    """Rows that extend kept sequences by a few tokens and a long fresh prompt in one batch:
    the engine prefills them in two groups (the short rows run only their new columns), where
    one group would run the fresh prompt's width for every row; both equal an engine without
    a cache, and count exactly the tokens they ran."""
    model, tok = student
    g = torch.Generator().manual_seed(3)
    firsts = [torch.randint(10, 900, (50,), generator=g).tolist() for _ in range(3)]
    fresh = torch.randint(10, 900, (90,), generator=g).tolist()
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=2)
    ref = BuiltinEngine(model, tok, prefix_cache_bytes=0)
    for cost, split in ((64, True), (10**9, False)):
        eng = BuiltinEngine(model, tok, prefill_group_cost=cost)
        outs = [o.outputs[0].token_ids for o in eng.generate(firsts, sp)]
        prompts = [f + o + [7] * 5 for f, o in zip(firsts, outs)] + [fresh]
        got, want = eng.generate(prompts, sp), ref.generate(prompts, sp)
        # a row's uncached part: its last sampled token (never fed) and the 5 new ones
        want_prefill = 3 * 6 + len(fresh) if split else sum(map(len, prompts[:3])) + len(fresh)
        assert eng.last_stats.prefill_tokens == want_prefill
        for a, b in zip(got, want):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids
            assert a.outputs[0].logprobs == pytest.approx(b.outputs[0].logprobs, abs=1e-5)


def test_prefill_groups_hand_computed():
    """Runs end only where the width changes, and a split is taken when the padding it saves
    is worth more than the forward it adds."""
    from rl2f.engine.batch import _prefill_groups
    assert _prefill_groups([24] * 51 + [34, 34, 35], 64) == [(0, 51, 24), (51, 54, 35)]  # saves 561 > 64
    assert _prefill_groups([24] * 30 + [25] * 20, 64) == [(0, 50, 25)]  # saves 30 < 64
    assert _prefill_groups([1, 100], 64) == [(0, 1, 1), (1, 2, 100)]  # saves 99 > 64
    assert _prefill_groups([1, 100], 200) == [(0, 2, 100)]
    # padded tokens + cost per forward: 10+18+40 + 3c (three runs), 36+40 + 2c (two), 200 + c
    assert _prefill_groups([5, 5, 9, 9, 40], 1) == [(0, 2, 5), (2, 4, 9), (4, 5, 40)]  # 71 < 78
    assert _prefill_groups([5, 5, 9, 9, 40], 20) == [(0, 4, 9), (4, 5, 40)]  # 116 < 128, 220
    assert _prefill_groups([5, 5, 9, 9, 40], 200) == [(0, 5, 40)]  # 400 < 476
    assert _prefill_groups([7], 64) == [(0, 1, 7)]
