"""reasoning-gym as a task family (rl2f/tasks/gym.py), on maze, countdown, basic_arithmetic,
gsm_symbolic, arc_1d and knights_knaves: the dataset's own answer verifies through rl2f's
verifier and a wrong one does not; the leak guard flags the answer written out and passes the
hints; train and test never share a prompt and a seed reproduces its problems; the hints say
what they claim (checked against the test's own breadth-first search and arithmetic); an
answer that is code never reaches a scorer that evaluates it.

reasoning-gym comes with the test extra (`bash install.sh test`). Without it these tests
skip, except where RL2F_REQUIRE_GYM=1 (CI), where they fail; the missing-package error is
checked either way.
"""
import json
import os
import random
import re
import sys
from collections import deque
from fractions import Fraction

import pytest

from rl2f.errors import UserError
from rl2f.leak_guard import LeakGuard
from rl2f.tasks import get_task
from rl2f.tasks.base import Problem

DATASETS = ["maze", "countdown", "basic_arithmetic", "gsm_symbolic", "arc_1d", "knights_knaves"]
GENERIC = "That is not correct."  # how the generic hint starts: the three below must do better
STEP = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def require_gym():
    """Skip without reasoning-gym, except where RL2F_REQUIRE_GYM=1 (CI): there it fails."""
    if os.environ.get("RL2F_REQUIRE_GYM") == "1":
        import reasoning_gym  # noqa: F401
    else:
        pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed: bash install.sh test")


@pytest.fixture(scope="module")
def tasks():
    require_gym()
    return {name: get_task("reasoning_gym", dataset=name) for name in DATASETS}


@pytest.fixture(scope="module")
def problems(tasks):
    return {name: task.problems(6, seed=0, split="test") for name, task in tasks.items()}


def _wrong(name: str, p: Problem) -> str:
    """An answer in the dataset's own format that is not a right one."""
    if name in ("maze", "basic_arithmetic", "gsm_symbolic"):
        return str(int(p.answer) + 1)
    if name == "countdown":  # every number once, but added: that hits the target only by chance
        numbers = p.info["numbers"]
        return (" + " if sum(numbers) != p.info["target"] else " * ").join(map(str, numbers))
    if name == "arc_1d":
        cells = p.answer.split()
        return " ".join(["1" if cells[0] != "1" else "2"] + cells[1:])
    terms = p.info["knight_knave_terms"]  # knights_knaves: the first person's role flipped
    flip = {terms["a_knight"]: terms["a_knave"], terms["a_knave"]: terms["a_knight"]}
    first = re.search("|".join(map(re.escape, flip)), p.answer).group(0)
    return p.answer.replace(first, flip[first], 1)


def _distances(meta: dict, source: tuple[int, int]) -> dict:
    """The test's own breadth-first search over a maze's metadata grid."""
    grid = meta["grid"]
    seen, queue = {source: 0}, deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in STEP.values():
            n = (r + dr, c + dc)
            inside = 0 <= n[0] < len(grid) and 0 <= n[1] < len(grid[0])
            if inside and grid[n[0]][n[1]] != meta["wall"] and n not in seen:
                seen[n] = seen[(r, c)] + 1
                queue.append(n)
    return seen


def _cell(meta: dict, ch: str) -> tuple[int, int]:
    return next((r, c) for r, row in enumerate(meta["grid"]) for c, x in enumerate(row) if x == ch)


# ----------------------------------------------------------------------------------------
# Verifier, leak guard, splits: the six datasets


