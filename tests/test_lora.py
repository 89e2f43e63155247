"""rl2f.lora: LoRA maths, the adapter switch, merge, and PEFT-format interchange.

The references are independent: a hand-written x W^T + s x A^T B^T, the base model's own
logits, and PEFT on the transformers model (rl2f saves -> PEFT loads and vice versa, same
logits). Everything is fp32 on CPU with tiny models built here.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rl2f.lora
from rl2f.errors import UserError
from rl2f.lora import (
    ADDMM,
    CAST_ADD,
    FOLD_AUTOGRAD,
    FOLD_WEIGHTS,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    forward_path,
    load_adapter,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    rollout_adapter,
    rollout_path,
    save_adapter,
    unmerge_lora,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# transformers' own deprecation noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- tiny checkpoints

def _hf_model(family: str):
    torch.manual_seed(1)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.LlamaForCausalLM(cfg)
    if family == "gemma3":
        cfg = transformers.Gemma3TextConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8,
            max_position_embeddings=64)
        return transformers.Gemma3ForCausalLM(cfg)
    raise ValueError(family)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a saved tiny HF checkpoint directory (built once per module)."""
    out = {}
    for family in ("llama", "gemma3"):
        d = tmp_path_factory.mktemp(f"ckpt_{family}")
        _hf_model(family).eval().save_pretrained(d)
        out[family] = d
    return out


def _ours(ckpt: Path):
    from rl2f.model import load_model

    return load_model(ckpt).eval()


def _hf(ckpt: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()


def _ids(vocab: int = 96, B: int = 2, T: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(3))


def _logits(model, ids):
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits  # ours: tensor; HF: output


def _randomise_b(params_named, seed: int = 5):
    """Nonzero B, so the adapter changes the logits (a fresh adapter is a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params_named:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# --------------------------------------------------------------------------- PEFT interchange

@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_peft_loads_rl2f_adapter(checkpoints, tmp_path, family):
    """An adapter saved by rl2f, loaded by PEFT onto the transformers model, gives rl2f's
    logits (and the adapter really moves them: it is not the base model)."""
    ckpt = checkpoints[family]
    ours = _ours(ckpt)
    ids = _ids()
    with torch.no_grad():
        base = ours(ids)
    apply_lora(ours, rank=4, alpha=8, use_rslora=(family == "gemma3"), seed=0)
    _randomise_b(ours.named_parameters())
    save_adapter(ours, tmp_path / "adapter")

    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["target_modules"] == sorted(ALL) and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["base_model_name_or_path"] == str(ckpt)

    ref = peft.PeftModel.from_pretrained(_hf(ckpt), tmp_path / "adapter").eval()
    with torch.no_grad():
        want, got = _logits(ref, ids), ours(ids)
    assert (got - base).abs().max() > 1e-2
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_rl2f_loads_peft_adapter(checkpoints, tmp_path, family):
    """An adapter made and saved by PEFT (get_peft_model + save_pretrained) loads into rl2f's
    model, LoRA applied from its adapter_config.json, and gives PEFT's logits."""
    ckpt = checkpoints[family]
    lcfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                           task_type="CAUSAL_LM", use_rslora=(family == "llama"))
    ref = peft.get_peft_model(_hf(ckpt), lcfg).eval()
    _randomise_b(ref.named_parameters())
    ref.save_pretrained(tmp_path / "adapter")

    ours = load_adapter(_ours(ckpt), tmp_path / "adapter")
    assert ours.lora_config.targets == ("down_proj", "q_proj", "v_proj")
    assert ours.lora_config.use_rslora == (family == "llama")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), _logits(ref, ids), atol=1e-4, rtol=0)


def test_load_accepts_in_memory_peft_keys(checkpoints, tmp_path):
    """PEFT's in-memory key names (with the `.default` adapter infix, which save_pretrained
    strips) load too and give the same logits."""
    from safetensors.torch import save_file

    ckpt = checkpoints["llama"]
    ref = peft.get_peft_model(_hf(ckpt), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"]))
    ref.eval()
    _randomise_b(ref.named_parameters())
    ref.save_pretrained(tmp_path / "a")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if "lora_" in k}
    assert all(".default." in k for k in sd)
    save_file(sd, str(tmp_path / "a" / "adapter_model.safetensors"))

    ours = load_adapter(_ours(ckpt), tmp_path / "a")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), _logits(ref, ids), atol=1e-4, rtol=0)


