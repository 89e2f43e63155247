"""The arithmetic of the training objectives: returns, group advantages, token losses.

Credit over turns (docs/method.md, Training). A student turn t of an episode with turn rewards
r_0..r_{n-1} gets the discounted return

    G_t = sum_{k >= t} gamma^(k - t) r_k

Advantage baseline: per turn index, within the group. For the G episodes of one problem and
a turn index t, the cell C_t holds the returns G_t of the episodes that reached turn t
(turn 1 has all G; later turns only those still unsolved). Each return is centred on its
cell's mean and, with `std_normalize`, divided by the cell's sample std (ddof = 1, as
torch.std and TRL's GRPO). Why per turn and not one episode-level score: a turn-3 attempt
should be compared with other turn-3 attempts of the same problem (same stage of the
dialogue, all after feedback), not with turn-1 attempts that had no feedback yet. For
max_turns = 1 this is exactly GRPO's (r - mean) / std.

Zero variance. A cell whose returns are all equal (or which holds one episode) carries no
signal: its advantages are 0 and, with `drop_zero_variance`, its tokens leave the loss and
its normaliser. A group all of whose cells are zero-variance is a "zero-variance group"
(the replication's 74.5%-zero-reward failure mode): counted, and dropped whole.

Token normalisation. Loss terms are SUMS over tokens divided by the GLOBAL number of loss
tokens of the optimiser step (all micro-batches, accumulation steps and ranks), so splitting
a batch over micro-batches or ranks does not change the gradient, and a long answer does not
weigh more than its tokens. Summed (unnormalised) log-probs are what made the replication's
loss unbounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from rl2f.kernels import grpo_token_loss
from rl2f.roles import Role


# ----------------------------------------------------------------------------------------
# Returns and advantages (host side: a handful of floats per episode)


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """G_t = sum_{k >= t} gamma^(k - t) r_k for every turn t."""
    out = [0.0] * len(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


@dataclass
class GroupAdvantages:
    """Per-turn advantages of one group (the G episodes of one problem)."""

    advantages: list[list[float]]  # [episode][turn]
    keep: list[list[bool]]  # [episode][turn]: the turn's tokens stay in the loss
    zero_variance: bool  # every cell of the group had zero variance


def group_advantages(turn_rewards: Sequence[Sequence[float]], gamma: float, std_normalize: bool = True,
                     drop_zero_variance: bool = True) -> GroupAdvantages:
    """Advantages of each student turn of each episode of one group (see module docstring).

    turn_rewards[e][t] = r_t of episode e (episodes may have different numbers of turns)."""
    returns = [discounted_returns(r, gamma) for r in turn_rewards]
    adv = [[0.0] * len(g) for g in returns]
    keep = [[not drop_zero_variance] * len(g) for g in returns]
    n_turns = max((len(g) for g in returns), default=0)
    any_signal = False
    for t in range(n_turns):
        members = [e for e, g in enumerate(returns) if len(g) > t]
        values = [returns[e][t] for e in members]
        if len(values) < 2 or max(values) - min(values) <= 1e-12:
            continue  # zero-variance cell: advantage 0
        any_signal = True
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for e, v in zip(members, values):
            adv[e][t] = (v - mean) / std if std_normalize else v - mean
            keep[e][t] = True
    return GroupAdvantages(adv, keep, zero_variance=not any_signal)


def token_targets(token_roles: Sequence[int], token_turns: Sequence[int], turn_advantages: Sequence[float],
                  turn_keep: Sequence[bool]) -> tuple[list[float], list[int]]:
    """Per-token (advantage, loss mask) of one episode: student tokens take their turn's
    advantage and mask; every other token (prompt, template, teacher) is masked out."""
    adv, mask = [], []
    for role, turn in zip(token_roles, token_turns):
        if role == Role.STUDENT:
            adv.append(float(turn_advantages[turn]))
            mask.append(int(bool(turn_keep[turn])))
        else:
            adv.append(0.0)
            mask.append(0)
    return adv, mask


# ----------------------------------------------------------------------------------------
# Token losses (through rl2f.kernels: no (N, V) logits tensor is materialised)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # () this micro-batch's share of the step's objective
    pg_sum: torch.Tensor  # () detached sum of per-token GRPO losses
    clipped: torch.Tensor  # () detached count of clipped loss tokens
    kl_sum: torch.Tensor  # () detached sum of per-token k3 KL over loss tokens


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, n_tokens_global: float, clip_low: float, clip_high: float,
              beta: float, tis_cap: float = 0.0) -> PolicyLoss:
    """Clipped GRPO objective (+ beta * k3 KL) summed over this micro-batch's loss tokens (every
    position given is one) and divided by the global loss-token count of the step.

    Per token (ratio rho = exp(logp - old)):  -min(rho A, clip(rho, 1 - lo, 1 + hi) A)
    + beta (exp(ref - logp) - (ref - logp) - 1). Bounded below by -(1 + hi) max A per
    token, so the mean over tokens cannot run away the way a sum of log-probs can.

    `tis_cap` > 0: truncated importance sampling against a sampler whose log-probs are not the
    trainer's (vLLM's kernels, another precision): the clipped term is taken on the trainer's
    own ratio (rho = exp(logp - sg(logp)) = 1 in value) and weighted per token by
    w = min(exp(sg(logp) - old), tis_cap), the correction for sampling from the other engine
    (the "decoupled" form of TIS). The loss is linear in A, so that is A w given as the
    advantage with old = sg(logp)."""
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    n = logprobs.numel()
    if n == 0:
        return PolicyLoss(logprobs.sum() * 0.0, zero, zero, zero)
    if tis_cap > 0:
        trainer_old = logprobs.detach().float()
        advantages = advantages * torch.exp(trainer_old - old_logprobs).clamp(max=tis_cap)
        old_logprobs = trainer_old
    mask = torch.ones_like(logprobs, dtype=torch.float32)  # (N,)
    out = grpo_token_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_low, clip_high,
                          beta if ref_logprobs is not None else 0.0)
    # The kernel's clip fraction and KL are means over the (all masked-in) tokens: sums are n x.
    kl_sum = out.kl_mean * n if ref_logprobs is not None else zero
    denom = max(float(n_tokens_global), 1.0)
    return PolicyLoss(out.loss.sum() / denom, out.loss.detach().sum(), out.clip_fraction * n, kl_sum)


def nll_loss(logprobs: torch.Tensor, n_tokens_global: float, weight: float = 1.0) -> torch.Tensor:
    """weight * (-sum log p) / global token count: the SFT term (student tokens) and the
    critique-prediction term (teacher tokens, weight = critique_weight)."""
    return -weight * logprobs.sum() / max(float(n_tokens_global), 1.0)
