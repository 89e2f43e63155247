"""Checkpoint loading: sharded files, Gemma3ForConditionalGeneration (both key layouts, the
vision tower never read), dtype conversion, and a UserError naming the file for each kind
of bad input."""
import json
import struct

import pytest
import torch
import transformers

from rl2f.errors import UserError
from rl2f.model import load_model, tiny_config
from rl2f.model import safetensors_io as st
from rl2f.model.tiny import build_tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 53
_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path, tensors, extra_entries=None):
    """A safetensors file written by hand; `extra_entries` are header entries with no data
    in the file (their offsets point past its end)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    for name, entry in (extra_entries or {}).items():
        header[name] = entry
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A tiny untied llama checkpoint directory and the model it holds."""
    hf, model = build_tiny_model("llama", VOCAB, seed=1)
    return write_checkpoint(tmp_path / "ckpt", hf, model), model


def same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def test_sharded_checkpoint_with_index(tiny_ckpt, tmp_path):
    """Weights split over shards with model.safetensors.index.json load to the same model."""
    ckpt, model = tiny_ckpt
    state = model.state_dict()
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((ckpt / "config.json").read_text())
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate([names[0::3], names[1::3], names[2::3]]):
        fname = f"model-0000{i + 1}-of-00003.safetensors"
        write_safetensors(out / fname, {k: state[k] for k in part})
        weight_map.update({k: fname for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert same_params(load_model(out), model)


def test_dtype_conversion_and_untied_head(tiny_ckpt):
    """An fp32 checkpoint loaded as bf16 equals the fp32 weights cast to bf16; the untied
    lm_head stays its own tensor."""
    ckpt, model = tiny_ckpt
    bf16 = load_model(ckpt, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert same_params(bf16, model.to(torch.bfloat16))
    assert bf16.lm_head.weight is not bf16.model.embed_tokens.weight


@pytest.fixture
def gemma_multimodal(tmp_path):
    """A real (tiny) transformers Gemma3ForConditionalGeneration, saved with save_pretrained."""
    text = {k: v for k, v in tiny_config("gemma3", VOCAB, sliding_window=8).items() if k != "architectures"}
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    ref = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path / "mm")
    return tmp_path / "mm", ref


def record_reads(monkeypatch):
    read = []
    real = st.read_into

    def spy(f, info, dest):
        read.append(info.name)
        return real(f, info, dest)

    monkeypatch.setattr(st, "read_into", spy)
    return read


def test_gemma3_conditional_generation_text_only(gemma_multimodal, tmp_path, monkeypatch):
    """A Gemma3ForConditionalGeneration checkpoint loads as its text decoder (both key
    layouts, lm_head absent -> tied), matches transformers' logits on text, and no vision
    tensor is ever read: a vision entry pointing past the end of the file with an unknown
    dtype does not disturb loading."""
    path, ref = gemma_multimodal
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        want = ref(input_ids=ids).logits

    read = record_reads(monkeypatch)
    ours = load_model(path)  # transformers 5 saves the older layout: language_model.model.*, vision_tower.*
    assert ours.config.hf_module_prefix == "model.language_model."
    assert ours.config.tie_word_embeddings and ours.lm_head.weight is ours.model.embed_tokens.weight
    assert read and all(k.startswith("language_model.model.") for k in read)
    with torch.no_grad():
        assert (ours(ids) - want).abs().max().item() <= 1e-4

    # the transformers >= 4.52 layout, with an unreadable vision tensor
    from safetensors.torch import load_file
    old = load_file(str(path / "model.safetensors"))
    new = {}
    for k, v in old.items():
        if k.startswith("language_model.model."):
            new["model.language_model." + k[len("language_model.model."):]] = v
        else:
            new["model." + k] = v
    assert any(k.startswith("model.vision_tower.") for k in new)
    out = tmp_path / "mm_new"
    out.mkdir()
    (out / "config.json").write_text((path / "config.json").read_text())
    write_safetensors(out / "model.safetensors", new, extra_entries={
        "model.vision_tower.huge": {"dtype": "F8_UNKNOWN", "shape": [1 << 20, 1 << 20],
                                    "data_offsets": [1 << 40, (1 << 40) + (1 << 40)]}})
    read.clear()
    ours = load_model(out)
    assert read and all(k.startswith("model.language_model.") for k in read)
    assert len(read) == len([k for k in new if k.startswith("model.language_model.")])
    with torch.no_grad():
        assert (ours(ids) - want).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------
# Bad input: a UserError that names the file (and the tensor where one is at fault)

def test_missing_config(tmp_path):
    """No config.json: the error names the path."""
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_unsupported_architecture(tiny_ckpt):
    """An architecture or model_type we do not implement is named, with the supported list."""
    ckpt, _ = tiny_ckpt
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(UserError, match=r"config\.json.*MistralForCausalLM.*LlamaForCausalLM"):
        load_model(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architectures": None, "model_type": "phi3"}))
    with pytest.raises(UserError, match=r"config\.json.*'phi3'.*gemma3_text"):
        load_model(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json"):
        load_model(ckpt)


def rewrite(ckpt, model, drop=(), change=None, extra=None):
    state = {k: v for k, v in model.state_dict().items() if k not in drop}
    state.update(change or {})
    write_safetensors(ckpt / "model.safetensors", state, extra)
    return ckpt / "model.safetensors"


def test_missing_tensor(tiny_ckpt):
    """A tensor the config needs but the file lacks: file and tensor named."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model, drop=["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(UserError, match=rf"{f}.*model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        load_model(ckpt)
    f = rewrite(ckpt, model, drop=["lm_head.weight"])  # untied llama needs its head
    with pytest.raises(UserError, match=rf"{f}.*lm_head\.weight"):
        load_model(ckpt)


def test_wrong_shape(tiny_ckpt):
    """A tensor whose shape disagrees with config.json: file, tensor and both shapes named."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model, change={"model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 128)})
    with pytest.raises(UserError, match=rf"{f}.*k_proj\.weight.*\[32, 128\].*\[64, 128\]"):
        load_model(ckpt)


def test_truncated_file(tiny_ckpt):
    """A file cut short (offsets past its end): file and tensor named."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match=rf"{f}.*truncated"):
        load_model(ckpt)


def test_unknown_dtype(tiny_ckpt):
    """A dtype string safetensors does not define: file, tensor and dtype named."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model)
    n = struct.unpack("<Q", f.read_bytes()[:8])[0]
    data = f.read_bytes()
    header = json.loads(data[8:8 + n])
    header["model.norm.weight"]["dtype"] = "F33"
    raw = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(UserError, match=rf"{f}.*model\.norm\.weight.*unknown dtype 'F33'"):
        load_model(ckpt)


def test_corrupt_header(tiny_ckpt):
    """Garbage JSON, an impossible header length, a bad entry: all name the file."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model)
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    f.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    with pytest.raises(UserError, match=rf"{f}.*corrupt safetensors header"):
        load_model(ckpt)
    f.write_bytes(struct.pack("<Q", 1 << 50) + data[8:])
    with pytest.raises(UserError, match=rf"{f}.*corrupt safetensors header"):
        load_model(ckpt)
    f.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match=rf"{f}.*corrupt"):
        load_model(ckpt)
    write_safetensors(f, {}, extra_entries={"model.norm.weight": {"dtype": "F32", "shape": [128]}})
    with pytest.raises(UserError, match=rf"{f}.*corrupt.*model\.norm\.weight"):
        load_model(ckpt)


def test_sharded_errors(tiny_ckpt):
    """An index naming a shard that is not there, or a bad index file, names the index."""
    ckpt, model = tiny_ckpt
    (ckpt / "model.safetensors").unlink()
    index = ckpt / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: "model-00001-of-00002.safetensors"
                                                for k in model.state_dict()}}))
    with pytest.raises(UserError, match=rf"{index}.*model-00001-of-00002\.safetensors.*does not exist"):
        load_model(ckpt)
    index.write_text("[]")
    with pytest.raises(UserError, match=rf"{index}.*weight_map"):
        load_model(ckpt)
    index.unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        load_model(ckpt)


def test_tensors_sharing_bytes_are_refused(tiny_ckpt):
    """Two header entries whose byte ranges overlap (even partly): the official reader refuses
    such a file, and ours named neither and loaded the same bytes twice. Adjacent ranges (every
    normal file) load, as every other test here shows."""
    ckpt, model = tiny_ckpt
    f = rewrite(ckpt, model)
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    a, b = "model.norm.weight", "model.layers.0.input_layernorm.weight"
    begin, end = header[a]["data_offsets"]
    header[b]["data_offsets"] = [begin + 4, end + 4]  # one float into `a`, same length
    raw = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(UserError, match=rf"{f}: corrupt safetensors header \(tensors .*share bytes"):
        st.read_header(f)
