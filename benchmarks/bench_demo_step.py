"""The demo's RL2F step, this checkout against an earlier commit, side by side.

Both codes train the same RL2F run: the demo's base checkpoint for seed 0 (built once, by this
checkout), the demo's RL2F settings (8 problems x 8 episodes of up to 5 turns, 8-token
attempts, the programmatic teacher, LoRA r32, micro-batch 32, no critique term; the
secret-number task with its default options, which both codes have), one torch thread as in
the demo's workers. Each code runs in a fresh process from its own source tree (the earlier
commit is unpacked with `git archive`), `--rounds` times in an order that flips each round,
`--warmup` + `--steps` GRPO steps per run, from the same seeds.

Per run (median over the measured steps): the step's wall time (the loop's own clock) and
its phases (rollout, log-prob forward, backward, optimiser, hand-off), episodes and student
tokens per step. Reported: each code's median and spread over rounds, `speedup`, the median,
min and max of the per-round ratios of step time (earlier / this), and `speedup_per_token`,
the same for tokens per second (the codes can sample different episodes, of other lengths). For this checkout
also the prompt tokens and prefilled tokens of each student turn (the built-in engine's
stats), which show whether a turn re-reads the dialogue before it.

    python -m benchmarks.bench_demo_step                         # against 842fa44 (issue 15's "now")
    python -m benchmarks.bench_demo_step --base-commit HEAD~3 --rounds 5
    python -m benchmarks.bench_demo_step --config smollm2        # SmolLM2 on math, against dc21422

`--config smollm2`: the same measurement on a real model, the SmolLM2-135M-Instruct checkpoint
that `rl2f fetch-model smollm2` converted (fp32, read from its cache directory by both codes),
on generated arithmetic (`task.name = "math"`, difficulty 1: one addition, subtraction or
multiplication; a 135M model still misses most of them within 48 tokens, so dialogues run to
their later turns: in a smoke run all 8 episodes went on to turns 2 and 3) with
the programmatic teacher's hints: `--problems` problems x `--group` episodes of up
to `--max-turns` turns, `--new-tokens` tokens per attempt, LoRA r16 on all projections,
micro-batch 8, `--threads` torch threads (default 2: the whole machine, unlike the tiny
demo's one per worker). Groups whose rewards are all equal are trained too
(`train.drop_zero_variance = false`) so that every step runs its backward whatever the model
solves. Against `--base-commit` (alias `--baseline-ref`; default dc21422 for this config, the
commit before the engine refactor). The earlier tree is unpacked with `git archive` into a
temporary directory (a `git worktree` without touching the repository's worktree list) and
imported from there (sys.path, and a finder for its `kernels/` as `rl2f.kernels`), which the
child checks; both codes' per-turn prompt and prefill token counts are recorded.

The last line of output is one JSON object; it is also written to
benchmarks/results/demo_step-<device>.json (demo_step.smollm2-cpu.json for --config smollm2).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import harness

# Keys both codes' configs have with the same meaning: the demo's RL2F stage.
SHARED = {
    "model": {"tiny_family": "gemma3"},
    "task": {"name": "secret", "n_train": 4096, "n_eval": 8},
    "rollout": {"group_size": 8, "max_turns": 5, "temperature": 1.0, "max_new_tokens": 8,
                "teacher_max_new_tokens": 12, "teacher": "programmatic", "problems_per_batch": 8},
    "lora": {"rank": 32, "alpha": 64.0},
    "train": {"method": "rl2f", "lr": 1e-3, "warmup_steps": 20, "micro_batch": 32, "gamma": 0.7, "beta": 0.0,
              "critique_weight": 0.0, "max_grad_norm": 1.0},
}
# SmolLM2 on generated arithmetic: keys both codes (this and dc21422) have, same meaning.
SMOLLM2 = {
    "model": {"dtype": "float32"},
    "task": {"name": "math", "options": {"difficulty": 1}, "n_train": 256, "n_eval": 8},
    "rollout": {"group_size": 4, "max_turns": 3, "temperature": 1.0, "max_new_tokens": 48,
                "teacher": "programmatic", "problems_per_batch": 2},
    "lora": {"rank": 16, "alpha": 32.0},
    "train": {"method": "rl2f", "lr": 1e-5, "warmup_steps": 0, "micro_batch": 8, "gamma": 0.7, "beta": 0.0,
              "critique_weight": 0.0, "max_grad_norm": 1.0, "drop_zero_variance": False},
}
CONFIGS = {"tiny": SHARED, "smollm2": SMOLLM2}
DEFAULT_BASE = {"tiny": "842fa44", "smollm2": "dc21422"}
PHASES = ("rollout_s", "logprob_s", "backward_s", "optim_s", "handoff_s")

# Run in the child, from the tree being measured. `kernels/` is installed as rl2f.kernels, so
# a plain source tree needs a finder for it; the check below proves which tree was imported.
CHILD = r'''
import importlib.abc, importlib.util, json, sys, tempfile, time
from pathlib import Path
tree, cfg_json, steps, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, str(tree))

class Kernels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rl2f.kernels":
            return importlib.util.spec_from_file_location(name, tree / "kernels" / "__init__.py",
                                                          submodule_search_locations=[str(tree / "kernels")])
        return None

sys.meta_path.insert(0, Kernels())
import torch
torch.set_num_threads(threads)
import rl2f, rl2f.kernels
assert Path(rl2f.__file__).resolve().is_relative_to(tree.resolve()), rl2f.__file__
assert Path(rl2f.kernels.__file__).resolve().is_relative_to(tree.resolve()), rl2f.kernels.__file__
from rl2f.config import RunConfig, from_dict
from rl2f.train.grpo import train_grpo

turns = []
try:  # this checkout's engine counts what each call prefills
    from rl2f.engine.builtin import BuiltinEngine
    generate = BuiltinEngine.generate
    def counted(self, prompts, *a, **k):
        out = generate(self, prompts, *a, **k)
        s = getattr(self, "last_stats", None)
        if s is not None:
            turns.append({"prompts": len(prompts), "prompt_tokens": s.prompt_tokens, "prefill_tokens": s.prefill_tokens})
        return out
    BuiltinEngine.generate = counted
except ImportError:
    pass
data = json.loads(cfg_json)
data["train"]["max_steps"] = steps
cfg = from_dict(RunConfig, data, where="bench")
with tempfile.TemporaryDirectory() as out:
    train_grpo(cfg, out)
    rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"rows": rows, "turns": turns}))
'''


def build_base(work: Path) -> Path:
    """The demo's base checkpoint for seed 0, as `rl2f demo` builds it (its full pretraining
    budget); an existing WORK/base is reused as it is."""
    from rl2f.demo.base import pretrain_base
    from rl2f.demo.pipeline import BUDGETS, demo_task

    base, _ = pretrain_base(work, demo_task(), BUDGETS[False], log=lambda text: print(f"[base] {text}", flush=True))
    return base


def unpack(commit: str, into: Path) -> Path:
    """The repository's tree at `commit`, as plain files."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(harness.ROOT), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_code(tree: Path, cfg: dict, steps: int, threads: int = 1) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), json.dumps(cfg), str(steps), str(threads)],
                          capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(out: dict, warmup: int, cfg: dict = SHARED) -> dict:
    rows = out["rows"][warmup:]
    med = lambda key: statistics.median(r.get(key, 0.0) for r in rows)  # noqa: E731
    rollout = cfg["rollout"]
    return {"step_s": statistics.median(r["tokens"] / r["tokens_per_s"] for r in rows), "tokens_per_s": med("tokens_per_s"),
            **{p: med(p) for p in PHASES}, "episodes": rollout["problems_per_batch"] * rollout["group_size"],
            "student_tokens": med("student_tokens"), "tokens": med("tokens"), "reward_mean": med("reward_mean"),
            "steps_measured": len(rows)}


