"""Scripted warm-start dialogues for the demo's secret-number task.

A scripted student plays the task with its programmatic teacher: its first guess is a uniform
draw among the numbers with the given digit sum (so the warm start knows the constraint but
neither the secret nor the task's prior over secrets: turn-1 accuracy ~0.2, below the ~0.35
that single-turn RL can reach by learning the prior), and after each hint it follows the hint
only with probability `follow` (a guess consistent with every hint so far), otherwise it
guesses another candidate at random. RL2F.md's toy-scale lessons: the warm start should
follow hints only weakly, so that there is room for RL2F to teach it to use them, and the
base's acc@T should stay well below 1.

A fraction `retry` of the dialogues have the retry teacher instead ("That is incorrect. Try
again."), after which the student guesses another candidate: the retry baseline is then text
the warm start has seen, not a format it breaks on.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from rl2f.tasks.secret import SecretNumberTask, candidates, hints_consistent
from rl2f.teacher import RETRY_MESSAGE


def scripted_dialogue(task: SecretNumberTask, problem, rng: random.Random, follow: float, max_turns: int,
                      retry: bool = False) -> list[dict]:
    """One chat: user problem, then alternating student guesses and teacher hints (or, with
    `retry`, the retry message)."""
    messages = [{"role": "user", "content": problem.prompt}]
    pool = candidates(problem.info["digit_sum"], task.digits)
    hints: list[tuple[int, str]] = []
    for _ in range(max_turns):
        consistent = [c for c in pool if hints_consistent(c, hints)]
        guess = rng.choice(consistent if hints and rng.random() < follow else pool)
        attempt = f"Answer: {guess}"
        messages.append({"role": "assistant", "content": attempt})
        verdict = task.verify(attempt, problem)
        if verdict.correct:
            break
        hint = RETRY_MESSAGE if retry else task.hint(problem, attempt, verdict)
        if not retry:
            hints.append((guess, hint))
        messages.append({"role": "user", "content": hint})
    if messages[-1]["role"] == "user":
        messages.pop()  # end on the student's turn: a trailing hint has nothing to train
    return messages


def write_warmup_chats(path: str | Path, task: SecretNumberTask, n: int, seed: int, follow: float = 0.35,
                       retry: float = 0.2, max_turns: int = 5) -> Path:
    """`n` scripted dialogues on training problems of `task` as a chat JSONL (what `rl2f train
    --method sft` reads); a fraction `retry` of them with the retry teacher."""
    rng = random.Random(f"warmup-{seed}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem in task.problems(n, seed=seed, split="train"):
            chat = scripted_dialogue(task, problem, rng, follow, max_turns, retry=rng.random() < retry)
            f.write(json.dumps({"messages": chat}) + "\n")
    return path
