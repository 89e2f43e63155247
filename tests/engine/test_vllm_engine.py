"""The vLLM engine adapter: request conversion, output conversion, LoRA hot swap by request
id, against a fake vLLM namespace (vLLM itself is optional and GPU-bound)."""
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
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    _FakeLLM.instances.clear()
    return vllm


class _Tok:
    stop_ids = [2, 9]

    def encode(self, text):
        return [ord(c) % 50 for c in text]


def test_missing_vllm_is_a_user_error(monkeypatch):
    """Without vLLM the engine raises UserError telling how to install it."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UserError, match=r"pip install rl2f\[vllm\]"):
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
                      gpu_memory_utilization=0.5, dtype="bfloat16")
    llm = _FakeLLM.instances[-1]
    assert llm.init_kwargs == dict(model="/ckpt", enable_lora=True, max_lora_rank=16,
                                   gpu_memory_utilization=0.5, dtype="bfloat16",
                                   logprobs_mode="processed_logprobs")
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


def test_per_request_lists_must_match(fake_vllm):
    """A per-request list of flags of the wrong length is a UserError."""
    eng = VLLMEngine("/ckpt")
    with pytest.raises(UserError, match="use_adapter"):
        eng.generate([[1], [2]], SamplingParams(), use_adapter=[True])


def test_real_vllm_logprobs_and_lora_hot_swap(tmp_path):
    """(Runs where vLLM is installed, i.e. on a GPU machine.) On a tiny Llama with sharp
    logits: vLLM's returned log-probs are log_softmax(logits / T) of our fp32 model at the
    sampled tokens to bf16 accuracy (so the temperature is applied: 'processed' log-probs;
    at T = 1 they would be off by far more); after
    set_adapter, student requests follow the LoRA model and teacher requests the
    base, in the same call."""
    pytest.importorskip("vllm")
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

    eng = make_engine("vllm", model_path=str(path), tokenizer=tok, max_lora_rank=8,
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
            assert torch.allclose(got, ref_logprobs(m, o.prompt_token_ids, c.token_ids), atol=0.15)
    on = [c.token_ids for c in outs[0].outputs]
    off = [c.token_ids for c in outs[2].outputs]
    assert on != off
