"""Training sequences, length-bucketed micro-batches, and the log-prob forward.

A `TrainSequence` is one dialogue as the model saw it: token ids, per-token roles (0 prompt
or template, 1 student, 2 teacher), and for RL the per-token advantage, loss mask and
sampling log-prob. The log-prob of token i comes from the hidden state at position i - 1,
so a row feeds ids[:-1] and predicts ids[1:]; only the positions that carry a loss are
gathered and sent through the fused `linear_token_logprobs` kernel, so no (N, V) logits
tensor exists in training.

Batches are length-bucketed rather than packed: the sequences of one optimiser step are
sorted by length before they are cut into micro-batches, so a micro-batch pads little, and
rows are right-padded with an attention mask (the model's position ids then start at 0 in
every row).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

from rl2f.kernels import linear_token_logprobs
from rl2f.roles import Role


@dataclass
class TrainSequence:
    token_ids: list[int]
    roles: list[int]  # per token: 0 prompt/template, 1 student, 2 teacher
    loss_mask: list[int]  # per token: 1 = in the main loss (RL: kept student tokens; SFT: student tokens)
    advantages: list[float] = field(default_factory=list)  # per token (RL); empty for SFT
    old_logprobs: list[float] = field(default_factory=list)  # per token sampling log-probs (RL)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def n_loss(self) -> int:
        return sum(self.loss_mask[1:])  # token 0 has no context to be predicted from

    @property
    def n_teacher(self) -> int:
        return sum(r == Role.TEACHER for r in self.roles[1:])


class MicroBatch(NamedTuple):
    """One forward/backward. Positions index the (B, T - 1) hidden states."""

    input_ids: torch.Tensor  # (B, T-1)
    attention_mask: torch.Tensor | None  # (B, T-1); None when no row is padded
    loss_pos: torch.Tensor  # (N, 2) (row, col) of main-loss tokens' hidden states
    loss_targets: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,) fp32 (zeros for SFT)
    old_logprobs: torch.Tensor  # (N,) fp32 (zeros for SFT)
    teacher_pos: torch.Tensor  # (M, 2) teacher tokens (critique prediction)
    teacher_targets: torch.Tensor  # (M,)


def length_buckets(seqs: Sequence[TrainSequence], micro_batch: int) -> list[list[int]]:
    """Indices of `seqs` cut into micro-batches of similar length (stable sort, so the
    result depends only on the lengths and order of `seqs`)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]


def collate(seqs: Sequence[TrainSequence], pad_id: int, device, with_teacher: bool = True) -> MicroBatch:
    """Right-pad the sequences into one micro-batch and list its loss positions."""
    T = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    lpos, ltgt, adv, old, tpos, ttgt = [], [], [], [], [], []
    for b, s in enumerate(seqs):
        L = len(s)
        ids[b, :L] = torch.tensor(s.token_ids, dtype=torch.long)
        mask[b, :L] = 1
        has_rl = bool(s.advantages)
        for i in range(1, L):
            if s.loss_mask[i]:
                lpos.append((b, i - 1))
                ltgt.append(s.token_ids[i])
                adv.append(s.advantages[i] if has_rl else 0.0)
                old.append(s.old_logprobs[i] if has_rl else 0.0)
            if with_teacher and s.roles[i] == Role.TEACHER:
                tpos.append((b, i - 1))
                ttgt.append(s.token_ids[i])
    padded = bool((mask[:, :-1] == 0).any())
    return MicroBatch(
        input_ids=ids[:, :-1].to(device),
        attention_mask=mask[:, :-1].to(device) if padded else None,
        loss_pos=torch.tensor(lpos, dtype=torch.long).reshape(-1, 2).to(device),
        loss_targets=torch.tensor(ltgt, dtype=torch.long).to(device),
        advantages=torch.tensor(adv, dtype=torch.float32).to(device),
        old_logprobs=torch.tensor(old, dtype=torch.float32).to(device),
        teacher_pos=torch.tensor(tpos, dtype=torch.long).reshape(-1, 2).to(device),
        teacher_targets=torch.tensor(ttgt, dtype=torch.long).to(device),
    )


def lm_head_args(model) -> tuple[torch.Tensor, float | None]:
    """(lm_head weight, final logit softcap) of our CausalLM."""
    return model.lm_head.weight, getattr(model.config, "final_logit_softcapping", None)


def gather_logprobs(model, hidden: torch.Tensor, pos: torch.Tensor, targets: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """log softmax(lm_head(hidden[pos]) / T)[target] per position, fp32, via the fused kernel."""
    if pos.numel() == 0:
        # Keep the graph connected (FSDP expects every rank to run backward through the model).
        return hidden.sum()[None][:0].float() * 0.0  # (0,)
    h = hidden[pos[:, 0], pos[:, 1]]  # (N, H)
    weight, softcap = lm_head_args(model)
    return linear_token_logprobs(h, weight, targets, temperature=temperature, softcap=softcap)  # (N,)


def forward_hidden(model, mb: MicroBatch) -> torch.Tensor:
    return model.hidden_states(mb.input_ids, attention_mask=mb.attention_mask)  # (B, T-1, H)
