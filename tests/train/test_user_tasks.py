"""Bring your own task: a Task class in a file of the user's, or in a module, or registered
by an installed package (entry-point group `rl2f.tasks`), trained, resumed and evaluated from
the command line; code that cannot be loaded is one error line."""
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from rl2f.cli.main import cli
from rl2f.errors import UserError
from rl2f.tasks import get_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# A whole task in a file of the user's: ~30 lines, what the README's section shows.
USER_TASK = textwrap.dedent('''
    import random

    from rl2f.tasks.base import Problem, Task, Verdict, answer_segment


    class AddTask(Task):
        """Add two one-digit numbers."""

        name = "add"
        system_prompt = "End your reply with 'Answer: N'."

        def __init__(self, top: int = 9):
            self.top = top

        def problems(self, n, seed=0, split="train"):
            rng = random.Random(f"{seed}|{split}")  # each split draws its own pairs
            out, seen = [], set()
            while len(out) < n:
                a, b = rng.randint(0, self.top), rng.randint(0, self.top)
                if (a, b) in seen or (a + b) % 2 != (split == "test"):  # even sums train, odd test
                    continue
                seen.add((a, b))
                out.append(Problem(f"add-{a}-{b}", f"What is {a} + {b}?", str(a + b)))
            return out

        def extract_answer(self, text):
            return answer_segment(text).strip() or None

        def verify(self, text, problem):
            got = self.extract_answer(text)
            return Verdict(got == problem.answer, got)

        def hint(self, problem, attempt, verdict):
            got = verdict.answer
            if got is None or not got.lstrip("-").isdigit():
                return "Give a whole number as 'Answer: N'."
            return f"Your answer is too {'high' if int(got) > int(problem.answer) else 'low'}."
''')


@pytest.fixture()
def task_file(tmp_path):
    path = tmp_path / "tasks" / "my_task.py"
    path.parent.mkdir()
    path.write_text(USER_TASK)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


SMALL = ["--set", "rollout.group_size=2", "--set", "rollout.problems_per_batch=1", "--set", "rollout.max_turns=2",
         "--set", "rollout.max_new_tokens=4", "--set", "train.micro_batch=4", "--set", "task.n_eval=2", "--set", "task.n_train=8"]