@pytest.mark.parametrize("name", DATASETS)
def test_own_answer_is_correct_and_a_wrong_one_is_not(tasks, problems, name):
    """The dataset's answer, between <answer> tags or on an 'Answer:' line after some
    reasoning, scores 1.0 with the dataset's scorer; a wrong answer does not, and its score
    is in the verdict's detail (partial for knights_knaves: one of two people right)."""
    task = tasks[name]
    for p in problems[name]:
        for text in (f"Thinking.\n<answer>{p.answer}</answer>", f"Thinking.\nAnswer: {p.answer}"):
            v = task.verify(text, p)
            assert v.correct and v.answer == p.answer and f"{name} score 1 of 1" == v.detail, (text, v)
        v = task.verify(f"<answer>{_wrong(name, p)}</answer>", p)
        assert not v.correct and v.answer == _wrong(name, p), v
        score = float(re.fullmatch(rf"{name} score ([\d.e-]+) of 1", v.detail).group(1))
        assert score < 1
        if name == "knights_knaves" and len(p.info["names"]) == 2:
            assert score == pytest.approx(0.65), v.detail  # the scorer's 0.3 + 0.7 * 1/2
        assert not task.verify("I am not sure.", p).correct


@pytest.mark.parametrize("name", DATASETS)
def test_leak_guard_flags_the_answer_and_passes_the_hints(tasks, problems, name):
    """The answer written out, and every form `answer_forms` names (knights_knaves: the
    verdicts in any order), is flagged; the hints for wrong attempts pass, and are the
    dataset's own for maze, countdown and basic_arithmetic. Problems whose answer the prompt
    states (a number in a maze's grid) are left out: the guard never flags a number the
    prompt states."""
    task = tasks[name]
    guard = LeakGuard(task)
    checked = 0
    for p in problems[name]:
        if re.search(rf"(?<![\w.]){re.escape(p.answer)}(?![\w])", p.prompt):
            continue
        checked += 1
        assert guard.check(f"The answer is {p.answer}.", p).leaked
        for form in task.answer_forms(p):
            assert guard.check(f"Try this: {form}", p).leaked, form
        if name == "knights_knaves":
            clauses = p.answer.rstrip(".").split(", and ")
            assert guard.check(" and ".join(reversed(clauses)) + " - that is how it is.", p).leaked
        wrong = [_wrong(name, p), "I give up"]
        if name in ("maze", "basic_arithmetic", "gsm_symbolic"):
            wrong += [str(int(p.answer) - 1), str(int(p.answer) * 3 + 7), f"{p.answer} steps"]
        if name == "countdown":
            numbers = p.info["numbers"]
            wrong += [" + ".join(map(str, numbers[1:])), " * ".join(map(str, numbers + [7])), "1 / 0"]
        for attempt in wrong:
            text = f"<answer>{attempt}</answer>"
            v = task.verify(text, p)
            if v.correct:  # the scorer accepts it (gsm_symbolic reads "12 steps" as 12): no hint due
                continue
            hint = task.hint(p, text, v)
            check = guard.check(hint, p)
            assert not check.leaked, (hint, check.reason)
            if name in ("maze", "countdown", "basic_arithmetic"):
                assert not hint.startswith(GENERIC), hint
    assert checked >= 2


@pytest.mark.parametrize("name", DATASETS)
def test_splits_are_disjoint_and_a_seed_reproduces_its_problems(tasks, name):
    """Train and test share no prompt and no id; a fresh task with the same seed makes the
    same problems (ids, prompts, answers, metadata); another seed makes others."""
    task = tasks[name]
    train, test = task.problems(12, seed=3, split="train"), task.problems(4, seed=3, split="test")
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.id for p in train + test}) == 16
    again = get_task("reasoning_gym", dataset=name).problems(12, seed=3, split="train")
    assert [(p.id, p.prompt, p.answer) for p in again] == [(p.id, p.prompt, p.answer) for p in train]
    assert json.dumps([p.info for p in again], default=str) == json.dumps([p.info for p in train], default=str)
    assert {p.prompt for p in task.problems(12, seed=4, split="train")} != {p.prompt for p in train}


