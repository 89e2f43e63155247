"""`rl2f demo --quick`: the whole pipeline end to end on a CPU, and the report contract."""
import json

import pytest

from click.testing import CliRunner

from rl2f.cli.main import cli

CONTRACT = ("acc_at", "acc_at_ci", "acc_at_per_seed", "multi_turn_gain", "correction_rate", "plasticity",
            "leak_rate", "retry_acc_at", "pass_at_k", "pass_at_k_per_seed", "n_problems")
ARMS = ("base", "sft", "sft_good", "rlvr", "rl2f")
MODELS = ARMS + ("base_self_correct", "rl2f_self_correct")
CHECKS = {"acc_vs_base", "acc_vs_sft", "acc_vs_sft_good", "acc_vs_rlvr", "decoy_content_effect_vs_base"}


def test_demo_quick_writes_the_full_report(tmp_path, monkeypatch):
    """The quick demo builds and trains a base per seed, trains both SFTs, RLVR and RL2F for two seeds, and
    writes report.json with every contract field for every arm and control, consistent with
    itself (pass@K per seed, averaged; the claim's checks read off the paired contrasts), the
    transfer rows, report.md and the plots; RLVR got RL2F's generation budget."""
    monkeypatch.setenv("RL2F_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--seeds", "0,1", "--jobs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stage in ("stage 1/2", "stage 2/2", "[seed 0] base:", "[seed 0] sft:", "[seed 0] sft_good:", "[seed 1] rlvr:",
                  "[seed 1] transfer:"):
        assert stage in result.output, stage  # progress per stage
    report = json.loads((out / "report.json").read_text())
    # each seed trains its own base (the intervals resample seeds, so they carry its variance)
    bases = [out / f"seed{s}" / "base" / "model.safetensors" for s in (0, 1)]
    assert all(b.is_file() for b in bases) and bases[0].read_bytes() != bases[1].read_bytes()
    assert set(report["base_pretrain_loss"]) == {"0", "1"}
    T = report["max_turns"]
    assert report["schema"] == "rl2f.demo.report/2"
    assert report["seeds"] == [0, 1] and report["wall_seconds"] > 0 and "toml" in report["config"]
    assert set(report["transfer"]) == {"highlow_reversed_prior"}
    for section in (report, *report["transfer"].values()):
        assert set(section["models"]) >= set(ARMS)
        for name in ARMS:
            m = section["models"][name]
            assert all(k in m for k in CONTRACT + ("placebo_acc_at", "content_effect", "decoy_acc_at",
                                                   "decoy_content_effect")), name
            assert len(m["acc_at"]) == len(m["acc_at_ci"]) == len(m["retry_acc_at"]) == len(m["placebo_acc_at"]) \
                == len(m["decoy_acc_at"]) == T
            assert all(a <= b for a, b in zip(m["acc_at"], m["acc_at"][1:]))  # cumulative
            assert abs(m["multi_turn_gain"] - (m["acc_at"][-1] - m["acc_at"][0])) < 1e-9
            assert m["n_problems"] == section["n_problems"] and len(m["acc_at_per_seed"]) == 2
            assert abs(m["pass_at_k"] - sum(m["pass_at_k_per_seed"]) / 2) < 1e-9  # per adapter, then the mean
            assert (m["adapter"] is None) == (name == "base") and (name == "base" or len(m["adapter"]) == 2)
        assert set(section["contrasts"]) == {"rl2f - base", "rl2f - sft", "rl2f - sft_good", "rl2f - rlvr"}
        assert set(section["reference_lines"]) == {"hint-blind ceiling", "hint-optimal ceiling"}
    assert set(report["tasks"]) == {"highlow"}
    assert all(set(r["tasks"]) == {name} for name, r in report["transfer"].items())
    for name in ("base_self_correct", "rl2f_self_correct"):
        m = report["models"][name]
        assert m["leak_rate"] is None and m["verifier_gated"] is True and len(m["oracle_free_acc"]) == T
    for run in report["runs"]:
        assert run["rlvr_student_tokens"] >= 0.8 * run["rl2f_student_tokens"]  # token-matched by group size
        assert run["rlvr_steps"] <= run["rl2f_steps"] and set(run["stage_seconds"]) == {
            "base", "sft", "sft_good", "rl2f", "rlvr", "eval", "transfer"}
    claim = report["claim"]
    assert set(claim) == CHECKS | {"holds", "context", "turn"}
    t = claim["turn"]
    assert t == min(report["preregistration"]["decisive_turn"], T)
    for other in ("base", "sft", "sft_good", "rlvr"):
        c = report["contrasts"][f"rl2f - {other}"]
        assert claim[f"acc_vs_{other}"]["ci"] == c["delta_acc_at_ci"][t - 1]
    assert claim["holds"] == all(claim[k]["holds"] for k in CHECKS)
    md = (out / "report.md").read_text()
    for words in ("fresh draws from the training distribution", "verifier-gated", "Transfer", "Claim holds",
                  "hint-optimal", "decoy"):
        assert words in md, words
    for plot in ("accuracy.png", "controls.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_seeds(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--quick", "--seeds", "0,x", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--seeds" in result.output


# ----------------------------------------------------------------------------------------
# claim(): hand-built reports


T = 5  # turns of the hand-built reports; the claim reads the pre-registered turn (4)


def _at(t_value, other=0.0) -> list:
    """A per-turn list holding `t_value` at the decisive turn and `other` elsewhere: a claim
    that read another turn would see `other`."""
    from rl2f.demo.prereg import DECISIVE_TURN

    return [t_value if t == DECISIVE_TURN else other for t in range(1, T + 1)]


def _report(deltas: dict, decoy: tuple[float, float, list | None], placebo_delta: float = 0.2) -> dict:
    """A minimal in-distribution report: `deltas` maps each baseline to the (delta, [lo, hi])
    of RL2F minus it at the decisive turn; `decoy` is (RL2F's decoy content effect, the
    base's, the interval of their difference). At every other turn the intervals straddle 0."""
    rl2f_ce, base_ce, ce_ci = decoy
    contrasts = {f"rl2f - {b}": {"a": "rl2f", "b": b, "delta_acc_at": _at(d), "delta_acc_at_ci": _at(ci, [-1, 1])}
                 for b, (d, ci) in deltas.items()}
    contrasts["rl2f - base"].update(
        delta_decoy_content_effect=_at(rl2f_ce - base_ce), delta_decoy_content_effect_ci=_at(ce_ci, [-1, 1]),
        delta_content_effect=_at(placebo_delta), delta_content_effect_ci=_at([0.1, 0.3], [-1, 1]))
    return {"max_turns": T, "seeds": [0, 1, 2], "contrasts": contrasts,
            "models": {"rl2f": {"decoy_content_effect": _at(rl2f_ce), "acc_at": [0.1, 0.3, 0.5, 0.7, 0.8],
                                "acc_at_per_seed": [[0.1, 0.3, 0.5, 0.7, 0.8]] * 3},
                       "base": {"decoy_content_effect": _at(base_ce)}},
            "paired": {"rlvr": {"delta_acc_at": [0.1] + [0.0] * (T - 1),
                                "delta_acc_at_ci": [[0.05, 0.15]] + [[-0.1, 0.1]] * (T - 1)}}}


GOOD = {"base": (0.4, [0.3, 0.5]), "sft": (0.2, [0.1, 0.3]), "sft_good": (0.1, [0.02, 0.2]), "rlvr": (0.3, [0.01, 0.6])}


def test_claim_holds_when_every_interval_lies_above_zero_at_the_decisive_turn():
    from rl2f.demo import claim
    from rl2f.demo.claim import claim_markdown

    c = claim(_report(GOOD, (0.3, 0.05, [0.1, 0.4])))
    assert c["holds"] and all(c[k]["holds"] for k in CHECKS) and c["turn"] == 4
    assert c["acc_vs_rlvr"]["delta"] == 0.3 and c["decoy_content_effect_vs_base"]["delta"] == 0.25
    assert c["context"]["rlvr_turn1_gain"] == 0.1 and c["context"]["rlvr_turn1_gain_ci"] == [0.05, 0.15]
    assert c["context"]["placebo_content_effect_vs_base"] == 0.2
    assert c["context"]["rl2f_multi_turn_gain"] == pytest.approx(0.6)  # acc@4 - acc@1
    assert "**yes**" in claim_markdown({"claim": c, "max_turns": T, "seeds": [0, 1, 2]})


def test_claim_fails_on_any_interval_touching_zero_or_missing():
    """One baseline whose interval reaches 0 (a positive mean is not enough), a decoy content
    effect no larger than the base's, or no interval at all (bootstrap = 0): the claim fails,
    and only the check concerned."""
    from rl2f.demo import claim

    for other, ci in [("rlvr", [0.0, 0.6]), ("sft", [-0.05, 0.45]), ("sft_good", [-0.2, 0.1]), ("base", None)]:
        c = claim(_report({**GOOD, other: (0.2, ci)}, (0.3, 0.05, [0.1, 0.4])))
        assert not c["holds"] and not c[f"acc_vs_{other}"]["holds"]
        assert [k for k in CHECKS if not c[k]["holds"]] == [f"acc_vs_{other}"]
    for ce_ci in ([-0.01, 0.3], None):
        c = claim(_report(GOOD, (0.3, 0.2, ce_ci)))
        assert not c["holds"] and [k for k in CHECKS if not c[k]["holds"]] == ["decoy_content_effect_vs_base"]


def test_claim_fails_when_rl2f_uses_the_decoys_hints_as_much_as_the_base():
    """RL2F ahead of every baseline, but its decoy content effect equal to the base's (the
    difference's interval around 0): RL2F revises on hint-shaped text no better than the base
    uses content, so the claim fails, even with a large content effect against the weaker
    random-direction placebo."""
    from rl2f.demo import claim

    c = claim(_report(GOOD, (0.25, 0.25, [-0.06, 0.06]), placebo_delta=0.3))
    assert not c["holds"] and not c["decoy_content_effect_vs_base"]["holds"]
    assert c["decoy_content_effect_vs_base"]["delta"] == 0.0