def test_a_task_file_is_trained_resumed_and_evaluated_by_path(tmp_path, task_file, tiny_ckpt, monkeypatch):
    """`task.name = "tasks/my_task.py:AddTask"` (relative to where rl2f runs) trains a step,
    the run resumes to step 2 from another directory (the saved config holds the file's
    absolute path), and `rl2f evaluate` plays the task's test split."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    r = invoke("train", "--method", "rl2f", "--config", str(CONFIGS / "tiny-rl2f.toml"), "--set", "train.max_steps=1",
               "--set", 'task.name="tasks/my_task.py:AddTask"', "--set", "task.options={top=5}",
               "--set", f'model.path="{tiny_ckpt}"', *SMALL, "--out", str(out))
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "checkpoints" / "step-000001" / "config.json").read_text())
    assert saved["task"]["name"] == f"{task_file}:AddTask"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke("train", "--resume", str(out), "--set", "train.max_steps=2")
    assert r.exit_code == 0, r.output
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    r = invoke("evaluate", "--config", str(CONFIGS / "tiny-rl2f.toml"), "--set", f'task.name="{task_file}:AddTask"',
               "--set", "task.options={top=5}", "--set", f'model.path="{tiny_ckpt}"', *SMALL, "--adapter", f"mine={out}", "--turns", "2",
               "--pass-at-k", "0", "--save-episodes", "--out", str(tmp_path / "ev"))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["tasks"] == {"add": 2} and set(report["models"]) == {"base", "mine"}
    episodes = [json.loads(l) for l in (tmp_path / "ev" / "episodes" / "mine.feedback.jsonl").read_text().splitlines()]
    # the test split: odd sums only, as the file's task defines it
    assert all(sum(map(int, e["problem_id"].split("-")[1:])) % 2 == 1 for e in episodes)


NOT_A_TASK = "class AddTask:\n    pass\n"
BROKEN = "import no_such_package_for_rl2f\n"


@pytest.mark.parametrize("name, body, message", [
    ("missing.py:AddTask", None, "missing.py: no such file"),
    ("my_task.py:Nope", USER_TASK, "has no 'Nope'"),
    ("my_task.py:AddTask", NOT_A_TASK, "is not a task class (a subclass of rl2f.tasks.base.Task)"),
    ("my_task.py:AddTask", BROKEN, "importing"),
    ("my_task.py:AddTask", "def f(:\n", "(line 1) (SyntaxError"),
    ("no_such_package_for_rl2f.tasks:AddTask", None, "no module named 'no_such_package_for_rl2f.tasks'"),
    ("nosuchtask", None, "unknown task 'nosuchtask' (known tasks: math, maze"),
])
def test_code_that_cannot_be_loaded_is_one_error_line(tmp_path, monkeypatch, name, body, message):
    """`rl2f train` with a task path that is missing, names nothing there, names a class that
    is not a Task, or a file that does not import: exit 2 and one line naming the spec."""
    monkeypatch.chdir(tmp_path)
    if body is not None:
        Path("my_task.py").write_text(body)
    r = invoke("train", "--method", "rl2f", "--config", str(CONFIGS / "tiny-rl2f.toml"),
               "--set", f'task.name="{name}"', "--out", str(tmp_path / "run"))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert f"'{name}'" in lines[0] or f"{tmp_path / name.split(':')[0]}" in lines[0], r.output
    assert "Traceback" not in r.output


def test_a_module_task_and_an_installed_plugin(tmp_path, monkeypatch):
    """The same class by module path ("my_task_mod:AddTask", on PYTHONPATH) and by the name an
    installed package registers under the entry-point group rl2f.tasks."""
    (tmp_path / "my_task_mod.py").write_text(USER_TASK)
    dist = tmp_path / "rl2f_add_task-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rl2f-add-task\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rl2f.tasks]\nadd = my_task_mod:AddTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    by_module = get_task("my_task_mod:AddTask", top=3)
    by_plugin = get_task("add", top=3)
    assert type(by_module).__name__ == type(by_plugin).__name__ == "AddTask"
    assert by_plugin.problems(4, seed=1) == by_module.problems(4, seed=1)
    with pytest.raises(UserError, match=r"known tasks: math, maze, puzzle, code, secret, .*\badd;"):
        get_task("nosuchtask")


USER_TEACHER = textwrap.dedent('''
    class CountingTeacher:
        """Says how far off the attempt is, and on problems with an even first digit writes the answer out."""

        def __init__(self, task):
            self.task = task

        def feedback(self, requests):
            out = []
            for r in requests:
                a = int(r.problem.id.split("-")[1])
                out.append(f"The answer is {r.problem.answer}." if a % 2 == 0 else "Count once more, carefully.")
            return out
''')


def test_a_teacher_of_the_users_speaks_and_is_guarded(tmp_path, task_file, tiny_ckpt, monkeypatch):
    """`rollout.teacher = "teachers.py:CountingTeacher"` writes the feedback of `rl2f generate`;
    its messages that write the answer out are replaced by the generic hint and counted as
    leaks, as the task's own hints are. A teacher name that is neither built in nor a class is
    one line at config load."""
    from rl2f.leak_guard import GENERIC_HINT

    monkeypatch.chdir(tmp_path)
    Path("teachers.py").write_text(USER_TEACHER)
    out = tmp_path / "eps.jsonl"
    r = invoke("generate", "--set", f'task.name="{task_file}:AddTask"', "--set", 'rollout.teacher="teachers.py:CountingTeacher"',
               "--set", f'model.path="{tiny_ckpt}"', *SMALL, "--problems", "6", "--out", str(out))
    assert r.exit_code == 0, r.output
    episodes = [json.loads(l) for l in out.read_text().splitlines()]
    feedback = [(e["problem_id"], t["feedback"]) for e in episodes for t in e["turns"] if t["feedback"] is not None]
    assert feedback, "no wrong first attempt: nothing to check"
    flagged = 0
    for pid, text in feedback:
        a, b = map(int, pid.split("-")[1:])
        if a % 2:
            assert text == "Count once more, carefully.", (pid, text)
        elif a == 0 or b == 0:  # "The answer is 6." for "What is 6 + 0?" restates the prompt: no leak
            assert text == f"The answer is {a + b}.", (pid, text)
        else:
            assert text == GENERIC_HINT, (pid, text)
            flagged += 1
    assert flagged and json.loads(r.output.strip().splitlines()[-1])["leak_string_flags"] == flagged

    r = invoke("generate", "--set", 'rollout.teacher="programatic"', "--out", str(tmp_path / "x.jsonl"))
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "teacher must be one of programmatic" in r.output, r.output


def test_the_readme_task_is_a_working_task(tmp_path):
    """The README's "Bring your own task" class, as printed there: loaded by path, its splits
    are disjoint, its reference answers verify and a wrong one gets a hint."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(# tasks/add\.py.*?)```", readme, re.S)
    assert code, "the README's task example is gone"
    (tmp_path / "add.py").write_text(code.group(1))
    task = get_task(f"{tmp_path / 'add.py'}:AddTask", top=9)
    train, test = task.problems(20, seed=3), task.problems(20, seed=3, split="test")
    assert not {p.id for p in train} & {p.id for p in test}
    for p in train + test:
        assert task.verify(f"Let me add.\nAnswer: {p.answer}", p).correct
        wrong = task.verify(f"Answer: {int(p.answer) + 1}", p)
        assert not wrong.correct and task.hint(p, "", wrong) == "Your answer is too high."
