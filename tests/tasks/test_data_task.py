"""The `jsonl` task (rl2f.tasks.data) and the answer checks it shares with the math task's files:
a GSM8K-shaped file (`question`, `answer` = the worked solution ending "#### N", a `split`
column) is refused without `answer_regex` and loads clean answers with it, so the leak guard
holds the real answer; the data set's own splits; the exact and code verifiers; option errors."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rl2f.config import RunConfig, TaskSection
from rl2f.errors import UserError
from rl2f.eval.evaluate import resolve_problems
from rl2f.leak_guard import LeakGuard
from rl2f.tasks import get_task
from rl2f.tasks.math import MathTask

DATA = Path(__file__).parent / "data"
GSM8K = DATA / "gsm8k_sample.jsonl"
ROWS = [json.loads(line) for line in GSM8K.read_text().splitlines()]
REGEX = r"####\s*(.+)$"
ANSWERS = {r["question"]: r["answer"].rsplit("####", 1)[1].strip() for r in ROWS}
CLIPS = next(r["question"] for r in ROWS if ANSWERS[r["question"]] == "72")
OPTIONS = {"path": str(GSM8K), "prompt_field": "question", "answer_regex": REGEX}


def _as_math_file(tmp_path):
    """The GSM8K rows with `question` renamed to `problem`: the math task's file shape."""
    f = tmp_path / "gsm8k_math.jsonl"
    f.write_text("".join(json.dumps({"problem": r["question"], "answer": r["answer"]}) + "\n" for r in ROWS))
    return f


def _all(task):
    """Every problem of a loaded file, both splits."""
    return [p for split in ("train", "test") for p in task.problems(len(task._pool[split]), split=split)]


def _one_line_error(make) -> str:
    with pytest.raises(UserError) as e:
        make()
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------
# The GSM8K trap


def test_worked_solutions_are_refused_naming_line_and_field(tmp_path):
    """A raw GSM8K file is refused in one line naming the file, the line, the field and the
    fix, by the math task (before: it loaded the worked solutions as answers, silently) and
    by the jsonl task."""
    f = _as_math_file(tmp_path)
    msg = _one_line_error(lambda: MathTask(path=f))
    assert msg.startswith(f"{f}:1: field 'answer' holds a worked solution (3 lines)") and "answer_regex" in msg
    msg = _one_line_error(lambda: get_task("jsonl", path=str(GSM8K), prompt_field="question"))
    assert msg.startswith(f"{GSM8K}:1: field 'answer' holds a worked solution (3 lines)")


def test_an_answer_too_long_for_one_or_a_regex_that_misses_names_the_line(tmp_path):
    """A one-line answer over 100 characters is refused like a worked solution; a row the
    regex does not match is named; skip_bad skips such rows and counts them."""
    f = tmp_path / "p.jsonl"
    long = "x + " * 30 + "1"
    f.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n"
                 + json.dumps({"problem": "Simplify it.", "answer": long}) + "\n")
    msg = _one_line_error(lambda: MathTask(path=f))
    assert msg.startswith(f"{f}:2: field 'answer' holds a worked solution ({len(long)} characters)")
    task = MathTask(path=f, skip_bad=True)
    assert task.skipped == 1 and [p.answer for p in _all(task)] == ["2"]
    lines = GSM8K.read_text().splitlines()
    lines[3] = lines[3].replace("####", "so")
    g = tmp_path / "g.jsonl"
    g.write_text("\n".join(lines) + "\n")
    msg = _one_line_error(lambda: get_task("jsonl", **{**OPTIONS, "path": str(g)}))
    assert msg.startswith(f"{g}:4: answer_regex") and "does not match field 'answer'" in msg


@pytest.mark.parametrize("which", ["math", "jsonl"])
def test_answer_regex_loads_clean_answers_the_guard_flags(tmp_path, which):
    """With answer_regex each answer is the number after ####, the stated total is a leak,
    a wrong total gets numeric hints that pass the guard, and grading works."""
    if which == "math":
        task = MathTask(path=_as_math_file(tmp_path), answer_regex=REGEX)
    else:
        task = get_task("jsonl", **OPTIONS)
    problems = _all(task)
    assert {p.prompt: p.answer for p in problems} == ANSWERS
    p = next(p for p in problems if p.prompt == CLIPS)
    guard = LeakGuard(task)
    assert guard.check("The total is 72 clips.", p).leaked
    wrong = task.verify("9 + 8 = 17, so Answer: 17", p)
    assert task.verify("9 * 8 = 72, so Answer: 72", p).correct and not wrong.correct
    hint = task.hint(p, "Answer: 17", wrong)
    assert "too low" in hint and not guard.check(hint, p).leaked


# ---------------------------------------------------------------------------------------
# Splits