def _gemma3_multimodal(d: Path) -> Path:
    """A tiny Gemma3ForConditionalGeneration checkpoint (decoder under model.language_model.)."""
    torch.manual_seed(1)
    text = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8,
                max_position_embeddings=64)
    vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=4)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    boi_token_index=93, eoi_token_index=94, image_token_index=95)
    transformers.Gemma3ForConditionalGeneration(cfg).eval().save_pretrained(d)
    return d


# PEFT wraps the vision tower's q_proj too and says our text-only adapter has no tensors for
# it; those layers keep B = 0, so they change nothing.
@pytest.mark.filterwarnings("ignore:Found missing adapter keys")
def test_gemma3_multimodal_checkpoint(tmp_path):
    """On a Gemma3ForConditionalGeneration checkpoint, rl2f writes keys under
    model.language_model. that PEFT loads with equal logits and that load back bit-exactly;
    a PEFT adapter that also covers the vision tower loads (vision tensors skipped with a
    warning, text logits equal), also in the transformers < 4.52 key layout."""
    from safetensors.torch import load_file, save_file

    ckpt = _gemma3_multimodal(tmp_path / "ckpt")
    hf_cls = transformers.Gemma3ForConditionalGeneration
    ids = _ids(vocab=90)

    ours = apply_lora(_ours(ckpt), rank=2, alpha=3, targets=("q", "o", "up"), seed=1)
    _randomise_b(ours.named_parameters())
    save_adapter(ours, tmp_path / "ours")
    keys = set(load_file(str(tmp_path / "ours" / "adapter_model.safetensors")))
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 2 * 3  # layers x (A, B) x targets
    ref = peft.PeftModel.from_pretrained(hf_cls.from_pretrained(ckpt).eval(), tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), _logits(ref.eval(), ids), atol=1e-4, rtol=0)
    back = load_adapter(_ours(ckpt), tmp_path / "ours")
    assert all(torch.equal(lora_state_dict(back)[k], v) for k, v in lora_state_dict(ours).items())

    ref = peft.get_peft_model(hf_cls.from_pretrained(ckpt), peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).eval()
    _randomise_b(ref.named_parameters())
    ref.save_pretrained(tmp_path / "peft")
    with pytest.warns(UserWarning, match="vision tower"):
        got = load_adapter(_ours(ckpt), tmp_path / "peft")
    with torch.no_grad():
        want = _logits(ref, ids)
        torch.testing.assert_close(got(ids), want, atol=1e-4, rtol=0)
        w = tmp_path / "peft" / "adapter_model.safetensors"
        save_file({k.replace("model.language_model.", "language_model.model."): v
                   for k, v in load_file(str(w)).items()}, str(w))
        with pytest.warns(UserWarning, match="vision tower"):
            torch.testing.assert_close(load_adapter(_ours(ckpt), w.parent)(ids), want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- mechanics on our model

def test_adapters_disabled_is_exactly_the_base(checkpoints):
    """Inside adapters_disabled the logits are bit-identical to the model before LoRA; the
    switch nests and is restored after an exception."""
    ours = _ours(checkpoints["llama"])
    ids = _ids()
    with torch.no_grad():
        base = ours(ids)
        apply_lora(ours, rank=4, alpha=8, seed=0)
        _randomise_b(ours.named_parameters())
        tuned = ours(ids)
        with adapters_disabled(ours):
            assert torch.equal(ours(ids), base)
            with adapters_disabled(ours):
                assert torch.equal(ours(ids), base)
            assert torch.equal(ours(ids), base)  # still off after the inner block
        assert torch.equal(ours(ids), tuned)
        with pytest.raises(RuntimeError):
            with adapters_disabled(ours):
                raise RuntimeError("boom")
        assert torch.equal(ours(ids), tuned)
    assert (tuned - base).abs().max() > 1e-2


def test_merge_unmerge(checkpoints):
    """Merged forward equals the unmerged forward (and, with adapters off, the base);
    unmerge restores the base weights (fp32: to float rounding)."""
    ours = _ours(checkpoints["gemma3"])
    ids = _ids()
    with torch.no_grad():
        base = ours(ids)
    apply_lora(ours, rank=4, alpha=8, seed=0)
    _randomise_b(ours.named_parameters())
    before = {k: v.clone() for k, v in ours.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        unmerged = ours(ids)
        merge_lora(ours)
        assert any(not torch.equal(ours.state_dict()[k], v) for k, v in before.items())
        torch.testing.assert_close(ours(ids), unmerged, atol=1e-5, rtol=0)
        with adapters_disabled(ours):
            torch.testing.assert_close(ours(ids), base, atol=1e-5, rtol=0)
        unmerge_lora(ours)
    for k, v in before.items():
        torch.testing.assert_close(ours.state_dict()[k], v, atol=1e-6, rtol=0)


def test_only_adapters_train_and_base_keys_unchanged(checkpoints):
    """After apply_lora only lora_A/lora_B require grad, their count is sum r*(in+out) over
    the wrapped layers, and the base state_dict keys are the checkpoint's, unchanged."""
    ours = _ours(checkpoints["llama"])
    keys = set(ours.state_dict())
    r = 3
    apply_lora(ours, rank=r, alpha=6)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert {id(p) for p in lora_parameters(ours)} == {id(p) for p in ours.parameters() if p.requires_grad}
    c = ours.config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    H, I = c.hidden_size, c.intermediate_size
    per_layer = r * ((H + q) + 2 * (H + kv) + (q + H) + 2 * (H + I) + (I + H))
    assert sum(p.numel() for p in lora_parameters(ours)) == c.num_hidden_layers * per_layer
    assert {k for k in ours.state_dict() if ".lora_" not in k} == keys
    ours(_ids()).square().mean().backward()
    assert all(p.grad is None for n, p in ours.named_parameters() if ".lora_" not in n)
    assert all(p.grad.abs().sum() > 0 for n, p in ours.named_parameters() if n.endswith(".lora_B"))


# --------------------------------------------------------------------------- LoRALinear on its own

def test_lora_linear_matches_formula():
    """forward = x W^T + b + s * x A^T B^T with s = alpha/r (alpha/sqrt(r) for rsLoRA);
    dropout touches only the adapter input; B starts at zero."""
    base = nn.Linear(10, 6)
    x = torch.randn(3, 5, 10)
    for rs in (False, True):
        layer = LoRALinear(base, rank=4, alpha=8, use_rslora=rs)
        assert torch.count_nonzero(layer.lora_B) == 0 and layer.lora_A.abs().sum() > 0
        assert torch.equal(layer(x), base(x))
        nn.init.normal_(layer.lora_B)
        s = 8 / math.sqrt(4) if rs else 8 / 4
        want = x @ base.weight.T + base.bias + s * (x @ layer.lora_A.T @ layer.lora_B.T)
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    drop = LoRALinear(base, rank=2, alpha=2, dropout=0.5).train()
    assert torch.equal(drop(x), base(x))  # B = 0: dropout cannot reach the base path


# --------------------------------------------------------------------------- the fast-path table

def _path_table() -> list[dict[str, str]]:
    """The rows of the table in rl2f.lora's docstring, as {column: cell}."""
    lines = [line.strip() for line in rl2f.lora.__doc__.splitlines() if line.strip().startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]  # cells[1]: the |---| line


def test_path_table_is_what_the_decision_functions_say():
    """Every row of the table equals forward_path (training: grad on; no grad) and
    rollout_path for its dtypes; the table covers fp32 and bf16 on the CPU and on CUDA; the
    footnotes hold (LoRA dropout, a trainable base, no folding, torch.distributed)."""
    rows = _path_table()
    assert {("cpu", "float32"), ("cpu", "bfloat16"), ("cuda", "float32"), ("cuda", "bfloat16")} <= \
        {(r["device"], r["base"]) for r in rows}
    for r in rows:
        base, adapter = getattr(torch, r["base"]), getattr(torch, r["adapter"])
        assert (forward_path(base, adapter, grad=True), forward_path(base, adapter, grad=False),
                rollout_path(base, adapter)) == (r["training"], r["no grad"], r["rollout"]), r
        no_grad = forward_path(base, adapter, grad=False)
        assert forward_path(base, adapter, grad=True, dropout=True) == no_grad
        assert forward_path(base, adapter, grad=True, base_trainable=True) == no_grad
        assert rollout_path(base, adapter, fold=False) == rollout_path(base, adapter, distributed=True) == no_grad


@pytest.mark.parametrize("row", _path_table(), ids=lambda r: f"{r['device']}-{r['base']}-{r['adapter']}")
def test_path_table_rows_are_the_paths_taken(row, monkeypatch):
    """Each row on its device (the CUDA rows where there is a GPU): a LoRA layer runs the
    table's path in grad mode and without grad, and a rollout batch (rollout_adapter, in
    inference mode) the table's rollout path. Observed by recording which of LoRALinear's
    path methods, and whether `folded_lora`, ran."""
    if row["device"] == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU: the CUDA rows are checked against the decision functions only")
    taken = []
    for method, path in (("_fold_autograd", FOLD_AUTOGRAD), ("_addmm", ADDMM), ("_cast_add", CAST_ADD)):
        original = getattr(LoRALinear, method)
        monkeypatch.setattr(LoRALinear, method,
                            lambda self, x, _f=original, _p=path: taken.append(_p) or _f(self, x))
    folded = rl2f.lora.folded_lora
    monkeypatch.setattr(rl2f.lora, "folded_lora", lambda model: taken.append(FOLD_WEIGHTS) or folded(model))
    base, adapter = getattr(torch, row["base"]), getattr(torch, row["adapter"])
    layer = LoRALinear(nn.Linear(16, 8, device=row["device"], dtype=base), rank=2, alpha=4, dtype=adapter)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16, device=row["device"], dtype=base)
    seen = {}
    for column, mode in (("training", torch.enable_grad), ("no grad", torch.no_grad)):
        with mode():
            layer(x)
        seen[column] = taken.copy()
        taken.clear()
    with torch.inference_mode(), rollout_adapter(nn.Sequential(layer), use_adapter=True):
        layer(x)
    seen["rollout"] = taken
    assert seen == {c: [row[c]] for c in ("training", "no grad", "rollout")}


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_gradients_match_fp64_formula(bias):
    """The training forward (fp32: the update folded into the weight, backward written out)
    gives the output and the gradients of x, A and B of the fp64 formula, and none to the
    frozen base weight and bias; the same holds for a non-contiguous input."""
    torch.manual_seed(0)
    base = nn.Linear(24, 40, bias=bias)
    layer = LoRALinear(base, rank=8, alpha=16)
    nn.init.normal_(layer.lora_B)
    for x in (torch.randn(3, 7, 24), torch.randn(7, 3, 24).transpose(0, 1)):
        x = x.requires_grad_(True)
        w = torch.randn(3, 7, 40)  # weighs every output differently
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        (y * w).sum().backward()
        ref = {n: t.detach().double().requires_grad_(True) for n, t in
               (("x", x), ("A", layer.lora_A), ("B", layer.lora_B))}
        want = ref["x"] @ base.weight.double().T + 2.0 * (ref["x"] @ ref["A"].T @ ref["B"].T)
        if bias:
            want = want + base.bias.double()
        (want * w.double()).sum().backward()
        torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
        for name, got in (("x", x.grad), ("A", layer.lora_A.grad), ("B", layer.lora_B.grad)):
            torch.testing.assert_close(got.double(), ref[name].grad, atol=1e-4, rtol=1e-5, msg=name)
        assert base.weight.grad is None and (base.bias is None or base.bias.grad is None)
        x.grad = None


def test_apply_lora_rejects_bad_arguments(checkpoints):
    """Unknown targets, rank < 1, a rank above min(in, out) of a target, and no matching
    layer are UserErrors."""
    ours = _ours(checkpoints["llama"])
    with pytest.raises(UserError, match="unknown LoRA target 'qkv'"):
        apply_lora(ours, rank=2, alpha=2, targets=("q", "qkv"))
    with pytest.raises(UserError, match="rank must be"):
        apply_lora(ours, rank=0, alpha=2)
    with pytest.raises(UserError, match="rank above what the config allows.*k_proj"):
        apply_lora(ours, rank=17, alpha=2, targets=("q", "k"))  # k_proj: 32 -> 16
    with pytest.raises(UserError, match="no Linear layer"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), rank=1, alpha=1)
    assert all(p.requires_grad for p in ours.parameters())  # failed calls change nothing


