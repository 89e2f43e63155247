"""GRPO for both RL methods: `rlvr` (single-turn episodes, no teacher) and `rl2f` (multi-turn
episodes with teacher feedback).

What it does, per optimiser step:
1. Rollout. `grad_accum * world_size` chunks of `rollout.problems_per_batch` problems are
   drawn from a per-epoch shuffled stream of the task's training problems; chunk k runs on
   rank k % world_size, `group_size` episodes per problem, through the shared episode runner
   (the student is the engine with the adapter on; the teacher gives feedback after wrong
   attempts, up to `rollout.max_turns` attempts; RLVR forces one). A chunk's sampling seed
   depends on its place in the data stream only, never on the rank.
2. Advantages (losses.py): per student turn the discounted return
   G_t = sum_{k>=t} gamma^(k-t) r_k, normalised within the group against the returns of the
   same turn index (mean-centred; divided by the std when `train.std_normalize`); cells and
   groups with no reward variance are dropped from the loss and counted.
3. Loss on student tokens only, through `rl2f.kernels`: fused hidden x lm_head log-probs at
   the sampling temperature, the clipped importance ratio against the SAMPLING log-probs
   (`clip_low`, `clip_high`: the asymmetric DAPO clip), optional k3 KL to the adapter-off
   base (`beta`), and with `critique_weight` > 0 the critique-prediction likelihood on the
   teacher's tokens. Each term is a sum over tokens divided by the step's GLOBAL token count
   (all accumulation steps and ranks), so the objective is bounded: with all-zero rewards
   every group is dropped and the adapter does not move at all.
4. Update: clip the global grad norm, stop on a non-finite loss or gradient (the last good
   checkpoint is kept), AdamW, warmup + cosine schedule.
5. Hand-off: the new adapter version reaches the engine before the next rollout (the
   built-in engine shares the weights and is relabelled; vLLM gets a PEFT directory and a new
   LoRA id). Every episode records the adapter version that sampled it.

Departures from the paper: LoRA (r16 as the replication) rather than full fine-tuning; the
per-turn group baseline is this implementation's reading of "group-normalised discounted
returns"; the ratio is taken against the sampling log-probs (one update per rollout, so the
rollout policy is the old policy, and no extra forward pass is spent on it); zero-variance
groups are dropped (the replication's advice).

Commands:
    CPU:       rl2f train --method rl2f --config configs/tiny-rl2f.toml
               rl2f train --method rlvr --config configs/tiny-rlvr.toml --set train.max_steps=3
    one GPU:   rl2f train --method rl2f --config configs/gemma3-12b-rl2f.toml --set train.grad_accum=2
    torchrun:  torchrun --nproc_per_node=2 -m rl2f.cli train --method rl2f --config configs/gemma3-12b-rl2f.toml
    resume:    rl2f train --resume runs/gemma3-12b-rl2f-rl2f
(grad_accum 2 on one GPU keeps the two-GPU global batch: a step is grad_accum x world_size
chunks of problems, and its result does not depend on how they are split.)
"""
from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rl2f.config import RunConfig
from rl2f.errors import UserError
from rl2f.lora import adapters_disabled, save_adapter
from rl2f.roles import Role
from rl2f.train.batch import TrainSequence, collate, forward_hidden, gather_logprobs, length_buckets
from rl2f.train.checkpoint import restore, save_checkpoint
from rl2f.train.common import (EpochStream, Metrics, Run, Timer, start_run, clip_and_check,
                               effective_max_turns, make_optimizer, make_scheduler, peak_memory_mb, progress_bar,
                               train_problems)
from rl2f.train.distributed import (Dist, all_reduce_max, all_reduce_sum, barrier, loss_scale,
                                    unsharded)
from rl2f.train.losses import grpo_loss, group_advantages, nll_loss, token_targets


# ----------------------------------------------------------------------------------------
# Rollout: a generator of batches with rewards and advantages


@dataclass
class RolloutBatch:
    """This rank's share of one step's rollouts."""

    episodes: list  # Episode records, group by group
    micro_batches: list[list[TrainSequence]]  # the sequences that carry a loss, length-bucketed per chunk
    stats: list[float]  # this rank's sums, named by stat_names(); the loop sums them over ranks
    rollout_s: float


