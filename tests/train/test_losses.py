"""Advantage and loss arithmetic of rl2f.train against hand-computed values."""
import math

import pytest
import torch

from rl2f.episodes import Episode, Turn
from rl2f.train.batch import collate
from rl2f.train.losses import discounted_returns, group_advantages, grpo_loss, nll_loss, token_targets


def test_discounted_returns_across_turns():
    """G_t = sum_{k>=t} gamma^(k-t) r_k: solved at turn 3 with gamma 0.7 gives 0.49, 0.7, 1."""
    assert discounted_returns([0, 0, 1], 0.7) == pytest.approx([0.49, 0.7, 1.0])
    assert discounted_returns([1, 0, 1], 0.5) == pytest.approx([1.25, 0.5, 1.0])
    assert discounted_returns([0, 0], 0.0) == [0.0, 0.0]


def test_group_advantages_per_turn_baseline():
    """Each turn's return is normalised against the same turn of the group's other episodes
    (sample std): with gamma 0.5, returns at turn 1 are (0.5, 1, 0) -> (0, 1, -1) and at turn
    2, where only episodes 1 and 3 remain, (1, 0) -> (+-1/sqrt(2))."""
    ga = group_advantages([[0, 1], [1], [0, 0]], gamma=0.5)
    assert ga.advantages[0] == pytest.approx([0.0, 1 / math.sqrt(2)])
    assert ga.advantages[1] == pytest.approx([1.0])
    assert ga.advantages[2] == pytest.approx([-1.0, -1 / math.sqrt(2)])
    assert ga.keep == [[True, True], [True], [True, True]] and not ga.zero_variance
    # without std scaling: mean-centred only
    ga = group_advantages([[0, 1], [1], [0, 0]], gamma=0.5, std_normalize=False)
    assert ga.advantages[0] == pytest.approx([0.0, 0.5]) and ga.advantages[2] == pytest.approx([-0.5, -0.5])


def test_zero_variance_groups_and_cells_are_dropped():
    """All-equal returns carry no signal: advantage 0 and out of the loss (or kept at 0 when
    dropping is off); a cell of one episode is zero-variance too."""
    ga = group_advantages([[0, 0], [0, 0], [0]], gamma=0.7)
    assert ga.zero_variance and ga.keep == [[False, False], [False, False], [False]]
    assert all(a == 0.0 for row in ga.advantages for a in row)
    ga = group_advantages([[0, 0], [0, 0]], gamma=0.7, drop_zero_variance=False)
    assert ga.zero_variance and ga.keep == [[True, True], [True, True]]
    # gamma 0: turn 1 all wrong (zero variance) but turn 2 differs -> only turn 2 kept
    ga = group_advantages([[0, 1], [0, 0]], gamma=0.0)
    assert not ga.zero_variance and ga.keep == [[False, True], [False, True]]
    # turn 2 reached by one episode only: no baseline, dropped
    ga = group_advantages([[1], [0, 1]], gamma=0.7)
    assert ga.keep == [[True], [True, False]] and ga.advantages[1][1] == 0.0


def test_token_targets_mask_teacher_and_template_tokens():
    """Only student tokens carry an advantage and a loss mask; teacher and template never."""
    roles = [0, 0, 1, 1, 2, 2, 0, 1, 1]
    turns = [-1, -1, 0, 0, 0, 0, -1, 1, 1]
    adv, mask = token_targets(roles, turns, [0.5, -1.5], [True, True])
    assert adv == [0, 0, 0.5, 0.5, 0, 0, 0, -1.5, -1.5]
    assert mask == [0, 0, 1, 1, 0, 0, 0, 1, 1]
    _, mask = token_targets(roles, turns, [0.5, -1.5], [False, True])
    assert mask == [0, 0, 0, 0, 0, 0, 0, 1, 1]


def _policy(lp, old, adv, n, ref=None, beta=0.0, tis_cap=0.0):
    lp = torch.tensor(lp, requires_grad=True)
    out = grpo_loss(lp, torch.tensor(old), None if ref is None else torch.tensor(ref), torch.tensor(adv),
                    n, 0.2, 0.28, beta, tis_cap=tis_cap)
    out.loss.backward()
    return out._replace(loss=out.loss.detach()), lp.grad


def test_clipped_objective_by_hand():
    """-min(rho A, clip(rho, 0.8, 1.28) A) per token over the global count: rho 1.5 with A=+1
    is clipped (-1.28, no gradient); rho 1.5 with A=-1 is not (1.5, gradient rho);
    rho 0.5 with A=-1 is clipped (0.8, no gradient); rho 1 with A=2 gives -2."""
    lp = [math.log(1.5), math.log(1.5), math.log(0.5), 0.0]
    out, grad = _policy(lp, [0.0] * 4, [1.0, -1.0, -1.0, 2.0], n=4)
    assert float(out.loss) == pytest.approx((-1.28 + 1.5 + 0.8 - 2.0) / 4, abs=1e-6)
    assert grad.tolist() == pytest.approx([0.0, 1.5 / 4, 0.0, -2.0 / 4], abs=1e-6)
    assert float(out.clipped) == 2


