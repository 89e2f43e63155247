"""Teachers: who writes the feedback after a wrong attempt.

- `ProgrammaticTeacher`: the task's own hint function (the embedded default: exact,
  informative, never the answer).
- `RetryTeacher`: "incorrect, try again" with no content: the reference point that isolates
  the value of the feedback's content (RL2F.md, Metrics).
- `PlaceboTeacher`: the task's hint format with no information about the answer (a random
  digit and direction for the secret task): feedback minus placebo isolates the value of the
  content, where retry also changes the format the model sees.
- `DecoyTeacher`: the task's real hints about a decoy answer drawn from the same prior: the
  strictest placebo, in the hints' own words and as consistent as they are.
- `SelfCritiqueTeacher`: no teacher at all: the student itself (adapter on) writes the
  critique in the teacher's turn, from its own context, with no privileged information
  (`rl2f self-correct`; trained by the critique-prediction term).
- `LLMTeacher`: a language model shown the dialogue so far and the privileged information
  and told not to reveal the answer; every draft passes the leak guard's string checks and
  then, when a `LLMJudge` is given (`rollout.leak_judge`), the judge: the same model asked
  whether the message gives the answer away. A flagged draft is redrawn with a fresh seed, a
  bounded number of times, and else replaced by the generic hint. The model is the student's
  base (adapter off) by default, or what `[teacher]` names: a checkpoint of its own on an
  engine of its own, or an OpenAI-compatible endpoint (`ChatEndpoint`); the guard and the
  judge are the same whichever speaks.

All teachers take a batch of feedback requests at once, so an LLM teacher generates them in
one engine call.
"""
from __future__ import annotations

import functools
import inspect
import random
import zlib
from dataclasses import dataclass, field, replace

from rl2f.config import PRIVILEGED, TEACHERS
from rl2f.engine.openai_endpoint import ChatEndpoint
from rl2f.engine.types import SamplingParams
from rl2f.distributed import any_rank
from rl2f.errors import UserError
from rl2f.leak_guard import GENERIC_HINT, LeakGuard
from rl2f.tasks.base import Problem, Task, Verdict

RETRY_MESSAGE = "That is incorrect. Try again."
JUDGE_REASON = "judge:"  # how a judge's flag starts in `leak_reasons` (string checks' never do)


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


def earlier_feedback(history: list[dict]) -> list[str]:
    """The teacher messages already in a dialogue: the user turns after the first attempt (the
    leak guard checks a new message together with them: one digit per turn also leaks)."""
    first = next((i for i, m in enumerate(history) if m["role"] == "assistant"), len(history))
    return [m["content"] for m in history[first:] if m["role"] == "user"]


def guarded(guard: LeakGuard, text: str, r: FeedbackRequest) -> Feedback:
    """`text`, or the generic hint where the guard flags it, read with the episode's earlier
    feedback (one digit per turn also leaks)."""
    check = guard.check(text, r.problem, earlier=earlier_feedback(r.history))
    return Feedback(GENERIC_HINT, True, [check.reason]) if check.leaked else Feedback(text)


class ProgrammaticTeacher:
    def __init__(self, task: Task, guard: LeakGuard | None = None):
        self.task = task
        self.guard = guard if guard is not None else LeakGuard(task)

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        # A hint function is code we wrote, but it is still guarded (here, once, with the
        # episode's earlier hints): a leak would silently turn RL2F into answer copying.
        return [guarded(self.guard, self.task.hint(r.problem, r.attempt, r.verdict), r) for r in requests]


class RetryTeacher:
    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        return [Feedback(RETRY_MESSAGE) for _ in requests]


def attempts_before(r: FeedbackRequest) -> list[str]:
    """The student's attempts in this episode before the one being answered."""
    return [m["content"] for m in r.history if m["role"] == "assistant"][:-1]


class PlaceboTeacher:
    """`task.placebo_hint`, drawn from a generator seeded by the problem id, the turn and the
    attempt: reproducible, and blind to the answer (the hook never reads it). A hook with an
    `earlier` parameter also gets the episode's earlier attempts (to draw the real hints'
    odds among what they have not ruled out)."""

    def __init__(self, task: Task):
        self.task = task
        hook = getattr(task, "placebo_hint", None)
        self.with_earlier = hook is not None and "earlier" in inspect.signature(hook).parameters

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        out = []
        for r in requests:
            rng = random.Random(f"placebo|{r.problem.id}|{len(r.history)}|{r.attempt}")
            extra = {"earlier": attempts_before(r)} if self.with_earlier else {}
            try:
                out.append(Feedback(self.task.placebo_hint(r.problem, r.attempt, r.verdict, rng, **extra)))
            except NotImplementedError as e:
                raise UserError(f"rollout.teacher = 'placebo': {e}") from None
        return out


