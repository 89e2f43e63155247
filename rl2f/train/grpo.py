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
   every group is dropped and the adapter does not move at all. Each metrics row also holds
   the trainer-vs-sampler gap before the update (`logprob_gap_mean`, `logprob_gap_max`:
   |log p_trainer - log p_sampler| over the loss tokens; `ratio_min`, `ratio_max`): ~1e-6
   with the built-in engine, and the first number to look at when a vLLM run's ratios blow up.
4. Update: clip the global grad norm, stop on a non-finite loss or gradient (the last good
   checkpoint is kept), AdamW, warmup + cosine schedule over the run's progress (steps, or
   the generated-token budget when that ends the run first).
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
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rl2f.config import RunConfig
from rl2f.distributed import Dist, all_reduce_max, barrier, max_over_ranks, unsharded
from rl2f.episodes import Episode, EpisodeRunner
from rl2f.errors import UserError
from rl2f.lora import adapters_disabled, save_adapter
from rl2f.roles import Role
from rl2f.run import Run, training_runner
from rl2f.train.batch import TrainSequence, collate, forward_hidden, gather_logprobs, length_buckets
from rl2f.train.common import EpochStream, Loop, Sums, Timer, train_problems
from rl2f.train.heldout import HeldOut
from rl2f.train.losses import grpo_loss, group_advantages, nll_loss, token_targets


# ----------------------------------------------------------------------------------------
# Rollout: one step's batches with rewards and advantages


@dataclass
class StepStats(Sums):
    """One step's episode statistics (sums; the loop adds them over ranks)."""

    episodes: float = 0.0
    groups: float = 0.0
    zero_var_groups: float = 0.0
    reward_sum: float = 0.0
    return1_sum: float = 0.0  # discounted return from turn 1
    student_tokens: float = 0.0
    sampling_lp_sum: float = 0.0  # sum of sampled student tokens' log-probs (entropy estimate)
    loss_tokens: float = 0.0
    teacher_tokens: float = 0.0  # teacher tokens that carry the critique term
    tokens: float = 0.0
    turns: float = 0.0
    kept_turns: float = 0.0
    context_full: float = 0.0  # episodes ended at the model's context (rollout.overlong = "skip")
    solved_by: list[float] = field(default_factory=list)  # [t]: episodes solved by turn t + 1


@dataclass
class RolloutBatch:
    """This rank's share of one step's rollouts."""

    episodes: list[Episode]  # group by group
    micro_batches: list[list[TrainSequence]]  # the sequences that carry a loss, length-bucketed per chunk
    stats: StepStats  # this rank's sums


def episode_sequences(episodes: list[Episode], cfg: RunConfig, max_turns: int) -> tuple[list[TrainSequence], StepStats]:
    """Advantages for each group of one chunk, the training sequences, and the chunk's stats."""
    t = cfg.train
    groups: dict[str, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.problem_id, []).append(e)
    seqs = []
    s = StepStats(solved_by=[0.0] * max_turns)
    for members in groups.values():
        ga = group_advantages([[turn.reward for turn in e.turns] for e in members], t.gamma,
                              t.std_normalize, t.drop_zero_variance)
        s.groups += 1
        s.zero_var_groups += ga.zero_variance
        for e, adv, keep in zip(members, ga.advantages, ga.keep):
            if ga.zero_variance and t.drop_zero_variance:
                keep = [False] * len(keep)
            tok_adv, mask = token_targets(e.token_roles, e.token_turns, adv, keep)
            seq = TrainSequence(list(e.token_ids), list(e.token_roles), mask, tok_adv,
                                list(e.sampling_logprobs)).through_last_target(t.critique_weight > 0)
            rewards = [turn.reward for turn in e.turns]
            s.episodes += 1
            s.context_full += e.context_full
            s.reward_sum += sum(rewards)
            s.return1_sum += sum(t.gamma ** k * r for k, r in enumerate(rewards))
            s.turns += len(keep)
            s.kept_turns += sum(keep)
            for k in range(max_turns):
                s.solved_by[k] += e.solved_at is not None and e.solved_at <= k + 1
            student = [i for i, r in enumerate(e.token_roles) if r == Role.STUDENT]
            s.student_tokens += len(student)
            s.sampling_lp_sum += sum(e.sampling_logprobs[i] for i in student)
            s.tokens += len(e.token_ids)
            if seq.n_loss or (t.critique_weight > 0 and seq.n_teacher):
                seqs.append(seq)
                s.loss_tokens += seq.n_loss
                s.teacher_tokens += seq.n_teacher if t.critique_weight > 0 else 0
    return seqs, s


