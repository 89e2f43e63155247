"""The episode runner: exact token bookkeeping, stopping rules, teachers, and resumable files."""
import json

import pytest

from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.engine.types import CompletionOutput, RequestOutput
from rl2f.episodes import EpisodeRunner, generate_to_file, read_episodes, summarize
from rl2f.errors import UserError
from rl2f.model import build_tiny_checkpoint, load_model, load_tokenizer
from rl2f.roles import Role
from rl2f.tasks import get_task
from rl2f.teacher import RETRY_MESSAGE, make_teacher


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    return load_model(path), load_tokenizer(path)


class ScriptedEngine:
    """Answers each prompt with the next scripted text for its problem (tokenised the way the
    chat template tokenises message content, then the end-of-turn token)."""

    def __init__(self, tokenizer, script):
        self.tok, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, params, use_adapter=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append((len(prompts), params[0].n))
        outs = []
        for ids, p in zip(prompts, params):
            text = self.script(self.tok.decode(ids, skip_special_tokens=False))
            completions = []
            for i in range(p.n):
                tokens = self.tok.encode(text) + [self.tok.stop_ids[0]]
                completions.append(CompletionOutput(i, text, tokens, [-0.5] * len(tokens), "stop"))
            outs.append(RequestOutput(str(len(outs)), list(ids), completions))
        return outs


def secret_problem(task, answer):
    return next(p for p in task.problems(300, split="test") if p.answer == answer)


def test_tokens_equal_the_chat_rendering_and_stop_at_first_correct(tiny):
    """With attempts tokenised as the template would, the recorded sequence is exactly the
    chat template's rendering of the recorded dialogue; roles mark student tokens (loss),
    teacher content, and template; the episode stops at its first correct attempt."""
    _, tok = tiny
    task = get_task("secret")
    p = secret_problem(task, "58")
    # Attempt 1 wrong (67 -> first digit too high), attempt 2 wrong, attempt 3 right.
    guesses = iter(["Answer: 67", "Answer: 57", "Answer: 58", "Answer: 11"])
    engine = ScriptedEngine(tok, lambda prompt: next(guesses))
    runner = EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(), max_turns=5)
    (ep,) = runner.run([p], group_size=1)
    assert [t.correct for t in ep.turns] == [False, False, True] and ep.solved_at == 3
    assert [t.feedback for t in ep.turns] == ["The first digit is too high.", "The second digit is too low.", None]
    ids, owner = tok.render(ep.messages, add_generation_prompt=False)
    n = len(ep.token_ids)  # the rendering may add template tokens after the last end-of-turn
    assert ep.token_ids == ids[:n] and all(o == -1 for o in owner[n:])
    owner = owner[:n]
    # Student tokens: each attempt's content and its end-of-turn token; teacher: each hint.
    for m, role in ((1, Role.STUDENT), (2, Role.TEACHER), (3, Role.STUDENT), (4, Role.TEACHER), (5, Role.STUDENT)):
        assert [r for r, o in zip(ep.token_roles, owner) if o == m] == [role] * owner.count(m)
    assert all(r == Role.TEMPLATE for r, o in zip(ep.token_roles, owner) if o in (-1, 0))
    assert [ep.sampling_logprobs[i] for i, r in enumerate(ep.token_roles) if r == Role.STUDENT] == [-0.5] * ep.token_roles.count(Role.STUDENT)
    assert ep.loss_mask == [int(r == Role.STUDENT) for r in ep.token_roles]
    assert {ep.token_turns[i] for i, r in enumerate(ep.token_roles) if r == Role.STUDENT} == {0, 1, 2}


def test_group_fan_out_then_batched_turns(tiny):
    """Turn 1 sends each problem once with n = G; later turns send each unsolved episode."""
    _, tok = tiny
    task = get_task("secret")
    problems = task.problems(3, split="train")
    engine = ScriptedEngine(tok, lambda prompt: "Answer: 00")
    runner = EpisodeRunner(task, engine, tok, make_teacher("retry", task), SamplingParams(), max_turns=3)
    eps = runner.run(problems, group_size=4)
    assert engine.calls == [(3, 4), (12, 1), (12, 1)]
    assert [(e.problem_id, e.sample) for e in eps] == [(p.id, g) for p in problems for g in range(4)]
    assert all(e.turns[0].feedback == RETRY_MESSAGE and e.turns[-1].feedback is None for e in eps)
    s = summarize(eps, 3)
    assert (s["problems"], s["episodes"], s["acc@1"], s["acc@3"], s["leak_rate"]) == (3, 12, 0.0, 0.0, 0.0)