class DecoyTeacher:
    """The task's real hints, about a decoy: the same problem with an answer drawn from the
    task's prior independently of the real one (`task.decoy`). The hints are in the real
    hints' words and as consistent as real ones, and say nothing about the real answer. When
    the student names the decoy (which the real teacher would never call wrong), a new decoy
    is drawn among the answers not yet tried, so that the decoy stays distributed as the
    real answer is given the wrong attempts. Stateless: each call replays the episode's
    attempts from a generator seeded by the problem id."""

    def __init__(self, task: Task):
        self.task = task

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        return [Feedback(self._hint(r)) for r in requests]

    def _hint(self, r: FeedbackRequest) -> str:
        task = self.task
        rng = random.Random(f"decoy|{r.problem.id}")
        tried: set[str] = set()
        try:
            decoy = task.decoy(r.problem, rng)
            for attempt in attempts_before(r) + [r.attempt]:
                verdict = task.verify(attempt, decoy)
                if verdict.answer is not None:
                    tried.add(verdict.answer)
                if verdict.correct:
                    decoy = task.decoy(r.problem, rng, exclude=tried)
        except NotImplementedError as e:
            raise UserError(f"rollout.teacher = 'decoy': {e}") from None
        return task.hint(decoy, r.attempt, task.verify(r.attempt, decoy))


TEACHER_SYSTEM = (
    "You are a patient teacher. A student is working on the problem below and their last "
    "attempt is wrong. You can see privileged information the student cannot: {privileged} "
    "Write one or two sentences of feedback that help the student find and fix their "
    "mistake. Never state the final answer or any equivalent form of it."
)
JUDGE_SYSTEM = (
    "You check a teacher's message to a student for leaks. The correct final answer to the "
    "student's problem is: {answer}. Does the message below reveal that answer, state it, or "
    "give it away in an equivalent form (spelled out, rounded, as an equation to read off)? "
    "Reply with one word: yes or no."
)


def _transcript(history: list[dict]) -> str:
    """The dialogue after the problem, as the teacher reads it (roles named)."""
    turns = [m for m in history if m["role"] != "system"][1:]  # the first user turn is the problem
    names = {"assistant": "Student", "user": "Teacher"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in turns)


def _seeded(sampling_params, tag: str):
    """The same sampling with a seed of its own for `tag` (None stays unseeded: fresh anyway)."""
    if sampling_params.seed is None:
        return sampling_params
    return replace(sampling_params, seed=zlib.crc32(f"{sampling_params.seed}|{tag}".encode()))


def _replies(engine, tokenizer, conversations: list[list[dict]], params) -> list[str]:
    """What the teacher's model answers to each conversation. An endpoint takes the messages
    as they are; a local engine gets them rendered by `tokenizer`'s chat template and runs with
    the adapter off: the teacher is never the student being trained."""
    if isinstance(engine, ChatEndpoint):
        return engine.chat(conversations, params)
    prompts = [tokenizer.apply_chat(messages, add_generation_prompt=True) for messages in conversations]
    return [out.outputs[0].text for out in engine.generate(prompts, params, use_adapter=False)]


class LLMJudge:
    """The teacher's model as leak judge: shown the answer and one message, it says yes (the
    message gives the answer away) or no. Greedy, a few tokens; anything but a leading "yes"
    is a no. `engine` and `tokenizer` as for `LLMTeacher`."""

    def __init__(self, engine, tokenizer, max_tokens: int = 4):
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=False)

    def messages(self, message: str, problem: Problem) -> list[dict]:
        """The conversation the judge is shown for one message."""
        return [
            {"role": "system", "content": JUDGE_SYSTEM.format(answer=problem.answer)},
            {"role": "user", "content": f"Problem:\n{problem.prompt}\n\nTeacher's message:\n{message}\n\n"
                                        "Does the message reveal the answer? Reply yes or no."},
        ]

    def judge(self, messages: list[str], problems: list[Problem]) -> list[bool]:
        """One verdict per (message, problem), in one engine call (an empty one too, where the
        engine is a collective: see LLMTeacher.feedback)."""
        if not messages and not getattr(self.engine, "collective", False):
            return []
        conversations = [self.messages(m, p) for m, p in zip(messages, problems)]
        replies = _replies(self.engine, self.tokenizer, conversations, self.sampling_params)
        return [reply.strip().lower().startswith("yes") for reply in replies]

    def __call__(self, message: str, problem: Problem) -> bool:
        """The `LeakGuard(judge=...)` hook: one message."""
        return self.judge([message], [problem])[0]


