"""Side-by-side timing of the demo's RL2F rollout (one GRPO step's rollout: 8 problems x 8
episodes, up to 5 turns, 8-token attempts, 2-layer tiny Gemma, one torch thread) with the
built-in engine and cached attention of a base commit (main) vs this worktree's, alternating
over rounds (same model object, same problems per round); plus
the prompt tokens each turn prefills, and optionally a cProfile of a few whole GRPO steps.

    python benchmarks/bench_rollout.py --rounds 7                 # timing + prefill table
    python benchmarks/bench_rollout.py --profile-steps 4          # cProfile of train steps
    python benchmarks/bench_rollout.py --base-commit f31dda0      # which main to compare with
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _module_at(commit: str, path: str, name: str):
    """A file of the repository as it is at `commit`, loaded as a separate module."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main_engine_class(commit: str):
    """BuiltinEngine as it is at `commit`; its generate runs the model with the attention
    of `commit` too (this branch also changed the cached attention in modeling.py)."""
    from rl2f.model import modeling

    engine_cls = _module_at(commit, "rl2f/engine/builtin.py", "builtin_main").BuiltinEngine
    old_forward = _module_at(commit, "rl2f/model/modeling.py", "modeling_main").Attention.forward

    class MainEngine(engine_cls):
        def generate(self, *args, **kwargs):
            new_forward = modeling.Attention.forward
            modeling.Attention.forward = old_forward
            try:
                return super().generate(*args, **kwargs)
            finally:
                modeling.Attention.forward = new_forward

    return MainEngine


class Counting:
    """Wraps an engine: records the prompt lengths of every generate call (student turns)."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []

    def generate(self, prompts, sampling_params=None, use_adapter=True):
        before = dict(vars(self.engine.stats)) if hasattr(self.engine, "stats") else None
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, sampling_params, use_adapter)
        distinct = [len(p) for p in prompts]
        rec = {"prompts": len(prompts), "prompt_tokens": sum(distinct), "seconds": time.perf_counter() - t0}
        if before is not None:
            after = vars(self.engine.stats)
            rec["prefill_tokens"] = after["prefill_tokens"] - before["prefill_tokens"]
        else:  # main prefills every prompt token of every call
            rec["prefill_tokens"] = sum(distinct)
        self.calls.append(rec)
        return outs

    def set_adapter(self, version, path=None):
        self.engine.set_adapter(version, path)


def setup(work: Path):
    from rl2f.demo import _with, demo_config, pretrain_base
    from rl2f.train.common import build_run
    from rl2f.train.distributed import Dist

    base, _ = pretrain_base(work, quick=True)
    cfg = _with(demo_config(0, quick=False), model={"path": str(base)}, train={"method": "rl2f"})
    run = build_run(cfg, Dist())
    return cfg, run


def rollout_once(cfg, run, engine, position: int):
    from rl2f.train.common import build_runner, train_problems

    problems = train_problems(cfg, run.task)[position: position + cfg.rollout.problems_per_batch]
    runner = build_runner(cfg, engine, run.tokenizer, run.task)
    t0 = time.perf_counter()
    eps = runner.run(problems, cfg.rollout.group_size, seed=position, adapter_version=0)
    return time.perf_counter() - t0, eps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base-commit", default="f31dda0")
    ap.add_argument("--profile-steps", type=int, default=0, help="cProfile this many GRPO steps instead")
    ap.add_argument("--work", default="/tmp/rl2f-engine-bench")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the demo's workers
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    if args.profile_steps:
        from rl2f.demo import _with, demo_config, pretrain_base
        from rl2f.train import train
        import shutil

        base, _ = pretrain_base(work, quick=True)
        cfg = _with(demo_config(0, quick=False), model={"path": str(base)},
                    train={"method": "rl2f", "max_steps": args.profile_steps, "save_every": 0})
        out = work / "prof-run"
        shutil.rmtree(out, ignore_errors=True)
        prof = cProfile.Profile()
        prof.enable()
        train(cfg, out)
        prof.disable()
        prof.dump_stats(str(work / "steps.prof"))
        st = pstats.Stats(prof)
        st.sort_stats("cumulative").print_stats(45)
        st.sort_stats("tottime").print_stats(30)
        for line in (out / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            print({k: round(v, 3) for k, v in r.items() if k.endswith("_s")})
        return

    cfg, run = setup(work)
    Main = main_engine_class(args.base_commit)
    from rl2f.engine.builtin import BuiltinEngine
    engines = {"main": Main(run.model, run.tokenizer), "this": BuiltinEngine(run.model, run.tokenizer)}
    times = {k: [] for k in engines}
    engine_times = {k: [] for k in engines}
    turns = {}
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            eng = Counting(engines[name])
            secs, eps = rollout_once(cfg, run, eng, position=8 * r)
            if r > 0:  # round 0 warms up both
                times[name].append(secs)
                engine_times[name].append(sum(c["seconds"] for c in eng.calls))
            turns[name] = eng.calls
    res = {"rounds": args.rounds - 1, "episodes": 64, "load_avg_1m": round(__import__("os").getloadavg()[0], 2)}
    for name, ts in times.items():
        res[name] = {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
                     "max_s": round(max(ts), 4)}
        res[name]["engine_median_s"] = round(statistics.median(engine_times[name]), 4)
    ratios = [a / b for a, b in zip(times["main"], times["this"])]
    res["speedup_median"] = round(statistics.median(ratios), 3)
    res["speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    eratios = [a / b for a, b in zip(engine_times["main"], engine_times["this"])]
    res["engine_speedup_median"] = round(statistics.median(eratios), 3)
    res["engine_speedup_range"] = [round(min(eratios), 3), round(max(eratios), 3)]
    res["prefill_per_turn_last_round"] = {k: [{n: c[n] for n in ("prompts", "prompt_tokens", "prefill_tokens")}
                                              for c in v] for k, v in turns.items()}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
