"""Teachers: who writes the feedback after a wrong attempt.

- `ProgrammaticTeacher`: the task's own hint function (the embedded default: exact,
  informative, never the answer).
- `RetryTeacher`: "incorrect, try again" with no content: the reference point that isolates
  the value of the feedback's content (RL2F.md, Metrics).
- `PlaceboTeacher`: the task's hint format with no information about the answer (a random
  digit and direction for the secret task): feedback minus placebo isolates the value of the
  content, where retry also changes the format the model sees.
- `SelfCritiqueTeacher`: no teacher at all: the student itself (adapter on) writes the
  critique in the teacher's turn, from its own context, with no privileged information
  (`rl2f self-correct`; trained by the critique-prediction term).
- `LLMTeacher`: the base model (adapter off) prompted with the privileged information and
  told not to reveal the answer; every message passes the leak guard, which regenerates a
  leaking message a bounded number of times and else replaces it with a generic hint.

All teachers take a batch of feedback requests at once, so an LLM teacher generates them in
one engine call.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from rl2f.errors import UserError
from rl2f.leak_guard import GENERIC_HINT, LeakGuard
from rl2f.tasks.base import Problem, Task, Verdict

RETRY_MESSAGE = "That is incorrect. Try again."


@dataclass
class FeedbackRequest:
    problem: Problem
    attempt: str  # the student's last attempt
    verdict: Verdict  # its grading, with privileged detail (failing tests, ...)
    history: list[dict]  # the dialogue so far as chat messages (student's view)
    context_ids: list[int] = field(default_factory=list)  # the dialogue's exact tokens, student turn closed


@dataclass
class Feedback:
    text: str
    leak_flagged: bool = False  # the guard flagged at least one draft of this message
    leak_reasons: list[str] = field(default_factory=list)
    tries: int = 1


class ProgrammaticTeacher:
    def __init__(self, task: Task, guard: LeakGuard | None = None):
        self.task = task
        self.guard = guard if guard is not None else LeakGuard(task)

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        out = []
        for r in requests:
            text = self.task.hint(r.problem, r.attempt, r.verdict)
            # A hint function is code we wrote, but it is still guarded: a leak here would
            # silently turn RL2F into answer copying.
            result = self.guard.guard(text, r.problem, regenerate=None, max_tries=1)
            out.append(Feedback(result.text, result.flagged, list(result.reasons), result.tries))
        return out


class RetryTeacher:
    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        return [Feedback(RETRY_MESSAGE) for _ in requests]


class PlaceboTeacher:
    """`task.placebo_hint`, drawn from a generator seeded by the problem id, the turn and the
    attempt: reproducible, and blind to the answer (the hook never reads it)."""

    def __init__(self, task: Task):
        self.task = task

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        out = []
        for r in requests:
            rng = random.Random(f"placebo|{r.problem.id}|{len(r.history)}|{r.attempt}")
            try:
                out.append(Feedback(self.task.placebo_hint(r.problem, r.attempt, r.verdict, rng)))
            except NotImplementedError as e:
                raise UserError(f"rollout.teacher = 'placebo': {e}") from None
        return out


TEACHER_SYSTEM = (
    "You are a patient teacher. A student is working on the problem below and their last "
    "attempt is wrong. You can see privileged information the student cannot: {privileged} "
    "Write one or two sentences of feedback that help the student find and fix their "
    "mistake. Never state the final answer or any equivalent form of it."
)


class LLMTeacher:
    """The base model as teacher (adapter off), guarded against leaks."""

    def __init__(self, task: Task, engine, tokenizer, sampling_params, max_tries: int = 3, guard=None):
        self.task = task
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params = sampling_params
        self.max_tries = max_tries
        self.guard = guard if guard is not None else LeakGuard(task)

    def _prompt(self, r: FeedbackRequest) -> list[int]:
        privileged = f"the reference answer is {r.problem.answer!r}." if r.problem.answer else ""
        if r.verdict.detail:
            privileged += f" Verifier output: {r.verdict.detail[:500]}"
        messages = [
            {"role": "system", "content": TEACHER_SYSTEM.format(privileged=privileged)},
            {"role": "user", "content": f"Problem:\n{r.problem.prompt}\n\nStudent's attempt:\n{r.attempt}\n\nYour feedback:"},
        ]
        return self.tokenizer.apply_chat(messages, add_generation_prompt=True)

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        prompts = [self._prompt(r) for r in requests]
        results: list[Feedback | None] = [None] * len(requests)
        reasons: list[list[str]] = [[] for _ in requests]
        pending = list(range(len(requests)))
        for attempt in range(self.max_tries):
            if not pending:
                break
            outs = self.engine.generate([prompts[i] for i in pending], self.sampling_params, use_adapter=False)
            still = []
            for i, out in zip(pending, outs):
                text = out.outputs[0].text.strip()
                check = self.guard.check(text, requests[i].problem)
                if check.leaked:
                    reasons[i].append(check.reason)
                    still.append(i)
                else:
                    results[i] = Feedback(text, bool(reasons[i]), reasons[i], attempt + 1)
            pending = still
        for i in pending:  # every draft leaked: the generic hint carries no information
            results[i] = Feedback(GENERIC_HINT, True, reasons[i], self.max_tries)
        return results


def feedback_turn_tokens(tokenizer, feedback: str) -> tuple[list[int], list[int]]:
    """The tokens that follow a closed student turn: the teacher's (user) turn holding
    `feedback` and the next generation prompt. Returns (ids, owner) with owner 1 for the
    feedback's own tokens (its closing end-of-turn token included) and 0 for template tokens.
    Found by rendering a probe dialogue, so every chat format is handled by its renderer."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": feedback}]
    ids, owner = tokenizer.render(probe, add_generation_prompt=True)
    close = max(i for i, m in enumerate(owner) if m == 1)  # the student's end-of-turn token
    return ids[close + 1 :], [1 if m == 2 else 0 for m in owner[close + 1 :]]


class SelfCritiqueTeacher:
    """The student critiques its own attempt: it generates the teacher's turn itself."""

    def __init__(self, engine, tokenizer, sampling_params):
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params = sampling_params
        ids, owner = feedback_turn_tokens(tokenizer, "")
        self.header = ids[: owner.index(1)] if 1 in owner else ids  # template up to the critique text

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        prompts = [list(r.context_ids) + self.header for r in requests]
        outs = self.engine.generate(prompts, self.sampling_params, use_adapter=True)
        return [Feedback(out.outputs[0].text.strip()) for out in outs]


def make_teacher(kind: str, task: Task, engine=None, tokenizer=None, sampling_params=None, max_tries: int = 3):
    if kind == "programmatic":
        return ProgrammaticTeacher(task)
    if kind == "retry":
        return RetryTeacher()
    if kind == "placebo":
        return PlaceboTeacher(task)
    if kind == "llm":
        return LLMTeacher(task, engine, tokenizer, sampling_params, max_tries)
    if kind == "self":
        return SelfCritiqueTeacher(engine, tokenizer, sampling_params)
    raise ValueError(f"unknown teacher kind {kind!r}")