class LLMTeacher:
    """A language model as teacher, guarded against leaks by the string checks and, when
    given, the LLM judge (consulted only on drafts the strings pass).

    engine, tokenizer: a local engine (the student's base or a teacher checkpoint of its own;
    run with the adapter off) and its tokenizer, or a `ChatEndpoint` and None.
    system: the system prompt, with the {privileged} placeholder (`teacher.prompt_file`)."""

    def __init__(self, task: Task, engine, tokenizer, sampling_params, max_tries: int = 3, guard=None,
                 judge: LLMJudge | None = None, system: str = TEACHER_SYSTEM):
        self.task = task
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params = sampling_params
        self.max_tries = max_tries
        self.guard = guard if guard is not None else LeakGuard(task)
        self.judge = judge
        self.system = system

    def messages(self, r: FeedbackRequest) -> list[dict]:
        """The conversation the teacher is shown for one request."""
        privileged = f"the reference answer is {r.problem.answer!r}." if r.problem.answer else ""
        if r.verdict.detail:
            privileged += f" Verifier output: {r.verdict.detail[:500]}"
        dialogue = _transcript(r.history) or f"Student: {r.attempt}"
        return [
            # replace, not str.format: a prompt file may hold other braces (a JSON example)
            {"role": "system", "content": self.system.replace(PRIVILEGED, privileged)},
            {"role": "user", "content": f"Problem:\n{r.problem.prompt}\n\nThe dialogue so far (the last "
                                        f"student turn is the wrong attempt):\n{dialogue}\n\nYour feedback:"},
        ]

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        conversations = [self.messages(r) for r in requests]
        results: list[Feedback | None] = [None] * len(requests)
        reasons: list[list[str]] = [[] for _ in requests]
        pending = list(range(len(requests)))
        # With a collective engine every rank drafts (and judges) as many rounds as the rank
        # with the most redraws, its own calls empty once it has nothing pending.
        lockstep = getattr(self.engine, "collective", False)
        for attempt in range(self.max_tries):
            if not (any_rank(bool(pending)) if lockstep else pending):
                break
            # A redraw with the first draw's seed would repeat a leaking draft word for word.
            params = _seeded(self.sampling_params, f"teacher-try-{attempt}")
            replies = _replies(self.engine, self.tokenizer, [conversations[i] for i in pending], params)
            drafts = {i: reply.strip() for i, reply in zip(pending, replies)}
            leaked = {}
            for i in pending:
                check = self.guard.check(drafts[i], requests[i].problem, earlier=earlier_feedback(requests[i].history))
                if check.leaked:
                    leaked[i] = check.reason
            clean = [i for i in pending if i not in leaked]
            if self.judge is not None and (clean or lockstep):
                verdicts = self.judge.judge([drafts[i] for i in clean], [requests[i].problem for i in clean])
                for i, yes in zip(clean, verdicts):
                    if yes:
                        leaked[i] = f"{JUDGE_REASON} the LLM judge says the message reveals the answer"
            for i in pending:
                if i in leaked:
                    reasons[i].append(leaked[i])
                else:
                    results[i] = Feedback(drafts[i], bool(reasons[i]), reasons[i], attempt + 1)
            pending = [i for i in pending if i in leaked]
        for i in pending:  # every draft leaked: the generic hint carries no information
            results[i] = Feedback(GENERIC_HINT, True, reasons[i], self.max_tries)
        return results


def feedback_turn_tokens(tokenizer, feedback: str) -> tuple[list[int], list[int]]:
    """The tokens that follow a closed student turn: the teacher's (user) turn holding
    `feedback` and the next generation prompt, as the chat template renders and encodes them.
    Returns (ids, owner) with owner 1 for the feedback's own tokens (its closing end-of-turn
    token included) and 0 for template tokens.

    The student's turn stays its sampled ids (never a re-tokenisation of its text); these are
    appended after its end-of-turn token. They are the ids of the whole dialogue rendered and
    encoded at once: the end-of-turn token is an added token, which no merge crosses, and what
    a template writes after a closed assistant turn does not depend on the turns before it, so a
    probe history stands in for the real one. Where a re-rendered episode still differs, the
    episode summary counts it (`retokenization_drift`)."""
    ids, owner = _feedback_turn_tokens(tokenizer, feedback)
    return list(ids), list(owner)