def test_real_engine_logprobs_line_up_with_student_tokens(tiny):
    """With the built-in engine, the student tokens of the record are the sampled ids, the
    sampling log-probs sit on them, and an attempt cut at max_tokens is closed by an
    end-of-turn token that carries no loss."""
    model, tok = tiny
    task = get_task("secret")
    engine = BuiltinEngine(model, tok)
    runner = EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(max_tokens=4, seed=3), max_turns=2)
    eps = runner.run(task.problems(2, split="train"), group_size=2, seed=1)
    for ep in eps:
        assert len(ep.token_ids) == len(ep.token_roles) == len(ep.token_turns) == len(ep.sampling_logprobs)
        student = [i for i, r in enumerate(ep.token_roles) if r == Role.STUDENT]
        assert all(ep.sampling_logprobs[i] < 0 for i in student)
        for t, turn in enumerate(ep.turns):
            n = sum(1 for i in student if ep.token_turns[i] == t)
            assert 1 <= n <= 4
            if turn.finish_reason == "length":
                last = max(i for i in student if ep.token_turns[i] == t)
                assert ep.token_ids[last + 1] == tok.stop_ids[0] and ep.token_roles[last + 1] == Role.TEMPLATE


def test_generate_to_file_resumes_without_duplicates(tiny, tmp_path):
    """A torn last line is dropped; a resumed run skips complete groups and writes the rest,
    so every (problem, sample) appears exactly once."""
    _, tok = tiny
    task = get_task("secret")
    problems = task.problems(5, split="train")
    engine = ScriptedEngine(tok, lambda prompt: "Answer: 12")
    runner = EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(), max_turns=2)
    out = tmp_path / "episodes.jsonl"
    gen = generate_to_file(runner, problems, out, group_size=2, problems_per_batch=2)
    next(gen)  # one batch (2 problems x 2 samples) lands, then the run "dies"
    gen.close()
    with out.open("a") as f:
        f.write('{"problem_id": "torn')  # killed mid-write
    list(generate_to_file(runner, problems, out, group_size=2, problems_per_batch=2))
    eps = read_episodes(out)
    assert sorted((e.problem_id, e.sample) for e in eps) == sorted((p.id, g) for p in problems for g in range(2))
    assert len(engine.calls) == 3 * 2  # 3 batches (2 + 2 + 1 problems) x 2 turns: nothing redone


def test_bad_episode_file_names_file_and_line(tmp_path):
    """A malformed record is a UserError with file:line; skip_bad skips it."""
    p = tmp_path / "eps.jsonl"
    p.write_text('{"problem_id": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"eps.jsonl:1"):
        read_episodes(p)
    assert read_episodes(p, skip_bad=True) == []
    with pytest.raises(UserError, match="max_turns"):
        EpisodeRunner(get_task("secret"), None, None, None, SamplingParams(), max_turns=0)


def test_every_request_gets_its_own_sampling_stream(tiny):
    """Episodes of one group with identical dialogues still get distinct seeds at every turn,
    and the seeds depend on (problem, sample, turn), not on the batch they were played in."""
    _, tok = tiny
    task = get_task("secret")
    seen = []

    class Recording(ScriptedEngine):
        def generate(self, prompts, params, use_adapter=True):
            seen.append([p.seed for p in params])
            return super().generate(prompts, params, use_adapter)

    engine = Recording(tok, lambda prompt: "Answer: 00")  # every episode's dialogue is identical
    runner = EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(seed=5), max_turns=3)
    problems = task.problems(2, split="train")
    runner.run(problems, group_size=3, seed=1)
    assert len(seen[0]) == 2 and len(set(seen[0])) == 2  # one fan-out request per problem
    for turn_seeds in seen[1:]:
        assert len(set(turn_seeds)) == len(turn_seeds) == 6
    first = list(seen)
    seen.clear()
    runner.run(problems[1:], group_size=3, seed=1)  # the same problem in another batch
    assert seen[0] == first[0][1:] and seen[1] == first[1][3:]
