"""The LLM teacher and the LLM judge: what the teacher is shown, fresh draws on regeneration,
the judge's verdict counting as a leak (apart from the string checks' flags), with a
scripted engine; and both on the real model (SmolLM2) with the built-in engine."""
import pytest

from rl2f.engine.types import CompletionOutput, RequestOutput, SamplingParams
from rl2f.episodes import EpisodeRunner, summarize
from rl2f.leak_guard import GENERIC_HINT
from rl2f.model import build_tiny_checkpoint, load_tokenizer
from rl2f.tasks import get_task
from rl2f.teacher import JUDGE_REASON, FeedbackRequest, LLMJudge, LLMTeacher, make_teacher


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


class ScriptedEngine:
    """Answers each prompt with `script(prompt_text, seed)`; records every request."""

    def __init__(self, tokenizer, script):
        self.tok, self.script, self.requests = tokenizer, script, []

    def generate(self, prompts, params, use_adapter=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        flags = use_adapter if isinstance(use_adapter, list) else [use_adapter] * len(prompts)
        outs = []
        for ids, p, flag in zip(prompts, params, flags):
            prompt = self.tok.decode(ids, skip_special_tokens=False)
            self.requests.append((prompt, p.seed, flag))
            completions = []
            for i in range(p.n):
                text = self.script(prompt, p.seed)
                ids_out = self.tok.encode(text) + [self.tok.stop_ids[0]]
                completions.append(CompletionOutput(i, text, ids_out, [-0.5] * len(ids_out), "stop"))
            outs.append(RequestOutput(str(len(outs)), list(ids), completions))
        return outs


def _is_judge(prompt):
    return "Reply yes or no" in prompt


def secret(task, answer="58"):
    return next(p for p in task.problems(300, split="test") if p.answer == answer)


def test_teacher_sees_the_dialogue_and_the_privileged_answer(tok):
    """The teacher's prompt holds the problem, every earlier turn (attempts and feedback),
    the wrong attempt and the reference answer; it runs on the base (adapter off)."""
    task = get_task("secret")
    p = secret(task)
    engine = ScriptedEngine(tok, lambda prompt, seed: "Look at the tens digit again.")
    teacher = LLMTeacher(task, engine, tok, SamplingParams(seed=3))
    history = [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": "Answer: 67"},
               {"role": "user", "content": "The first digit is too high."},
               {"role": "assistant", "content": "Answer: 47"}]
    verdict = task.verify("Answer: 47", p)
    (fb,) = teacher.feedback([FeedbackRequest(p, "Answer: 47", verdict, history)])
    assert fb.text == "Look at the tens digit again." and not fb.leak_flagged
    (prompt, _, flag), = engine.requests
    assert flag is False
    for part in (p.prompt, "Student: Answer: 67", "Teacher: The first digit is too high.", "Student: Answer: 47",
                 "'58'"):
        assert part in prompt, part
    assert prompt.index("Answer: 67") < prompt.index("too high") < prompt.index("Answer: 47")


def test_regeneration_draws_fresh_samples(tok):
    """A leaking draft is redrawn with a new seed, so the redraw can differ: an engine whose
    first draw (per seed) leaks gives the clean second draw, not the generic hint after
    max_tries identical drafts."""
    task = get_task("secret")
    p = secret(task)
    first_seed = []

    def script(prompt, seed):
        first_seed.append(seed) if not first_seed else None
        return "The number is 58." if seed == first_seed[0] else f"Check the ones digit ({seed % 7} hints)."

    engine = ScriptedEngine(tok, script)
    teacher = LLMTeacher(task, engine, tok, SamplingParams(seed=11), max_tries=3)
    verdict = task.verify("Answer: 47", p)
    (fb,) = teacher.feedback([FeedbackRequest(p, "Answer: 47", verdict, [{"role": "user", "content": p.prompt},
                                                                          {"role": "assistant", "content": "Answer: 47"}])])
    seeds = [s for _, s, _ in engine.requests]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert fb.text.startswith("Check the ones digit") and fb.leak_flagged and fb.tries == 2
    assert len(fb.leak_reasons) == 1 and not fb.leak_reasons[0].startswith(JUDGE_REASON)


def test_judge_verdict_counts_as_a_leak_apart_from_string_flags(tok):
    """With the judge on, a draft the string checks pass but the judge calls a leak is
    redrawn; the episode record and the summary count that judge flag apart from a string
    flag. The judge runs on the base, greedy, and only on drafts the strings passed."""
    task = get_task("secret")
    p = secret(task)
    drafts = {0: "The answer is 58.", 1: "It is the number of cards in a deck, plus six.",
              2: "Compare your ones digit with the clue."}
    teacher_calls = []

    def script(prompt, seed):
        if _is_judge(prompt):
            return "Yes." if "cards in a deck" in prompt else "No"
        teacher_calls.append(seed)
        return drafts[len(teacher_calls) - 1] if len(teacher_calls) <= 3 else drafts[2]

    engine = ScriptedEngine(tok, script)
    teacher = make_teacher("llm", task, engine, tok, SamplingParams(seed=1), max_tries=3, leak_judge=True)
    assert isinstance(teacher.judge, LLMJudge)
    attempts = iter(["Answer: 47", "Answer: 58"])
    student = ScriptedEngine(tok, lambda prompt, seed: next(attempts))

    class Both:  # the student's requests to one script, the teacher's and judge's to the other
        def generate(self, prompts, params, use_adapter=True):
            return (student if use_adapter is True else engine).generate(prompts, params, use_adapter)

    teacher.engine = teacher.judge.engine = Both()
    runner = EpisodeRunner(task, Both(), tok, teacher, SamplingParams(seed=0), max_turns=3)
    (ep,) = runner.run([p], group_size=1)
    turn = ep.turns[0]
    assert turn.feedback == drafts[2] and turn.leak_flagged
    assert (turn.string_flags, turn.judge_flags) == (1, 1)
    judged = [(prompt, seed, flag) for prompt, seed, flag in engine.requests if _is_judge(prompt)]
    assert len(judged) == 2 and all(flag is False for _, _, flag in judged)  # drafts 2 and 3, not 1
    assert all(r[2] is False for r in engine.requests)
    s = summarize([ep], max_turns=3)
    assert (s["leak_string_flags"], s["leak_judge_flags"], s["leak_rate"]) == (1, 1, 1.0)


def test_every_draft_leaking_gives_the_generic_hint(tok):
    """max_tries drafts all flagged (here by the judge): the generic hint, with every reason kept."""
    task = get_task("secret")
    p = secret(task)
    engine = ScriptedEngine(tok, lambda prompt, seed: "yes" if _is_judge(prompt) else "A harmless-looking hint.")
    teacher = make_teacher("llm", task, engine, tok, SamplingParams(seed=1), max_tries=2, leak_judge=True)
    (fb,) = teacher.feedback([FeedbackRequest(p, "Answer: 47", task.verify("Answer: 47", p),
                                              [{"role": "user", "content": p.prompt}])])
    assert fb.text == GENERIC_HINT and fb.tries == 2
    assert len(fb.leak_reasons) == 2 and all(r.startswith(JUDGE_REASON) for r in fb.leak_reasons)


def test_real_model_teacher_and_judge(smollm2_dir):
    """SmolLM2 (built-in engine, adapter off) as teacher and judge on a wrong attempt: the
    teacher's feedback is text the string checks pass (or the generic hint), never the
    answer; the judge gives a verdict for every draft the strings passed, and says no to a
    message unrelated to the answer. (A 135M model is no judge of leaks: it also says no to
    "The answer is 42.", so that is not asserted; the judge is for larger base models.)"""
    from rl2f.engine import make_engine
    from rl2f.leak_guard import LeakGuard
    from rl2f.tasks.base import Problem

    path = smollm2_dir
    engine = make_engine("builtin", model_path=str(path))
    tok = engine.tokenizer
    problem = Problem(id="p", prompt="What is 17 + 25?", answer="42")
    assert LLMJudge(engine, tok).judge(["Remember that Paris is in France."], [problem]) == [False]
    task = get_task("math")
    teacher = make_teacher("llm", task, engine, tok, SamplingParams(temperature=0.7, max_tokens=40, seed=0),
                           max_tries=2, leak_judge=True)
    judged = []
    judge = teacher.judge.judge
    teacher.judge.judge = lambda messages, problems: judged.append(list(messages)) or judge(messages, problems)
    history = [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": "17 + 25 = 32"}]
    (fb,) = teacher.feedback([FeedbackRequest(problem, "17 + 25 = 32", task.verify("32", problem), history)])
    assert fb.text.strip() and (fb.text == GENERIC_HINT or not LeakGuard(task).check(fb.text, problem).leaked)
    assert judged and all(not LeakGuard(task).check(m, problem).leaked for ms in judged for m in ms)
    assert fb.tries == len(fb.leak_reasons) + (fb.text != GENERIC_HINT)
