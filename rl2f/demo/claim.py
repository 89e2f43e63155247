"""The demo's verdict on the paper's central claim, read off the report's paired contrasts.

The claim holds when, in-distribution (fresh draws from the training distribution):
- for each baseline (base, SFT, RLVR), the paired 95% interval of acc@T(RL2F) - acc@T(baseline)
  lies above 0 (a hierarchical bootstrap: training seeds, then problems, the same draws for
  every arm, rl2f/eval/metrics.py);
- RL2F's content effect (acc@T with feedback minus acc@T with the placebo) exceeds the
  base's: the paired interval of their difference lies above 0. This is what separates
  "RL2F learned to use what the hints say" from "RL2F learned the hints' format".
RLVR's turn-1 gain over the base is reported beside RL2F's multi-turn gain: single-turn RL
can raise turn 1 on this task (it can learn the prior over secrets), so it is a real
competitor, not a strawman. Transfer rows are reported whatever they show, and are not part
of the claim.
"""
from __future__ import annotations

BASELINES = ("base", "sft", "rlvr")


def _above_zero(ci) -> bool:
    return ci is not None and ci[0] > 0


def claim(report: dict) -> dict:
    """{check: {delta, ci, holds}, ..., holds} from an in-distribution report with the
    contrasts "rl2f - base", "rl2f - sft", "rl2f - rlvr" (content effects included)."""
    checks: dict = {}
    for other in BASELINES:
        c = report["contrasts"][f"rl2f - {other}"]
        ci = c["delta_acc_at_ci"][-1]
        checks[f"acc_at_T_vs_{other}"] = {"delta": c["delta_acc_at"][-1], "ci": ci, "holds": _above_zero(ci)}
    c = report["contrasts"]["rl2f - base"]
    ci = c["delta_content_effect_ci"][-1]
    m = report["models"]
    checks["content_effect_vs_base"] = {"rl2f": m["rl2f"]["content_effect"][-1], "base": m["base"]["content_effect"][-1],
                                        "delta": c["delta_content_effect"][-1], "ci": ci, "holds": _above_zero(ci)}
    checks["holds"] = all(v["holds"] for v in checks.values())
    # Beside the claim, not part of it: what single-turn RL bought at turn 1, and what RL2F's
    # turns add (each with its interval).
    rlvr = report["paired"]["rlvr"]
    checks["context"] = {
        "rlvr_turn1_gain": rlvr["delta_acc_at"][0], "rlvr_turn1_gain_ci": rlvr["delta_acc_at_ci"][0],
        "rl2f_multi_turn_gain": m["rl2f"]["multi_turn_gain"], "rl2f_multi_turn_gain_ci": m["rl2f"]["multi_turn_gain_ci"],
    }
    return checks


def _ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def claim_markdown(report: dict) -> str:
    c = report["claim"]
    T = report["max_turns"]
    lines = ["## The central claim", "",
             f"Paired over training seeds {report['seeds']} and problems (95% intervals of a bootstrap over seeds, "
             "then problems); a check holds when its interval lies above 0.", "",
             "| check | difference | 95% CI | holds |", "|---|---|---|---|"]
    for other in BASELINES:
        v = c[f"acc_at_T_vs_{other}"]
        lines.append(f"| acc@{T}: RL2F - {other} | {v['delta']:+.3f} | {_ci(v['ci'])} | {'yes' if v['holds'] else 'no'} |")
    v = c["content_effect_vs_base"]
    lines.append(f"| content effect (feedback - placebo at acc@{T}): RL2F {v['rl2f']:+.3f} - base {v['base']:+.3f} "
                 f"| {v['delta']:+.3f} | {_ci(v['ci'])} | {'yes' if v['holds'] else 'no'} |")
    x = c["context"]
    lines += ["", f"Beside it: RLVR's turn-1 gain over the base {x['rlvr_turn1_gain']:+.3f} {_ci(x['rlvr_turn1_gain_ci'])}; "
              f"RL2F's multi-turn gain (acc@{T} - acc@1) {x['rl2f_multi_turn_gain']:+.3f} "
              f"{_ci(x['rl2f_multi_turn_gain_ci'])}.", "",
              f"Claim holds on every check: **{'yes' if c['holds'] else 'no'}**."]
    return "\n".join(lines) + "\n"


def evidence_markdown(report: dict) -> str:
    """What the rows are, in words that match how they were made."""
    runs = report["runs"]
    groups = sorted({r["rlvr_group_size"] for r in runs})
    T = report["max_turns"]
    return "\n".join([
        "## What was compared", "",
        "- Every arm starts from the same base (the tiny model trained from scratch on scripted dialogues). "
        "SFT: LoRA on the base's own solved dialogues with the teacher. RL2F: GRPO on "
        f"{T}-turn episodes with the teacher's hints. RLVR: the same GRPO on single-turn episodes, never a hint, "
        f"with as many optimiser steps and a larger group ({', '.join(map(str, groups))} against "
        f"{report['config']['run']['rollout']['group_size']}) so that it generates as many student tokens as RL2F.",
        "- The in-distribution problems are fresh draws from the training distribution (the same digit sums and "
        "prior over secrets; no problem instance was trained on). Transfer: digit sums that no arm (nor the "
        "base) ever saw, and the training sums with the prior over secrets reversed (a turn-1 prior learned in "
        "training is wrong there; the hints still work).",
        "- Placebo: the hint's format with a random digit and direction, no information about the answer; "
        "content effect = feedback - placebo. Retry: \"That is incorrect. Try again.\", which the warm start has "
        "seen. pass@K: per adapter, averaged over seeds (never pooled).",
        "- Self-correction rows are verifier-gated: the verifier stops the episode at the first correct attempt, "
        "so the self-critic is only asked about wrong attempts. The oracle-free table plays every round with no "
        "verifier and scores the answers afterwards. On a hidden-information task a self-critique cannot carry "
        "the missing bits, so neither is expected to beat retry.",
        "",
    ])
