r"""SFT on teacher-student dialogues (the paper's SFT baseline, and a warm start for RL).

What it does. Trains the LoRA adapter on whole dialogues with the loss on the student's
turns only (their end-of-turn token included, so the student learns to stop); with
`train.critique_weight > 0` the teacher's turns add a likelihood term of that weight
(critique prediction, docs/method.md "Self-improvement"; the context is the student's own dialogue,
which never holds the privileged information). Each term is a token mean over the whole
optimiser step: -sum(log p) / (global number of such tokens, all accumulation steps and
ranks). AdamW on the fp32 adapter, linear warmup then cosine to `min_lr_ratio`, gradient
accumulation, bf16 base on GPU (`model.dtype`).

Data (`train.sft_data`): a JSONL of episode records from `rl2f generate` (only episodes
that end solved are kept: SFT imitates dialogues that reach the answer) or of chats
(`{"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}`; assistant
turns are the student's, user turns after the first assistant turn are the teacher's). Empty:
dialogues are generated in process from the task with its teacher, and the solved ones kept.

Batches. One step takes `micro_batch * grad_accum * world_size` sequences from a per-epoch
shuffled stream, sorts them by length and cuts them into micro-batches (length buckets,
little padding); micro-batch j runs on rank j % world_size. The step's result does not
depend on how it is split over ranks and accumulation steps (tests/train).

Departures from the paper: LoRA instead of full fine-tuning (as the replication).

Commands:
    CPU:       rl2f train --method sft --config configs/tiny-sft.toml
    one GPU:   rl2f train --method sft --config configs/gemma3-12b-rl2f.toml --set train.sft_data=dialogues.jsonl
    torchrun:  torchrun --nproc_per_node=2 -m rl2f.cli train --method sft \
                   --config configs/gemma3-12b-rl2f.toml --set train.sft_data=dialogues.jsonl
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rl2f.config import RunConfig
from rl2f.distributed import Dist, gather_objects, unsharded
from rl2f.episodes import Episode
from rl2f.errors import UserError
from rl2f.jsonl import read_jsonl
from rl2f.roles import Role
from rl2f.run import training_runner
from rl2f.train.batch import TrainSequence, collate, forward_hidden, gather_logprobs, length_buckets
from rl2f.train.common import EpochStream, Loop, Sums, train_problems
from rl2f.train.losses import nll_loss


# ----------------------------------------------------------------------------------------
# Data


def chat_sequence(messages: list[dict], tokenizer) -> TrainSequence:
    """A chat as a training sequence: assistant turns are the student's (role 1), user turns
    after the first assistant turn are the teacher's (role 2), the rest is prompt (role 0)."""
    ids, owner = tokenizer.render(messages, add_generation_prompt=False)
    first_assistant = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    roles = []
    for o in owner:
        if o < 0:
            roles.append(Role.TEMPLATE)
        elif messages[o]["role"] == "assistant":
            roles.append(Role.STUDENT)
        elif messages[o]["role"] == "user" and o > first_assistant:
            roles.append(Role.TEACHER)
        else:
            roles.append(Role.TEMPLATE)
    return TrainSequence(ids, roles, [int(r == Role.STUDENT) for r in roles])


def episode_sequence(ep) -> TrainSequence:
    return TrainSequence(list(ep.token_ids), list(ep.token_roles), [int(r == Role.STUDENT) for r in ep.token_roles])


def read_sft_file(path: str | Path, tokenizer) -> list[TrainSequence]:
    """Episode records (solved ones) or chats from a JSONL file; a bad line names file and line."""
    episodes = 0

    def parse(rec: dict, lineno: int) -> TrainSequence | None:
        nonlocal episodes
        if "token_ids" in rec:
            episodes += 1
            ep = Episode.from_dict(rec)
            return episode_sequence(ep) if ep.solved_at is not None else None
        if "messages" in rec:
            msgs = rec["messages"]
            if not any(m.get("role") == "assistant" for m in msgs):
                raise ValueError("no assistant turn to learn from")
            return chat_sequence(msgs, tokenizer)
        raise ValueError("expected an episode record (token_ids) or a chat (messages)")

    if not Path(path).is_file():
        raise UserError(f"train.sft_data: {path} not found")
    seqs, _ = read_jsonl(path, "an SFT record", parse)
    if not seqs:
        what = f"none of its {episodes} episodes is solved" if episodes else "it holds no dialogue"
        raise UserError(f"train.sft_data: {path}: nothing to train on ({what})")
    return seqs


def generated_sequences(cfg: RunConfig, run, out_dir: Path | None = None) -> list[TrainSequence]:
    """Dialogues played in process by the model and the task's teacher; the solved ones. They
    are kept in OUT/sft-dialogues.jsonl, which a resumed run reads back instead of replaying
    them with its already trained adapter."""
    saved = out_dir / "sft-dialogues.jsonl" if out_dir is not None else None
    if saved is not None and saved.is_file():
        return [episode_sequence(Episode.from_dict(json.loads(l))) for l in saved.read_text().splitlines() if l]
    problems = train_problems(cfg, run.task)
    runner = training_runner(run)
    ppb, d = cfg.rollout.problems_per_batch, run.dist
    batches = [problems[b : b + ppb] for b in range(0, len(problems), ppb)]
    # Batch j is played by rank j % world_size (each rank does its share, not all of it);
    # the episodes are gathered back in batch order, so every rank trains on the same list
    # as one process would. A rank short of a batch in the last round plays an empty one (a
    # collective engine needs its calls). Sampling is keyed by problem, not by rank.
    rounds = []
    with unsharded(run.model):
        for first in range(0, len(batches), d.world_size):
            mine = batches[first + d.rank] if first + d.rank < len(batches) else []
            rounds.append(runner.run(mine, cfg.rollout.group_size, seed=0, adapter_version=0))
    run.engine.sleep()  # only training follows: what sampling held goes back
    by_rank = gather_objects(rounds, d)  # [rank][round] -> episodes
    episodes = [e for k in range(len(rounds)) for r in range(d.world_size) for e in by_rank[r][k]]
    solved = [e for e in episodes if e.solved_at is not None]
    if not solved:
        raise UserError(f"train.sft_data is empty and the model solved none of {len(episodes)} generated "
                        f"'{cfg.task.name}' dialogues: give a JSONL of dialogues in train.sft_data")
    if saved is not None and run.dist.is_main:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text("".join(e.to_json() + "\n" for e in solved))
        os.replace(tmp, saved)
    return [episode_sequence(e) for e in solved]


