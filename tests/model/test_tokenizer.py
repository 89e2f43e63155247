"""Tokenizer loading (special tokens, family, errors) and the tiny tokenizer trained at run time."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl2f.errors import UserError
from rl2f.model.tokenizer import (TINY_SPECIALS, Tokenizer, build_tiny_tokenizer, load_tokenizer, save_tokenizer_files,
                                  tiny_special_ids)

FAMILIES = ["gemma3", "qwen2", "qwen3", "llama"]
TASK_TEXTS = [
    "What is 1234 + 5678? 1234 + 5678 = 6912, so the answer is \\boxed{6912}.",
    "S . . #\n# . # .\n. . . G\nMoves: right, right, down, down, right",
    "def solve(xs):\n    total = 0\n    for x in xs:\n        total += x ** 2\n    return total  # 0-indexed\n",
    "Knights always tell the truth; knaves always lie. A says: \"B is a knave.\"",
    "  leading and trailing spaces \t\n\n", "π ≈ 3.14159, √2 ≈ 1.414, café, 数学, 🙂", "",
]


@pytest.fixture(scope="module")
def tiny():
    return {f: build_tiny_tokenizer(f) for f in FAMILIES}


def _sha(tok):
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def test_tiny_tokenizer_is_deterministic(tiny):
    """Two builds with one seed give the same tokenizer.json, in this process and in a fresh one;
    another seed (another corpus sample) gives another."""
    for family in FAMILIES:
        assert build_tiny_tokenizer(family).to_str() == tiny[family].to_str()
    code = "from rl2f.model.tokenizer import build_tiny_tokenizer as b; import hashlib; " \
           "print(hashlib.sha256(b('qwen3').to_str().encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _sha(tiny["qwen3"])
    assert build_tiny_tokenizer("gemma3", seed=1).to_str() != tiny["gemma3"].to_str()


def test_tiny_vocab_digits_and_specials(tiny):
    """Vocabulary of 512-2048 tokens; no token holds a digit together with anything else (every digit
    is its own token, 0-9 each present); special tokens sit where the official vocabularies put them."""
    for family, tok in tiny.items():
        n = tok.get_vocab_size()
        assert 512 <= n <= 2048
        specials = [t for t, _ in TINY_SPECIALS[family]]
        for i in set(range(n)) - {tok.token_to_id(t) for t in specials}:
            piece = tok.decode([i], skip_special_tokens=False)
            assert not any(c.isdigit() for c in piece) or len(piece) == 1, (family, i, piece)
        assert all(len(tok.encode(d, add_special_tokens=False).ids) == 1 for d in "0123456789")
        ids = tok.encode("12 + 345 = 357", add_special_tokens=False).ids
        assert [p for p in (tok.decode([i]).strip() for i in ids) if p] == list("12+345=357")
        got = [tok.token_to_id(t) for t in specials]
        # Gemma's open the vocabulary (<pad>=0, <eos>=1, <bos>=2, ...); the others close it, in order.
        want = list(range(len(specials))) if family == "gemma3" else list(range(n - len(specials), n))
        assert got == want, family


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_decode_round_trip(family, tiny):
    """decode(encode(text)) gives back task-like text exactly (math, maze grid, code, unicode, spaces);
    encode adds no bos/eos."""
    tok = Tokenizer(tiny[family], family)
    for text in TASK_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert not set(ids) & {tok.bos_id, tok.eos_id, tok.eot_id}
    chat = tok.apply_chat([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], False)
    assert tok.decode(chat) == DECODED_CHAT[family]  # special tokens skipped, all text kept


DECODED_CHAT = {
    "gemma3": "user\n2+2?\nmodel\n4\n",
    "qwen2": "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n2+2?\nassistant\n4\n",
    "qwen3": "user\n2+2?\nassistant\n<think>\n\n</think>\n\n4\n",  # think tags are not special tokens
    "llama": "system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nuser\n\n2+2?assistant\n\n4",
}


# What each family's official instruct checkpoint declares (tokenizer_config / generation_config).
EXPECTED = {
    "gemma3": dict(bos="<bos>", eos="<eos>", pad="<pad>", eot="<end_of_turn>", stops=["<end_of_turn>", "<eos>"]),
    "qwen2": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", eot="<|im_end|>",
                  stops=["<|im_end|>", "<|endoftext|>"]),
    "qwen3": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", eot="<|im_end|>",
                  stops=["<|im_end|>", "<|endoftext|>"]),
    "llama": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", eot="<|eot_id|>",
                  stops=["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]),
}
CONFIGS = {  # config.json shapes of real checkpoints (model_type, and Gemma 3's multimodal nesting)
    "gemma3": {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
               "text_config": {"model_type": "gemma3_text"}},
    "qwen2": {"model_type": "qwen2"}, "qwen3": {"model_type": "qwen3"}, "llama": {"model_type": "llama"},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_load_checkpoint_dir(family, tiny, tmp_path):
    """load_tokenizer reads the family from config.json and the special tokens from the tokenizer files;
    bos/eos/pad agree with transformers' reading of the same files (Llama 3.1 has no pad there: we use
    its reserved pad token); vocab_size agrees with len(hf tokenizer)."""
    from transformers import AutoTokenizer
    save_tokenizer_files(tiny[family], family, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[family]))
    tok = load_tokenizer(tmp_path)
    exp = EXPECTED[family]
    assert tok.family == family
    ids = {k: (None if exp[k] is None else tiny[family].token_to_id(exp[k])) for k in ("bos", "eos", "pad", "eot")}
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eot_id) == (ids["bos"], ids["eos"], ids["pad"], ids["eot"])
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id)
    assert tok.pad_id == (hf.pad_token_id if hf.pad_token_id is not None else ids["pad"])
    assert tok.stop_ids == [tiny[family].token_to_id(t) for t in exp["stops"]]
    assert tok.vocab_size == len(hf)
    assert load_tokenizer(tmp_path / "tokenizer.json").family == family
    # The ids the tiny checkpoint writes into config.json say the same as the tokenizer files.
    (tmp_path / "config.json").write_text(json.dumps({**CONFIGS[family], **tiny_special_ids(tiny[family], family)}))
    again = load_tokenizer(tmp_path)
    assert (again.bos_id, again.eos_id, again.pad_id, again.stop_ids) == (tok.bos_id, tok.eos_id, tok.pad_id,
                                                                           tok.stop_ids)


def test_gemma_text_config_and_generation_config(tiny, tmp_path):
    """gemma3_text model_type is Gemma 3; eos ids listed in generation_config.json join stop_ids;
    a null bos in tokenizer_config.json wins over generation_config's (as for Qwen)."""
    save_tokenizer_files(tiny["gemma3"], "gemma3", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, 106, 3]}))
    tok = load_tokenizer(tmp_path)
    assert tok.family == "gemma3" and tok.stop_ids == [6, 1, 106, 3]
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["bos_token"] = None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(tmp_path).bos_id is None


