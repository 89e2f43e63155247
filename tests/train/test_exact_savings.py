"""The training forward's two exact savings against the plain computation of the same rows:
same log-probs and same LoRA gradients for fewer tokens.

1. The shared-prefix forward (rl2f.model.SharedPrefix via collate(share_prefix=True)) against
   the plain right-padded forward, for every decoder family's features (sliding windows
   crossing the prefix boundary, GQA, q/k norms, soft-capped attention), with prompts of
   different lengths in one micro-batch, rows of different lengths, a row alone with its
   prompt, and gradient checkpointing.
2. Rows cut after their last target (TrainSequence.through_last_target: RL drops whole turns,
   often the last ones) against the whole rows."""
from __future__ import annotations

import random

import pytest
import torch

from rl2f.lora import apply_lora, lora_parameters
from rl2f.model.tiny import build_tiny_model
from rl2f.roles import Role
from rl2f.train.batch import TrainSequence, collate, forward_hidden, gather_logprobs, prefix_lengths

VOCAB = 64
FAMILIES = {
    "gemma3": dict(sliding_window=6),  # windows shorter than the prompts: the boundary is crossed
    "llama": {},
    "qwen3": {},
    "gemma3-softcap": dict(sliding_window=6, attn_logit_softcapping=20.0),  # the eager attention
}


def model_with_adapter(family: str):
    name = family.split("-")[0]
    _, model = build_tiny_model(name, VOCAB, seed=0, **FAMILIES[family])
    apply_lora(model, rank=4, alpha=8.0, seed=1)
    with torch.no_grad():  # a live adapter, so the prefix's LoRA terms matter to every row
        for p in lora_parameters(model):
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    return model


def dialogues(seed: int = 0) -> list[TrainSequence]:
    """Three prompts (lengths 13, 9, 17) with 3, 2 and 1 continuations of varying length;
    student tokens carry the loss, one teacher turn in some rows."""
    rng = random.Random(seed)
    seqs = []
    for plen, n in ((13, 3), (9, 2), (17, 1)):
        prompt = [rng.randrange(VOCAB) for _ in range(plen)]
        for _ in range(n):
            student = [rng.randrange(VOCAB) for _ in range(rng.randrange(3, 9))]
            roles = [Role.TEMPLATE] * plen + [Role.STUDENT] * len(student)
            ids = prompt + student
            if rng.random() < 0.6:  # a hint, then a second attempt
                hint, again = [rng.randrange(VOCAB) for _ in range(4)], [rng.randrange(VOCAB) for _ in range(3)]
                ids += hint + again
                roles += [Role.TEACHER] * 4 + [Role.STUDENT] * 3
            mask = [int(r == Role.STUDENT) for r in roles]
            seqs.append(TrainSequence(ids, [int(r) for r in roles], mask,
                                      [rng.uniform(-1, 1) for _ in ids], [rng.uniform(-3, -1) for _ in ids]))
    rng.shuffle(seqs)
    return seqs


def logprobs_and_grads(model, seqs, share: bool):
    model.zero_grad(set_to_none=True)
    mb = collate(seqs, pad_id=0, device="cpu", with_teacher=True, share_prefix=share)
    assert (mb.shared is not None) == share
    hidden = forward_hidden(model, mb)
    lp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets, temperature=0.7)
    tlp = gather_logprobs(model, hidden, mb.teacher_pos, mb.teacher_targets)
    # a loss that weighs every token differently, so a misplaced row or column shows
    ((lp * mb.advantages).sum() + 0.3 * tlp.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return lp.detach(), tlp.detach(), grads, mb


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_equals_padded_forward(family, checkpointing):
    model = model_with_adapter(family)
    model.train()
    model.model.gradient_checkpointing = checkpointing
    seqs = dialogues()
    lp0, tlp0, g0, plain = logprobs_and_grads(model, seqs, share=False)
    lp1, tlp1, g1, packed = logprobs_and_grads(model, seqs, share=True)
    # the packed stream holds each prompt once, and no padding: every token it holds is real
    cut = prefix_lengths(seqs)
    prompts = {tuple(s.token_ids[:p]) for s, p in zip(seqs, cut)}
    assert packed.input_ids.numel() == sum(map(len, prompts)) + sum(len(s) - 1 - p for s, p in zip(seqs, cut))
    assert packed.input_ids.numel() < int(plain.attention_mask.sum())
    assert packed.shared.prefix_mask.shape[0] == 3
    assert torch.equal(packed.loss_targets, plain.loss_targets)
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=0)
    torch.testing.assert_close(tlp1, tlp0, atol=2e-5, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for name in g0:  # fp32 sums over other token orders: round-off ~4e-6 of the largest entry
        torch.testing.assert_close(g1[name], g0[name], atol=2e-5 * float(g0[name].abs().max()), rtol=0, msg=name)


def test_prefix_lengths_stop_before_the_first_target():
    s = TrainSequence([5, 6, 7, 8, 9], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1])
    # tokens 0..1 are shared; token 2's state predicts token 3, the first student token
    assert prefix_lengths([s]) == [2]
    only_prompt = TrainSequence([5, 6, 7], [0, 0, 0], [0, 0, 0])
    assert prefix_lengths([only_prompt]) == [1]  # never the whole row: the suffix keeps a token


