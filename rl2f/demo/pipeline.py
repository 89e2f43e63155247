"""The demo's pipeline: per training seed (in worker processes) a base trained from scratch,
then the SFT (two kinds), RLVR and RL2F arms from it and their evaluation; then one report.
Each seed builds its own base so that the intervals, which resample seeds, include what the
base contributes: with one shared base, a change of floating-point order alone (another base)
moved RL2F's acc@5 by 0.09 on the same seeds.

    rl2f demo --out runs/demo                        # the reported run: seeds 0, 1, 2
    rl2f demo --out runs/demo-r --seeds 3,4,5,6,7,8  # the replication on six further seeds
    rl2f demo --out runs/demo-tune --tune            # how each arm's learning rate was chosen
    rl2f demo --out runs/demo --quick                # a smoke run of about a minute (numbers mean nothing)
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from rl2f.config import RunConfig, from_dict, to_dict
from rl2f.demo.base import pretrain_base
from rl2f.demo.claim import claim, claim_markdown
from rl2f.demo.data import Bisect, write_chats
from rl2f.demo.prereg import (DECISIVE_TURN, LR, LR_GRID, MAX_TURNS, TUNING_SEEDS, TUNING_TASK_SEED,
                              preregistration)
from rl2f.eval.evaluate import build_report, play_models, read_episode_dirs
from rl2f.eval.report import markdown_table, write_report
from rl2f.outputs import claim_dir
from rl2f.tasks.highlow import HighLowTask
from rl2f.train import train
from rl2f.train.checkpoint import find_checkpoint

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ARMS = ("base", "sft", "sft_good", "rlvr", "rl2f")
SELF_CORRECT = ("base", "rl2f")
CONTROLS = ("feedback", "retry", "placebo", "decoy")  # every arm, in-distribution and transfer
MODULUS = 10  # the prompt gives the secret's last digit: 9 candidates, one per tens digit
PRIOR = 0.2  # secrets weighted exp(-0.2 x tens digit): single-turn RL can lift turn 1 from 1/9 to 0.217
TRANSFER_TITLES = {"highlow_reversed_prior": "the prior over secrets reversed"}

# The demo's run config; `quick` shrinks the budgets below, `LR` (rl2f/demo/prereg.py) sets
# each arm's learning rate.
DEMO_TOML = f"""
[model]
path = ""                     # the demo's base (rl2f/demo/base.py)
tiny_family = "gemma3"

[task]
name = "highlow"              # hidden information: only the hints carry the missing bits
options = {{modulus = {MODULUS}, prior = {PRIOR}}}
n_train = 4096
n_eval = 192

[rollout]
group_size = 8
max_turns = {MAX_TURNS}
temperature = 1.0
max_new_tokens = 8
teacher_max_new_tokens = 12  # a self-critique: a few words and its end-of-turn
teacher = "programmatic"
problems_per_batch = 8

[lora]
rank = 32
alpha = 64.0

[train]
lr = 1e-3                     # replaced per arm by the tuned LR (rl2f/demo/prereg.py)
warmup_steps = 20             # 3 steps to 1e-3 dipped on the digit-sum task (acc@5 0.49 -> 0.41 over 60 steps)
micro_batch = 32
gamma = 1.0                   # acc@T is the claim: a later success is worth a first one (0.7 made ascending guesses, hint-blind, the pilots' optimum)
beta = 0.0
critique_weight = 0.0         # a critique cannot know the secret; the term slowed RL2F on the digit-sum task
max_grad_norm = 1.0