def test_splits_stay_disjoint_in_a_small_problem_space(tasks):
    """basic_arithmetic with two one-digit terms and + or - has 242 questions: the test split
    draws its seeds elsewhere, yet seeds alone would repeat train questions (100 of 242);
    problems belong to the split their question hashes to, so none does."""
    task = get_task("reasoning_gym", dataset="basic_arithmetic",
                    config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                            "operators": ["+", "-"], "allow_parentheses": False})
    train, test = task.problems(100, seed=0, split="train"), task.problems(10, seed=0, split="test")
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.prompt for p in train}) == 100 and len({p.prompt for p in test}) == 10


# ----------------------------------------------------------------------------------------
# The hints say what they claim; the placebo says it at random


def test_arithmetic_hint_says_too_high_or_too_low(tasks, problems):
    task = tasks["basic_arithmetic"]
    for p in problems["basic_arithmetic"]:
        for delta, word in ((1, "high"), (-1, "low"), (1000, "high"), (-1000, "low")):
            text = f"<answer>{int(p.answer) + delta}</answer>"
            assert task.hint(p, text, task.verify(text, p)) == f"Your result is too {word}."
        assert "only the number" in task.hint(p, "", task.verify(f"<answer>= {p.answer}</answer>", p))


def test_maze_hint_counts_and_names_a_first_step_of_a_shortest_route(tasks, problems):
    """Too few steps: no route is that short; too many: a shorter one exists; either way
    the named first step leads one step closer to the goal (the test's own search)."""
    task = tasks["maze"]
    for p in problems["maze"]:
        meta, d = p.info, int(p.answer)
        start, goal = _cell(meta, meta["start"]), _cell(meta, meta["goal"])
        to_goal = _distances(meta, goal)
        assert to_goal[start] == d
        for steps, claim in ((d - 1, "No route is that short"), (d + 3, "There is a shorter route")):
            text = f"<answer>{steps}</answer>"
            hint = task.hint(p, text, task.verify(text, p))
            assert hint.startswith(claim), hint
            dr, dc = STEP[re.search(r"starts by going (\w+)\.", hint).group(1)]
            assert to_goal.get((start[0] + dr, start[1] + dc)) == d - 1, hint
        text = f"<answer>{d} steps</answer>"  # right number, wrong format: the scorer wants the number only
        assert task.hint(p, text, task.verify(text, p)) == "Give only the number of steps, with no other text."


def test_countdown_hint_names_the_value_and_the_misused_numbers(tasks, problems):
    task = tasks["countdown"]
    for p in problems["countdown"]:
        numbers, target = p.info["numbers"], p.info["target"]
        plus = " + ".join(map(str, numbers))
        text = f"<answer>{plus}</answer>"
        if sum(numbers) != target:
            hint = task.hint(p, text, task.verify(text, p))
            assert hint == f"Your expression comes to {sum(numbers)}, not the target."
        text = f"<answer>{' + '.join(map(str, numbers[1:]))} + 1000</answer>"  # first number left out, 1000 added
        hint = task.hint(p, text, task.verify(text, p))
        assert "1000 is not one of the numbers." in hint and f"You did not use {numbers[0]}." in hint
        text = f"<answer>({p.answer}) * {numbers[0]} / {numbers[0]}</answer>"  # the target, a number twice
        hint = task.hint(p, text, task.verify(text, p))
        assert hint == f"You used {numbers[0]} too often.", hint
        value = Fraction(numbers[0], numbers[1])
        text = f"<answer>{numbers[0]} / {numbers[1]}</answer>"
        hint = task.hint(p, text, task.verify(text, p))
        shown = value if value.denominator == 1 else f"{float(value):.4g}"
        assert hint.startswith(f"Your expression comes to {shown},"), hint


# The sentences each hint is made of, with their content left open.
HINT_SENTENCES = {
    "maze": [r"There is a shorter route than \d+ steps?\.",
             r"One shortest route starts by going (up|down|left|right)\.",
             r"No route is that short: every route from start to goal takes more than \d+ steps?\."],
    "countdown": [r"Your expression comes to [\d.]+, not the target\.", r"You used \d+ too often\.",
                  r"\d+ is not one of the numbers\.", r"You did not use [\d, ]+\."],
    "basic_arithmetic": [r"Your result is too (high|low)\."],
    "arc_1d": [re.escape(GENERIC), r"Re-check your work, and give only the final answer, in exactly the format the "
                                   r"question asks for\."],
}