def rollout(run: Run, runner: EpisodeRunner, problems: list, stream: EpochStream, position: int, version: int,
            timer: Timer) -> RolloutBatch:
    """Play this rank's chunks of one step, from data position `position` (problems consumed
    so far), with adapter `version`, and return them with advantages."""
    cfg, d = run.cfg, run.dist
    P = cfg.rollout.problems_per_batch
    chunks = cfg.train.grad_accum * d.world_size
    episodes, micro = [], []
    stats = StepStats(solved_by=[0.0] * runner.max_turns)
    # The built-in engine samples with the trainer's own (FSDP-sharded) model: unshard it once.
    full = unsharded(run.model) if cfg.rollout.engine == "builtin" else contextlib.nullcontext()
    with timer("rollout"), full:
        run.engine.wake()
        for k in range(d.rank, chunks, d.world_size):
            start = position + k * P
            chunk = [problems[stream[i]] for i in range(start, start + P)]
            eps = runner.run(chunk, cfg.rollout.group_size, seed=start, adapter_version=version)
            chunk_seqs, chunk_stats = episode_sequences(eps, cfg, runner.max_turns)
            episodes += eps
            # Bucketed per chunk, so a chunk's micro-batches are the same whichever rank
            # (or accumulation step) runs it: one process and N ranks add the same terms.
            micro += [[chunk_seqs[i] for i in b] for b in length_buckets(chunk_seqs, cfg.train.micro_batch)]
            stats += chunk_stats
        # Training follows: the memory only sampling uses goes back (the prefix cache; a vLLM
        # with rollout.vllm_sleep sleeps), every rank at the same point.
        run.engine.sleep()
    return RolloutBatch(episodes, micro, stats)


# ----------------------------------------------------------------------------------------
# Loss


@dataclass
class LossSums(Sums):
    pg: float = 0.0  # sum of per-token GRPO losses
    clipped: float = 0.0  # clipped loss tokens
    kl: float = 0.0  # sum of per-token k3 KL
    teacher_nll: float = 0.0  # sum of -log p over teacher tokens (critique prediction)
    gap: float = 0.0  # sum of |trainer log p - sampler log p| over loss tokens


@dataclass
class RatioRange:
    """The extremes, over this step's loss tokens, of log(trainer p / sampler p) before any
    update (every micro-batch's log-probs are computed before the step's one optimiser step):
    how far the sampler's numbers are from the trainer's. A large gap makes the importance
    ratio explode (trl#4159) and needs looking at before the loss does."""

    lo: float = math.inf
    hi: float = -math.inf

    def add(self, log_ratio: torch.Tensor) -> None:
        if log_ratio.numel():
            self.lo, self.hi = min(self.lo, float(log_ratio.min())), max(self.hi, float(log_ratio.max()))

    def over_ranks(self, d) -> "RatioRange":
        m = max_over_ranks({"neg_lo": -self.lo, "hi": self.hi}, d)
        return RatioRange(-m["neg_lo"], m["hi"])


