"""Two ranks under torchrun (gloo, CPU, FSDP2) against one process on the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_toys import OneSecretTask, equivalence_configs

from rl2f.distributed import Dist
from rl2f.train.grpo import train_grpo
from rl2f.train.sft import train_sft

WORKER = Path(__file__).resolve().parent / "dist_worker.py"


def _final(run_dir):
    run_dir = Path(run_dir)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    return metrics, load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, tiny_ckpt, warm_start, chat_files):
    """3 SFT steps and 3 GRPO steps (critique and KL terms on) on 2 gloo ranks with FSDP2
    give the same per-step losses and the same fp32 adapter (<= 1e-5) as one process with
    grad_accum = 2: the loss is normalised by the global token count, not per rank or per
    accumulation step, and rollouts depend on the data position, not on the rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tiny_ckpt), str(warm_start), str(chat_files["train"]), str(tmp_path / "dist")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    sft_cfg, grpo_cfg = equivalence_configs(tiny_ckpt, chat_files["train"], grad_accum=2)
    one = Dist(0, 1, 0, torch.device("cpu"))
    train_sft(sft_cfg, tmp_path / "one" / "sft", d=one)
    train_grpo(grpo_cfg, tmp_path / "one" / "grpo", d=one, task=OneSecretTask(), init_adapter=warm_start)

    for method in ("sft", "grpo"):
        m2, a2 = _final(tmp_path / "dist" / method)
        m1, a1 = _final(tmp_path / "one" / method)
        assert [m["step"] for m in m2] == [1, 2, 3]
        for x, y in zip(m1, m2):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6), (method, m1, m2)
            assert x["tokens"] == y["tokens"]
        if method == "grpo":
            assert sum(m["loss_tokens"] for m in m1) > 0 and all(m["kl"] is not None for m in m1)
        assert a1.keys() == a2.keys()
        worst = max(float((a1[k] - a2[k]).abs().max()) for k in a1)
        assert worst <= 1e-5, (method, worst)
        assert any(float(a1[k].abs().max()) > 0 for k in a1 if "lora_B" in k)