@pytest.mark.parametrize("name", list(HINT_SENTENCES))
def test_placebo_is_the_hint_format_blind_to_the_answer(tasks, problems, name):
    """The placebo is drawn from the rng: the same with the answer and the metadata gone,
    made of the hint's sentences, and with varying content where the hint has content."""
    task = tasks[name]
    p = problems[name][0]
    blind = Problem(p.id, p.prompt, "0", {"source_dataset": name})  # nothing privileged left
    text = f"<answer>{_wrong(name, p)}</answer>"
    v = task.verify(text, p)
    draws = [task.placebo_hint(p, text, v, random.Random(i)) for i in range(20)]
    assert draws == [task.placebo_hint(blind, text, v, random.Random(i)) for i in range(20)]
    for message in draws + [task.hint(p, text, v)]:
        for sentence in re.split(r"(?<=\.) ", message):
            assert any(re.fullmatch(s, sentence) for s in HINT_SENTENCES[name]), (sentence, message)
    assert len(set(draws)) > 1 or name == "arc_1d"  # the generic hint has no content to draw


# ----------------------------------------------------------------------------------------
# Options, extraction, scorers that evaluate answers, the missing package


def test_options_are_checked_one_line_each(tasks):
    for options, message in [
        ({"dataset": "mazee"}, r"unknown dataset 'mazee' \(did you mean maze\?.*known: maze, countdown"),
        ({"dataset": "composite"}, "unknown dataset 'composite'"),
        ({}, "give options.dataset .* not neither"),
        ({"dataset": "maze", "datasets": {"maze": 1}}, "not both"),
        ({"dataset": 3}, "option dataset must be a string"),
        ({"datasets": {"maze": 0}}, r"option datasets.maze must be a number in \(0, \]"),
        ({"datasets": {}}, "option datasets is empty"),
        ({"dataset": "maze", "config": {"min_dis": 3}}, r"config for maze has 'min_dis' \(settable: min_dist, max"),
        ({"dataset": "maze", "config": {"seed": 3}}, "seed and size come from task.seed"),
        ({"dataset": "maze", "config": {"min_dist": 9, "max_dist": 3}}, "rejected by reasoning-gym: max_dist must be >="),
        ({"datasets": {"maze": 1}, "config": {"countdown": {}}}, "config for countdown, which options.datasets does not"),
    ]:
        with pytest.raises(UserError, match=message) as e:
            get_task("reasoning_gym", **options)
        assert "\n" not in str(e.value)


def test_config_and_a_weighted_mix(tasks):
    """A config reaches the dataset (every maze 3 steps long); a mix draws from each dataset
    about as often as its weight says, reproducibly, and grades each with its own scorer."""
    task = get_task("reasoning_gym", dataset="maze", config={"min_dist": 3, "max_dist": 3})
    assert {p.answer for p in task.problems(5)} == {"3"}
    mix = get_task("reasoning_gym", datasets={"basic_arithmetic": 1.0, "knights_knaves": 3.0},
                   config={"basic_arithmetic": {"max_terms": 2}})
    ps = mix.problems(80, seed=1)
    share = sum(p.info["source_dataset"] == "knights_knaves" for p in ps) / len(ps)
    assert 0.6 < share < 0.9
    assert all(p.info["num_terms"] == 2 for p in ps if p.info["source_dataset"] == "basic_arithmetic")
    assert [p.id for p in mix.problems(80, seed=1)] == [p.id for p in ps]
    assert all(mix.verify(f"<answer>{p.answer}</answer>", p).correct for p in ps)


