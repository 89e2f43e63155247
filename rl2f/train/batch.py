"""Training sequences, length-bucketed micro-batches, and the log-prob forward.

A `TrainSequence` is one dialogue as the model saw it: token ids, per-token roles (0 prompt
or template, 1 student, 2 teacher), and for RL the per-token advantage, loss mask and
sampling log-prob. The log-prob of token i comes from the hidden state at position i - 1,
so a row feeds ids[:-1] and predicts ids[1:]; only the positions that carry a loss are
gathered and sent through the fused `linear_token_logprobs` kernel, so no (N, V) logits
tensor exists in training.

The sequences of one optimiser step are sorted by length before they are cut into
micro-batches. Without a shared prompt, rows are right-padded with an attention mask (the
model's position ids then start at 0 in every row). With `share_prefix` (GRPO and SFT:
`train.share_prefix`), rows of a micro-batch that begin with the same prompt (a group's
samples) send that prompt through the model once, and the input is a packed stream of real
tokens only (`rl2f.model.SharedPrefix`: only attention sees a padded layout): the same
log-probs and gradients for fewer tokens, as the prompt is often most of a row and a
micro-batch of dialogues, some solved at turn 1 and some at turn 5, is a third padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

from rl2f.kernels import linear_token_logprobs
from rl2f.model.modeling import SharedPrefix
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

    def through_last_target(self, with_teacher: bool) -> "TrainSequence":
        """The sequence cut after its last target (a main-loss token, or with `with_teacher` a
        teacher token): in a causal model no later token changes an earlier log-prob, so the
        loss and its gradients are the same for fewer tokens (RL drops whole turns, often the
        last ones, when their cell has no reward variance)."""
        last = max((i for i in range(1, len(self)) if self.loss_mask[i]
                    or (with_teacher and self.roles[i] == Role.TEACHER)), default=len(self) - 1)
        if last == len(self) - 1:
            return self
        n = last + 1
        return TrainSequence(self.token_ids[:n], self.roles[:n], self.loss_mask[:n], self.advantages[:n],
                             self.old_logprobs[:n])


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
    shared: SharedPrefix | None = None  # set when input_ids is a packed shared-prefix stream


def length_buckets(seqs: Sequence[TrainSequence], micro_batch: int) -> list[list[int]]:
    """Indices of `seqs` cut into micro-batches of similar length (stable sort, so the
    result depends only on the lengths and order of `seqs`)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]


def collate(seqs: Sequence[TrainSequence], pad_id: int, device, with_teacher: bool = True,
            share_prefix: bool = False) -> MicroBatch:
    """The sequences as one micro-batch with its loss positions: right-padded rows, or with
    `share_prefix` the packed form (see `prefix_lengths` and `rl2f.model.SharedPrefix`)
    when it computes fewer tokens: rows that begin alike (a GRPO group's prompt) or rows of
    different lengths (no padding in the stream)."""
    if share_prefix:
        cut = prefix_lengths(seqs)
        keys: dict[tuple, int] = {}
        rows = [keys.setdefault(tuple(s.token_ids[:p]), len(keys)) for s, p in zip(seqs, cut)]
        shared = sum(cut) > sum(len(k) for k in keys)
        padded = len({len(s) for s in seqs}) > 1
        if min(cut) >= 1 and (shared or padded):  # the packed stream computes fewer tokens
            return _collate_shared(seqs, pad_id, device, with_teacher, cut, list(keys), rows)
    return _collate_padded(seqs, pad_id, device, with_teacher)


def prefix_lengths(seqs: Sequence[TrainSequence]) -> list[int]:
    """Per row, how many leading tokens it may share with rows that begin alike: its prompt
    (the tokens before the first student or teacher token) less the last one, whose state
    predicts the first target and so stays with the row. Never the whole row."""
    out = []
    for s in seqs:
        first = next((i for i, r in enumerate(s.roles) if r != Role.TEMPLATE or s.loss_mask[i]), len(s))
        out.append(min(first, len(s) - 1) - 1)
    return out