[eval]
max_turns = {MAX_TURNS}
temperature = 1.0
bootstrap = 1000
"""

BUDGETS = {
    False: dict(sft_dialogues=2000, pretrain_steps=300, pretrain_batch=32, pretrain_lr=5e-3, rl2f_steps=280,
                sft_problems=384, sft_steps=40, n_eval=192, n_transfer=64, n_tune=128),
    True: dict(sft_dialogues=64, pretrain_steps=30, pretrain_batch=8, pretrain_lr=3e-3, rl2f_steps=2,
               sft_problems=32, sft_steps=2, n_eval=8, n_transfer=4, n_tune=8),
}


def demo_config(seed: int, quick: bool, base_path: str = "", task_seed: int = 0) -> RunConfig:
    data = tomllib.loads(DEMO_TOML)
    data["model"]["path"] = base_path
    data["task"]["n_eval"] = BUDGETS[quick]["n_eval"]
    # task.seed stays fixed across training seeds: every seed is evaluated on the same held-out
    # problems (paired), while train.seed (the order of the training problems) and rollout.seed
    # (the sampling) vary. The tuning runs take another task.seed: instances of their own.
    data["task"]["seed"] = task_seed
    data["rollout"]["seed"] = data["train"]["seed"] = data["eval"]["seed"] = seed
    if quick:
        data["rollout"]["group_size"] = 4
        data["rollout"]["problems_per_batch"] = 2
        data["eval"]["max_turns"] = 3
        data["eval"]["bootstrap"] = 100
    return from_dict(RunConfig, data, where="demo config")


def demo_task() -> HighLowTask:
    return HighLowTask(modulus=MODULUS, prior=PRIOR)


def transfer_tasks() -> list[HighLowTask]:
    """A variant no arm trained on: the prior over secrets reversed (a turn-1 prior learned in
    training is wrong there; the hints still work)."""
    return [HighLowTask(modulus=MODULUS, prior=-PRIOR, name="highlow_reversed_prior")]


def reference_lines(task: HighLowTask, turns: int) -> dict[str, list[float]]:
    c = task.ceilings(turns)
    return {"hint-blind ceiling": c["hint_blind"], "hint-optimal ceiling": c["hint_optimal"]}


def problem_sets(tasks, n: int, seed: int) -> list:
    """(task, its `n` test-split problems) for each task: the evaluation's problem sets."""
    return [(task, task.problems(n, seed=seed, split="test")) for task in tasks]


def _with(cfg: RunConfig, **sections) -> RunConfig:
    """A copy of `cfg` with some fields replaced: _with(cfg, train={"method": "sft"})."""
    data = to_dict(cfg)
    for section, values in sections.items():
        data[section].update(values)
    return from_dict(RunConfig, data, where="demo config")