def test_split_field_gives_the_data_sets_own_splits(capsys):
    """With split_field the test split is exactly the rows marked test (and train the rows
    marked train), in any number asked up to their count; one line at load counts them."""
    task = get_task("jsonl", **OPTIONS, split_field="split")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{GSM8K}: 4 train and 2 test problems (split by field 'split'" in err
    for split in ("train", "test"):
        want = {r["question"] for r in ROWS if r["split"] == split}
        assert {p.prompt for p in task.problems(len(want), split=split)} == want
    msg = _one_line_error(lambda: task.problems(3, split="test"))
    assert msg.startswith(f"{GSM8K}: asked for 3 test problems but the file has 2")
    task = get_task("jsonl", **OPTIONS, split_field="split", train_split="test", test_split="none")
    assert len(task._pool["train"]) == 2 and task._pool["test"] == []
    assert "4 records of other splits left out" in capsys.readouterr().err


def test_without_split_field_the_math_tasks_hash_split():
    """Without split_field a problem's split is the math task's hash split of its text."""
    task = get_task("jsonl", **OPTIONS, test_fraction=0.5)
    math = MathTask(test_fraction=0.5)
    assert len(_all(task)) == len(ROWS)
    for split in ("train", "test"):
        assert all(math._split_of(p.prompt) == split for p in task._pool[split])


def test_evaluation_uses_the_data_sets_test_rows():
    """`resolve_problems` (what `rl2f evaluate` evaluates on) of a config whose task is a jsonl
    file with split_field: the rows marked test."""
    cfg = RunConfig()
    cfg.task = TaskSection(name="jsonl", options={**OPTIONS, "split_field": "split"}, n_eval=2)
    [(task, problems)] = resolve_problems(cfg)
    assert task.name == "jsonl"
    assert {p.prompt for p in problems} == {r["question"] for r in ROWS if r["split"] == "test"}


def test_rl2f_evaluate_on_the_test_rows(tmp_path, monkeypatch):
    """`rl2f evaluate` of the tiny model with a config file in the documented shape (the
    regex a TOML literal string) plays exactly the data set's test rows."""
    from rl2f.cli.evaluate import evaluate
    from rl2f.cli.main import cli
    from rl2f.episodes import read_episodes

    monkeypatch.setenv("RL2F_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "gsm8k.toml"
    config.write_text(f"[task]\nname = \"jsonl\"\nn_eval = 2\n[task.options]\npath = '{GSM8K}'\n"
                      f"prompt_field = \"question\"\nanswer_regex = '####\\s*(.+)$'\nsplit_field = \"split\"\n")
    sets = [a for o in ["rollout.max_new_tokens=4", "rollout.teacher_max_new_tokens=4", "lora.rank=4"]
            for a in ("--set", o)]
    r = CliRunner().invoke(type(cli)(name="rl2f", commands=[evaluate]),
                           ["evaluate", "--config", str(config), *sets, "--turns", "1", "--save-episodes",
                            "--controls", "hints", "--pass-at-k", "0", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    episodes = read_episodes(tmp_path / "ev" / "episodes" / "base.feedback.jsonl")
    dialogues = [" ".join(m["content"] for m in e.messages) for e in episodes]
    played = {r["question"] for r in ROWS if any(r["question"] in d for d in dialogues)}
    assert len(episodes) == 2 and played == {r["question"] for r in ROWS if r["split"] == "test"}


# ---------------------------------------------------------------------------------------
# The exact and code verifiers


def _one_row(tmp_path, rec, **options):
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps({**rec, "split": "train"}) + "\n")
    task = get_task("jsonl", path=str(f), split_field="split", **options)
    [p] = task.problems(1)
    return task, p


def test_exact_verifier(tmp_path):
    """exact: the answer line equals the reference up to case, spaces and outer punctuation;
    the hint compares lengths and does not say the answer."""
    task, p = _one_row(tmp_path, {"problem": "Which city is the capital of France?", "answer": "Paris"},
                       verifier="exact")
    assert task.verify("It is the largest city.\nAnswer:  PARIS.", p).correct
    wrong = task.verify("Answer: Le Havre", p)
    assert not wrong.correct and wrong.answer == "Le Havre"
    hint = task.hint(p, "Answer: Le Havre", wrong)
    assert hint == "That is not correct. The answer is shorter than yours."
    assert not LeakGuard(task).check(hint, p).leaked and LeakGuard(task).check("It is Paris.", p).leaked


def test_code_verifier(tmp_path):
    """code: the record's tests run in the code task's sandbox; the problem has no answer."""
    task, p = _one_row(tmp_path, {"problem": "Write add(a, b) that returns a + b.", "entry_point": "add",
                                  "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}, verifier="code")
    assert p.answer == "" and task.system_prompt == "Write the complete Python function in a ```python code block."
    assert task.verify("```python\ndef add(a, b):\n    return a + b\n```", p).correct
    wrong = task.verify("```python\ndef add(a, b):\n    return a - b\n```", p)
    assert not wrong.correct and task.hint(p, "", wrong) == "add(1, 2) returned -1, but it should return 3."


# ---------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("options,words", [
    ({}, "option path is required"),
    ({"path": str(GSM8K), "verifier": "fuzzy"}, "option verifier must be one of math, exact, code, got 'fuzzy'"),
    ({**OPTIONS, "answer_regex": "####(.+"}, "answer_regex '####(.+' is not a regular expression"),
    ({**OPTIONS, "answer_regex": "####.+$"}, "answer_regex must capture the answer in a group"),
    ({**OPTIONS, "answer_regex": 3}, "option answer_regex must be a string, got 3"),
    ({**OPTIONS, "prompt_field": ["question"]}, "option prompt_field must be a string"),
    ({**OPTIONS, "test_fraction": 1.0}, "option test_fraction must be a number in [0.01, 0.99]"),
    ({**OPTIONS, "train_split": "test"}, "train_split and test_split are both 'test'"),
    ({**OPTIONS, "verifier": "code"}, "answer_regex does not apply to verifier 'code'"),
    ({**OPTIONS, "prompt": "question"}, "unexpected keyword argument 'prompt'"),
    ({"path": str(DATA / "missing.jsonl")}, "missing.jsonl: cannot read: the file does not exist"),
])
def test_bad_options_are_one_line_errors(options, words):
    """Each bad option is one error line naming it."""
    assert words in _one_line_error(lambda: get_task("jsonl", **options))


def test_math_answer_regex_needs_a_file():
    """The math task's answer_regex is checked like the jsonl task's, and needs `path`."""
    omni = DATA / "omni_sample.jsonl"
    assert "must capture the answer" in _one_line_error(lambda: MathTask(path=omni, answer_regex="####"))
    assert "give path too" in _one_line_error(lambda: MathTask(answer_regex=REGEX))