def _targets(s: TrainSequence, with_teacher: bool):
    """(i, in the main loss, a teacher token, advantage, sampling log-prob) for each token
    i >= 1 that carries a target; it is predicted from state i - 1."""
    has_rl = bool(s.advantages)
    for i in range(1, len(s)):
        loss = bool(s.loss_mask[i])
        teacher = with_teacher and s.roles[i] == Role.TEACHER
        if loss or teacher:
            yield i, loss, teacher, (s.advantages[i] if has_rl and loss else 0.0), \
                (s.old_logprobs[i] if has_rl and loss else 0.0)


def _micro_batch(input_ids, attention_mask, rows_targets, device, shared=None) -> MicroBatch:
    """Tensors of one micro-batch from (sequence, column offset of its row, its targets) per row."""
    lpos, ltgt, adv, old, tpos, ttgt = [], [], [], [], [], []
    for b, (s, offset, targets) in enumerate(rows_targets):
        for i, loss, teacher, a, o in targets:
            if loss:
                lpos.append((b, i - 1 - offset))
                ltgt.append(s.token_ids[i])
                adv.append(a)
                old.append(o)
            if teacher:
                tpos.append((b, i - 1 - offset))
                ttgt.append(s.token_ids[i])
    return MicroBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device) if attention_mask is not None else None,
        loss_pos=torch.tensor(lpos, dtype=torch.long).reshape(-1, 2).to(device),
        loss_targets=torch.tensor(ltgt, dtype=torch.long).to(device),
        advantages=torch.tensor(adv, dtype=torch.float32).to(device),
        old_logprobs=torch.tensor(old, dtype=torch.float32).to(device),
        teacher_pos=torch.tensor(tpos, dtype=torch.long).reshape(-1, 2).to(device),
        teacher_targets=torch.tensor(ttgt, dtype=torch.long).to(device),
        shared=shared,
    )


def _collate_padded(seqs, pad_id: int, device, with_teacher: bool) -> MicroBatch:
    """Right-padded rows: row b feeds ids[:-1]; state (b, i - 1) predicts token i."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s.token_ids, dtype=torch.long)
        mask[b, :len(s)] = 1
    padded = bool((mask[:, :-1] == 0).any())
    return _micro_batch(ids[:, :-1], mask[:, :-1] if padded else None,
                        [(s, 0, _targets(s, with_teacher)) for s in seqs], device)


def _collate_shared(seqs, pad_id: int, device, with_teacher: bool, cut: list[int], prefixes: list[tuple],
                    rows: list[int]) -> MicroBatch:
    """The packed stream: the real tokens of the distinct prefixes (left-padded to P in the
    layout), then of each row's ids[cut:-1] (right-padded to T); suffix state (b, j) of the
    layout is state cut_b + j of the row."""
    P = max(len(k) for k in prefixes)
    T = max(len(s) - 1 - p for s, p in zip(seqs, cut))
    prefix_ids = torch.full((len(prefixes), P), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prefixes), P), dtype=torch.long)
    for g, k in enumerate(prefixes):
        prefix_ids[g, P - len(k):] = torch.tensor(k, dtype=torch.long)
        prefix_mask[g, P - len(k):] = 1
    suffix_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, (s, p) in enumerate(zip(seqs, cut)):
        suffix_ids[b, :len(s) - 1 - p] = torch.tensor(s.token_ids[p:-1], dtype=torch.long)
        suffix_mask[b, :len(s) - 1 - p] = 1
    shared = SharedPrefix(prefix_mask.to(device), suffix_mask.to(device),
                          torch.tensor(rows, dtype=torch.long, device=device))
    stream = torch.cat((prefix_ids.flatten(), suffix_ids.flatten())).to(device)[shared.real][None]  # (1, N) real tokens
    return _micro_batch(stream, None, [(s, p, _targets(s, with_teacher)) for s, p in zip(seqs, cut)],
                        device, shared)


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
    """(B, T, H) final states of the micro-batch's rows, as `loss_pos` indexes them."""
    if mb.shared is not None:
        return mb.shared.suffix_states(model.hidden_states(mb.input_ids, cache=mb.shared))
    return model.hidden_states(mb.input_ids, attention_mask=mb.attention_mask)  # (B, T-1, H)
