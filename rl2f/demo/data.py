"""Scripted students for the demo's higher-or-lower task (rl2f/tasks/highlow.py), played
against the real teachers of rl2f/teacher.py.

- `WarmStart`: the base's habits. Its first guess is a uniform draw among the prompt's
  candidates (so the warm start knows the residue constraint but neither the secret nor the
  task's prior: turn-1 accuracy 1/15, below the 0.167 that single-turn RL can reach by learning
  the prior); after a hint it follows it only with probability `follow` (an untried guess
  consistent with every hint so far), else it guesses another untried candidate at random.
  RL2F.md's toy-scale lessons: the warm start should follow hints only weakly, so that there
  is room for RL2F to teach it to use them.
- `HintBlind`: never reads a hint: untried candidates at random. Its content effect is 0 with
  any placebo (a check on the evaluation's machinery, tests/test_demo_task.py).
- `Bisect`: the best hint user (`optimal_guess`: the guess tree covering the most prior mass):
  the dialogues of the "good hint-following" SFT arm, and the hint-optimal ceiling.

A fraction of the warm-start dialogues have the retry teacher instead ("That is incorrect. Try
again."), after which the student guesses another candidate: the retry baseline is then text
the warm start has seen, not a format it breaks on.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from rl2f.tasks.highlow import TOO_HIGH, TOO_LOW, HighLowTask, optimal_guess
from rl2f.teacher import FeedbackRequest, ProgrammaticTeacher, RetryTeacher


def consistent(guess: int, seen: list[tuple[int, str]]) -> bool:
    """Whether `guess` agrees with every (earlier guess, hint) pair."""
    return all((guess < g) if hint == TOO_HIGH else (guess > g) if hint == TOO_LOW else True for g, hint in seen)


class WarmStart:
    def __init__(self, follow: float):
        self.follow = follow

    def __call__(self, task: HighLowTask, problem, seen, rng: random.Random) -> int:
        tried = {g for g, _ in seen}
        pool = [x for x in task.candidates(problem.info["residue"]) if x not in tried]
        if seen and rng.random() < self.follow:
            pool = [x for x in pool if consistent(x, seen)] or pool
        return rng.choice(pool)


class HintBlind:
    def __call__(self, task: HighLowTask, problem, seen, rng: random.Random) -> int:
        tried = {g for g, _ in seen}
        return rng.choice([x for x in task.candidates(problem.info["residue"]) if x not in tried])


class Bisect:
    def __init__(self, turns: int):
        self.turns = turns

    def __call__(self, task: HighLowTask, problem, seen, rng: random.Random) -> int:
        pool = task.candidates(problem.info["residue"])
        left = [x for x in pool if consistent(x, seen) and x not in {g for g, _ in seen}] or pool
        weights = [task.weight(x) for x in left]  # `left` is an interval of the ascending pool
        return left[optimal_guess(weights, max(self.turns - len(seen), 1))]


def play(task: HighLowTask, problem, student, teacher, rng: random.Random, max_turns: int) -> list[dict]:
    """One chat: the problem, then alternating student guesses and `teacher`'s messages (a
    teacher of rl2f/teacher.py), until a correct guess or `max_turns` guesses."""
    messages = [{"role": "user", "content": problem.prompt}]
    seen: list[tuple[int, str]] = []
    for turn in range(max_turns):
        guess = student(task, problem, seen, rng)
        attempt = f"Answer: {guess}"
        messages.append({"role": "assistant", "content": attempt})
        verdict = task.verify(attempt, problem)
        if verdict.correct or turn + 1 == max_turns:
            break
        hint = teacher.feedback([FeedbackRequest(problem, attempt, verdict, list(messages))])[0].text
        seen.append((guess, hint))
        messages.append({"role": "user", "content": hint})
    return messages


def solved_at(task: HighLowTask, problem, messages: list[dict]) -> int | None:
    """The turn (1-based) of the first correct guess in a chat, or None."""
    attempts = [m["content"] for m in messages if m["role"] == "assistant"]
    return next((t + 1 for t, a in enumerate(attempts) if task.verify(a, problem).correct), None)


def write_chats(path: str | Path, task: HighLowTask, n: int, seed: int, student, retry: float = 0.0,
                max_turns: int = 5, solved_only: bool = False) -> Path:
    """`n` scripted dialogues on training problems of `task` as a chat JSONL (what `rl2f train
    --method sft` reads); a fraction `retry` of them with the retry teacher; with
    `solved_only`, only the dialogues that reach the answer."""
    rng = random.Random(f"chats-{seed}")
    hints, retries = ProgrammaticTeacher(task), RetryTeacher()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem in task.problems(n, seed=seed, split="train"):
            teacher = retries if rng.random() < retry else hints
            chat = play(task, problem, student, teacher, rng, max_turns)
            if not solved_only or solved_at(task, problem, chat):
                f.write(json.dumps({"messages": chat}) + "\n")
    return path