def test_answer_extraction(tasks):
    task = tasks["maze"]
    assert task.extract_answer("<answer>3</answer> then <answer> 7 </answer>") == "7"
    assert task.extract_answer("I think so.\n<answer>\n1 2\n3 4\n</answer>") == "1 2\n3 4"  # grids keep their rows
    assert task.extract_answer("cut off: <answer>12") == "12"
    assert task.extract_answer("So the answer is: 12\nDone?") == "12"
    assert task.extract_answer("   ") is None


def test_answers_that_are_code_never_reach_a_scorer_that_evaluates_them(tasks, problems, tmp_path):
    """countdown's scorer runs sympy's parse_expr (eval) on the answer: code is refused
    unscored, and so are a tower of powers and a repeated list, which would hang the scorer
    or fill memory (those only through `refusal`: let through, they would hang this test);
    arithmetic, polynomials and lists are scored."""
    from rl2f.tasks.gym import refusal

    task = tasks["countdown"]
    p = problems["countdown"][0]
    marker = tmp_path / "ran"
    for code in [f"__import__('os').system('touch {marker}')", f"open('{marker}', 'w')",
                 f"[open][0]('{marker}', 'w')", "().__class__.__base__", "lambda: 1"]:
        v = task.verify(f"<answer>{code}</answer>", p)
        assert not v.correct and v.detail.startswith("not scored: the answer "), (code, v.detail)
        assert task.hint(p, "", v) == "Give the answer the question asks for as plain text, not as code."
    assert not marker.exists()
    assert task.verify(f"<answer>{p.answer}</answer>", p).correct
    for bomb in ["9**9**9**9", "2**999999", "[1] * 10**9", "'x' * 10**9", "99999999!"]:
        assert refusal("countdown", bomb), bomb
    for fine in ["x**2 + 3*x - 1", "sin(x) + C", "-(x**3)/3", "[[1, 2], [3, 4]]", "1.5 + 2"]:
        assert refusal("polynomial_multiplication", fine) is None, fine


def test_missing_package_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"needs the reasoning-gym package: bash install.sh gym "
                                        r"\(or pip install 'rl2f\[gym\]'\)") as e:
        get_task("reasoning_gym", dataset="maze")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------
# From the command line


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
@pytest.mark.parametrize("dataset", ["maze", "countdown"])
def test_cli_evaluates_a_model_on_a_dataset(tasks, tmp_path, monkeypatch, dataset, model, request):
    """`rl2f evaluate` of the embedded tiny model (model.path empty) and of the fetched
    SmolLM2-135M-Instruct with the hint and the retry teachers, two problems, two turns: it
    writes its report with both controls, and the hint teacher's messages are the task's
    hints, none flagged by the leak guard."""
    from click.testing import CliRunner

    from rl2f.cli.main import cli
    from rl2f.leak_guard import GENERIC_HINT

    smollm2 = request.getfixturevalue("smollm2_dir") if model == "smollm2" else None  # before RL2F_CACHE moves
    monkeypatch.setenv("RL2F_CACHE", str(tmp_path / "cache"))  # the tiny checkpoint is built there
    sets = ["task.name=reasoning_gym", f'task.options={{dataset = "{dataset}"}}', "rollout.max_new_tokens=8",
            "rollout.teacher_max_new_tokens=4"]
    if model == "smollm2":
        sets += [f'model.path="{smollm2}"', "rollout.max_new_tokens=32"]
    out = tmp_path / "ev"
    r = CliRunner().invoke(cli, ["evaluate", *[a for s in sets for a in ("--set", s)], "--controls", "hints,retry",
                                 "--problems", "2", "--turns", "2", "--pass-at-k", "0", "--save-episodes",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    base = json.loads((out / "report.json").read_text())["models"]["base"]
    assert base["n_problems"] == 2 and len(base["acc_at"]) == 2 and len(base["retry_acc_at"]) == 2
    assert (out / "report.md").is_file()
    turns = [t for line in (out / "episodes" / "base.feedback.jsonl").read_text().splitlines()
             for t in json.loads(line)["turns"] if t.get("feedback")]
    assert turns and all(t["feedback"] != GENERIC_HINT and not t["leak_flagged"] for t in turns)