def backward(loop: Loop, batch: RolloutBatch, stats: StepStats, temperature: float) -> tuple[LossSums, RatioRange]:
    """Log-probs, loss and backward over this rank's micro-batches; every rank runs the same
    number of passes (FSDP's collectives stay in step). Returns this rank's sums and the
    range of its log importance ratios."""
    model, t, d, pad = loop.run.model, loop.cfg.train, loop.dist, loop.run.tokenizer.pad_id
    sums, ratios = LossSums(), RatioRange()
    n_micro = all_reduce_max(len(batch.micro_batches), d)
    for i in range(n_micro):
        with loop.timer("logprob"):
            if i < len(batch.micro_batches):
                mb = collate(batch.micro_batches[i], pad, d.device, with_teacher=t.critique_weight > 0,
                             share_prefix=t.share_prefix)
            else:  # nothing left on this rank: a zero-loss pass keeps FSDP's collectives in step
                mb = collate([TrainSequence([pad] * 2, [0, 0], [0, 0])], pad, d.device)
            ref = None
            if t.beta > 0:
                with torch.no_grad(), adapters_disabled(model):
                    ref = gather_logprobs(model, forward_hidden(model, mb), mb.loss_pos, mb.loss_targets,
                                          temperature)  # (N,)
            hidden = forward_hidden(model, mb)  # (B, T, H)
            logp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets, temperature)  # (N,)
            log_ratio = logp.detach() - mb.old_logprobs
            sums.gap += float(log_ratio.abs().sum())
            ratios.add(log_ratio)
            pl = grpo_loss(logp, mb.old_logprobs, ref, mb.advantages, stats.loss_tokens, t.clip_low,
                           t.clip_high, t.beta, tis_cap=t.tis_cap)
            loss = pl.loss + 0.0 * hidden.sum()
            if t.critique_weight > 0:
                tlp = gather_logprobs(model, hidden, mb.teacher_pos, mb.teacher_targets)  # (M,)
                loss = loss + nll_loss(tlp, stats.teacher_tokens, t.critique_weight)
                sums.teacher_nll += -float(tlp.detach().sum())
        with loop.timer("backward"):
            (loss * loop.scale).backward()
        sums += LossSums(float(pl.pg_sum), float(pl.clipped), float(pl.kl_sum))
    return sums, ratios


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
    save_adapter(run.model, path, write=d.is_main)  # every rank gathers the LoRA tensors alone
    barrier(d)
    engine.set_adapter(version, path)
    barrier(d)
    if d.is_main:
        shutil.rmtree(adapters / f"v{version - 2:06d}", ignore_errors=True)


# ----------------------------------------------------------------------------------------
# The loop


def step_record(stats: StepStats, losses: LossSums, ratios: RatioRange, cfg: RunConfig, lr: float, grad_norm: float,
                skipped: bool, rollout_s: float, n_problems: int) -> dict:
    """One metrics row from the step's global sums."""
    t = cfg.train
    n_ep, n_loss, n_teacher = max(stats.episodes, 1), max(stats.loss_tokens, 1), max(stats.teacher_tokens, 1)
    return {
        "loss": losses.pg / n_loss + t.critique_weight * losses.teacher_nll / n_teacher,
        "pg_loss": losses.pg / n_loss,
        "reward_mean": stats.reward_sum / n_ep, "return_mean": stats.return1_sum / n_ep,
        **{f"acc@{k + 1}": solved / n_ep for k, solved in enumerate(stats.solved_by)},
        "zero_var_frac": stats.zero_var_groups / max(stats.groups, 1),
        "kept_turn_frac": stats.kept_turns / max(stats.turns, 1),
        "clip_frac": losses.clipped / n_loss, "kl": losses.kl / n_loss if t.beta > 0 else None,
        "critique_nll": losses.teacher_nll / n_teacher if t.critique_weight > 0 else None,
        # -mean log p of the sampled tokens: a Monte Carlo estimate of the policy entropy
        "entropy": -stats.sampling_lp_sum / max(stats.student_tokens, 1),
        "grad_norm": grad_norm, "lr": lr, "skipped": skipped,
        # over-long dialogues (rollout.overlong = "skip"): episodes ended at the context, and
        # problems whose prompt could not fit at all (a group is played per problem that fits)
        "context_full": stats.context_full, "skipped_problems": n_problems - stats.groups,
        "loss_tokens": stats.loss_tokens, "student_tokens": stats.student_tokens, "tokens": stats.tokens,
        "gen_tokens_per_s": stats.student_tokens / max(rollout_s, 1e-9),
        # the sampler's log-probs against the trainer's, before the update (None: no loss token)
        **({"logprob_gap_mean": losses.gap / n_loss, "logprob_gap_max": max(-ratios.lo, ratios.hi),
            "ratio_min": math.exp(ratios.lo), "ratio_max": math.exp(ratios.hi)} if stats.loss_tokens
           else dict.fromkeys(("logprob_gap_mean", "logprob_gap_max", "ratio_min", "ratio_max"))),
    }


