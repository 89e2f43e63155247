"""The demo's base model: the embedded tiny model trained from scratch on scripted dialogues.

The tiny model is random, so before any arm is trained it learns the task's format, its
constraint and a weak habit of following hints from `rl2f.demo.data`'s scripted dialogues
(a stand-in for pretraining + instruction tuning); the result is saved as a normal checkpoint
and is the `base` of the report, the start of every arm.

Why a loop of its own: this is the one training in the project that updates ALL parameters.
The SFT loop (rl2f/train/sft.py) trains LoRA adapters only (its optimiser holds the LoRA
parameters), and a LoRA-only warm start of the random model stalled near uniform (its norms
and tied lm_head stay at their random init). So this is the smallest full-parameter loop:
token-mean NLL of the student turns, AdamW, one-cycle cosine schedule over its fixed steps,
gradient clipping; the batches and log-probs are the trainer's own (`rl2f.train.batch`).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from rl2f.demo.data import WarmStart, write_chats
from rl2f.model import build_tiny_checkpoint, load_model, load_tokenizer
from rl2f.model.tiny import write_checkpoint
from rl2f.train.batch import collate, forward_hidden, gather_logprobs
from rl2f.train.sft import chat_sequence

# The embedded tiny Gemma 3 shape, cut to 2 layers: a 2-core CPU trains it from scratch in the
# demo's budget, and it still has sliding-window attention, q/k norm, GeGLU and tied embeddings.
DEMO_MODEL = dict(num_hidden_layers=2, intermediate_size=256)


def pretrain_base(out_dir: Path, task, budget: dict, seed: int = 0, log=print) -> tuple[Path, float]:
    """Train every parameter of the embedded tiny model on scripted dialogues of `task`
    (student turns only) and save it as OUT/base; returns (path, mean loss of the last 10
    steps). An existing OUT/base is reused."""
    final = out_dir / "base"
    if (final / "config.json").is_file():
        return final, float(json.loads((final / "pretrain.json").read_text())["loss"])
    src = out_dir / "tiny"
    if not (src / "config.json").is_file():
        build_tiny_checkpoint(src, family="gemma3", seed=seed, **DEMO_MODEL)
    model, tok = load_model(src), load_tokenizer(src)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    chats = write_chats(out_dir / "warmup.jsonl", task, budget["sft_dialogues"], seed, WarmStart(follow=0.35), retry=0.2)
    seqs = [chat_sequence(json.loads(line)["messages"], tok) for line in chats.open()]
    steps, lr = budget["pretrain_steps"], budget["pretrain_lr"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05,
                                                   anneal_strategy="cos")
    rng = random.Random(f"pretrain-{seed}")
    torch.manual_seed(seed)
    losses = []
    log(f"training the tiny model from scratch: {steps} steps on {len(seqs)} scripted dialogues")
    for step in range(steps):
        mb = collate(rng.sample(seqs, min(budget["pretrain_batch"], len(seqs))), tok.pad_id, model.device,
                     with_teacher=False, share_prefix=True)  # the packed stream: no padding computed
        loss = -gather_logprobs(model, forward_hidden(model, mb), mb.loss_pos, mb.loss_targets).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps}: loss {sum(losses[-50:]) / 50:.3f}")
    tmp = out_dir / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_checkpoint(tmp, json.loads((src / "config.json").read_text()), model.eval())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    loss = sum(losses[-10:]) / len(losses[-10:])
    (tmp / "pretrain.json").write_text(json.dumps({"loss": loss, "losses": losses}) + "\n")
    os.replace(tmp, final)  # atomic: a half-written base is never picked up
    return final, loss
