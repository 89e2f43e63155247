"""End-to-end evaluation of the tiny model: the base and two random adapters in one call,
checked for the report's schema and internal consistency (against metrics recomputed from
the episodes it saved, and the pairing of turn 1 across episode kinds), the CLI commands,
and clear errors for bad input."""
import json
import re
import zlib

import pytest
import torch
from click.testing import CliRunner

from rl2f.config import RunConfig, load_config
from rl2f.episodes import read_episodes
from rl2f.errors import UserError
from rl2f.eval import evaluate_models, write_report
from rl2f.eval.metrics import acc_at, point_metrics, problem_table
from rl2f.tasks import get_task
from rl2f.tasks.base import Problem, Task, Verdict

T = 3
OVERRIDES = ["task.name=secret", "task.options={digits = 1}", "task.n_eval=3", "rollout.max_new_tokens=4",
             "rollout.teacher_max_new_tokens=4", "rollout.problems_per_batch=8", f"eval.max_turns={T}",
             "eval.bootstrap=200", "lora.rank=4", "lora.alpha=8.0"]


class LuckyTask(Task):
    """A task an untrained model solves by chance (a third of attempts, by a hash of the
    text), so the metrics are not all zero; its hint names the answer on even problems, so
    the leak guard has something to flag."""

    name = "lucky"

    def problems(self, n, seed=0, split="train"):
        return [Problem(f"lucky-{i}", f"Guess {i}.", "4242", {"i": i}) for i in range(n)]

    def extract_answer(self, text):
        return text.strip()[:1] or None

    def verify(self, text, problem):
        return Verdict(zlib.crc32(text.encode()) % 3 == 0, self.extract_answer(text))

    def hint(self, problem, attempt, verdict):
        return "The answer is 4242." if problem.info["i"] % 2 == 0 else "Try something else."

    def placebo_hint(self, problem, attempt, verdict, rng):
        return rng.choice(["Placebo one.", "Placebo two."])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny model's ops are too small to split, and on a busy 2-core
    machine two spinning threads per process made these tests 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """RL2F_CACHE in a temp dir (the tiny checkpoint is built there), a config, and two
    adapters of different ranks with random B (so they change the samples)."""
    root = tmp_path_factory.mktemp("eval")
    mp = pytest.MonkeyPatch()
    mp.setenv("RL2F_CACHE", str(root / "cache"))
    from rl2f.lora import apply_lora, remove_lora, save_adapter
    from rl2f.model import load_model
    from rl2f.run import resolve_model_path

    cfg = load_config(RunConfig, None, OVERRIDES)
    model = load_model(resolve_model_path(cfg))
    dirs = []
    for i, rank in enumerate((4, 2)):
        if i:
            remove_lora(model)
        apply_lora(model, rank=rank, alpha=8.0, seed=i)
        gen = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        dirs.append(save_adapter(model, root / f"adapter{i}"))
    yield cfg, dirs, root
    mp.undo()


REQUIRED = ["acc_at", "acc_at_ci", "multi_turn_gain", "correction_rate", "correction_rate_per_turn", "plasticity",
            "plasticity_per_turn", "leak_rate", "retry_acc_at", "pass_at_k", "n_problems"]