def _write(path: Path, text: str):
    path.write_text(text)
    return path


def test_errors_name_the_file(tiny, tmp_path):
    """Missing tokenizer.json, corrupt JSON, a missing config.json and an unknown model_type raise
    UserError naming the file; a checkpoint's chat template of another layout than its family's
    is used as written."""
    with pytest.raises(UserError, match=r"tokenizer\.json: not found"):
        load_tokenizer(tmp_path)
    _write(tmp_path / "tokenizer.json", "{not json")
    with pytest.raises(UserError, match=r"tokenizer\.json: not a readable tokenizer\.json"):
        load_tokenizer(tmp_path, family="qwen2")
    save_tokenizer_files(tiny["qwen2"], "qwen2", tmp_path)
    with pytest.raises(UserError, match=r"config\.json: not found"):
        load_tokenizer(tmp_path)
    cfg = _write(tmp_path / "config.json", '{"model_type": "qwen2",')
    with pytest.raises(UserError, match=rf"{cfg}: not valid JSON"):
        load_tokenizer(tmp_path)
    _write(cfg, json.dumps({"model_type": "mistral"}))
    with pytest.raises(UserError, match=r"config\.json: model_type 'mistral' is not supported"):
        load_tokenizer(tmp_path)
    _write(cfg, json.dumps({"model_type": "qwen2"}))
    _write(tmp_path / "tokenizer_config.json", "[")
    with pytest.raises(UserError, match=r"tokenizer_config\.json: not valid JSON"):
        load_tokenizer(tmp_path)
    # A template of any layout is the checkpoint's own: it is rendered as written (broken ones: test_chat).
    _write(tmp_path / "tokenizer_config.json", json.dumps({"chat_template": "[{{ messages[0]['content'] }}]"}))
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat([{"role": "user", "content": "12 + 3"}]) == tok.encode("[12 + 3]")
    with pytest.raises(UserError, match="unknown family"):
        Tokenizer(tiny["qwen2"], "mistral")
