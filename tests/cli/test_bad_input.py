"""Bad input through the CLI: each case is one line naming the file or the key, exit code 2,
no traceback (issue 14, section 4): configs, adapters, checkpoints and tokenizers."""
import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from rl2f.cli.main import cli

SMALL = ["--set", "rollout.group_size=2", "--set", "rollout.max_turns=2", "--set", "rollout.max_new_tokens=4",
         "--set", "task.name=secret"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rl2f.model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A valid PEFT adapter for the tiny model (rank 2 on q_proj)."""
    from rl2f.lora import apply_lora, save_adapter
    from rl2f.model import load_model

    model = apply_lora(load_model(tiny), rank=2, alpha=4.0, targets=["q_proj"], seed=0)
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "a")


def cli_run(*args):
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def assert_one_line(code, text, *names):
    lines = text.strip().splitlines()
    assert code == 2 and "Traceback" not in text, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for n in names:
        assert str(n) in lines[0], (n, text)
    return lines[0]


@pytest.mark.parametrize("setting, key", [
    ("train.lr=nan", "train.lr"),
    ("rollout.temperature=nan", "rollout.temperature"),
    ("train.lr=inf", "train.lr"),
    (f"train.max_steps={2**64}", "train.max_steps"),
    ("lora.alpha=0", "lora.alpha"),
    ("task.options=5", "task.options"),
    ("model.device=banana", "model.device"),
    ("lora.dropout='high'", "lora.dropout"),
    ("lora.dropout=1.5", "lora.dropout"),
    ("lora.targets=[]", "lora.targets"),
    ("lora.targets=['q_proj', 'qkv']", "lora.targets"),
])
def test_bad_config_values(tmp_path, setting, key):
    """Each of these was accepted silently or died deep inside torch."""
    assert_one_line(*cli_run("train", "--set", setting, "--out", str(tmp_path / "run")), key)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA: 'cuda' is a valid device here")
def test_cuda_on_a_cpu_only_torch(tmp_path):
    assert_one_line(*cli_run("train", "--set", "model.device=cuda", "--out", str(tmp_path / "run")), "model.device")


def test_non_utf8_and_unreadable_config(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[train]\n# caf\xe9\nlr = 1e-4\n'.encode("latin-1"))
    assert_one_line(*cli_run("train", "--config", str(bad), "--out", str(tmp_path / "run")), bad, "UTF-8")


# ----------------------------------------------------------------------------------------
# Adapters


def broken_adapter(adapter, tmp_path, config=None, tensors=None):
    out = tmp_path / "broken"
    shutil.copytree(adapter, out)
    if config is not None:
        cfg = json.loads((out / "adapter_config.json").read_text())
        config(cfg)
        (out / "adapter_config.json").write_text(json.dumps(cfg))  # json writes NaN as NaN, as PEFT's may
    if tensors is not None:
        sd = load_file(str(out / "adapter_model.safetensors"))
        tensors(sd)
        save_file(sd, str(out / "adapter_model.safetensors"))
    return out


def _set(key, value):
    return lambda cfg: cfg.__setitem__(key, value)


def _poison(sd):
    k = next(k for k in sd if "lora_A" in k)
    sd[k][0, 0] = math.nan


def _to_int64(sd):
    k = next(k for k in sd if "lora_B" in k)
    sd[k] = sd[k].to(torch.int64)


@pytest.mark.parametrize("config, tensors, names", [
    (_set("lora_alpha", math.nan), None, ["adapter_config.json", "lora_alpha"]),
    (_set("lora_alpha", 0), None, ["adapter_config.json", "lora_alpha"]),
    (_set("lora_dropout", "high"), None, ["adapter_config.json", "lora_dropout"]),
    (_set("lora_dropout", 1.5), None, ["adapter_config.json", "lora_dropout"]),
    (None, _poison, ["adapter_model.safetensors", "lora_A", "non-finite"]),
    (None, _to_int64, ["adapter_model.safetensors", "lora_B", "int64"]),
])
def test_bad_adapters(tmp_path, tiny, adapter, config, tensors, names):
    """NaN alpha or weights (episodes with NaN log-probs), int64 tensors (cast silently), and a
    dropout that is not a probability are refused when the adapter is loaded."""
    bad = broken_adapter(adapter, tmp_path, config, tensors)
    assert_one_line(*cli_run("generate", "--set", f'model.path="{tiny}"', *SMALL, "--problems", "1",
                             "--adapter", str(bad), "--out", str(tmp_path / "eps.jsonl")), *names)


# ----------------------------------------------------------------------------------------
# Base checkpoints and tokenizers


def copy_ckpt(tiny, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny, out)
    return out


def generate_with(ckpt, tmp_path):
    return cli_run("generate", "--set", f'model.path="{ckpt}"', *SMALL, "--problems", "1",
                   "--out", str(tmp_path / "eps.jsonl"))


def test_config_claiming_a_huge_vocabulary(tmp_path, tiny):
    """vocab_size 4e9 in config.json: named against the weights before any allocation."""
    ckpt = copy_ckpt(tiny, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vocab_size"] = 4_000_000_000
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_one_line(*generate_with(ckpt, tmp_path), "config.json", "embed_tokens")


def test_index_with_non_string_shard_names(tmp_path, tiny):
    ckpt = copy_ckpt(tiny, tmp_path)
    names = list(load_file(str(ckpt / "model.safetensors")))
    (ckpt / "model.safetensors").rename(ckpt / "shard-1.safetensors")
    weight_map = {n: "shard-1.safetensors" for n in names}
    weight_map[names[0]] = 7
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_one_line(*generate_with(ckpt, tmp_path), "model.safetensors.index.json", "weight_map", names[0])


def test_safetensors_tensors_sharing_bytes(tmp_path, tiny):
    """Two tensors pointing at one byte range: the official reader refuses it, ours must too
    (it loaded the same bytes into both)."""
    ckpt = copy_ckpt(tiny, tmp_path)
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__" and header[k]["shape"] == header[
        next(k for k in header if k.endswith("q_norm.weight"))]["shape"]]
    a, b = names[:2]
    header[b]["data_offsets"] = header[a]["data_offsets"]
    text = json.dumps(header).encode()  # offsets count from the end of the header: they stay valid
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    line = assert_one_line(*generate_with(ckpt, tmp_path), f, "share bytes")
    assert a in line and b in line


def test_tokenizer_with_ids_beyond_the_vocabulary(tmp_path, tiny):
    """A model whose embedding is smaller than its tokenizer: named once both are loaded,
    not an index error inside the embedding at the first prompt."""
    from rl2f.model import load_tokenizer

    ckpt = copy_ckpt(tiny, tmp_path)
    vocab = load_tokenizer(ckpt).backend.get_vocab_size(with_added_tokens=False) - 10
    sd = load_file(str(ckpt / "model.safetensors"))
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:vocab].clone()
    if "lm_head.weight" in sd:
        sd["lm_head.weight"] = sd["lm_head.weight"][:vocab].clone()
    save_file(sd, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vocab_size"] = vocab
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_one_line(*generate_with(ckpt, tmp_path), "tokenizer", f"vocab_size {vocab}")


def test_generate_resume_names_a_bad_line_before_the_end(tmp_path, tiny):
    """`rl2f generate` into a file with a damaged line before its end: one line naming
    file:line, and the file is left as it was (it used to drop every later episode)."""
    out = tmp_path / "eps.jsonl"
    args = ["generate", "--set", f'model.path="{tiny}"', *SMALL, "--problems", "2", "--out", str(out)]
    code, text = cli_run(*args)
    assert code == 0, text
    lines = out.read_text().splitlines()
    lines[1] = lines[1][:20]
    out.write_text("\n".join(lines) + "\n")
    assert_one_line(*cli_run(*args), f"{out}:2")
    assert out.read_text() == "\n".join(lines) + "\n"


def test_generate_to_an_impossible_out(tmp_path, tiny):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "eps.jsonl"
    assert_one_line(*cli_run("generate", "--set", f'model.path="{tiny}"', *SMALL, "--problems", "1",
                             "--out", str(out)), out)


def test_a_disk_error_anywhere_is_one_line(tmp_path, monkeypatch):
    """A full disk that reaches the CLI from a write without its own message (a vLLM adapter
    hand-off, an evaluation report) is still one line with the path; other errors keep their
    traceback (they are bugs)."""
    import errno
    import os

    import rl2f.train

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/adapters/v000003")

    monkeypatch.setattr(rl2f.train, "train", full)
    line = assert_one_line(*cli_run("train", "--out", str(tmp_path / "run")), "/runs/x/adapters/v000003")
    assert "No space left on device" in line
    monkeypatch.setattr(rl2f.train, "train", lambda *a, **k: 1 / 0)
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run2")])
    assert isinstance(r.exception, ZeroDivisionError)


def test_a_10_mb_prompt_is_one_warning_naming_it(tmp_path, tiny):
    """A 10 MB problem in a math file: skipped with one warning line naming it (it took 25 s
    and 2.8 GB before a line that named nothing); the other problems are generated."""
    data = tmp_path / "runs-big.jsonl"
    lines = [json.dumps({"problem": f"What is {i} + 3?", "answer": str(i + 3)}) for i in range(20)]
    lines.insert(3, json.dumps({"problem": "x" * 10_000_000, "answer": "1"}))  # in the test split
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eps.jsonl"
    code, text = cli_run("generate", "--set", f'model.path="{tiny}"', "--set", "task.name=math",
                         "--set", f"task.options.path='{data}'", "--set", "rollout.group_size=2",
                         "--set", "rollout.max_turns=1", "--set", "rollout.max_new_tokens=4",
                         "--split", "test", "--problems", "5", "--out", str(out))
    assert code == 0, text[:2000]
    warn = [l for l in text.splitlines() if l.startswith("warning:")]
    assert len(warn) == 1 and "problem 'runs-big.jsonl:4'" in warn[0] and "skipped" in warn[0], text[:2000]
    summary = json.loads(text.strip().splitlines()[-1])
    assert (summary["problems"], summary["skipped_problems"]) == (4, 1)