@pytest.fixture
def saved(checkpoints, tmp_path):
    """(checkpoint, adapter dir): a valid rl2f adapter to corrupt."""
    ckpt = checkpoints["llama"]
    ours = apply_lora(_ours(ckpt), rank=4, alpha=8, targets=("q", "v"), seed=0)
    return ckpt, save_adapter(ours, tmp_path / "adapter")


def _edit_config(d: Path, **changes):
    p = d / "adapter_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


def _edit_tensors(d: Path, fn):
    from safetensors.torch import load_file, save_file

    p = str(d / "adapter_model.safetensors")
    save_file(fn(load_file(p)), p)


def test_load_rejects_missing_files(saved):
    """Missing adapter_config.json / adapter_model.safetensors name the file; a .bin adapter
    is refused with a word about safetensors."""
    ckpt, d = saved
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: not found.*only safetensors"):
        load_adapter(_ours(ckpt), d)
    (d / "adapter_config.json").unlink()
    with pytest.raises(UserError, match=r"adapter_config\.json: not found"):
        load_adapter(_ours(ckpt), d)


def test_load_rejects_non_lora(saved):
    """peft_type other than LORA is a UserError naming adapter_config.json."""
    ckpt, d = saved
    _edit_config(d, peft_type="IA3")
    with pytest.raises(UserError, match=r"adapter_config\.json: peft_type is 'IA3'"):
        load_adapter(_ours(ckpt), d)