def test_base_and_two_adapters_in_one_call(setup):
    """Schema of every entry; acc@t non-decreasing; report == metrics recomputed from the saved
    episodes; turn 1 is the same attempt in feedback, retry and self-correction episodes (one
    noise for all kinds) while the adapters change it; a rank-2 adapter replaces a rank-4 one."""
    cfg, (a, b), root = setup
    task = LuckyTask()
    problems = {task: task.problems(4), "secret": get_task("secret", digits=1).problems(2, split="test")}
    seen = []
    report = evaluate_models(cfg, {"base": None, "a": str(a), "b": str(b)}, problems, seeds=[0], self_correct=["a"],
                             controls=("feedback", "retry", "placebo"), oracle_free=True, contrasts=[("a", "b")],
                             progress=lambda n, total, label: seen.append((n, total)), episodes_dir=root / "eps")
    assert set(report["models"]) == {"base", "a", "b", "a_self_correct"}
    assert report["max_turns"] == T and report["k"] == T and report["seeds"] == [0]
    assert report["n_problems"] == 6 and report["tasks"] == {"lucky": 4, "secret": 2}
    assert sum(n for n, _ in seen) == seen[0][1] == 6 * 14  # 3 models x 4 kinds + 2 self-correction kinds
    assert report["config"]["eval"]["max_turns"] == T and report["wall_seconds"] > 0
    assert json.loads(json.dumps(report)) == report  # plain JSON data

    for name, m in report["models"].items():
        for key in REQUIRED:
            assert key in m, (name, key)
        assert m["n_problems"] == 6 and m["n_episodes"] == 6
        assert len(m["acc_at"]) == len(m["acc_at_ci"]) == len(m["retry_acc_at"]) == T
        assert len(m["correction_rate_per_turn"]) == len(m["plasticity_per_turn"]) == T - 1
        assert all(x <= y for x, y in zip(m["acc_at"], m["acc_at"][1:]))
        assert all(x <= y for x, y in zip(m["retry_acc_at"], m["retry_acc_at"][1:]))
        for v, (lo, hi) in zip(m["acc_at"], m["acc_at_ci"]):
            assert 0 <= lo <= v <= hi <= 1
        assert m["multi_turn_gain"] == pytest.approx(m["acc_at"][-1] - m["acc_at"][0])
        assert 0 <= m["pass_at_k"] <= 1 and set(m["per_task"]) == {"lucky", "secret"}
        # turn 1 is shared by all episode kinds of a model
        assert m["retry_acc_at"][0] == m["acc_at"][0]
        if not name.endswith("_self_correct"):
            assert m["placebo_acc_at"][0] == m["acc_at"][0]
            assert m["content_effect"] == pytest.approx([x - y for x, y in zip(m["acc_at"], m["placebo_acc_at"])])

    # the report is the metrics of the episodes it played
    leaky_messages = 0
    for name in ("base", "a", "b"):
        fb = read_episodes(root / "eps" / f"{name}.feedback.jsonl")
        m = point_metrics(problem_table(fb, T))
        for key in ("acc_at", "correction_rate", "plasticity", "leak_rate", "n_teacher_messages"):
            assert report["models"][name][key] == pytest.approx(m[key]), (name, key)
        placebo = read_episodes(root / "eps" / f"{name}.placebo.jsonl")
        assert report["models"][name]["placebo_acc_at"] == pytest.approx(acc_at(problem_table(placebo, T)))
        assert {t.feedback for e in placebo for t in e.turns if e.task == "lucky"} <= {None, "Placebo one.",
                                                                                    "Placebo two."}
        retry = read_episodes(root / "eps" / f"{name}.retry.jsonl")
        assert report["models"][name]["retry_acc_at"] == pytest.approx(acc_at(problem_table(retry, T)))
        assert all(t.feedback in (None, "That is incorrect. Try again.") for e in retry for t in e.turns)
        passes = read_episodes(root / "eps" / f"{name}.pass.jsonl")
        assert len(passes) == 6 * T and all(len(e.turns) == 1 for e in passes)
        solved = {}
        for e in passes:
            solved[e.problem_id] = solved.get(e.problem_id, False) or e.turns[0].correct
        assert report["models"][name]["pass_at_k"] == pytest.approx(sum(solved.values()) / 6)
        # leaks: the lucky hint names the answer on even problems, and the guard flags every
        # one of those messages and no other
        leaky = [t.leak_flagged for e in fb for t in e.turns
                 if t.feedback is not None and e.problem_id in ("lucky-0", "lucky-2")]
        flagged = [e.problem_id for e in fb for t in e.turns if t.leak_flagged]
        assert all(leaky) and all(pid in ("lucky-0", "lucky-2") for pid in flagged)
        leaky_messages += len(leaky)
        assert report["models"][name]["leak_rate"] == (pytest.approx(len(flagged) / m["n_teacher_messages"])
                                                       if m["n_teacher_messages"] else None)

    assert leaky_messages > 0  # the guard had something to flag

    first = {}
    for name, kind in [("a", "feedback"), ("a", "retry"), ("a", "self"), ("base", "feedback"), ("b", "feedback")]:
        eps = read_episodes(root / "eps" / f"{name}.{kind}.jsonl")
        first[name, kind] = [e.turns[0].attempt for e in eps]
    assert first["a", "feedback"] == first["a", "retry"] == first["a", "self"]
    assert first["a", "feedback"] != first["base", "feedback"] != first["b", "feedback"]
    sc = report["models"]["a_self_correct"]
    assert sc["teacher"] == "self" and sc["leak_rate"] is None and sc["verifier_gated"] is True
    # oracle-free: every episode plays all T rounds (no verifier stops it), graded afterwards
    free = read_episodes(root / "eps" / "a.self_free.jsonl")
    assert len(free) == 6 and all(len(e.turns) == T and not any(t.correct for t in e.turns) for e in free)
    truth = {"lucky": task, "secret": get_task("secret", digits=1)}
    by_id = {p.id: p for ps in problems.values() for p in ps}
    rounds = [sum(truth[e.task].verify(e.turns[t].attempt, by_id[e.problem_id]).correct for e in free) / 6
              for t in range(T)]
    assert sc["oracle_free_acc"] == pytest.approx(rounds) and len(sc["oracle_free_acc_ci"]) == T
    c = report["contrasts"]["a - b"]
    assert c["a"] == "a" and c["b"] == "b"
    assert c["delta_acc_at"] == pytest.approx([x - y for x, y in zip(report["models"]["a"]["acc_at"],
                                                                     report["models"]["b"]["acc_at"])])
    assert c["delta_content_effect"] == pytest.approx([x - y for x, y in zip(report["models"]["a"]["content_effect"],
                                                                             report["models"]["b"]["content_effect"])])
    assert sc["retry_acc_at"] == report["models"]["a"]["retry_acc_at"]
    assert sc["acc_at"][0] == report["models"]["a"]["acc_at"][0]
    assert set(report["paired"]) == {"a", "b", "a_self_correct"}
    for name, p in report["paired"].items():
        assert p["reference"] == "base"
        assert p["delta_acc_at"] == pytest.approx([x - y for x, y in zip(report["models"][name]["acc_at"],
                                                                          report["models"]["base"]["acc_at"])])

    # every field is documented in report.py's schema docstring
    import rl2f.eval.report as report_module

    fields = (set(report) | {k for m in report["models"].values() for k in m}
              | {k for p in [*report["paired"].values(), *report["contrasts"].values()] for k in p})
    assert not [f for f in fields if not re.search(rf"\b{f}\b", report_module.__doc__)]

    paths = write_report(report, root / "out")
    assert json.loads(paths["json"].read_text()) == report
    assert "| a_self_correct | self (verifier-gated) |" in paths["md"].read_text()
    for png in ("accuracy", "plasticity", "correction"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_user_errors(setup, tmp_path):
    """An adapter for another base (named in the message), an empty task set, T < 1, no
    models, a missing adapter directory and an unknown self-correct name."""
    cfg, (a, _), _ = setup
    from rl2f.lora import apply_lora, save_adapter
    from rl2f.model.tiny import build_tiny_model

    other = build_tiny_model("gemma3", hidden_size=64, head_dim=16)[1]
    apply_lora(other, rank=4, alpha=8.0)
    save_adapter(other, tmp_path / "other")
    with pytest.raises(UserError, match=r"adapter 'wrongbase'.*needs \(128, 4\)"):
        evaluate_models(cfg, {"wrongbase": str(tmp_path / "other")}, LuckyTask().problems(1), turns=1)
    with pytest.raises(UserError, match="no problems"):
        evaluate_models(cfg, {"base": None}, [])
    with pytest.raises(UserError, match="no problems"):
        evaluate_models(load_config(RunConfig, None, OVERRIDES + ["task.n_eval=0"]), {"base": None})
    with pytest.raises(UserError, match="turns must be >= 1"):
        evaluate_models(cfg, {"base": None}, turns=0)
    with pytest.raises(UserError, match="eval.max_turns must be >= 1"):
        load_config(RunConfig, None, ["eval.max_turns=0"])
    with pytest.raises(UserError, match="no model"):
        evaluate_models(cfg, {})
    with pytest.raises(UserError, match="adapter 'x'.*not found"):
        evaluate_models(cfg, {"x": str(tmp_path / "missing")})
    with pytest.raises(UserError, match="self-correct 'c'"):
        evaluate_models(cfg, {"base": None, "a": str(a)}, self_correct=["c"])


def _cli():
    """A group of the `rl2f` group's class (its one-line UserError handling) holding the two
    commands, so the test does not depend on cli/main.py's registration."""
    from rl2f.cli.evaluate import evaluate
    from rl2f.cli.main import cli
    from rl2f.cli.self_correct import self_correct

    return type(cli)(name="rl2f", commands=[evaluate, self_correct])


def test_one_turn_evaluation_writes_its_report(setup, tmp_path):
    """`rl2f evaluate --turns 1` (no feedback turn: nothing per turn to correct) writes its
    report, acc@1 and empty per-turn rates (before: ratio_ci raised after the whole
    evaluation and nothing was written)."""
    cfg, (a, _), root = setup
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    r = CliRunner().invoke(_cli(), ["evaluate", *sets, "--turns", "1", "--problems", "2", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    base = json.loads((tmp_path / "ev" / "report.json").read_text())["models"]["base"]
    assert len(base["acc_at"]) == 1 and base["correction_rate_per_turn_ci"] == []


def test_cli_evaluate_and_self_correct(setup, tmp_path):
    """`rl2f evaluate` and `rl2f self-correct` write the report files and print the table;
    bad flags are one-line errors."""
    cfg, (a, _), root = setup
    cli, runner = _cli(), CliRunner()
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    r = runner.invoke(cli, ["evaluate", *sets, "--adapter", f"rl2f={a}", "--no-base", "--turns", "2", "--problems", "2",
                            "--seeds", "0,1", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert list(rep["models"]) == ["rl2f"] and rep["seeds"] == [0, 1] and rep["n_problems"] == 2
    assert len(rep["models"]["rl2f"]["acc_at_per_seed"]) == 2 and rep["models"]["rl2f"]["n_episodes"] == 4
    assert "| rl2f | programmatic |" in r.output
    assert {p.name for p in (tmp_path / "ev").iterdir()} >= {"report.json", "report.md", "accuracy.png",
                                                             "plasticity.png", "correction.png"}

    r = runner.invoke(cli, ["self-correct", *sets, "--adapter", str(a), "--turns", "2", "--problems", "2",
                            "--out", str(tmp_path / "sc")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "sc" / "report.json").read_text())
    assert set(rep["models"]) == {"adapter0", "adapter0_self_correct"}
    assert "self-correction dialogue" in r.output and "critique 1" in r.output

    for args, msg in [(["--turns", "0"], "--turns must be >= 1"), (["--seeds", "a,b"], "--seeds"),
                      (["--controls", "hints,hint"], "--controls 'hints,hint': expected one or more of"),
                      (["--pass-at-k", "-1"], "--pass-at-k must be >= 0"),
                      (["--problems", "0"], "--problems must be in 1..100,000, got 0"),
                      (["--adapter", f"base={a}"], "used twice"), (["--no-base"], "nothing to evaluate")]:
        r = runner.invoke(cli, ["evaluate", *sets, *args, "--out", str(tmp_path / "bad")])
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_cli_controls_pass_at_k_and_a_progress_line_per_batch(setup, tmp_path):
    """`--controls hints,placebo --pass-at-k 0`: feedback and placebo episodes only (no retry,
    no pass@K samples), the report and its table carry the placebo rows and the content
    effect; `--controls retry` alone makes acc@t the retry episodes' (teacher "retry"). Off a
    terminal, progress is one line per batch of eval.batch_size problems. (Before: no
    placebo switch, pass@K always played, and no line until the end.)"""
    from rl2f.episodes import read_episodes

    cfg, (a, _), root = setup
    cli, runner = _cli(), CliRunner()
    sets = [a for o in OVERRIDES + ["eval.batch_size=2"] for a in ("--set", o)]
    ev = tmp_path / "ev"
    r = runner.invoke(cli, ["evaluate", *sets, "--adapter", f"rl2f={a}", "--no-base", "--turns", "2",
                            "--problems", "4", "--controls", "hints,placebo", "--pass-at-k", "0", "--save-episodes",
                            "--out", str(ev)])
    assert r.exit_code == 0, r.output
    rep = json.loads((ev / "report.json").read_text())
    m = rep["models"]["rl2f"]
    assert m["teacher"] == "programmatic" and rep["k"] == 0
    assert len(m["placebo_acc_at"]) == 2 and len(m["content_effect"]) == 2
    assert "retry_acc_at" not in m and "pass_at_k" not in m
    assert {p.name for p in (ev / "episodes").iterdir()} == {"rl2f.feedback.jsonl", "rl2f.placebo.jsonl"}
    assert len(read_episodes(ev / "episodes" / "rl2f.placebo.jsonl")) == 4
    assert "placebo acc@2 | content effect |" in r.output and "pass@" not in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("evaluate ")]
    assert [line.split()[1] for line in lines] == ["2/8", "4/8", "6/8", "8/8"], r.output
    assert lines[0].endswith("rl2f feedback seed 0") and lines[-1].endswith("rl2f placebo seed 0")

    r = runner.invoke(cli, ["evaluate", *sets, "--adapter", f"rl2f={a}", "--no-base", "--turns", "2",
                            "--problems", "2", "--controls", "retry", "--out", str(tmp_path / "retry")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "retry" / "report.json").read_text())["models"]["rl2f"]
    assert m["teacher"] == "retry" and m["acc_at"] == m["retry_acc_at"] and "pass_at_k" in m