def step_summary(row: dict, turns: int) -> str:
    """The progress line's part of a metrics row: reward, acc@1 and acc@T, loss, speed."""
    acc = " ".join(f"acc@{t} {row[f'acc@{t}']:.3f}" for t in sorted({1, turns}))
    return f"reward {row['reward_mean']:.3f} {acc} loss {row['loss']:.4f} {row['tokens_per_s']:.0f} tok/s"


def train_grpo(cfg: RunConfig, out_dir: str | Path, resume: str | Path | None = None, d: Dist | None = None,
               task=None, init_adapter: str | Path | None = None) -> dict:
    """Run GRPO (rlvr or rl2f); returns the last step's metrics. See the module docstring."""
    if cfg.train.method not in ("rlvr", "rl2f"):
        raise UserError(f"train.method must be rlvr or rl2f for GRPO, got {cfg.train.method!r}")
    t = cfg.train
    # student tokens and attempts generated so far: the generation budget, kept in checkpoints
    loop = Loop.start(cfg, out_dir, resume, d, task, init_adapter,
                      totals={"student_tokens_total": 0, "attempts_total": 0})
    run, totals = loop.run, loop.totals
    runner = training_runner(run)
    problems = train_problems(cfg, run.task)
    stream = EpochStream(len(problems), t.seed)  # train.seed orders the stream: training seeds see different problems
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0

    def budget_spent() -> bool:
        return bool(t.max_student_tokens) and totals["student_tokens_total"] >= t.max_student_tokens

    def progress() -> float:
        """The run's progress after this step: steps, or the token budget if that ends it first."""
        by_budget = totals["student_tokens_total"] / t.max_student_tokens if t.max_student_tokens else 0.0
        return max((loop.step + 1) / t.max_steps, by_budget)

    def step() -> dict:
        # --- rollout (on the current adapter) and the step's global counts
        t0 = time.perf_counter()
        batch = rollout(run, runner, problems, stream, loop.position, loop.step, loop.timer)
        rollout_s = time.perf_counter() - t0
        stats = batch.stats.all_reduce(loop.dist)
        totals["student_tokens_total"] += int(stats.student_tokens)
        totals["attempts_total"] += int(stats.turns)
        has_loss = stats.loss_tokens > 0 or (t.critique_weight > 0 and stats.teacher_tokens > 0)
        # --- log-probs, loss, backward (skipped when no group carried signal: nothing to learn)
        losses, ratios = LossSums(), RatioRange()
        if has_loss:
            sums, ratios = backward(loop, batch, stats, temperature)
            losses, ratios = sums.all_reduce(loop.dist), ratios.over_ranks(loop.dist)
        # --- optimiser step
        loss_value = losses.pg / max(stats.loss_tokens, 1) \
            + t.critique_weight * losses.teacher_nll / max(stats.teacher_tokens, 1)
        lr, grad_norm = loop.optimizer_step(loss_value, progress(), apply=has_loss)
        n_problems = t.grad_accum * loop.dist.world_size * cfg.rollout.problems_per_batch
        loop.position += n_problems
        # --- hand-off: the next rollout samples from this adapter
        with loop.timer("handoff"):
            hand_off(run, loop.step, loop.out_dir)
        return step_record(stats, losses, ratios, cfg, lr, grad_norm, not has_loss, rollout_s, n_problems)

    hand_off(run, loop.step, loop.out_dir)  # the adapter version is the number of optimiser steps taken
    held_out = HeldOut(run, runner.max_turns, loop.out_dir, loop.step if resume else None, t.max_steps) \
        if t.eval_every else None
    return loop.run_steps(t.max_steps, step, done=budget_spent, after=held_out,
                          summary=lambda r: step_summary(r, runner.max_turns))