def test_load_rejects_adapter_for_another_model(saved):
    """A key for a module the model lacks, and a tensor that does not fit the base layer,
    name the key, both shapes and the adapter's base_model_name_or_path."""
    ckpt, d = saved
    key0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _edit_tensors(d, lambda sd: {**sd, key0.replace("layers.0", "layers.9"): sd[key0].clone()})
    _edit_config(d, base_model_name_or_path="some/other-model")
    with pytest.raises(UserError, match=r"safetensors: key '.*layers\.9.*' .* does not have.*some/other-model"):
        load_adapter(_ours(ckpt), d)

    def widen(sd):
        sd = {k: v for k, v in sd.items() if "layers.9" not in k}
        sd[key0] = torch.zeros(4, 40)
        return sd

    _edit_tensors(d, widen)
    with pytest.raises(UserError, match=r"key '.*q_proj\.lora_A\.weight' has shape \(4, 40\) .* needs \(4, 32\).*some/other-model"):
        load_adapter(_ours(ckpt), d)


def test_load_rejects_rank_problems(saved):
    """r in the config disagreeing with the tensors, and a rank above what the target
    layers allow, are UserErrors naming the file."""
    ckpt, d = saved
    _edit_config(d, r=8)
    with pytest.raises(UserError, match=r"has shape \(4, 32\), i\.e\. rank 4, but adapter_config\.json says r=8"):
        load_adapter(_ours(ckpt), d)

    # v_proj is 32 -> 16, so rank 20 cannot be a LoRA of it
    def big(sd):
        return {k: torch.zeros(20, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 20)
                for k, v in sd.items()}

    _edit_tensors(d, big)
    _edit_config(d, r=20)
    with pytest.raises(UserError, match=r"adapter_config\.json: an adapter rank above .*v_proj"):
        load_adapter(_ours(ckpt), d)