def smollm2_config(args) -> dict:
    """SMOLLM2 with the fetched checkpoint's path and the command line's sizes."""
    from rl2f.model.gguf import model_dir

    path = model_dir("smollm2")
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run `rl2f fetch-model smollm2` first")
    cfg = json.loads(json.dumps(SMOLLM2))
    cfg["model"]["path"] = str(path)
    if args.difficulty is not None:
        cfg["task"]["options"]["difficulty"] = args.difficulty
    for key, arg in (("problems_per_batch", "problems"), ("group_size", "group"), ("max_turns", "max_turns"),
                     ("max_new_tokens", "new_tokens")):
        if getattr(args, arg) is not None:
            cfg["rollout"][key] = getattr(args, arg)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS),
                    help="tiny: the demo's base model and settings; smollm2: SmolLM2 on math (see above)")
    ap.add_argument("--base-commit", "--baseline-ref", dest="base_commit", default=None,
                    help="the earlier code, any git ref (default: 842fa44 for tiny, where issue 15 measured; "
                         "dc21422 for smollm2, the commit before the engine refactor)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 tiny, 2 smollm2)")
    ap.add_argument("--problems", type=int, default=None, help="smollm2: problems per step (default 2)")
    ap.add_argument("--group", type=int, default=None, help="smollm2: episodes per problem (default 4)")
    ap.add_argument("--max-turns", type=int, default=None, help="smollm2: turns per episode at most (default 3)")
    ap.add_argument("--new-tokens", type=int, default=None, help="smollm2: tokens per attempt at most (default 48)")
    ap.add_argument("--difficulty", type=int, default=None, help="smollm2: the math task's difficulty, 1-5 (default 1)")
    ap.add_argument("--work", default=None, help="tiny: where the base checkpoint is kept (default: a temp dir)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.config == "tiny" and any(getattr(args, a) is not None for a in ("problems", "group", "max_turns", "new_tokens",
                                                                       "difficulty")):
        raise SystemExit("--problems, --group, --max-turns, --new-tokens and --difficulty are for --config smollm2 "
                         "(the tiny config is the demo's own settings)")
    args.base_commit = args.base_commit or DEFAULT_BASE[args.config]
    threads = args.threads or (1 if args.config == "tiny" else 2)
    commit = subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "--short", args.base_commit],
                            capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        if args.config == "tiny":
            cfg = json.loads(json.dumps(SHARED))
            cfg["model"]["path"] = str(build_base(Path(args.work or tmp)))
        else:
            cfg = smollm2_config(args)
        max_turns = cfg["rollout"]["max_turns"]
        trees = {"earlier": unpack(commit, Path(tmp) / "earlier"), "this": harness.ROOT}
        turns = {}

        def one(code: str, r: int) -> dict:
            out = run_code(trees[code], cfg, args.warmup + args.steps, threads)
            if "error" in out:
                print(f"round {r + 1} {code}: error\n{out['error']}", flush=True)
                return out
            if out["turns"]:
                turns[code] = out["turns"][:max_turns]  # the first step's student turns
            res = summarize(out, args.warmup, cfg)
            print(f"round {r + 1} {code}: {json.dumps(res)}", flush=True)
            return res

        runs = harness.alternate(["earlier", "this"], args.rounds, one)
    row = {}
    for code, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        row[code] = {k: harness.spread([r[k] for r in ok]) for k in ("step_s", "tokens_per_s", *PHASES)} if ok else {}
        row[code]["rounds"] = rs
    pairs = [(a, b) for a, b in zip(runs["earlier"], runs["this"]) if "error" not in a and "error" not in b]
    if pairs:
        row["speedup"] = harness.spread([a["step_s"] / b["step_s"] for a, b in pairs])
        # the two codes may sample different episodes (the sampler changed): per token too
        row["speedup_per_token"] = harness.spread([b["tokens_per_s"] / a["tokens_per_s"] for a, b in pairs])
    record = harness.result("demo_step", torch.device("cpu"), config=args.config,
                            codes={"earlier": commit, "this": f"{head} + working tree"},
                            settings={**cfg, "threads": threads, "steps": args.steps, "warmup": args.warmup,
                                      "rounds": args.rounds},
                            prefill_per_turn=turns.get("this"), prefill_per_turn_earlier=turns.get("earlier"), **row)
    stem = "demo_step" if args.config == "tiny" else f"demo_step.{args.config}"
    harness.write_result(record, args.out or harness.RESULTS / f"{stem}-cpu.json")


if __name__ == "__main__":
    main()
