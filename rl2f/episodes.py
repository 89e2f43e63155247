"""The multi-turn episode runner (RL2F.md, Episode) and its JSONL records.

One runner serves rollout generation, training and evaluation:

    student <- problem
    for turn t = 1..T:
        a_t = student(conversation)        # engine, adapter on
        r_t = verify(a_t, privileged)
        if r_t == 1: stop
        f_t = teacher(conversation, privileged), leak-guarded
        conversation += [a_t, f_t]

Many problems x G samples are played together: turn 1 prefills each problem once and fans
out to G samples; later turns batch every still-active episode. Each episode keeps the exact
token sequence the student saw and produced (sampled ids, not a re-tokenisation of the text),
so the trainer's log-probs line up with the sampling log-probs token for token.

Per token, an episode records its role: 0 = prompt or chat template, 1 = student (sampled,
carries the RL loss), 2 = teacher content (carries the optional critique-prediction loss).
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from rl2f.errors import UserError
from rl2f.roles import Role
from rl2f.tasks.base import Problem, Task
from rl2f.teacher import JUDGE_REASON, FeedbackRequest, feedback_turn_tokens



@dataclass
class Turn:
    attempt: str  # the student's text (stop token excluded)
    answer: str | None  # extracted final answer
    correct: bool
    reward: float  # r_t: 1.0 if correct else 0.0
    finish_reason: str  # "stop" or "length"
    feedback: str | None = None  # the teacher's message after this attempt (None: solved or last turn)
    leak_flagged: bool = False
    leak_reasons: list[str] = field(default_factory=list)
    detail: str = ""  # privileged verifier output (for the teacher and for debugging)

    @property
    def judge_flags(self) -> int:
        """Drafts of this turn's feedback the LLM judge flagged (string checks passed them)."""
        return sum(r.startswith(JUDGE_REASON) for r in self.leak_reasons)

    @property
    def string_flags(self) -> int:
        """Drafts of this turn's feedback the leak guard's string checks flagged."""
        return len(self.leak_reasons) - self.judge_flags