def test_load_rejects_missing_layers_and_leaves_model_alone(saved):
    """A file without tensors for some target layer (an adapter for a shallower model) is a
    UserError, and a failed load leaves the model's LoRA as it was."""
    ckpt, d = saved
    _edit_tensors(d, lambda sd: {k: v for k, v in sd.items() if "layers.1.self_attn.v_proj" not in k})
    ours = apply_lora(_ours(ckpt), rank=2, alpha=2, targets=("k",), seed=0)
    before = lora_state_dict(ours)
    with pytest.raises(UserError, match=r"safetensors: no tensors for 1 of the model's q_proj/v_proj "
                                        r"layers, e.g. 'model\.layers\.1\.self_attn\.v_proj'"):
        load_adapter(ours, d)
    assert ours.lora_config.targets == ("k_proj",) and lora_state_dict(ours).keys() == before.keys()


def test_load_replaces_lora_of_another_shape(saved):
    """Loading onto a model that already has LoRA of another rank/targets swaps it for the
    file's: same tensors and logits as loading onto a fresh model."""
    ckpt, d = saved
    fresh = load_adapter(_ours(ckpt), d)
    ours = load_adapter(apply_lora(_ours(ckpt), rank=3, alpha=1, seed=0), d)
    assert ours.lora_config == fresh.lora_config
    sd = lora_state_dict(fresh)
    assert lora_state_dict(ours).keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in lora_state_dict(ours).items())
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(ours(ids), fresh(ids))


def test_save_is_atomic(saved, monkeypatch):
    """A crash while writing leaves the previous adapter intact and no temporary directory;
    saving over an existing adapter replaces it."""
    import safetensors.torch

    ckpt, d = saved
    before = (d / "adapter_model.safetensors").read_bytes()
    ours = apply_lora(_ours(ckpt), rank=2, alpha=2, targets=("k",), seed=1)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_adapter(ours, d)
    assert (d / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in d.parent.iterdir()) == ["adapter"]
    monkeypatch.undo()
    save_adapter(ours, d)
    assert json.loads((d / "adapter_config.json").read_text())["target_modules"] == ["k_proj"]
    assert sorted(p.name for p in d.parent.iterdir()) == ["adapter"]
