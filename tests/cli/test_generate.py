"""`rl2f generate`: a summary line, resumable output, and one clear error for bad input."""
import json

import pytest
from click.testing import CliRunner

from rl2f.cli.main import cli

SMALL = ["--set", "rollout.group_size=2", "--set", "rollout.max_turns=2", "--set", "rollout.max_new_tokens=4"]


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory, monkeypatch):
    # The embedded tiny checkpoint is built once per test session, never downloaded.
    monkeypatch.setenv("RL2F_CACHE", str(tmp_path_factory.getbasetemp() / "rl2f-cache"))


def run(args):
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_summary_line_and_resume(tmp_path):
    """The last line is a JSON summary; running again on the same file adds nothing. Off a
    terminal, progress is one line per batch (rollout.problems_per_batch 2: 2 of 3, then 3)."""
    out = tmp_path / "eps.jsonl"
    code, text = run(["generate", "--set", "task.name=secret", *SMALL, "--set", "rollout.problems_per_batch=2",
                      "--problems", "3", "--out", str(out)])
    assert code == 0, text
    progress = [line.split()[1] for line in text.splitlines() if line.startswith("generate ")]
    assert progress == ["0/3", "2/3", "3/3"], text
    summary = json.loads(text.strip().splitlines()[-1])
    assert {"problems", "episodes", "acc@1", "acc@2", "leak_rate", "tokens_per_s"} <= set(summary)
    assert (summary["problems"], summary["episodes"], summary["new_episodes"]) == (3, 6, 6)
    code, text = run(["generate", "--set", "task.name=secret", *SMALL, "--set", "rollout.problems_per_batch=2",
                      "--problems", "3", "--out", str(out)])
    summary = json.loads(text.strip().splitlines()[-1])
    assert (code, summary["episodes"], summary["new_episodes"]) == (0, 6, 0)
    assert len(out.read_text().splitlines()) == 6


def test_bad_problem_file_names_file_and_line(tmp_path):
    """A bad JSONL line or a problem without an answer stops with file:line; --skip-bad
    skips and counts them instead."""
    data = tmp_path / "problems.jsonl"
    good = {"problem": "What is 2 + 3?", "answer": "5"}
    lines = [json.dumps(good), "{not json", json.dumps({"problem": "What is 1 + 1?"})]
    lines += [json.dumps({**good, "problem": f"What is {i} + 3?", "answer": str(i + 3)}) for i in range(12)]
    data.write_text("\n".join(lines) + "\n")
    args = ["generate", "--set", "task.name=math", "--set", f"task.options.path='{data}'", *SMALL,
            "--split", "train", "--problems", "2", "--out", str(tmp_path / "eps.jsonl")]
    code, text = run(args)
    assert code == 2 and "problems.jsonl:2" in text and "Traceback" not in text
    code, text = run(args + ["--skip-bad"])
    assert code == 0, text
    assert json.loads(text.strip().splitlines()[-1])["skipped_lines"] == 2


def test_unknown_task_is_one_line(tmp_path):
    code, text = run(["generate", "--set", "task.name=chess", "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and text.count("\n") == 1, text
    assert text.startswith("error: unknown task 'chess' (known tasks: math, maze, puzzle, code, secret, ")
    assert "or give the task class as 'package.module:Class' or 'path/to/file.py:Class')" in text