@dataclass
class Episode:
    problem_id: str
    task: str
    sample: int  # index within the problem's group of G
    adapter_version: int  # the adapter that generated the student's turns
    seed: int
    messages: list[dict]  # the dialogue as chat messages (student's view, no privileged info)
    turns: list[Turn]
    token_ids: list[int]  # the whole dialogue, exactly as the student saw and sampled it
    token_roles: list[int]  # per token: 0 template/prompt, 1 student, 2 teacher
    token_turns: list[int]  # per token: 0-based turn of student/teacher tokens, -1 otherwise
    sampling_logprobs: list[float]  # per token: log p of sampled student tokens, 0.0 elsewhere

    @property
    def solved_at(self) -> int | None:
        """1-based turn of the first correct attempt, None if never solved."""
        for t, turn in enumerate(self.turns):
            if turn.correct:
                return t + 1
        return None

    @property
    def loss_mask(self) -> list[int]:
        return [1 if r == Role.STUDENT else 0 for r in self.token_roles]

    def to_json(self) -> str:
        d = asdict(self)
        d["loss_mask"] = self.loss_mask
        return json.dumps(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Episode":
        d = dict(d)
        d.pop("loss_mask", None)
        d["turns"] = [Turn(**t) for t in d["turns"]]
        return cls(**d)


# --------------------------------------------------------------------------------------
# Records on disk


def read_episodes(path: str | Path, skip_bad: bool = False) -> list[Episode]:
    """Read an episode JSONL file; a bad line is a UserError naming file and line."""
    episodes = []
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: episode file not found")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                episodes.append(Episode.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                if skip_bad:
                    continue
                raise UserError(f"{path}:{lineno}: not an episode record ({type(e).__name__}: {e})") from None
    return episodes


def _completed_groups(path: Path, group_size: int) -> set[str]:
    """Problem ids whose whole group is already in `path`; a torn last line is cut off."""
    if not path.exists():
        return set()
    counts: dict[str, int] = {}
    good_bytes = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                break  # a run killed mid-write leaves a torn last line: drop it and resume
            counts[rec["problem_id"]] = counts.get(rec["problem_id"], 0) + 1
            good_bytes += len(raw)
    with path.open("r+b") as f:
        f.truncate(good_bytes)
    return {pid for pid, n in counts.items() if n >= group_size}


# --------------------------------------------------------------------------------------
# The runner


class EpisodeRunner:
    """Plays batched multi-turn episodes between a student (engine, adapter on) and a teacher."""

    def __init__(self, task: Task, engine, tokenizer, teacher, sampling_params, max_turns: int):
        if max_turns < 1:
            raise UserError(f"max_turns must be >= 1, got {max_turns}")
        self.task = task
        self.engine = engine
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.sampling_params = sampling_params
        self.max_turns = max_turns
        self.turn_end_id = tokenizer.stop_ids[0]  # closes an attempt cut at max_tokens

    def initial_messages(self, problem: Problem) -> list[dict]:
        messages = []
        if self.task.system_prompt:
            messages.append({"role": "system", "content": self.task.system_prompt})
        messages.append({"role": "user", "content": problem.prompt})
        return messages

    def _params(self, seed: int, ep: Episode, turn: int, n: int = 1):
        """Each request samples from its own stream, keyed by (seed, problem, sample, turn):
        two episodes of a group whose dialogues happen to coincide still sample independently,
        and the same problem gets the same stream under every adapter (paired comparisons)."""
        base = self.sampling_params.seed
        if base is None:
            return replace(self.sampling_params, n=n)
        key = hash_id(f"{base}|{seed}|{ep.problem_id}|{ep.sample if n == 1 else 'group'}|{turn}")
        return replace(self.sampling_params, n=n, seed=key)

    def run(self, problems: list[Problem], group_size: int = 1, seed: int = 0, adapter_version: int = 0) -> list[Episode]:
        """Play `group_size` episodes for each problem; returns them problem by problem."""
        episodes: list[Episode] = []
        for p in problems:
            messages = self.initial_messages(p)
            prompt = self.tokenizer.apply_chat(messages, add_generation_prompt=True)
            for g in range(group_size):
                episodes.append(
                    Episode(p.id, self.task.name, g, adapter_version, seed, [dict(m) for m in messages], [],
                            list(prompt), [Role.TEMPLATE] * len(prompt), [-1] * len(prompt), [0.0] * len(prompt))
                )
        by_problem = {p.id: p for p in problems}
        active = list(range(len(episodes)))
        for turn in range(self.max_turns):
            if not active:
                break
            if turn == 0:
                # Same prompt for the whole group: prefill once per problem, fan out to G samples.
                first = [episodes[i * group_size] for i in range(len(problems))]
                params = [self._params(seed, e, turn, n=group_size) for e in first]
                outs = self.engine.generate([e.token_ids for e in first], params, use_adapter=True)
                completions = [c for out in outs for c in out.outputs]
            else:
                params = [self._params(seed, episodes[i], turn) for i in active]
                outs = self.engine.generate([episodes[i].token_ids for i in active], params, use_adapter=True)
                completions = [out.outputs[0] for out in outs]

            requests, needs_feedback = [], []
            for i, c in zip(active, completions):
                ep = episodes[i]
                problem = by_problem[ep.problem_id]
                ids = list(c.token_ids)
                ep.token_ids += ids
                ep.token_roles += [Role.STUDENT] * len(ids)
                ep.token_turns += [turn] * len(ids)
                ep.sampling_logprobs += [float(x) for x in c.logprobs]
                if not ids or ids[-1] not in self.tokenizer.stop_ids:
                    # Cut at max_tokens: close the turn so the dialogue stays well-formed; the
                    # closing token was not sampled, so it carries no loss.
                    ep.token_ids.append(self.turn_end_id)
                    ep.token_roles.append(Role.TEMPLATE)
                    ep.token_turns.append(-1)
                    ep.sampling_logprobs.append(0.0)
                verdict = self.task.verify(c.text, problem)
                ep.turns.append(Turn(c.text, verdict.answer, verdict.correct, 1.0 if verdict.correct else 0.0,
                                     c.finish_reason, detail=verdict.detail))
                ep.messages.append({"role": "assistant", "content": c.text})
                if not verdict.correct and turn + 1 < self.max_turns:
                    needs_feedback.append(i)
                    requests.append(FeedbackRequest(problem, c.text, verdict, list(ep.messages), list(ep.token_ids)))

            feedback = self.teacher.feedback(requests) if requests else []
            for i, fb in zip(needs_feedback, feedback):
                ep = episodes[i]
                t = ep.turns[-1]
                t.feedback, t.leak_flagged, t.leak_reasons = fb.text, fb.leak_flagged, list(fb.leak_reasons)
                ids, owner = feedback_turn_tokens(self.tokenizer, fb.text)
                roles = [Role.TEACHER if o else Role.TEMPLATE for o in owner]
                ep.token_ids += ids
                ep.token_roles += roles
                ep.token_turns += [turn if r == Role.TEACHER else -1 for r in roles]
                ep.sampling_logprobs += [0.0] * len(ids)
                ep.messages.append({"role": "user", "content": fb.text})
            active = needs_feedback
        return episodes


def generate_to_file(runner: EpisodeRunner, problems: list[Problem], out: str | Path, group_size: int,
                     problems_per_batch: int, seed: int = 0, adapter_version: int = 0,
                     progress=None) -> Iterator[list[Episode]]:
    """Roll out `problems` into a JSONL file, resuming: groups already complete in `out` are
    skipped, and each batch is appended and flushed whole, so a stop loses at most one batch
    and never duplicates an episode. Yields each new batch of episodes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _completed_groups(out, group_size)
    todo = [p for p in problems if p.id not in done]
    if progress is not None:
        progress(len(problems) - len(todo))
    with out.open("a") as f:
        for b in range(0, len(todo), problems_per_batch):
            batch = todo[b : b + problems_per_batch]
            # The batch's seed depends on its problems, not on where a resumed run restarts.
            batch_seed = seed + sum(hash_id(p.id) for p in batch) % 1_000_003
            episodes = runner.run(batch, group_size, seed=batch_seed, adapter_version=adapter_version)
            f.write("".join(e.to_json() + "\n" for e in episodes))
            f.flush()
            os.fsync(f.fileno())
            if progress is not None:
                progress(len(batch))
            yield episodes


def hash_id(text: str) -> int:
    """A stable (not per-process salted) small hash of a string."""
    return zlib.crc32(text.encode())


# --------------------------------------------------------------------------------------
# Summary


def summarize(episodes: Iterable[Episode], max_turns: int, seconds: float | None = None) -> dict:
    """Problems, episodes, acc@1, acc@T (per episode), leak rate (with the flagged drafts
    counted by the string checks and by the LLM judge apart) and student tokens/s."""
    episodes = list(episodes)
    n = len(episodes)
    solved = [e.solved_at for e in episodes]
    feedback_turns = [t for e in episodes for t in e.turns if t.feedback is not None]
    student_tokens = sum(r == Role.STUDENT for e in episodes for r in e.token_roles)
    out = {
        "problems": len({e.problem_id for e in episodes}),
        "episodes": n,
        "acc@1": sum(s == 1 for s in solved) / n if n else 0.0,
        f"acc@{max_turns}": sum(s is not None for s in solved) / n if n else 0.0,
        "leak_rate": sum(t.leak_flagged for t in feedback_turns) / len(feedback_turns) if feedback_turns else 0.0,
        "leak_string_flags": sum(t.string_flags for t in feedback_turns),  # flagged drafts, by check
        "leak_judge_flags": sum(t.judge_flags for t in feedback_turns),
        "student_tokens": student_tokens,
    }
    if seconds:
        out["tokens_per_s"] = student_tokens / seconds
    return out