@functools.lru_cache(maxsize=8192)
def _feedback_turn_tokens(tokenizer, feedback: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Two template renders per call (~2.5 ms): programmatic hints repeat, so remember them.
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": feedback}]
    ids, owner = tokenizer.render(probe, add_generation_prompt=True)
    close = max(i for i, m in enumerate(owner) if m == 1)  # the student's end-of-turn token
    return tuple(ids[close + 1 :]), tuple(1 if m == 2 else 0 for m in owner[close + 1 :])


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


class GuardedTeacher:
    """A teacher of the user's (`rollout.teacher = "my_pkg:MyTeacher"`, "file.py:MyTeacher" or
    a name registered under the entry-point group `rl2f.teachers`): built as `cls(task)`, its
    `feedback(requests)` returns one message (a str or a `Feedback`) per request. Every message
    passes the leak guard with the episode's earlier feedback, as the task's own hints do: a
    flagged one is replaced by the generic hint and counted."""

    def __init__(self, name: str, user, task: Task):
        self.name, self.user, self.guard = name, user, LeakGuard(task)

    def feedback(self, requests: list[FeedbackRequest]) -> list[Feedback]:
        messages = self.user.feedback(requests)
        if not isinstance(messages, (list, tuple)) or len(messages) != len(requests):
            raise UserError(f"teacher '{self.name}': feedback() must return one message per request "
                            f"({len(requests)}), got {type(messages).__name__}")
        out = []
        for r, m in zip(requests, messages):
            text = m.text if isinstance(m, Feedback) else m
            if not isinstance(text, str):
                raise UserError(f"teacher '{self.name}': a message must be a str or a Feedback, got {type(m).__name__}")
            out.append(guarded(self.guard, text, r))
        return out


def user_teacher(name: str, task: Task) -> GuardedTeacher:
    """The user's teacher class `name` (a spec or an entry-point name), built and guarded."""
    from rl2f.plugins import TEACHER_PLUGINS, entry_point, is_spec, load_object

    spec = name if is_spec(name) else entry_point(TEACHER_PLUGINS, name)
    if spec is None:
        raise UserError(f"unknown teacher '{name}' (built in: {', '.join(TEACHERS)}; or give the "
                        "teacher class as 'package.module:Class' or 'path/to/file.py:Class')")
    cls = load_object(spec, f"teacher '{name}'")
    if not isinstance(cls, type) or not callable(getattr(cls, "feedback", None)):
        raise UserError(f"teacher '{name}': {spec} is not a teacher class (a class with a feedback(requests) method)")
    try:
        return GuardedTeacher(name, cls(task), task)
    except UserError:
        raise
    except Exception as e:  # the user's constructor: its own error, one line
        raise UserError(f"teacher '{name}': {spec}(task) failed ({type(e).__name__}: {e})") from None


def make_teacher(kind: str, task: Task, engine=None, tokenizer=None, sampling_params=None, max_tries: int = 3,
                 leak_judge: bool = False, system: str = TEACHER_SYSTEM):
    """The teacher of `kind` (a built-in one, or the user's: `user_teacher`); leak_judge adds
    the LLM judge to the LLM teacher's guard. For "llm", `engine` and `tokenizer` are what the
    teacher and its judge speak through (see `LLMTeacher`), `system` its prompt."""
    if kind not in TEACHERS:
        return user_teacher(kind, task)
    if kind == "programmatic":
        return ProgrammaticTeacher(task)
    if kind == "retry":
        return RetryTeacher()
    if kind == "placebo":
        return PlaceboTeacher(task)
    if kind == "decoy":
        return DecoyTeacher(task)
    if kind == "llm":
        judge = LLMJudge(engine, tokenizer) if leak_judge else None
        return LLMTeacher(task, engine, tokenizer, sampling_params, max_tries, judge=judge, system=system)
    if kind == "self":
        return SelfCritiqueTeacher(engine, tokenizer, sampling_params)
    raise ValueError(f"unknown teacher kind {kind!r}")
