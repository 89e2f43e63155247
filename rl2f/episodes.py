"""The multi-turn episode runner (docs/method.md, Episode) and its JSONL records.

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
import warnings
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from rl2f.distributed import any_rank
from rl2f.errors import UserError
from rl2f.jsonl import read_jsonl
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
    context_full: bool = False  # ended before max_turns: the next attempt would not fit the model's context

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
    episodes, _ = read_jsonl(path, "an episode record", lambda rec, lineno: Episode.from_dict(rec), skip_bad)
    return episodes


def _completed_groups(path: Path, problems: list[Problem], group_size: int, problems_per_batch: int) -> set[str]:
    """Prepare `path` for resuming and return the ids of the problems already done in it.

    The problems are cut into the same batches as in the run that wrote the file, so a batch
    is either done (each of its problems has every sample 0..G-1 exactly once) or played
    again whole, with the same batch seed as the first time: its records already on disk are
    dropped first. A kill mid-write leaves at most one unterminated last line, which is
    dropped too; any other line that is not an episode record is a UserError naming it (it
    would otherwise hide every episode after it), and so is a sample index outside the group
    (a file written with a larger group_size). Records of problems outside `problems` are
    kept as they are. The file is rewritten atomically, and only when something changes."""
    if not path.exists():
        return set()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = data.split(b"\n")  # the last piece is b"" when the file ends in a newline
    torn = lines.pop() != b""
    records: list[tuple[str, int, bytes]] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            pid, sample = rec["problem_id"], rec["sample"]
            if not isinstance(pid, str) or not isinstance(sample, int):
                raise TypeError("problem_id must be a string and sample an integer")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{lineno}: not an episode record ({type(e).__name__}: {e}); remove or fix "
                            f"the line to resume (episodes after it are kept)") from None
        records.append((pid, sample, raw))
    ours = {p.id for p in problems}
    samples: dict[str, list[int]] = {}
    for pid, sample, _ in records:
        if pid in ours and not 0 <= sample < group_size:
            # written with a larger group: replaying would throw those episodes away
            raise UserError(f"{path}: holds sample {sample} of problem {pid!r}, outside rollout.group_size="
                            f"{group_size}: the file was written with another group size; choose another --out")
        samples.setdefault(pid, []).append(sample)
    complete = {pid for pid, s in samples.items() if sorted(s) == list(range(group_size))}
    done = set()
    for b in range(0, len(problems), problems_per_batch):
        ids = [p.id for p in problems[b : b + problems_per_batch]]
        if all(i in complete for i in ids):
            done.update(ids)
    keep = [raw for pid, _, raw in records if pid in done or pid not in ours]
    if torn or len(keep) != len(records):
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(b"".join(raw + b"\n" for raw in keep))
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"{path}: cannot rewrite it to resume ({e.strerror or e}); it is unchanged") from None
    return done


# --------------------------------------------------------------------------------------
# The runner


class EpisodeRunner:
    """Plays batched multi-turn episodes between a student (engine, adapter on) and a teacher."""

    def __init__(self, task: Task, engine, tokenizer, teacher, sampling_params, max_turns: int,
                 max_len: int | None = None, overlong: str = "skip"):
        """max_len: the engine's context, prompt + generated tokens per sequence (None: no
        limit is checked); overlong: what a dialogue that outgrows it does (rollout.overlong):
        "skip" ends the episode (context_full) and skips a problem whose prompt cannot fit,
        with a warning naming it; "error" raises a UserError naming the problem."""
        if max_turns < 1:
            raise UserError(f"max_turns must be >= 1, got {max_turns}")
        if overlong not in ("skip", "error"):
            raise UserError(f"rollout.overlong must be 'skip' or 'error', got {overlong!r}")
        self.task = task
        self.engine = engine
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.sampling_params = sampling_params
        self.max_turns = max_turns
        self.max_len = max_len
        self.overlong = overlong
        self.turn_end_id = tokenizer.stop_ids[0]  # closes an attempt cut at max_tokens
        self._max_token_chars: int | None = None

    def initial_messages(self, problem: Problem) -> list[dict]:
        messages = []
        if self.task.system_prompt:
            messages.append({"role": "system", "content": self.task.system_prompt})
        messages.append({"role": "user", "content": problem.prompt})
        return messages

    def _params(self, seed: int, ep: Episode, turn: int, n: int = 1):
        """The one sampling-key scheme: each request samples from its own stream, keyed by
        (the student's sampling seed, `seed`, problem, sample, turn). `seed` tells repeated
        draws of the same problem apart (GRPO: the data position; evaluation: the eval seed);
        two episodes of a group whose dialogues happen to coincide still sample independently;
        the same problem gets the same stream under every adapter and in any batch (paired
        comparisons, resumable generation)."""
        base = self.sampling_params.seed
        if base is None:
            return replace(self.sampling_params, n=n)
        key = hash_id(f"{base}|{seed}|{ep.problem_id}|{ep.sample if n == 1 else 'group'}|{turn}")
        return replace(self.sampling_params, n=n, seed=key)

    def run(self, problems: list[Problem], group_size: int = 1, seed: int = 0, adapter_version: int = 0) -> list[Episode]:
        """Play `group_size` episodes for each problem; returns them problem by problem."""
        episodes: list[Episode] = []
        fitting = []
        for p in problems:
            messages = self.initial_messages(p)
            prompt = self._prompt_that_fits(p, messages)
            if prompt is None:
                continue
            fitting.append(p)
            for g in range(group_size):
                episodes.append(
                    Episode(p.id, self.task.name, g, adapter_version, seed, [dict(m) for m in messages], [],
                            list(prompt), [Role.TEMPLATE] * len(prompt), [-1] * len(prompt), [0.0] * len(prompt))
                )
        problems = fitting
        by_problem = {p.id: p for p in problems}
        active = list(range(len(episodes)))
        # A collective engine (vLLM replicas under torchrun) needs the same generate() calls on
        # every rank: the turns go on while any rank has an active episode, and the teacher is
        # called every turn, with nothing in the calls of a rank that is done.
        lockstep = getattr(self.engine, "collective", False)
        for turn in range(self.max_turns):
            if not (any_rank(bool(active)) if lockstep else active):
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
                if not verdict.correct and turn + 1 < self.max_turns and self._room(ep, turn, 1):
                    needs_feedback.append(i)
                    requests.append(FeedbackRequest(problem, c.text, verdict, list(ep.messages), list(ep.token_ids)))

            feedback = self.teacher.feedback(requests) if requests or lockstep else []
            going_on = []
            for i, fb in zip(needs_feedback, feedback):
                ep = episodes[i]
                ids, owner = feedback_turn_tokens(self.tokenizer, fb.text)
                if not self._room(ep, turn, len(ids) + 1):  # feedback and one more token must fit
                    continue
                going_on.append(i)
                t = ep.turns[-1]
                t.feedback, t.leak_flagged, t.leak_reasons = fb.text, fb.leak_flagged, list(fb.leak_reasons)
                roles = [Role.TEACHER if o else Role.TEMPLATE for o in owner]
                ep.token_ids += ids
                ep.token_roles += roles
                ep.token_turns += [turn if r == Role.TEACHER else -1 for r in roles]
                ep.sampling_logprobs += [0.0] * len(ids)
                ep.messages.append({"role": "user", "content": fb.text})
            active = going_on
        return episodes

    # --- dialogues longer than the context (rollout.overlong)

    def _prompt_that_fits(self, problem: Problem, messages: list[dict]) -> list[int] | None:
        """The problem's prompt ids, or None (skipped, with a warning naming it) when even the
        prompt leaves no room for one generated token. A prompt longer in characters than
        max_len tokens of the vocabulary's longest token cannot fit and is not tokenised
        at all (a 10 MB prompt would take seconds and gigabytes to find that out)."""
        if self.max_len is not None:
            if self._max_token_chars is None:
                self._max_token_chars = max(map(len, self.tokenizer.backend.get_vocab()), default=1)
            chars = sum(len(m["content"]) for m in messages)
            if chars > self.max_len * self._max_token_chars:
                return self._overlong(problem, f"its prompt of {chars} characters")
        prompt = self.tokenizer.apply_chat(messages, add_generation_prompt=True)
        if self.max_len is not None and len(prompt) >= self.max_len:
            return self._overlong(problem, f"its prompt of {len(prompt)} tokens")
        return prompt

    def _overlong(self, problem: Problem, what: str) -> None:
        msg = f"problem {problem.id!r}: {what} cannot fit the model's context of {self.max_len} tokens"
        if self.overlong == "error":
            raise UserError(f"{msg} (rollout.overlong = \"skip\" skips such problems)")
        warnings.warn(f"{msg}; skipped")
        return None

    def _room(self, ep: Episode, turn: int, tokens: int) -> bool:
        """Whether `tokens` more fit after the dialogue so far; if not, the episode ends here
        (context_full) or, under rollout.overlong = "error", the run stops naming it."""
        if self.max_len is None or len(ep.token_ids) + tokens <= self.max_len:
            return True
        if self.overlong == "error":
            raise UserError(f"problem {ep.problem_id!r} sample {ep.sample}: after turn {turn + 1} the dialogue "
                            f"({len(ep.token_ids)} tokens) leaves no room in the model's context of "
                            f"{self.max_len} tokens (rollout.overlong = \"skip\" ends such episodes)")
        ep.context_full = True
        return False


def generate_to_file(runner: EpisodeRunner, problems: list[Problem], out: str | Path, group_size: int,
                     problems_per_batch: int, seed: int = 0, adapter_version: int = 0,
                     progress=None) -> Iterator[list[Episode]]:
    """Roll out `problems` into a JSONL file, resuming: batches already complete in `out`
    are skipped, a batch cut short is played again whole (see `_completed_groups`), and each
    batch is appended and fsynced whole, so a stop at any byte loses at most one batch and
    leaves every (problem, sample) exactly once. A write error (a full disk) cuts the file
    back to its last whole batch and is a UserError naming it. The file is checked and
    prepared when this is called (so a bad file fails before any progress is shown); the
    returned iterator plays the batches and yields each new one."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    done = _completed_groups(out, problems, group_size, problems_per_batch)
    return _play_into(runner, problems, out, done, group_size, problems_per_batch, seed, adapter_version, progress)


def _play_into(runner, problems, out: Path, done: set[str], group_size, problems_per_batch, seed, adapter_version,
               progress) -> Iterator[list[Episode]]:
    if progress is not None:
        progress(len(done & {p.id for p in problems}))
    with out.open("ab", buffering=0) as f:  # unbuffered: nothing is left to flush after an error
        for b in range(0, len(problems), problems_per_batch):
            batch = problems[b : b + problems_per_batch]
            if all(p.id in done for p in batch):
                continue
            # Sampling is keyed per problem (EpisodeRunner), so a replayed batch draws the same
            # episodes however the problems were batched before.
            episodes = runner.run(batch, group_size, seed=seed, adapter_version=adapter_version)
            good = f.tell()
            try:
                data = memoryview("".join(e.to_json() + "\n" for e in episodes).encode())
                while data:
                    data = data[f.write(data):]
                os.fsync(f.fileno())
            except OSError as e:
                try:
                    f.truncate(good)
                except OSError:
                    pass  # the next run drops the torn batch instead
                raise UserError(f"{out}: cannot write episodes ({e.strerror or e}); the {good}-byte file "
                                f"holds every batch before this one, and running again resumes it") from None
            if progress is not None:
                progress(len(batch))
            yield episodes


def hash_id(text: str) -> int:
    """A stable (not per-process salted) small hash of a string."""
    return zlib.crc32(text.encode())


# --------------------------------------------------------------------------------------
# Summary


def summarize(episodes: Iterable[Episode], max_turns: int, seconds: float | None = None, tokenizer=None) -> dict:
    """Problems, episodes, acc@1, acc@T (per episode), leak rate (with the flagged drafts
    counted by the string checks and by the LLM judge apart) and student tokens/s; with the
    run's tokenizer also `retokenization_drift`, the share of episodes whose ids (the student's
    sampled ids, the template's ids around them) are not what the chat template gives for the
    dialogue's text rendered whole: such an episode trains on a sequence the served model, fed
    the same conversation as text, would not see."""
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
    if tokenizer is not None:
        # Drift: the episode's ids are not a prefix of the whole rendering (which may add template
        # text after the last end-of-turn token, e.g. ChatML's newline).
        drifted = sum(tokenizer.apply_chat(e.messages, add_generation_prompt=False)[: len(e.token_ids)] != e.token_ids
                      for e in episodes)
        out["retokenization_drift"] = drifted / n if n else 0.0
    if seconds:
        out["tokens_per_s"] = student_tokens / seconds
    return out
