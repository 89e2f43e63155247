"""The demo's verdict on the paper's central claim, read off the report's paired contrasts at
the pre-registered turn (rl2f/demo/prereg.py, DECISIVE_TURN; the last turn played if a quick
run played fewer).

The claim holds when, in-distribution (fresh draws from the training distribution):
- for each baseline (base, SFT on the base's own solved dialogues, SFT on a perfect hint
  user's dialogues, RLVR), the paired 95% interval of acc@t(RL2F) - acc@t(baseline) lies above
  0 (a hierarchical bootstrap: training seeds, then problems, the same draws for every arm,
  rl2f/eval/metrics.py);
- RL2F's content effect against the decoy (acc@t with the hints minus acc@t with the real
  hints about a decoy secret from the same prior) exceeds the base's: the paired interval of
  their difference lies above 0. This separates "RL2F learned to use what the hints say" from
  "RL2F learned to keep revising when shown hint-shaped text"; the decoy is the stricter of the
  two placebos (its hints are as consistent as real ones), so it decides, and the
  random-direction placebo's difference is reported beside it.
Beside the claim, not part of it: RLVR's turn-1 gain over the base (single-turn RL can learn
the prior over secrets, so it is a real competitor) and RL2F's multi-turn gain.
"""
from __future__ import annotations

from rl2f.demo.prereg import DECISIVE_TURN

BASELINES = ("base", "sft", "sft_good", "rlvr")


def _above_zero(ci) -> bool:
    return ci is not None and ci[0] > 0


def decisive_turn(report: dict) -> int:
    return min(DECISIVE_TURN, report["max_turns"])


def claim(report: dict, baselines: tuple[str, ...] = BASELINES) -> dict:
    """{check: {delta, ci, holds}, ..., turn, holds, context} from an in-distribution report
    with the contrasts "rl2f - <baseline>" for every baseline (decoy content effects included)."""
    t = decisive_turn(report)
    checks: dict = {}
    for other in baselines:
        c = report["contrasts"][f"rl2f - {other}"]
        ci = c["delta_acc_at_ci"][t - 1]
        checks[f"acc_vs_{other}"] = {"delta": c["delta_acc_at"][t - 1], "ci": ci, "holds": _above_zero(ci)}
    c = report["contrasts"]["rl2f - base"]
    m = report["models"]
    ci = c["delta_decoy_content_effect_ci"][t - 1]
    checks["decoy_content_effect_vs_base"] = {
        "rl2f": m["rl2f"]["decoy_content_effect"][t - 1], "base": m["base"]["decoy_content_effect"][t - 1],
        "delta": c["delta_decoy_content_effect"][t - 1], "ci": ci, "holds": _above_zero(ci)}
    verdict = all(v["holds"] for v in checks.values())
    rlvr = report["paired"]["rlvr"]
    rl2f_gain = [a[t - 1] - a[0] for a in m["rl2f"]["acc_at_per_seed"]]
    checks["context"] = {
        "placebo_content_effect_vs_base": c["delta_content_effect"][t - 1],
        "placebo_content_effect_vs_base_ci": c["delta_content_effect_ci"][t - 1],
        "rlvr_turn1_gain": rlvr["delta_acc_at"][0], "rlvr_turn1_gain_ci": rlvr["delta_acc_at_ci"][0],
        "rl2f_multi_turn_gain": m["rl2f"]["acc_at"][t - 1] - m["rl2f"]["acc_at"][0],
        "rl2f_multi_turn_gain_per_seed": rl2f_gain,
    }
    checks["turn"] = t
    checks["holds"] = verdict
    return checks


def _ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def claim_markdown(report: dict) -> str:
    c = report["claim"]
    t = c["turn"]
    lines = ["## The central claim", "",
             f"Decided at turn {t} (fixed before the run), paired over training seeds {report['seeds']} and problems "
             "(95% intervals of a bootstrap over seeds, then problems); a check holds when its interval lies above 0.",
             "", "| check | difference | 95% CI | holds |", "|---|---|---|---|"]
    for other in (b for b in BASELINES if f"acc_vs_{b}" in c):
        v = c[f"acc_vs_{other}"]
        lines.append(f"| acc@{t}: RL2F - {other} | {v['delta']:+.3f} | {_ci(v['ci'])} | {'yes' if v['holds'] else 'no'} |")
    v = c["decoy_content_effect_vs_base"]
    lines.append(f"| content effect against the decoy (hints - decoy's hints at acc@{t}): RL2F {v['rl2f']:+.3f} - base "
                 f"{v['base']:+.3f} | {v['delta']:+.3f} | {_ci(v['ci'])} | {'yes' if v['holds'] else 'no'} |")
    x = c["context"]
    lines += ["", f"Beside it: the same content difference against the random-direction placebo "
              f"{x['placebo_content_effect_vs_base']:+.3f} {_ci(x['placebo_content_effect_vs_base_ci'])}; RLVR's turn-1 "
              f"gain over the base {x['rlvr_turn1_gain']:+.3f} {_ci(x['rlvr_turn1_gain_ci'])}; RL2F's multi-turn gain "
              f"(acc@{t} - acc@1) {x['rl2f_multi_turn_gain']:+.3f}.", "",
              f"Claim holds on every check: **{'yes' if c['holds'] else 'no'}**."]
    return "\n".join(lines) + "\n"