# ----------------------------------------------------------------------------------------
# Loss


def micro_loss(model, mb, n_student: float, n_teacher: float, critique_weight: float):
    """(loss, student nll sum, teacher nll sum) of one micro-batch; loss is its share of the step."""
    hidden = forward_hidden(model, mb)  # (B, T-1, H)
    lp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets)  # (N,)
    loss = nll_loss(lp, n_student)
    t_sum = torch.zeros(())
    if critique_weight > 0:
        tlp = gather_logprobs(model, hidden, mb.teacher_pos, mb.teacher_targets)  # (M,)
        loss = loss + nll_loss(tlp, n_teacher, critique_weight)
        t_sum = -tlp.detach().sum()
    return loss, -lp.detach().sum(), t_sum


@torch.no_grad()
def evaluate_loss(model, seqs: list[TrainSequence], micro_batch: int, pad_id: int, device) -> float:
    """Mean negative log-likelihood per student token (held-out loss)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for bucket in length_buckets(seqs, micro_batch):
            mb = collate([seqs[i] for i in bucket], pad_id, device, with_teacher=False)
            lp = gather_logprobs(model, forward_hidden(model, mb), mb.loss_pos, mb.loss_targets)
            total += -float(lp.sum())
            n += int(lp.numel())
    finally:
        model.train(was)
    return total / max(n, 1)


# ----------------------------------------------------------------------------------------
# The loop


@dataclass
class NLLSums(Sums):
    student: float = 0.0  # sum of -log p over student tokens
    teacher: float = 0.0  # sum of -log p over teacher tokens (critique prediction)


def sft_steps(t, n_sequences: int, global_batch: int) -> int:
    """Optimiser steps of an SFT run: `sft_epochs` over the dialogues, bounded by max_steps."""
    return min(t.max_steps, math.ceil(t.sft_epochs * n_sequences / global_batch))


def train_sft(cfg: RunConfig, out_dir: str | Path, resume: str | Path | None = None,
              eval_seqs: list[TrainSequence] | None = None, d: Dist | None = None, task=None,
              init_adapter: str | Path | None = None) -> dict:
    """Run SFT; returns the last step's metrics. See the module docstring."""
    t = cfg.train
    loop = Loop.start(cfg, out_dir, resume, d, task, init_adapter, with_engine=not t.sft_data)
    run, d, tok = loop.run, loop.dist, loop.run.tokenizer
    seqs = read_sft_file(t.sft_data, tok) if t.sft_data else generated_sequences(cfg, run, loop.out_dir)
    global_batch = t.micro_batch * t.grad_accum * d.world_size
    total_steps = sft_steps(t, len(seqs), global_batch)
    stream = EpochStream(len(seqs), t.seed)

    def step() -> dict:
        # --- this step's batch: global, length-bucketed; micro-batch j runs on rank j % W
        batch = [seqs[stream[loop.position + i]] for i in range(global_batch)]
        buckets = length_buckets(batch, t.micro_batch)
        n_student = sum(s.n_loss for s in batch)
        n_teacher = sum(s.n_teacher for s in batch)
        # --- forward / backward, the loss normalised by the step's global token counts
        sums = NLLSums()
        for bucket in buckets[d.rank :: d.world_size]:
            with loop.timer("logprob"):
                mb = collate([batch[i] for i in bucket], tok.pad_id, d.device, share_prefix=t.share_prefix)
                loss, s_sum, t_sum = micro_loss(run.model, mb, n_student, n_teacher, t.critique_weight)
            with loop.timer("backward"):
                (loss * loop.scale).backward()
            sums += NLLSums(float(s_sum), float(t_sum))
        sums = sums.all_reduce(d)
        loss_value = sums.student / max(n_student, 1) + t.critique_weight * sums.teacher / max(n_teacher, 1)
        # --- optimiser step (refused on a non-finite loss or gradient)
        lr, grad_norm = loop.optimizer_step(loss_value, (loop.step + 1) / total_steps)
        loop.position += global_batch
        record = {"loss": loss_value, "student_nll": sums.student / max(n_student, 1),
                  "teacher_nll": sums.teacher / max(n_teacher, 1) if t.critique_weight > 0 else None,
                  "lr": lr, "grad_norm": grad_norm, "tokens": sum(len(s) for s in batch),
                  "loss_tokens": n_student, "epoch": loop.position / len(seqs)}
        if loop.step == total_steps and eval_seqs:
            record["eval_loss"] = evaluate_loss(run.model, eval_seqs, t.micro_batch, tok.pad_id, d.device)
        return record

    return loop.run_steps(total_steps, step, summary=lambda r: f"loss {r['loss']:.4f} {r['tokens_per_s']:.0f} tok/s")