def stat_names(max_turns: int) -> list[str]:
    return (["episodes", "groups", "zero_var_groups", "reward_sum", "return1_sum", "student_tokens",
             "sampling_lp_sum", "loss_tokens", "teacher_tokens", "tokens", "turns", "kept_turns", "context_full"]
            + [f"solved_by_{t + 1}" for t in range(max_turns)])


def episode_sequences(episodes, cfg: RunConfig) -> tuple[list[TrainSequence], list[float]]:
    """Advantages for each group of one chunk, the training sequences, and the chunk's stats."""
    t = cfg.train
    max_turns = effective_max_turns(cfg)
    groups: dict[str, list] = {}
    for e in episodes:
        groups.setdefault(e.problem_id, []).append(e)
    seqs = []
    s = dict.fromkeys(stat_names(max_turns), 0.0)
    for members in groups.values():
        ga = group_advantages([[turn.reward for turn in e.turns] for e in members], t.gamma,
                              t.std_normalize, t.drop_zero_variance)
        s["groups"] += 1
        s["zero_var_groups"] += ga.zero_variance
        for e, adv, keep in zip(members, ga.advantages, ga.keep):
            if ga.zero_variance and t.drop_zero_variance:
                keep = [False] * len(keep)
            tok_adv, mask = token_targets(e.token_roles, e.token_turns, adv, keep)
            seq = TrainSequence(list(e.token_ids), list(e.token_roles), mask, tok_adv, list(e.sampling_logprobs))
            rewards = [turn.reward for turn in e.turns]
            s["episodes"] += 1
            s["context_full"] += e.context_full
            s["reward_sum"] += sum(rewards)
            s["return1_sum"] += sum(t.gamma ** k * r for k, r in enumerate(rewards))
            s["turns"] += len(keep)
            s["kept_turns"] += sum(keep)
            for k in range(max_turns):
                s[f"solved_by_{k + 1}"] += e.solved_at is not None and e.solved_at <= k + 1
            student = [i for i, r in enumerate(e.token_roles) if r == Role.STUDENT]
            s["student_tokens"] += len(student)
            s["sampling_lp_sum"] += sum(e.sampling_logprobs[i] for i in student)
            s["tokens"] += len(seq)
            if seq.n_loss or (t.critique_weight > 0 and seq.n_teacher):
                seqs.append(seq)
                s["loss_tokens"] += seq.n_loss
                s["teacher_tokens"] += seq.n_teacher if t.critique_weight > 0 else 0
    return seqs, list(s.values())