def test_truncated_importance_sampling_by_hand():
    """train.tis_cap 2: each token's term is taken on the trainer's own ratio (1: nothing
    clipped) and weighted by w = min(p_trainer / p_sampler, 2): the loss -sum(w A) / n, the
    gradient -w A / n (d rho / d logp = 1 at rho = 1). Trainer/sampler ratios 1.5, 3 (capped at
    2), 0.5 and 1, with advantages 1, 1, -1, 2."""
    lp = [math.log(0.3), math.log(0.6), math.log(0.1), math.log(0.2)]
    sampler = [math.log(0.2), math.log(0.2), math.log(0.2), math.log(0.2)]
    adv = [1.0, 1.0, -1.0, 2.0]
    w = [1.5, 2.0, 0.5, 1.0]
    out, grad = _policy(lp, sampler, adv, n=4, tis_cap=2.0)
    assert float(out.loss) == pytest.approx(-sum(wi * a for wi, a in zip(w, adv)) / 4, abs=1e-6)
    assert grad.tolist() == pytest.approx([-wi * a / 4 for wi, a in zip(w, adv)], abs=1e-6)
    assert float(out.clipped) == 0
    # off: the ratio against the sampler itself, clipped at 1.28 / 0.8 where it leaves the range
    out, _ = _policy(lp, sampler, adv, n=4)
    assert float(out.loss) == pytest.approx((-1.28 - 1.28 + 0.8 - 2.0) / 4, abs=1e-6)


def test_k3_kl_term_by_hand():
    """beta * (exp(ref - logp) - (ref - logp) - 1) joins the token loss; zero when equal."""
    d = 0.3
    out, _ = _policy([0.0], [0.0], [0.0], n=1, ref=[d], beta=0.1)
    assert float(out.loss) == pytest.approx(0.1 * (math.exp(d) - d - 1), abs=1e-6)
    assert float(out.kl_sum) == pytest.approx(math.exp(d) - d - 1, abs=1e-6)


def test_token_normalisation_across_accumulation_steps():
    """Micro-batches divided by the step's global token count sum to the whole batch's token
    mean (-(1 - 1 + 2) / 3 at rho = 1), with the same gradient; a per-micro-batch mean
    would give (0 + -2) / 2 instead."""
    full, g_full = _policy([0.0, 0.0, 0.0], [0.0] * 3, [1.0, -1.0, 2.0], n=3)
    a, g_a = _policy([0.0, 0.0], [0.0] * 2, [1.0, -1.0], n=3)
    b, g_b = _policy([0.0], [0.0], [2.0], n=3)
    assert float(full.loss) == pytest.approx(-2 / 3)
    assert float(a.loss + b.loss) == pytest.approx(float(full.loss))
    assert torch.cat([g_a, g_b]).tolist() == pytest.approx(g_full.tolist())
    # the SFT / critique term normalises the same way
    lp = torch.tensor([-1.0, -2.0, -3.0])
    assert float(nll_loss(lp[:2], 3) + nll_loss(lp[2:], 3)) == pytest.approx(2.0)
    assert float(nll_loss(lp, 3, weight=0.5)) == pytest.approx(1.0)


def test_all_zero_advantages_give_zero_loss_and_gradient():
    """The objective is bounded: with no signal (every advantage 0) loss and gradient are 0,
    whatever the ratio; it never runs away the way a summed log-likelihood does."""
    out, grad = _policy([-5.0, 3.0], [0.0, 0.0], [0.0, 0.0], n=2)
    assert float(out.loss) == 0.0 and grad.abs().max() == 0.0


def _episode(pid, rewards, sample):
    """A hand-built episode: prompt (2 tokens), then per turn 2 student tokens and, after a
    wrong non-final attempt, 2 teacher tokens and 1 template token."""
    ids, roles, turns, lps = [1, 2], [0, 0], [-1, -1], [0.0, 0.0]
    for t, r in enumerate(rewards):
        ids += [10 + t, 11 + t]; roles += [1, 1]; turns += [t, t]; lps += [-0.5, -0.25]
        if t + 1 < len(rewards):
            ids += [20, 21, 3]; roles += [2, 2, 0]; turns += [t, t, -1]; lps += [0.0, 0.0, 0.0]
    ts = [Turn("a", "1", bool(r), float(r), "stop") for r in rewards]
    return Episode(pid, "toy", sample, 0, 0, [], ts, ids, roles, turns, lps)


def test_episode_sequences_end_to_end():
    """From episode records to the tensors of the loss: group-normalised turn advantages on
    student tokens only, teacher tokens listed for critique, zero-variance groups dropped and
    counted, old log-probs = sampling log-probs, log-prob positions shifted by one."""
    from rl2f.config import RunConfig
    from rl2f.train.grpo import episode_sequences

    cfg = RunConfig()
    cfg.train.gamma = 0.5
    eps = [_episode("p", [0, 1], 0), _episode("p", [1], 1), _episode("p", [0, 0], 2),
           _episode("q", [0, 0], 0), _episode("q", [0, 0], 1)]
    seqs, stats = episode_sequences(eps, cfg, cfg.rollout.max_turns)
    assert stats.groups == 2 and stats.zero_var_groups == 1 and stats.episodes == 5
    assert stats.solved_by[:2] == [1, 2] and stats.reward_sum == 2
    assert len(seqs) == 3  # group q carries no loss and is not sent through the model
    s0 = seqs[0]
    assert s0.advantages == pytest.approx([0, 0, 0, 0, 0, 0, 0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert s0.loss_mask == [0, 0, 1, 1, 0, 0, 0, 1, 1]
    mb = collate([s0, seqs[1]], pad_id=0, device="cpu")
    # token i is predicted from position i - 1
    assert mb.loss_pos.tolist()[:4] == [[0, 1], [0, 2], [0, 6], [0, 7]]
    assert mb.loss_targets.tolist()[:4] == [10, 11, 11, 12]
    assert mb.old_logprobs.tolist()[:4] == [-0.5, -0.25, -0.5, -0.25]
    assert mb.teacher_pos.tolist() == [[0, 3], [0, 4]] and mb.teacher_targets.tolist() == [20, 21]
    assert mb.attention_mask is not None and mb.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
