"""Worker of the lockstep test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_lockstep_worker.py CKPT OUT

vLLM's data-parallel replicas make every generate() a collective. This stands in for one:
the built-in engine on the tiny model, wrapped so that each generate() first all-reduces
(as vLLM does each engine step) and records what it was asked. Rank 0 has no problem to
play, rank 1 two (groups of 2, 3 turns): rank 1's episodes go on, with the LLM teacher and
its LLM judge after every wrong attempt, while rank 0 has nothing to do. Rank 1's leak guard
flags every first draft, so its teacher redraws and rank 0's does not. Each rank writes
OUT/rank{r}.json: the number of prompts in each of its calls, and which weights ran them.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rl2f.distributed import init_distributed, shutdown
from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.episodes import EpisodeRunner
from rl2f.leak_guard import LeakCheck, LeakGuard
from rl2f.model import load_model, load_tokenizer
from rl2f.tasks import get_task
from rl2f.teacher import make_teacher


class CollectiveEngine:
    """The built-in engine with vLLM-replica manners: each call is a collective."""

    collective = True

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def generate(self, prompts, sampling_params=None, use_adapter=True):
        dist.all_reduce(torch.ones(1))  # vLLM: "unfinished" all-reduced each engine step
        self.calls.append([len(prompts), "student" if use_adapter is True else "base"])
        return self.inner.generate(prompts, sampling_params, use_adapter)

    def set_adapter(self, version, path=None):
        self.inner.set_adapter(version, path)

    def sleep(self):
        self.inner.sleep()

    def wake(self):
        self.inner.wake()


class FirstDraftLeaks(LeakGuard):
    """Every teacher message leaks at its first draft (a redraw on this rank only)."""

    seen = set()

    def check(self, message, problem, earlier=()):
        key = (problem.id, tuple(earlier))
        if key in self.seen:
            return LeakCheck(False)
        self.seen.add(key)
        return LeakCheck(True, "test: a first draft")


ckpt, out = sys.argv[1:3]
d = init_distributed("cpu")
torch.manual_seed(0)
tokenizer = load_tokenizer(ckpt)
engine = CollectiveEngine(BuiltinEngine(load_model(ckpt), tokenizer))
task = get_task("secret", digits=1)
teacher = make_teacher("llm", task, engine, tokenizer, SamplingParams(max_tokens=6, seed=3), max_tries=3,
                       leak_judge=True)
if d.rank == 1:
    teacher.guard = FirstDraftLeaks(task)
runner = EpisodeRunner(task, engine, tokenizer, teacher, SamplingParams(max_tokens=6, seed=1), max_turns=3)
problems = task.problems(2, seed=0) if d.rank == 1 else []
episodes = runner.run(problems, group_size=2, seed=0)
Path(out, f"rank{d.rank}.json").write_text(json.dumps({
    "calls": engine.calls, "episodes": len(episodes),
    "turns": [len(e.turns) for e in episodes]}))
shutdown(d)
