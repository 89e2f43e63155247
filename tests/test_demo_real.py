"""`rl2f demo --real` (rl2f/demo/real.py) on the fetched SmolLM2 at toy settings: the whole
pipeline, its report against the episode files it was built from, and a run killed mid-arm
that continues to the adapter an uninterrupted run makes. Also the chat wording of the task."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl2f.demo import pipeline
from rl2f.demo.real import BUDGETS, run_real
from rl2f.episodes import read_episodes
from rl2f.errors import UserError
from rl2f.tasks.base import Problem
from rl2f.tasks.highlow import CHAT_SYSTEM_PROMPT, HighLowTask
from rl2f.train.checkpoint import complete_checkpoints, find_checkpoint

# ----------------------------------------------------------------------------------------
# The task's chat wording and range options (no model needed)


def test_chat_wording_on_one_to_ten_against_hand_computed_ceilings():
    task = HighLowTask(modulus=1, low=1, high=10, prior=0.2, wording="chat")
    assert task.candidates(0) == list(range(1, 11))
    w = [math.exp(-0.2 * n) for n in range(1, 11)]  # the prior, written out
    blind = [sum(w[:t]) / sum(w) for t in range(1, 5)]  # the likeliest (smallest) numbers first
    c = task.ceilings(4)
    assert c["hint_blind"] == pytest.approx(blind)
    # 4 guesses with "too high / too low" cover a binary tree of 15 >= 10 candidates; 2 guesses
    # cover 3: the best 3-node tree over 10 ascending weights, enumerated by hand-rolled search
    best2 = max(w[g] + max([w[i] for i in range(g)], default=0) + max([w[i] for i in range(g + 1, 10)], default=0)
                for g in range(10))
    assert c["hint_optimal"][1] == pytest.approx(best2 / sum(w))
    assert c["hint_optimal"][3] == pytest.approx(1.0)
    assert task.system_prompt == CHAT_SYSTEM_PROMPT
    p = task.problems(3, seed=0, split="test")[0]
    assert p.prompt == "I am thinking of a secret number from 1 to 10. Guess the number. Reply with only the number."
    assert task.hint(p, "eleven", task.verify("eleven", p)) == "Reply with only a number from 1 to 10."
    assert task.verify("My guess is 11", p).correct is False
    assert task.hint(p, "11", task.verify("11", p)) == "Reply with only a number from 1 to 10."  # out of range
    assert task.hint(p, "0", task.verify("0", p)) == "Reply with only a number from 1 to 10."


def test_chat_wording_names_the_clue_and_the_terse_default_is_unchanged():
    assert HighLowTask(wording="chat").prompt(7) == ("I am thinking of a secret number from 10 to 99. Its last digit is 7. "
                                                     "Guess the number. Reply with only the number.")
    assert "It leaves remainder 2 when divided by 6." in HighLowTask(modulus=6, wording="chat").prompt(2)
    terse = HighLowTask()
    assert terse.system_prompt == ""
    assert terse.prompt(7) == "Secret number from 10 to 99, remainder 7 when divided by 10. Answer: ?"
    assert terse.weight(47) == pytest.approx(math.exp(-0.2 * 4))  # the tens digit, as before
    assert terse.format_hint() == "Give a number from 10 to 99 as 'Answer: N'."
    p = Problem("x", terse.prompt(7), "47", {"residue": 7})
    assert terse.hint(p, "Answer: 57", terse.verify("Answer: 57", p)) == "Too high."


def test_model_without_real_is_refused(tmp_path):
    from click.testing import CliRunner

    from rl2f.cli.main import cli
    result = CliRunner().invoke(cli, ["demo", "--quick", "--seeds", "0", "--jobs", "1", "--model", "/nowhere",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "--model applies to --real runs only" in result.output


@pytest.mark.parametrize("options, word", [
    (dict(wording="loud"), "wording"), (dict(low=10, high=10), "high"), (dict(modulus=0), "modulus"),
])
def test_bad_task_options_are_refused_by_name(options, word):
    with pytest.raises(UserError, match=word):
        HighLowTask(**options)


# ----------------------------------------------------------------------------------------
# The pipeline on the fetched SmolLM2


def _acc_at(episodes, problems, t: int) -> float:
    """acc@t by hand: the share of (problem, sample) episodes solved within t turns."""
    ids = {p.id for p in problems}
    mine = [e for e in episodes if e.problem_id in ids]
    assert len(mine) >= len(ids)
    return sum(1 for e in mine if e.solved_at is not None and e.solved_at <= t) / len(mine)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, smollm2_dir):
    out = tmp_path_factory.mktemp("real") / "run"
    report = run_real(out, seeds=[0], quick=True, jobs=1, model=smollm2_dir)
    return out, report


def test_toy_run_writes_the_report_from_its_episodes(toy_run):
    out, report = toy_run
    assert {"report.json", "report.md", "run.json", "settings.json"} <= {p.name for p in out.iterdir()}
    assert set(report["models"]) == {"base", "sft", "rlvr", "rl2f"}
    for arm in ("sft", "rlvr", "rl2f"):  # each trained arm left an adapter and a done record
        assert (out / "seed0" / arm / "done.json").is_file()
        assert list((out / "seed0" / arm).glob("checkpoints/step-*/adapter"))
    # the report's numbers are the episode files' (recomputed here, not read from the report)
    task = HighLowTask(modulus=1, low=1, high=10, prior=0.2, wording="chat")
    problems = task.problems(BUDGETS[True]["n_eval"], seed=0, split="test")
    for arm in report["models"]:
        for kind, field in (("feedback", "acc_at"), ("retry", "retry_acc_at"), ("decoy", "decoy_acc_at")):
            eps = read_episodes(out / "seed0" / "eval" / f"{arm}.{kind}.jsonl")
            assert report["models"][arm][field] == pytest.approx([_acc_at(eps, problems, t) for t in range(1, 5)])
    # the held-out problems are the test split's, never the training stream's
    assert {e.problem_id for e in read_episodes(out / "seed0" / "eval" / "base.feedback.jsonl")} == {p.id for p in problems}
    assert report["reference_lines"]["hint-optimal ceiling"][3] == pytest.approx(1.0)
    c = report["claim"]
    assert {"acc_vs_base", "acc_vs_sft", "acc_vs_rlvr", "decoy_content_effect_vs_base"} <= set(c)
    assert "acc_vs_sft_good" not in c
    r = report["runs"][0]
    assert r["rlvr_student_tokens"] <= r["rl2f_student_tokens"] + 64 * r["rlvr_group_size"]  # token-matched, one step over at most
    run = json.loads((out / "run.json").read_text())
    assert run["invocations"][-1]["finished"] and run["cpu_seconds"] > 0 and run["wall_seconds"] > 0
    assert "acc@4: RL2F - rlvr" in (out / "report.md").read_text()


def test_a_rerun_keeps_what_is_done_and_other_settings_are_refused(toy_run, smollm2_dir):
    out, report = toy_run
    adapter = next((find_checkpoint(out / "seed0" / "rl2f") / "adapter").glob("*.safetensors"))
    before = adapter.stat().st_mtime_ns
    again = run_real(out, seeds=[0], quick=True, jobs=1, model=smollm2_dir)
    assert adapter.stat().st_mtime_ns == before  # nothing retrained
    assert again["models"]["rl2f"]["acc_at"] == report["models"]["rl2f"]["acc_at"]
    # the stages' timings are the first invocation's, not the skips'
    assert set(report["runs"][0]["stage_cpu_seconds"]) == {"sft", "rl2f", "rlvr", "eval base", "eval sft", "eval rlvr",
                                                           "eval rl2f"}
    assert again["runs"][0]["stage_cpu_seconds"] == report["runs"][0]["stage_cpu_seconds"]
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2
    assert run["wall_seconds"] == pytest.approx(sum(i["wall_seconds"] for i in run["invocations"]))
    with pytest.raises(UserError, match="other settings.*seeds"):
        run_real(out, seeds=[0, 1], quick=True, jobs=1, model=smollm2_dir)


_CHILD = """
import sys
from rl2f.demo.real import run_real
run_real(sys.argv[1], seeds=[0], quick=True, jobs=1, model=sys.argv[2], budgets={budgets!r})
"""
# RL2F saves every step, so a kill during its step 2 leaves the step-1 checkpoint to continue from
RESUME_BUDGETS = dict(BUDGETS[True], rl2f_steps=3, save_every=1, n_eval=2, pass_at_k=0)


def _adapter(run: Path, arm: str) -> dict[str, torch.Tensor]:
    return load_file(next((find_checkpoint(run / "seed0" / arm) / "adapter").glob("*.safetensors")))


def test_a_run_killed_mid_arm_continues_to_the_uninterrupted_adapter(tmp_path, smollm2_dir, monkeypatch):
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(budgets=RESUME_BUDGETS), str(killed), str(smollm2_dir)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    arm = killed / "seed0" / "rl2f"
    deadline = time.monotonic() + 600
    try:
        while not (arm.is_dir() and complete_checkpoints(arm)):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no RL2F checkpoint within 10 minutes"
            time.sleep(0.1)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert not (arm / "done.json").exists()  # killed mid-arm, before its last step
    steps_before = [c.name for c in complete_checkpoints(arm)]
    assert steps_before and steps_before[-1] != "step-000003"

    calls = []  # (arm directory, resume) of every training the continued run starts
    train = pipeline.train
    monkeypatch.setattr(pipeline, "train", lambda cfg, out, resume=None: calls.append((out, resume)) or train(cfg, out, resume))
    resumed = run_real(killed, seeds=[0], quick=True, jobs=1, model=smollm2_dir, budgets=RESUME_BUDGETS)
    # SFT was done before the kill and is kept; RL2F continues from its checkpoint (not from
    # scratch, which would give the same adapter too); RLVR had not started
    assert calls == [(arm, arm), (killed / "seed0" / "rlvr", None)]
    monkeypatch.undo()
    whole = run_real(tmp_path / "whole", seeds=[0], quick=True, jobs=1, model=smollm2_dir, budgets=RESUME_BUDGETS)
    for name in ("rl2f", "rlvr"):  # RLVR's budget is RL2F's token count: equal only if the resume is exact
        a, b = _adapter(killed, name), _adapter(tmp_path / "whole", name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name} {k}")
    assert resumed["models"]["rl2f"]["acc_at"] == whole["models"]["rl2f"]["acc_at"]
    assert len(json.loads((killed / "run.json").read_text())["invocations"]) == 2
