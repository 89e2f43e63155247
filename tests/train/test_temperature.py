"""Training at a sampling temperature other than 1 (0.7): the loss's log-probs are those of
the distribution the rollouts were sampled from, so a GRPO step's importance ratio is exactly
1 on-policy, and the run still learns."""
import json
from pathlib import Path

from train_toys import OneSecretTask, tiny_config

from rl2f.train.grpo import train_grpo


def test_grpo_at_temperature_0_7_is_on_policy_and_learns(tmp_path, tiny_ckpt, warm_start):
    """Each step rolls out on the current adapter and takes one optimiser step on that batch,
    so every ratio pi/pi_sampling is 1 and nothing is clipped: with the loss's log-probs at
    temperature 1 instead, the ratios (p^(1/0.7) renormalised vs p) leave the clip range for
    most tokens and clip_frac is far from 0. The reward still rises, as at temperature 1."""
    cfg = tiny_config(tiny_ckpt, 'train.method="rlvr"', "rollout.temperature=0.7", "rollout.problems_per_batch=4",
                      "train.max_steps=8", "train.lr=2e-3", "train.micro_batch=32")
    train_grpo(cfg, tmp_path, task=OneSecretTask(), init_adapter=warm_start)
    rows = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert all(r["clip_frac"] < 1e-6 for r in rows if not r["skipped"]), [r["clip_frac"] for r in rows]
    rewards = [r["reward_mean"] for r in rows]
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.15, rewards
