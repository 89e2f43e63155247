"""Dialogues longer than the model's context (rollout.overlong): an episode that outgrows it
ends and is recorded (context_full, counted in GRPO's metrics); a prompt that can never fit is
skipped with its id named, or stops the run naming it under "error"; a run never dies for one
problem."""
import json
import warnings
from pathlib import Path

import pytest

from rl2f.engine import SamplingParams
from rl2f.engine.types import CompletionOutput, RequestOutput
from rl2f.episodes import EpisodeRunner
from rl2f.errors import UserError
from rl2f.model import build_tiny_checkpoint, load_tokenizer
from rl2f.tasks import get_task
from rl2f.tasks.base import Problem
from rl2f.tasks.secret import SecretNumberTask
from rl2f.teacher import make_teacher


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


class WrongEngine:
    """Always answers "Answer: 1" (wrong for these problems), checking each prompt fits."""

    def __init__(self, tok, max_len):
        self.tok, self.max_len, self.prompts = tok, max_len, []

    def generate(self, prompts, params, use_adapter=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        outs = []
        for ids, p in zip(prompts, params):
            assert self.max_len is None or len(ids) < self.max_len  # an engine would refuse this prompt
            self.prompts.append(list(ids))
            tokens = self.tok.encode("Answer: 1") + [self.tok.stop_ids[0]]
            outs.append(RequestOutput("r", list(ids), [CompletionOutput(i, "Answer: 1", tokens, [-0.5] * len(tokens),
                                                                        "stop") for i in range(p.n)]))
        return outs


def problems(task, long_text=None):
    ps = [p for p in task.problems(50, split="test") if p.answer != "1"][:2]
    if long_text is not None:
        ps.insert(1, Problem("too-long", long_text, "5"))
    return ps


def runner(task, tok, max_len, overlong="skip", engine=None):
    engine = engine or WrongEngine(tok, max_len)
    return EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(), max_turns=4,
                         max_len=max_len, overlong=overlong)


def test_an_episode_that_outgrows_the_context_ends_and_is_recorded(tok):
    """With room for two attempts but not three, every episode ends after turn 2 with
    context_full set, its sequence within the context and ending on the student's turn (the
    feedback that would not fit is not in it); the same run without the limit plays 4 turns."""
    from rl2f.roles import Role

    task = get_task("secret")
    free = {(e.problem_id, e.sample): e for e in runner(task, tok, None).run(problems(task), group_size=2)}
    assert all(len(e.turns) == 4 and not e.context_full for e in free.values())
    first = next(iter(free.values()))
    end2 = 1 + max(i for i, (r, t) in enumerate(zip(first.token_roles, first.token_turns))
                   if r == Role.STUDENT and t == 1)
    cut = end2 + 2  # attempt 2 fits; feedback 2 plus one more token does not
    eps = runner(task, tok, cut).run(problems(task), group_size=2)
    assert len(eps) == 4
    for e in eps:
        assert len(e.turns) == 2 and e.context_full, (e.problem_id, len(e.turns))
        assert e.turns[-1].feedback is None and e.messages[-1]["role"] == "assistant"
        full = free[(e.problem_id, e.sample)]
        assert len(e.token_ids) <= cut and e.token_ids == full.token_ids[:len(e.token_ids)]
        assert e.token_roles[-1] == Role.STUDENT


def test_a_prompt_that_can_never_fit_is_skipped_naming_it(tok):
    """A prompt longer than the context is skipped with a warning naming its id; the other
    problems are played as before. Under overlong = "error" the run stops naming it."""
    task = get_task("secret")
    long_text = "word " * 5000  # about 5,000 tokens, beyond a 2,048-token context
    with pytest.warns(UserWarning, match=r"problem 'too-long': its prompt of \d+ tokens cannot fit .* 2048"):
        eps = runner(task, tok, 2048).run(problems(task, long_text), group_size=2)
    assert [e.problem_id for e in eps][::2] == [p.id for p in problems(task)]
    with pytest.raises(UserError, match=r"problem 'too-long'.*rollout.overlong"):
        runner(task, tok, 2048, overlong="error").run(problems(task, long_text), group_size=2)


def test_a_10_mb_prompt_is_skipped_without_tokenising_it(tok, monkeypatch):
    """A prompt with more characters than the context can hold tokens of the vocabulary's
    longest token is skipped before the tokenizer sees it."""
    task = get_task("secret")
    seen = []
    real = type(tok).apply_chat

    def counting(self, messages, *a, **k):
        seen.append(sum(len(m["content"]) for m in messages))
        return real(self, messages, *a, **k)

    monkeypatch.setattr(type(tok), "apply_chat", counting)
    with pytest.warns(UserWarning, match=r"problem 'too-long': its prompt of 10000\d+ characters cannot fit"):
        eps = runner(task, tok, 4096).run(problems(task, "x" * 10_000_000), group_size=1)
    assert len(eps) == 2 and max(seen) < 1000


class LongPromptTask(SecretNumberTask):
    """The secret-number task with one training problem whose prompt (about 5,000 tokens)
    exceeds the tiny model's 4,096-token context."""

    name = "long-prompt"

    def __init__(self):
        super().__init__(digits=1)

    def problems(self, n, seed=0, split="train"):
        ps = super().problems(n, seed=seed, split=split)
        return [Problem("too-long", "word " * 5000, "5")] + ps[1:]


def test_grpo_survives_a_problem_that_cannot_fit(tmp_path, monkeypatch):
    """The 5,007-token prompt that used to stop training at the first batch: GRPO runs its
    steps, counting the skipped problem in the metrics."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from train_toys import tiny_config

    from rl2f.train.grpo import train_grpo

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt")
    cfg = tiny_config(ckpt, "train.max_steps=2", "task.n_train=4", "rollout.problems_per_batch=2",
                      "rollout.group_size=2", "rollout.max_new_tokens=4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_grpo(cfg, tmp_path / "run", task=LongPromptTask())
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["skipped_problems"] for r in rows) >= 1 and all("context_full" in r for r in rows)
    assert any("problem 'too-long'" in str(w.message) for w in caught)
