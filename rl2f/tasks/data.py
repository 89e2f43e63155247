"""Data-driven tasks with no code: `task.name = "jsonl"` reads problems from a JSONL file, one
record a line, with the field names, answer extraction, splits and verifier given as options.

    [task]                  # GSM8K as published: `question`, and `answer` = the worked
    name = "jsonl"          # solution ending "#### 72"; a `split` column of train / test
    [task.options]
    path = "gsm8k.jsonl"
    prompt_field = "question"
    answer_regex = '####\\s*(.+)$'
    split_field = "split"
    verifier = "math"

Options: `path` (required); `prompt_field` ("problem"); `answer_field` ("answer");
`answer_regex` (the answer is its first capture group's match in the answer field);
`id_field` (default: a hash of the prompt); `split_field` with `train_split` / `test_split`
(the values of that field that mark the data set's own splits; records of other splits are
left out), else a hash of the prompt puts `test_fraction` of the problems in the test split
(as the math task splits its files); `verifier`: "math" (the math task's grading, hints and
answer forms), "exact" (the answer line equals the reference up to case, spacing and outer
punctuation) or "code" (the code task's sandboxed tests: records hold `entry_point` and
`tests` in the code task's shapes, and no answer); `skip_bad` (skip malformed lines).

Answers are checked at load: the leak guard tests each teacher message against the reference
answer, so a worked solution in its place (GSM8K's raw `answer`) would let "The total is 72
clips." through. A multi-line answer, or one over `MAX_ANSWER_CHARS`, is a bad line unless
`answer_regex` extracts a short one. `read_problems` is that record loop, shared with the math
task's files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rl2f.errors import UserError
from rl2f.jsonl import BadRecord
from rl2f.tasks.base import NO_ANSWER_HINT, Problem, Task, Verdict, answer_segment, check_option
from rl2f.tasks.code import CodeTask, read_tests
from rl2f.tasks.math import MathTask
from rl2f.tasks.maze import content_id
from rl2f.tasks.records import Fields, answer_pattern, draw, hash_bucket, read_problems

VERIFIERS = ("math", "exact", "code")


def _normal(text: str) -> str:
    """Case, runs of spaces and outer quotes, stars and periods do not count."""
    return " ".join(text.casefold().split()).strip(" .'\"`*")


class ExactAnswer:
    """The `exact` verifier: the text after the attempt's last "Answer:" equals the reference
    up to `_normal`. Its hint compares lengths in words, which says something of the answer's
    shape and nothing of its content."""

    system_prompt = "Answer the question. Keep it short and end with a line 'Answer: <your answer>'."

    def extract_answer(self, text: str) -> str | None:
        return answer_segment(text).strip() or None

    def verify(self, text: str, problem: Problem) -> Verdict:
        got = self.extract_answer(text)
        if got is None:
            return Verdict(False, None, "no final answer found in the attempt")
        return Verdict(_normal(got) == _normal(problem.answer), got, f"extracted {got!r}; reference {problem.answer!r}")

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        if verdict.correct:
            return "That is correct."
        if verdict.answer is None:
            return NO_ANSWER_HINT
        want, got = len(_normal(problem.answer).split()), len(_normal(verdict.answer).split())
        if want == got:
            return "That is not correct. Your answer has the right number of words, but not the right words."
        return f"That is not correct. The answer is {'longer' if want > got else 'shorter'} than yours."

    def answer_forms(self, problem: Problem) -> list[str]:
        return [problem.answer]


# ---------------------------------------------------------------------------------------
# The task


class JsonlTask(Task):
    """Problems from a JSONL file with the fields, splits and verifier given as options (see
    the module docstring)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike | None = None, prompt_field: str = "problem",
                 answer_field: str = "answer", answer_regex: str | None = None, id_field: str | None = None,
                 split_field: str | None = None, train_split: str = "train", test_split: str = "test",
                 test_fraction: float = 0.2, verifier: str = "math", skip_bad: bool = False):
        if path is None:
            raise UserError("task 'jsonl': option path is required (the JSONL file of problems)")
        if not isinstance(path, os.PathLike):
            check_option("jsonl", "path", path, str)
        for option, value in (("prompt_field", prompt_field), ("answer_field", answer_field),
                              ("train_split", train_split), ("test_split", test_split)):
            check_option("jsonl", option, value, str)
        for option, value in (("id_field", id_field), ("split_field", split_field)):
            if value is not None:
                check_option("jsonl", option, value, str)
        if train_split == test_split:
            raise UserError(f"task 'jsonl': options train_split and test_split are both {train_split!r}")
        # percent buckets: 1% is the finest cut
        test_fraction = check_option("jsonl", "test_fraction", test_fraction, float, 0.01, 0.99)
        check_option("jsonl", "skip_bad", skip_bad, bool)
        if verifier not in VERIFIERS:
            raise UserError(f"task 'jsonl': option verifier must be one of {', '.join(VERIFIERS)}, got {verifier!r}")
        pattern = answer_pattern("jsonl", answer_regex)
        if verifier == "code" and pattern is not None:
            raise UserError("task 'jsonl': option answer_regex does not apply to verifier 'code' "
                            "(its tests are the truth)")
        self.grader: Task | ExactAnswer
        self.grader = MathTask() if verifier == "math" else CodeTask() if verifier == "code" else ExactAnswer()
        self.system_prompt = self.grader.system_prompt
        self.path = Path(path)
        test_cut = int(round(100 * test_fraction))

        def record_info(rec: dict) -> dict:
            out = {}
            if verifier == "code":
                out["entry_point"], out["tests"] = read_tests(rec)
            if split_field is not None:
                if rec.get(split_field) is None:
                    raise BadRecord(f"missing '{split_field}'")
                out["split"] = str(rec[split_field])
            return out

        fields = Fields(prompt_field, None if verifier == "code" else answer_field, pattern, id_field)
        problems, self.skipped = read_problems(
            self.path, fields, lambda prompt, line: content_id("jsonl", prompt.strip()), record_info, skip_bad)
        self._pool: dict[str, list[Problem]] = {"train": [], "test": []}
        other = 0  # records of the data set's other splits (validation, ...)
        for p in problems:
            if split_field is None:
                self._pool["test" if hash_bucket(p.prompt) < test_cut else "train"].append(p)
            elif p.info["split"] in (train_split, test_split):
                self._pool["train" if p.info["split"] == train_split else "test"].append(p)
            else:
                other += 1
        if split_field is None:
            self.how = f"{100 - test_cut}% train / {test_cut}% test by hash"
        else:
            self.how = f"split by field '{split_field}': train {train_split!r}, test {test_split!r}"
        notes = [self.how] + ([f"{other} records of other splits left out"] if other else []) \
            + ([f"{self.skipped} bad lines skipped"] if self.skipped else [])
        print(f"{self.path}: {len(self._pool['train'])} train and {len(self._pool['test'])} test problems "
              f"({'; '.join(notes)})", file=sys.stderr)

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        if split not in ("train", "test"):
            raise UserError(f"task 'jsonl': split must be 'train' or 'test', got {split!r}")
        return draw(self._pool[split], n, split, f"rl2f-jsonl:{split}:{seed}", self.path, self.how)

    # the verifier's grading, hints and answer forms, on this file's problems
    def extract_answer(self, text: str) -> str | None:
        return self.grader.extract_answer(text)

    def verify(self, text: str, problem: Problem) -> Verdict:
        return self.grader.verify(text, problem)

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        return self.grader.hint(problem, attempt, verdict)

    def answer_forms(self, problem: Problem) -> list[str]:
        return self.grader.answer_forms(problem)