def test_rows_that_share_nothing_stay_padded_unless_their_lengths_differ():
    rng = random.Random(3)
    seqs = [TrainSequence([rng.randrange(VOCAB) for _ in range(8)], [0] * 5 + [1] * 3, [0] * 5 + [1] * 3)
            for _ in range(3)]
    assert collate(seqs, 0, "cpu", share_prefix=True).shared is None  # nothing to save
    seqs[1] = TrainSequence(seqs[1].token_ids[:6], [0] * 5 + [1], [0] * 5 + [1])
    packed = collate(seqs, 0, "cpu", share_prefix=True)  # no padding in the packed stream
    assert packed.shared is not None and packed.input_ids.numel() == 7 + 5 + 7


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_packed_rows_that_share_nothing_equal_padded_forward(family):
    """Distinct prompts (SFT, the demo's pretraining) with rows of different lengths: the
    packed stream drops the padding and still gives the padded forward's log-probs and
    gradients."""
    model = model_with_adapter(family)
    model.train()
    seqs = [s for s in dialogues(seed=5)]
    seqs = [seqs[0], *[s for s in seqs[1:] if s.token_ids[:9] != seqs[0].token_ids[:9]]][:3]
    lp0, tlp0, g0, plain = logprobs_and_grads(model, seqs, share=False)
    lp1, tlp1, g1, packed = logprobs_and_grads(model, seqs, share=True)
    assert packed.input_ids.numel() == sum(len(s) - 1 for s in seqs) < plain.input_ids.numel()
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=0)
    torch.testing.assert_close(tlp1, tlp0, atol=2e-5, rtol=0)
    for name in g0:  # fp32 sums over other token orders: round-off ~4e-6 of the largest entry
        torch.testing.assert_close(g1[name], g0[name], atol=2e-5 * float(g0[name].abs().max()), rtol=0, msg=name)


def test_through_last_target_hand_computed():
    s = TrainSequence([1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 1, 2, 2, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0, 0],
                      [0.5] * 9, [-1.0] * 9)
    cut = s.through_last_target(with_teacher=False)
    assert cut.token_ids == [1, 2, 3, 4] and cut.loss_mask == [0, 0, 1, 1] and len(cut.advantages) == 4
    assert s.through_last_target(with_teacher=True).token_ids == [1, 2, 3, 4, 5, 6]  # the teacher turn is a target
    whole = TrainSequence([1, 2, 3], [0, 1, 1], [0, 1, 1])
    assert whole.through_last_target(False) is whole


@pytest.mark.parametrize("with_teacher", [False, True])
def test_rows_cut_after_their_last_target_train_alike(with_teacher):
    model = model_with_adapter("gemma3")
    seqs = dialogues(seed=5)
    # drop the last student turn of every row from the loss (a zero-variance cell)
    for s in seqs:
        last = max(i for i, r in enumerate(s.roles) if r == Role.TEACHER) if Role.TEACHER in s.roles else 0
        s.loss_mask[last + 1:] = [0] * (len(s) - last - 1)
    seqs = [s for s in seqs if sum(s.loss_mask)]
    cut = [s.through_last_target(with_teacher) for s in seqs]
    assert sum(map(len, cut)) < sum(map(len, seqs))

    def run(rows):
        model.zero_grad(set_to_none=True)
        mb = collate(rows, pad_id=0, device="cpu", with_teacher=with_teacher)
        hidden = forward_hidden(model, mb)
        lp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets)
        tlp = gather_logprobs(model, hidden, mb.teacher_pos, mb.teacher_targets)
        ((lp * mb.advantages).sum() + 0.3 * tlp.sum()).backward()
        return lp.detach(), tlp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    lp0, tlp0, g0 = run(seqs)
    lp1, tlp1, g1 = run(cut)
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=0)
    torch.testing.assert_close(tlp1, tlp0, atol=2e-5, rtol=0)
    for name in g0:  # fp32 sums over other token orders: round-off ~4e-6 of the largest entry
        torch.testing.assert_close(g1[name], g0[name], atol=2e-5 * float(g0[name].abs().max()), rtol=0, msg=name)