def rollout(run: Run, problems: list, stream: EpochStream, position: int, version: int, d: Dist,
            timer: Timer) -> RolloutBatch:
    """Play this rank's chunks of one step, from data position `position` (problems consumed
    so far), with adapter `version`, and return them with advantages."""
    cfg = run.cfg
    P = cfg.rollout.problems_per_batch
    chunks = cfg.train.grad_accum * d.world_size
    t0 = time.perf_counter()
    episodes, micro = [], []
    stats = None
    # The built-in engine samples with the trainer's own (FSDP-sharded) model: unshard it once.
    full = unsharded(run.model) if cfg.rollout.engine == "builtin" else contextlib.nullcontext()
    with timer("rollout"), full:
        for k in range(d.rank, chunks, d.world_size):
            start = position + k * P
            chunk = [problems[stream[i]] for i in range(start, start + P)]
            eps = run.runner.run(chunk, cfg.rollout.group_size, seed=start, adapter_version=version)
            chunk_seqs, chunk_stats = episode_sequences(eps, cfg)
            episodes += eps
            # Bucketed per chunk, so a chunk's micro-batches are the same whichever rank
            # (or accumulation step) runs it: one process and N ranks add the same terms.
            micro += [[chunk_seqs[i] for i in b] for b in length_buckets(chunk_seqs, cfg.train.micro_batch)]
            stats = chunk_stats if stats is None else [a + b for a, b in zip(stats, chunk_stats)]
    return RolloutBatch(episodes, micro, stats, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# Adapter hand-off


def hand_off(run: Run, version: int, out_dir: Path) -> None:
    """Make adapter `version` the one the engine samples with before the next rollout."""
    engine, d = run.engine, run.dist
    if run.cfg.rollout.engine == "builtin":  # same weights, in process: already live
        engine.set_adapter(version)
        return
    # vLLM: a PEFT directory per version and a new LoRA id (vLLM caches adapters by id).
    adapters = out_dir / "adapters"
    path = adapters / f"v{version:06d}"
    with unsharded(run.model):
        if d.is_main:
            save_adapter(run.model, path)
    barrier(d)
    engine.set_adapter(version, path)
    barrier(d)
    if d.is_main:
        shutil.rmtree(adapters / f"v{version - 2:06d}", ignore_errors=True)


# ----------------------------------------------------------------------------------------
# The loop


def train_grpo(cfg: RunConfig, out_dir: str | Path, resume: str | Path | None = None, d: Dist | None = None,
               task=None, init_adapter: str | Path | None = None) -> dict:
    """Run GRPO (rlvr or rl2f); returns the last step's metrics. See the module docstring."""
    if cfg.train.method not in ("rlvr", "rl2f"):
        raise UserError(f"train.method must be rlvr or rl2f for GRPO, got {cfg.train.method!r}")
    t = cfg.train
    out_dir, d, ckpt, state, run = start_run(cfg, out_dir, resume, d, task, init_adapter)
    model, tok = run.model, run.tokenizer
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer)
    step, position = 0, 0
    generated, attempts = 0, 0  # student tokens and attempts so far (the generation budget)
    if state is not None:
        restore(ckpt, state, d, model, optimizer, scheduler)
        step, position = state["step"], state["data_position"]
        generated = state.get("extra", {}).get("student_tokens_total", 0)
        attempts = state.get("extra", {}).get("attempts_total", 0)
    last_ckpt = str(ckpt) if ckpt else None
    max_turns = effective_max_turns(cfg)
    names = stat_names(max_turns)
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    metrics = Metrics(out_dir / "metrics.jsonl", d.is_main, resume_step=step if state else None)
    timer = Timer(d.device)
    scale = loss_scale(d, model)
    bar = progress_bar(t.max_steps, step, d.is_main)
    record: dict = {}

    def save_good() -> str:
        if last_ckpt is None or not last_ckpt.endswith(f"step-{step:06d}"):
            return str(save_checkpoint(out_dir, d, model, optimizer, scheduler, cfg, step, position, extra=totals()))
        return last_ckpt

    def totals() -> dict:
        return {"student_tokens_total": generated, "attempts_total": attempts}

    def budget_spent() -> bool:
        return bool(t.max_student_tokens) and generated >= t.max_student_tokens

    hand_off(run, step, out_dir)  # the adapter version is the number of optimiser steps taken
    problems = train_problems(cfg, run.task)
    stream = EpochStream(len(problems), cfg.task.seed)
    try:
        while step < t.max_steps and not budget_spent():
            t0 = time.perf_counter()
            # --- rollout (on the current adapter) and the step's global counts
            batch = rollout(run, problems, stream, position, step, d, timer)
            stats = dict(zip(names, all_reduce_sum(batch.stats, d)))
            generated += int(stats["student_tokens"])
            attempts += int(stats["turns"])
            n_loss, n_teacher = stats["loss_tokens"], stats["teacher_tokens"]
            has_loss = n_loss > 0 or (t.critique_weight > 0 and n_teacher > 0)

            # --- log-probs, loss, backward; every rank runs the same number of micro-batches
            sums = torch.zeros(4, dtype=torch.float64)  # pg, clipped, kl, teacher nll
            buckets = batch.micro_batches if has_loss else []
            n_micro = all_reduce_max(len(buckets), d) if has_loss else 0
            for i in range(n_micro):
                with timer("logprob"):
                    if i < len(buckets):
                        mb = collate(buckets[i], tok.pad_id, d.device, with_teacher=t.critique_weight > 0)
                    else:  # nothing left on this rank: a zero-loss pass keeps FSDP's collectives in step
                        mb = collate([TrainSequence([tok.pad_id] * 2, [0, 0], [0, 0])], tok.pad_id, d.device)
                    ref = None
                    if t.beta > 0:
                        with torch.no_grad(), adapters_disabled(model):
                            ref = gather_logprobs(model, forward_hidden(model, mb), mb.loss_pos, mb.loss_targets,
                                                  temperature)  # (N,)
                    hidden = forward_hidden(model, mb)  # (B, T-1, H)
                    logp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets, temperature)  # (N,)
                    mask = torch.ones_like(logp, dtype=torch.bool)  # (N,) positions are loss tokens already
                    pl = grpo_loss(logp, mb.old_logprobs, ref, mb.advantages, mask, n_loss, t.clip_low,
                                   t.clip_high, t.beta)
                    loss = pl.loss + 0.0 * hidden.sum()
                    if t.critique_weight > 0:
                        tlp = gather_logprobs(model, hidden, mb.teacher_pos, mb.teacher_targets)  # (M,)
                        loss = loss + nll_loss(tlp, n_teacher, t.critique_weight)
                        sums[3] += -float(tlp.detach().sum())
                with timer("backward"):
                    (loss * scale).backward()
                sums[0] += float(pl.pg_sum)
                sums[1] += float(pl.clipped)
                sums[2] += float(pl.kl_sum)
            pg, clipped, kl, t_nll = all_reduce_sum(sums.tolist(), d)
            loss_value = pg / max(n_loss, 1) + t.critique_weight * t_nll / max(n_teacher, 1)

            # --- optimiser step (skipped when no group carried signal: nothing to learn from)
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = 0.0
            with timer("optim"):
                if has_loss:
                    grad_norm = clip_and_check(model, cfg, loss_value, step, save_good)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # a skipped first step is not a misordered schedule
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
            step += 1
            position += t.grad_accum * d.world_size * cfg.rollout.problems_per_batch

            # --- hand-off: the next rollout samples from this adapter
            with timer("handoff"):
                hand_off(run, step, out_dir)

            # --- metrics and checkpoints
            seconds = time.perf_counter() - t0
            n_ep = max(stats["episodes"], 1)
            record = {
                "step": step, "loss": loss_value, "pg_loss": pg / max(n_loss, 1),
                "reward_mean": stats["reward_sum"] / n_ep, "return_mean": stats["return1_sum"] / n_ep,
                **{f"acc@{k + 1}": stats[f"solved_by_{k + 1}"] / n_ep for k in range(max_turns)},
                "zero_var_frac": stats["zero_var_groups"] / max(stats["groups"], 1),
                "kept_turn_frac": stats["kept_turns"] / max(stats["turns"], 1),
                "clip_frac": clipped / max(n_loss, 1), "kl": kl / max(n_loss, 1) if t.beta > 0 else None,
                "critique_nll": t_nll / max(n_teacher, 1) if t.critique_weight > 0 else None,
                # -mean log p of the sampled tokens: a Monte Carlo estimate of the policy entropy
                "entropy": -stats["sampling_lp_sum"] / max(stats["student_tokens"], 1),
                "grad_norm": grad_norm, "lr": lr, "skipped": not has_loss,
                # over-long dialogues (rollout.overlong = "skip"): episodes ended at the context,
                # and problems whose prompt could not fit at all
                "context_full": stats["context_full"],
                "skipped_problems": t.grad_accum * d.world_size * cfg.rollout.problems_per_batch - stats["groups"],
                "loss_tokens": n_loss, "student_tokens": stats["student_tokens"], "tokens": stats["tokens"],
                "tokens_per_s": stats["tokens"] / seconds,
                "gen_tokens_per_s": stats["student_tokens"] / max(batch.rollout_s, 1e-9),
                "peak_mem_mb": peak_memory_mb(d.device), "adapter_version": step, **totals(),
                **{f"{k}_s": v for k, v in timer.reset().items()},
            }
            final = step == t.max_steps or budget_spent()
            if final or (t.save_every and step % t.save_every == 0):
                last_ckpt = str(save_checkpoint(out_dir, d, model, optimizer, scheduler, cfg, step, position,
                                                extra=totals(), metrics_row=record))
                record["checkpoint"] = last_ckpt
            metrics.write(record)
            bar.update(1, f"reward {record['reward_mean']:.3f} loss {loss_value:.4f}")
    finally:
        bar.__exit__(None, None, None)
    return record