def _log(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


def _quarters(who: str, stage: str):
    """A progress callback for worker processes (whose output is interleaved, not a terminal):
    one line at each quarter of the stage."""
    done, shown = [0], [0]

    def progress(n: int, total: int, label: str) -> None:
        done[0] += n
        quarter = 4 * done[0] // max(total, 1)
        if quarter > shown[0]:
            shown[0] = quarter
            _log(who, f"{stage}: {25 * quarter}%")

    return progress


class Stages:
    """Wall and CPU seconds per stage of one worker, with a line at each start and end."""

    def __init__(self, who: str):
        self.who, self.seconds, self.cpu = who, {}, {}  # CPU: what a stage costs on a shared machine

    def start(self, name: str, text: str):
        _log(self.who, f"{name}: {text}")
        t0, c0 = time.perf_counter(), time.process_time()

        def done():
            self.seconds[name], self.cpu[name] = time.perf_counter() - t0, time.process_time() - c0
            _log(self.who, f"{name}: done in {self.seconds[name]:.0f}s ({self.cpu[name]:.0f} CPU s)")

        return done


# ----------------------------------------------------------------------------------------
# The arms


def train_arm(arm: str, cfg: RunConfig, out: Path, b: dict, lr: float, stages: Stages,
              rl2f_metrics: dict | None = None, resume: Path | None = None) -> tuple[str, dict]:
    """Train one arm from the base of `cfg` into OUT/<arm>; returns (its adapter, the last
    step's metrics, plus RLVR's group size). RLVR needs the RL2F run's metrics: it takes as
    many steps with a group as much larger as RL2F's episodes were longer, so that it
    generates as many student tokens (the paper's companion used group 32 against 8 for the
    same reason); RL2F's token count also bounds it. The RL arms save a checkpoint every
    b["save_every"] steps (0: at the end only); `resume` continues an interrupted run."""
    steps = b["rl2f_steps"]
    save_every = b.get("save_every", 0)
    if arm == "sft":  # the base's own solved dialogues with the teacher (the paper's SFT baseline)
        done = stages.start(arm, f"{b['sft_steps']} LoRA steps on the base's solved dialogues of "
                                 f"{b['sft_problems']} problems, lr {lr:g}")
        arm_cfg = _with(cfg, task={"n_train": b["sft_problems"]}, rollout={"group_size": 4},
                        train={"method": "sft", "max_steps": b["sft_steps"], "sft_epochs": 3, "lr": lr})
    elif arm == "sft_good":  # a perfect hint user's dialogues: free here, and the stronger SFT
        chats = write_chats(out / "sft_good.jsonl", demo_task(), b["sft_problems"], 1000 * cfg.task.seed + cfg.train.seed,
                            Bisect(DECISIVE_TURN), max_turns=cfg.rollout.max_turns, solved_only=True)
        done = stages.start(arm, f"{b['sft_steps']} LoRA steps on {b['sft_problems']} dialogues of the hint-optimal "
                                 f"student, lr {lr:g}")
        arm_cfg = _with(cfg, train={"method": "sft", "max_steps": b["sft_steps"], "sft_epochs": 3, "lr": lr,
                                    "sft_data": str(chats)})
    elif arm == "rl2f":
        done = stages.start(arm, f"{steps} GRPO steps, {cfg.rollout.max_turns}-turn episodes with the teacher, "
                                 f"lr {lr:g}")
        arm_cfg = _with(cfg, train={"method": "rl2f", "max_steps": steps, "save_every": save_every, "lr": lr})
    elif arm == "rlvr":
        budget = int(rl2f_metrics["student_tokens_total"])
        episodes = rl2f_metrics["step"] * cfg.rollout.problems_per_batch * cfg.rollout.group_size
        group = max(2, round(cfg.rollout.group_size * rl2f_metrics["attempts_total"] / episodes))
        done = stages.start(arm, f"{steps} single-turn GRPO steps, group {group}, until {budget} student tokens, "
                                 f"lr {lr:g}")
        arm_cfg = _with(cfg, rollout={"group_size": group},
                        train={"method": "rlvr", "max_steps": steps, "max_student_tokens": budget,
                               "save_every": save_every, "lr": lr})
    else:
        raise ValueError(f"unknown arm {arm!r}")
    metrics = train(arm_cfg, out / arm, resume=resume)
    if arm == "rlvr":
        metrics = {**metrics, "group_size": arm_cfg.rollout.group_size}
    done()
    return str(find_checkpoint(out / arm) / "adapter"), metrics


# ----------------------------------------------------------------------------------------
# One training seed: the arms from its base, then their evaluation


def run_seed(seed: int, out_dir: str, quick: bool) -> dict:
    """Build the base of one seed, train and evaluate its arms; returns its budgets and stage
    timings (JSON-able). The base is OUT/seed<s>/base; episodes go to OUT/seed<s>/eval and
    OUT/seed<s>/transfer."""
    torch.set_num_threads(1)  # seeds run side by side; tiny models gain nothing from threads
    who = f"seed {seed}"
    out = Path(out_dir) / f"seed{seed}"
    b = BUDGETS[quick]
    stages = Stages(who)
    t0 = time.perf_counter()

    done = stages.start("base", f"{b['pretrain_steps']} steps from scratch on {b['sft_dialogues']} scripted dialogues")
    base_path, base_loss = pretrain_base(out, demo_task(), b, seed=seed, log=lambda text: _log(who, f"base: {text}"))
    done()
    cfg = demo_config(seed, quick, str(base_path))
    adapters, metrics = {"base": None}, {}
    for arm in ("sft", "sft_good", "rl2f", "rlvr"):
        adapters[arm], metrics[arm] = train_arm(arm, cfg, out, b, LR[arm], stages, metrics.get("rl2f"))

    # --- evaluation on fresh draws from the training distribution, then on the transfer task
    models = {name: adapters[name] for name in ARMS}
    eval_cfg = _with(cfg, eval={"batch_size": 32})
    for name, tasks, n, self_correct in (("eval", [demo_task()], b["n_eval"], list(SELF_CORRECT)),
                                         ("transfer", transfer_tasks(), b["n_transfer"], [])):
        done = stages.start(name, f"{', '.join(models)} on {n} problems of {', '.join(t.name for t in tasks)}"
                            " (+ retry, placebo, decoy, pass@K" + (", self-correction)" if self_correct else ")"))
        play_models(eval_cfg, models, problem_sets(tasks, n, cfg.task.seed), [seed], self_correct, controls=CONTROLS,
                    oracle_free=bool(self_correct), turns=cfg.eval.max_turns, progress=_quarters(who, name),
                    episodes_dir=out / name)
        done()
    _log(who, f"done in {time.perf_counter() - t0:.0f}s")
    return {
        "seed": seed, "base_pretrain_loss": base_loss,
        "sft_steps": metrics["sft"].get("step"), "sft_final_loss": metrics["sft"].get("loss"),
        "sft_good_steps": metrics["sft_good"].get("step"), "sft_good_final_loss": metrics["sft_good"].get("loss"),
        "rl2f_steps": metrics["rl2f"].get("step"), "rlvr_steps": metrics["rlvr"].get("step"),
        "rlvr_group_size": metrics["rlvr"]["group_size"],
        "rl2f_student_tokens": int(metrics["rl2f"]["student_tokens_total"]),
        "rlvr_student_tokens": int(metrics["rlvr"]["student_tokens_total"]),
        "stage_seconds": stages.seconds, "stage_cpu_seconds": stages.cpu, "seconds": time.perf_counter() - t0,
    }


def _pool_map(fn, args: list[tuple], jobs: int) -> list:
    if jobs > 1 and len(args) > 1:
        with mp.get_context("spawn").Pool(min(jobs, len(args))) as pool:
            return pool.starmap(fn, args)
    return [fn(*a) for a in args]


# ----------------------------------------------------------------------------------------
# All seeds, one report


def run_demo(out_dir: str | Path, seeds: list[int] = (0, 1, 2), quick: bool = False, jobs: int | None = None) -> dict:
    """The whole demo into `out_dir`; returns the report (also written as report.json,
    report.md and plots; fields: rl2f/demo/__init__.py)."""

    t0 = time.perf_counter()
    out = Path(out_dir)
    claim_dir(out, "demo")  # never into a directory of the user's, one writer
    seeds = [int(s) for s in seeds]
    b = BUDGETS[quick]

    # One worker per seed: with 3 seeds on 2 cores, 2 workers would leave the last seed alone
    # on one core; 3 share both cores to the end (same CPU work, shorter wall time).
    _log("demo", f"stage 1/2: per seed {seeds}: the base, {', '.join(ARMS[1:])} and their evaluation")
    runs = _pool_map(run_seed, [(s, str(out), quick) for s in seeds], jobs or len(seeds))

    _log("demo", "stage 2/2: the report (bootstrap over seeds, then problems)")
    cfg = demo_config(seeds[0], quick, str(out / f"seed{seeds[0]}" / "base"))  # the bases differ only by seed
    T = cfg.eval.max_turns
    adapters = {name: None if name == "base" else [str(out / f"seed{s}" / name) for s in seeds] for name in ARMS}
    contrasts = [("rl2f", other) for other in ARMS if other != "rl2f"]
    reports = {}
    for name, tasks, n in (("eval", [demo_task()], b["n_eval"]), ("transfer", transfer_tasks(), b["n_transfer"])):
        episodes = read_episode_dirs({s: out / f"seed{s}" / name for s in seeds}, list(ARMS))
        for task, problems in problem_sets(tasks, n, cfg.task.seed):
            mine = {arm: {kind: {s: [e for e in eps if e.task == task.name] for s, eps in by_seed.items()}
                          for kind, by_seed in by_kind.items()} for arm, by_kind in episodes.items()}
            reports[task.name] = build_report(cfg, mine, adapters, [(task, problems)], T, contrasts=contrasts)
            reports[task.name]["reference_lines"] = reference_lines(task, T)
    main = reports.pop(demo_task().name)
    report = {
        **main,
        "schema": "rl2f.demo.report/2",
        "claim": claim(main),
        "preregistration": preregistration(),
        "transfer": reports,
        "base_pretrain_loss": {str(r["seed"]): r["base_pretrain_loss"] for r in runs},
        "runs": runs,
        "config": {"toml": DEMO_TOML, "budgets": b, "quick": quick, "run": main["config"]},
        "wall_seconds": time.perf_counter() - t0,
    }
    extra = "\n".join([evidence_markdown(report), claim_markdown(report)]
                      + [f"## Transfer: {TRANSFER_TITLES[name]} (no arm was trained on it)\n\n{markdown_table(r)}"
                         for name, r in report["transfer"].items()])
    write_report(report, out, extra_markdown=extra)
    return report


# ----------------------------------------------------------------------------------------
# Tuning: every arm's learning rate, chosen alike on seeds and problems never reported


def tune_job(arm: str, lr: float, seed: int, out_dir: str, quick: bool, rl2f_metrics: dict | None = None) -> dict:
    """Train one (arm, learning rate) of the tuning grid from the tuning seed's base."""
    torch.set_num_threads(1)
    out = Path(out_dir) / f"seed{seed}"
    cfg = demo_config(seed, quick, str(out / "base"), task_seed=TUNING_TASK_SEED)
    stages = Stages(f"tune {arm} lr {lr:g}")
    adapter, metrics = train_arm(arm, cfg, out / f"lr{lr:g}", BUDGETS[quick], lr, stages, rl2f_metrics)
    return {"arm": arm, "lr": lr, "adapter": adapter, "metrics": {k: v for k, v in metrics.items()
                                                                  if isinstance(v, (int, float))},
            "cpu_seconds": sum(stages.cpu.values())}


def run_tuning(out_dir: str | Path, quick: bool = False, jobs: int = 2) -> dict:
    """Train every arm at every learning rate of LR_GRID from the tuning seed's base, on the
    tuning problems' seed; evaluate each on tuning problems with the hints; the learning rate
    with the best acc@DECISIVE_TURN is the arm's choice. Writes OUT/tuning.json and returns it.
    RLVR runs last, token-matched to the chosen RL2F run (as in the reported runs)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    claim_dir(out, "demo")
    b = BUDGETS[quick]
    seed = TUNING_SEEDS[0]
    who = "tune"
    _log(who, f"the base of tuning seed {seed}")
    pretrain_base(out / f"seed{seed}", demo_task(), b, seed=seed, log=lambda text: _log(who, f"base: {text}"))
    grid = [(arm, lr) for arm in ("rl2f", "sft", "sft_good") for lr in LR_GRID]
    _log(who, f"{len(grid)} runs: {', '.join(f'{a} {lr:g}' for a, lr in grid)}")
    runs = _pool_map(tune_job, [(a, lr, seed, str(out), quick) for a, lr in grid], jobs)

    cfg = demo_config(seed, quick, str(out / f"seed{seed}" / "base"), task_seed=TUNING_TASK_SEED)
    T = cfg.eval.max_turns
    t = min(DECISIVE_TURN, T)
    sets = problem_sets([demo_task()], b["n_tune"], TUNING_TASK_SEED)

    def scores(rows: list[dict]) -> dict[str, float]:
        models = {f"{r['arm']}@{r['lr']:g}": r["adapter"] for r in rows}
        eps = play_models(_with(cfg, eval={"batch_size": 32}), models, sets, [seed], controls=("feedback",),
                          pass_at_k=0, turns=T)
        report = build_report(cfg, eps, models, sets, T, K=0)
        return {name: m["acc_at"][t - 1] for name, m in report["models"].items()}

    acc = scores(runs)
    best_rl2f = max((r for r in runs if r["arm"] == "rl2f"), key=lambda r: acc[f"rl2f@{r['lr']:g}"])
    runs_rlvr = _pool_map(tune_job, [("rlvr", lr, seed, str(out), quick, best_rl2f["metrics"]) for lr in LR_GRID],
                          jobs)
    acc.update(scores(runs_rlvr))
    runs += runs_rlvr
    table = {arm: {f"{lr:g}": acc[f"{arm}@{lr:g}"] for lr in LR_GRID} for arm in ("sft", "sft_good", "rlvr", "rl2f")}
    chosen = {arm: max(LR_GRID, key=lambda lr: (by_lr[f"{lr:g}"], -lr)) for arm, by_lr in table.items()}
    result = {"schema": "rl2f.demo.tuning/1", "criterion": f"acc@{t} with the hints", "seed": seed,
              "task_seed": TUNING_TASK_SEED, "n_problems": b["n_tune"], "acc": table, "lr": chosen,
              "runs": [{k: v for k, v in r.items() if k != "adapter"} for r in runs], "quick": quick,
              "wall_seconds": time.perf_counter() - t0}
    (out / "tuning.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def evidence_markdown(report: dict) -> str:
    """What the rows are, in words that match how they were made."""
    runs = report["runs"]
    groups = sorted({r["rlvr_group_size"] for r in runs})
    T = report["max_turns"]
    pre = report["preregistration"]
    ref = report["reference_lines"]
    t = report["claim"]["turn"]
    return "\n".join([
        "## What was compared", "",
        f"- The task (rl2f/tasks/highlow.py): a secret number from 10 to 99 given its remainder mod {MODULUS} "
        f"({len(demo_task().candidates(1))} candidates), secrets weighted exp(-{PRIOR} x tens digit); after a wrong "
        "guess the teacher says \"Too high.\" "
        f"or \"Too low.\". Reference lines (exact): the best hint-blind student reaches acc@{t} "
        f"{ref['hint-blind ceiling'][t - 1]:.3f}, the best hint user {ref['hint-optimal ceiling'][t - 1]:.3f} "
        f"(turn 1: {ref['hint-blind ceiling'][0]:.3f} for both).",
        "- Every arm starts from the same base (the tiny model trained from scratch on scripted dialogues of a "
        "student that follows hints a third of the time). SFT: LoRA on the base's own solved dialogues with the "
        "teacher. SFT (good): LoRA on the dialogues of the hint-optimal student (a prior-weighted binary search). "
        f"RL2F: GRPO on {T}-turn episodes with the teacher's hints. RLVR: the same GRPO on single-turn episodes, "
        f"never a hint, with as many optimiser steps and a larger group ({', '.join(map(str, groups))} against "
        f"{report['config']['run']['rollout']['group_size']}) so that it generates as many student tokens as RL2F.",
        f"- Learning rates, chosen alike by `rl2f demo --tune` (grid {pre['lr_grid']}, acc@{DECISIVE_TURN} with the "
        f"hints, tuning seed {pre['tuning_seeds']} on problems of task seed {pre['tuning_task_seed']}, never "
        f"reported): {', '.join(f'{a} {lr:g}' for a, lr in pre['lr'].items())}.",
        "- The in-distribution problems are fresh draws from the training distribution. Transfer: the prior over "
        "secrets reversed (a turn-1 prior learned in training is wrong there; the hints still work).",
        "- Two placebos, both in the real hints' words (\"Too high.\" / \"Too low.\"), with the real hints' "
        "distribution for a student that ignores them: random direction (the prior's odds among the candidates "
        "the wrong guesses left), and a decoy (the real hints about an independent secret from the same prior, "
        "as consistent as real hints). Content effect = acc with the hints - acc with a placebo; the decoy's "
        "decides. Retry: \"That is incorrect. Try again.\", which the warm start has seen. pass@K: per adapter, "
        "averaged over seeds (never pooled).",
        "- Self-correction rows are verifier-gated: the verifier stops the episode at the first correct attempt. "
        "On a hidden-information task a self-critique cannot carry the missing bits, so neither is expected to "
        "beat retry.",
        "",
        *tuning_markdown(pre),
    ])


def tuning_markdown(pre: dict) -> list[str]:
    """The tuning runs' numbers that chose each arm's learning rate (rl2f/demo/prereg.py)."""
    if not pre["tuning"]:
        return ["No tuning numbers are recorded in rl2f/demo/prereg.py: every arm ran at the grid's middle.", ""]
    grid = pre["lr_grid"]
    lines = [f"### Tuning (acc@{pre['decisive_turn']} with the hints on the tuning problems; seed "
             f"{pre['tuning_seeds']}, task seed {pre['tuning_task_seed']})", "",
             "| arm | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |", "|---|" + "---|" * (len(grid) + 1)]
    for arm, by_lr in pre["tuning"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{by_lr[f'{lr:g}']:.3f}" for lr in grid) + f" | {pre['lr'][arm]:g} |")
    return lines + [""]
